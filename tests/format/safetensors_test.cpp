#include "safeshard/format/safetensors.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "safeshard/io/syscalls.hpp"

#include "../core/name_flood.hpp"
#include "../support/expect_error.hpp"
#include "test_files.hpp"

using namespace safeshard;
using safeshard::test::expect_error;
using safeshard::test::make_file;
using safeshard::test::make_file_n;

namespace {

errc verdict(const std::vector<std::byte>& bytes, parse_options o = {}) {
    try {
        file_view v(std::span<const std::byte>(bytes), o);
        (void)v;
    } catch (const error& e) {
        return e.code();
    }
    return errc::interrupted;  // stands for "accepted" in these tests
}
constexpr errc accepted = errc::interrupted;

template <class V>
concept can_get_tensor = requires(V&& v) {
    std::forward<V>(v).tensor("a");
};
template <class V>
concept can_get_bytes = requires(V&& v) {
    std::forward<V>(v).bytes();
};

const std::string u8x4 = R"({"dtype":"U8","shape":[4],"data_offsets":[0,4]})";

}  // namespace

TEST_SUITE("format") {
    TEST_CASE("file_view reads names, dtypes, shapes, offsets and bytes in file order") {
        const auto f = make_file(R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},)"
                                 R"("__metadata__":{"format":"pt","k":"v"},)"
                                 R"("a":{"dtype":"U8","shape":[2,2],"data_offsets":[0,4]}})",
                                 std::string("abcd") + std::string(8, '\0'));
        file_view v(std::span<const std::byte>(f), {}, "mem.safetensors");
        REQUIRE(v.size() == 2);
        CHECK(v.header_size() == f.size() - 8 - 12);
        CHECK(v.data_offset() == 8 + v.header_size());
        CHECK(v.bytes().size() == f.size());
        CHECK(v.has_metadata());
        CHECK(v.metadata().size() == 2);
        CHECK(v.metadata("format") == "pt");
        CHECK_FALSE(v.metadata("nope"));
        CHECK(v.names() == std::vector<std::string_view>{"a", "b"});
        const auto a = v.tensor("a");
        CHECK(a.name() == "a");
        CHECK(a.dtype() == dtype::u8);
        CHECK(a.shape() == shape{2, 2});
        CHECK(a.element_count() == 4);
        CHECK(a.byte_size() == 4);
        CHECK(a.data_begin() == 0);
        CHECK(a.data_end() == 4);
        CHECK(a.file_begin() == v.data_offset());
        CHECK(std::memcmp(a.bytes().data(), "abcd", 4) == 0);
        CHECK(a.bytes().data() == f.data() + v.data_offset());
        const auto b = v[1];
        CHECK(b.name() == "b");
        CHECK(b.file_end() == f.size());
        CHECK(v.contains("b"));
        CHECK_FALSE(v.contains("c"));
        CHECK_FALSE(v.find("c"));
        std::size_t n = 0;
        for (const tensor_view t : v) CHECK(t.name() == (n++ == 0 ? "a" : "b"));
        CHECK(n == 2);
        {
            const auto e = expect_error(errc::tensor_not_found, [&] { (void)v.tensor("c"); });
            CHECK(e.tensor() == "c");
            CHECK(e.file() == "mem.safetensors");
        }
    }

    TEST_CASE("file_view survives a move: views point into the same bytes") {
        const auto f = make_file("{\"a\":" + u8x4 + "}", "wxyz");
        file_view v{std::span<const std::byte>(f)};
        file_view w = std::move(v);
        CHECK(w.tensor("a").bytes().data() == f.data() + w.data_offset());
    }

    TEST_CASE("a view cannot be made from a temporary") {
        static_assert(!std::is_constructible_v<file_view, std::vector<std::byte>&&>);
        static_assert(!std::is_constructible_v<file_view, std::string&&>);
        static_assert(std::is_constructible_v<file_view, std::span<const std::byte>>);
        // tensor()/at()/bytes() on an rvalue file_view are deleted.
        static_assert(!can_get_tensor<file_view&&>);
        static_assert(can_get_tensor<const file_view&>);
        static_assert(!can_get_bytes<file_view&&>);
        static_assert(can_get_bytes<file_view&>);
        CHECK(true);
    }

    TEST_CASE("metadata: absent, null, empty") {
        auto a = make_file("{}");
        file_view va{std::span<const std::byte>(a)};
        CHECK_FALSE(va.has_metadata());
        auto b = make_file(R"({"__metadata__":null})");
        file_view vb{std::span<const std::byte>(b)};
        CHECK_FALSE(vb.has_metadata());
        auto c = make_file(R"({"__metadata__":{}})");
        file_view vc{std::span<const std::byte>(c)};
        CHECK(vc.has_metadata());
        CHECK(vc.metadata().empty());
    }

    TEST_CASE("header_too_small: fewer than 8 bytes") {
        for (std::size_t n = 0; n < 8; ++n) {
            std::vector<std::byte> f(n);
            CHECK(verdict(f) == errc::header_too_small);
        }
    }

    TEST_CASE("header_too_large: over the cap, configurable; 2^64-1") {
        CHECK(verdict(make_file_n(100'000'001, "{}")) == errc::header_too_large);
        CHECK(verdict(make_file_n(~std::uint64_t{0}, "{}")) == errc::header_too_large);
        const auto f = make_file("{\"a\":" + u8x4 + "}", "abcd");
        CHECK(verdict(f, parse_options{.max_header_size = 16}) == errc::header_too_large);
        CHECK(verdict(f, parse_options{.max_header_size = f.size()}) == accepted);
        {
            const auto e = expect_error([&] {
                (void)verdict(f);
                file_view v(std::span<const std::byte>(f), parse_options{.max_header_size = 10},
                            "x");
            });
            CHECK(std::string(e.what()).find("exceeds the limit of 10") != std::string::npos);
        }
    }

    TEST_CASE("invalid_header_length: 8 + N past the end of the file") {
        CHECK(verdict(make_file_n(3, "{}")) == errc::invalid_header_length);
        CHECK(verdict(make_file_n(99'999'999, "{}")) == errc::invalid_header_length);
        // With the cap raised, 2^64-1 must not wrap when 8 is added.
        CHECK(verdict(make_file_n(~std::uint64_t{0}, "{}"),
                      parse_options{.max_header_size = ~std::uint64_t{0}}) ==
              errc::invalid_header_length);
    }

    TEST_CASE("invalid_header: not UTF-8") {
        CHECK(verdict(make_file("{\"\xff\":1}")) == errc::invalid_header);
        CHECK(verdict(make_file("{}\xc3")) == errc::invalid_header);
    }

    TEST_CASE("whitespace around the JSON is accepted; no '{' start check (as the reference)") {
        CHECK(verdict(make_file(" \n\t{\"a\":" + u8x4 + "}  \r\n", "abcd")) == accepted);
        CHECK(verdict(make_file("{}      ")) == accepted);
    }

    TEST_CASE("invalid_header_deserialization: not JSON or the wrong schema") {
        const auto bad = [](std::string h, std::string d = "abcd") {
            return verdict(make_file(h, d));
        };
        constexpr auto E = errc::invalid_header_deserialization;
        CHECK(bad("") == E);
        CHECK(bad("[]") == E);
        CHECK(bad("\"x\"") == E);
        CHECK(bad("{") == E);
        CHECK(bad("{}x") == E);
        CHECK(bad("\xef\xbb\xbf{}") == E);  // a BOM is not JSON whitespace
        CHECK(bad(R"({"a":{"dtype":"u8","shape":[4],"data_offsets":[0,4]}})") == E);
        CHECK(bad(R"({"a":{"dtype":"F128","shape":[4],"data_offsets":[0,4]}})") == E);
        CHECK(bad(R"({"a":{"dtype":1,"shape":[4],"data_offsets":[0,4]}})") == E);
        CHECK(bad(R"({"a":{"shape":[4],"data_offsets":[0,4]}})") == E);
        CHECK(bad(R"({"a":{"dtype":"U8","data_offsets":[0,4]}})") == E);
        CHECK(bad(R"({"a":{"dtype":"U8","shape":[4]}})") == E);
        CHECK(bad(R"({"a":{"dtype":"U8","shape":null,"data_offsets":[0,4]}})") == E);
        CHECK(bad(R"({"a":{"dtype":"U8","shape":[-4],"data_offsets":[0,4]}})") == E);
        CHECK(bad(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[-0,4]}})") == E);
        CHECK(bad(R"({"a":{"dtype":"U8","shape":[4,-0],"data_offsets":[0,0]}})", "") == E);
        CHECK(bad(R"({"a-0":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})") == accepted);
        CHECK(bad(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4.0]}})") == E);
        CHECK(bad(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4e0]}})") == E);
        CHECK(bad(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4,4]}})") == E);
        CHECK(bad(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0]}})") == E);
        CHECK(bad(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,18446744073709551616]}})") ==
              E);
        CHECK(bad(R"({"a":{"dtype":"U8","dtype":"U8","shape":[4],"data_offsets":[0,4]}})") == E);
        CHECK(bad(R"({"a":["U8",[4],[0,4]]})") == E);  // the reference's serde accepts this
        CHECK(bad(R"({"a":4})") == E);
        CHECK(bad(R"({"__metadata__":{"k":1}})", "") == E);
        CHECK(bad(R"({"__metadata__":{"k":{}}})", "") == E);
        CHECK(bad(R"({"__metadata__":[]})", "") == E);
        CHECK(bad("{\"__metadata__\":" + u8x4 + "}") == E);  // a tensor-shaped __metadata__
        CHECK(bad("{\"a\\ud800\":" + u8x4 + "}") == E);      // lone surrogate
        CHECK(bad("{\"a\x01\":" + u8x4 + "}") == E);         // raw control character
        // Extra fields in a tensor are ignored, as the reference does.
        CHECK(bad(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4],"x":[1]}})") == accepted);
    }

    TEST_CASE("nesting: 127 arrays and objects, counting the top level, as serde_json") {
        const auto bad = [](std::string h) { return verdict(make_file(h, "abcd")); };
        constexpr auto E = errc::invalid_header_deserialization;
        // `levels` arrays and objects in all: the top level, the tensor, and levels - 2 more
        // in an ignored field, the innermost empty or holding a scalar.
        const auto nested = [](int levels, std::string open, std::string inner, std::string close) {
            std::string x;
            for (int i = 2; i < levels; ++i) x += open;
            x += inner;
            for (int i = 2; i < levels; ++i) x += close;
            return R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4],"x":)" + x + "}}";
        };
        for (const auto& [inner, what] :
             {std::pair{"", "empty"}, {"1", "a scalar"}, {"\"s\"", "a string"}, {"-0", "-0"}}) {
            CAPTURE(what);
            CHECK(bad(nested(126, "[", inner, "]")) == accepted);
            CHECK(bad(nested(127, "[", inner, "]")) == accepted);
            CHECK(bad(nested(128, "[", inner, "]")) == E);
            if (*inner == '\0') continue;  // [1,] is not JSON
            CHECK(bad(nested(127, "[1,", inner, "]")) == accepted);
            CHECK(bad(nested(128, "[1,", inner, "]")) == E);
        }
        CHECK(bad(nested(127, R"({"k":)", "1", "}")) == accepted);
        CHECK(bad(nested(128, R"({"k":)", "1", "}")) == E);
        CHECK(bad(nested(127, R"({"k":)", "{}", "}")) == E);  // the {} is level 128
        CHECK(bad(nested(126, R"({"k":)", "{}", "}")) == accepted);
        CHECK(bad(nested(5000, "[", "", "]")) == E);
        // The error says how deep, and the limit.
        {
            const auto e = expect_error([&] {
                const auto f = make_file(nested(130, "[", "", "]"), "abcd");
                file_view v{std::span<const std::byte>(f)};
            });
            CHECK(e.message() ==
                  "header is not valid JSON: arrays and objects nested 130 deep, over the limit "
                  "of 127");
        }
    }

    TEST_CASE("numbers: what serde_json reads in the fields the header ignores") {
        const auto with_x = [](std::string x) {
            return verdict(make_file(
                R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4],"x":)" + x + "}}", "abcd"));
        };
        constexpr auto E = errc::invalid_header_deserialization;
        // Integers wider than 64 bits: serde reads them as floats.
        CHECK(with_x("123456789012345678901234567890") == accepted);
        CHECK(with_x("-123456789012345678901234567890") == accepted);
        CHECK(with_x("18446744073709551616") == accepted);
        CHECK(with_x("-9223372036854775809") == accepted);
        CHECK(with_x("[1,18446744073709551616,{\"y\":-18446744073709551616}]") == accepted);
        CHECK(with_x(std::string(300, '9')) == accepted);
        CHECK(with_x(std::string(309, '9')) == E);  // beyond the f64 range
        // -0 is the float -0.0 there, a valid number.
        CHECK(with_x("-0") == accepted);
        CHECK(with_x("[-0,-0.0,-0e0]") == accepted);
        // Exponents: out of the f64 range refused, below it read as 0.
        CHECK(with_x("1e308") == accepted);
        CHECK(with_x("1e309") == E);
        CHECK(with_x("-1e400") == E);
        CHECK(with_x("1e-400") == accepted);
        CHECK(with_x("1e99999999999999999999") == E);
        CHECK(with_x("0e99999999999999999999") == accepted);
        CHECK(with_x("1e-99999999999999999999") == accepted);
        CHECK(with_x("0." + std::string(400, '0') + "1e400") == accepted);
        // At the edge of the f64 range serde's arithmetic is not correctly rounded: it refuses
        // 1.7976931348623158e308 (which rounds to the largest f64) and takes
        // 1.79769313486231581e308 (which rounds to infinity).
        CHECK(with_x("1.7976931348623157e308") == accepted);
        CHECK(with_x("1.7976931348623158e308") == E);
        CHECK(with_x("[0,{\"y\":[-1.7976931348623158e308]}]") == E);
        CHECK(with_x("1.79769313486231581e308") == accepted);
        // Not numbers at all: refused as before.
        CHECK(with_x("01") == E);
        CHECK(with_x("1.") == E);
        CHECK(with_x("-") == E);
        CHECK(with_x("1e") == E);
        CHECK(with_x("123456789012345678901234567890x") == E);
    }

    TEST_CASE("numbers: sizes and offsets stay strict, and say what they found") {
        const auto message = [](std::string header) {
            try {
                const auto f = make_file(header, "abcd");
                file_view v{std::span<const std::byte>(f)};
            } catch (const error& e) {
                CHECK(e.code() == errc::invalid_header_deserialization);
                return e.message();
            }
            return std::string("accepted");
        };
        CHECK(message(R"({"a":{"dtype":"U8","shape":[123456789012345678901234567890],)"
                      R"("data_offsets":[0,4]}})") ==
              "shape: expected a non-negative integer, found an integer wider than 64 bits "
              "(1.2345678901234568e+29)");
        CHECK(message(
                  R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,18446744073709551616]}})") ==
              "data_offsets: expected a non-negative integer, found an integer wider than 64 bits "
              "(18446744073709551616)");
        CHECK(message(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[-0,4]}})") ==
              "data_offsets: expected a non-negative integer, found the number -0");
        CHECK(message(R"({"a":{"dtype":"U8","shape":[-4],"data_offsets":[0,4]}})") ==
              "shape: expected a non-negative integer, found the integer -4");
        CHECK(message(R"({"a":{"dtype":"U8","shape":[4.5],"data_offsets":[0,4]}})") ==
              "shape: expected a non-negative integer, found the number 4.5");
        CHECK(message(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,1e400]}})") ==
              "header is not valid JSON: a number is beyond the range of a 64-bit float");
        // A -0 inside a name or a metadata value is text, not a number.
        CHECK(message(R"({"__metadata__":{"date":"2026-01-05"},"a-0":)"
                      R"({"dtype":"U8","shape":[4],"data_offsets":[0,4]}})") == "accepted");
    }

    TEST_CASE("names crafted into one std::hash cluster: the name table stays linear") {
        // A header's names go into detail::name_index. 20,000 names whose unkeyed std::hash
        // falls in the first 4,096 of the table's 65,536 slots: with that hash each insert
        // compares against the cluster before it (about 10^8 comparisons in all).
        constexpr std::size_t n = 20'000;
        const auto names = safeshard::test::flooding_names(n, 65536, 4096);
        std::uint64_t compared = 0;
        const auto name_of = [&](std::uint32_t i) {
            ++compared;
            return std::string_view(names[i]);
        };
        detail::name_index ix;
        ix.reset(n);
        for (std::uint32_t i = 0; i < n; ++i) REQUIRE_FALSE(ix.insert(names[i], i, name_of));
        CHECK(compared <= n);
        // And a file of such names opens, every name found.
        std::string header = "{";
        for (std::size_t i = 0; i < n; ++i)
            header += (i ? ",\"" : "\"") + names[i] + R"(":{"dtype":"U8","shape":[1],)" +
                      R"("data_offsets":[)" + std::to_string(i) + "," + std::to_string(i + 1) +
                      "]}";
        header += "}";
        const auto f = make_file(header, std::string(n, 'x'));
        const file_view v{std::span<const std::byte>(f)};
        REQUIRE(v.size() == n);
        for (std::size_t i = 0; i < n; i += 7) CHECK(v.tensor(names[i]).data_begin() == i);
    }

    TEST_CASE("schema errors name the tensor and say what was expected") {
        const auto f =
            make_file(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,"4"]}})", "abcd");
        {
            const auto e = expect_error(errc::invalid_header_deserialization, [&] {
                file_view v(std::span<const std::byte>(f), {}, "m.safetensors");
            });
            CHECK(e.tensor() == "w");
            CHECK(e.file() == "m.safetensors");
            CHECK(e.message() == "data_offsets: expected a non-negative integer, found a string");
        }
    }

    TEST_CASE("duplicate_name: tensors, __metadata__, metadata keys") {
        CHECK(verdict(make_file("{\"a\":" + u8x4 + ",\"a\":" + u8x4 + "}", "abcd")) ==
              errc::duplicate_name);
        CHECK(verdict(make_file(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},)"
                                R"("a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}})")) ==
              errc::duplicate_name);
        CHECK(verdict(make_file(R"({"__metadata__":{},"__metadata__":{}})")) ==
              errc::duplicate_name);
        CHECK(verdict(make_file(R"({"__metadata__":{"k":"1","k":"2"}})")) == errc::duplicate_name);
    }

    TEST_CASE("rank above shape::capacity is refused (rank_too_large)") {
        CHECK(verdict(make_file(
                  R"({"a":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,4],"data_offsets":[0,4]}})",
                  "abcd")) == errc::rank_too_large);
        CHECK(verdict(make_file(
                  R"({"a":{"dtype":"U8","shape":[1,1,1,1,1,1,1,4],"data_offsets":[0,4]}})",
                  "abcd")) == accepted);
    }

    TEST_CASE("invalid_offset: hole, overlap, end before begin") {
        const auto t = [](std::string offs_a, std::string offs_b, std::string data) {
            return verdict(make_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":)" + offs_a +
                                         R"(},"b":{"dtype":"U8","shape":[2],"data_offsets":)" +
                                         offs_b + "}}",
                                     data));
        };
        CHECK(t("[0,2]", "[2,4]", "abcd") == accepted);
        CHECK(t("[2,4]", "[0,2]", "abcd") == accepted);               // any header order
        CHECK(t("[1,3]", "[3,5]", "abcde") == errc::invalid_offset);  // hole at 0
        CHECK(t("[0,2]", "[3,5]", "abcde") == errc::invalid_offset);  // hole between
        CHECK(t("[0,2]", "[1,3]", "abc") == errc::invalid_offset);    // overlap
        CHECK(verdict(make_file(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[2,0]}})",
                                "ab")) == errc::invalid_offset);
        {
            const auto e = expect_error(errc::invalid_offset, [&] {
                (void)t("[0,2]", "[3,5]", "abcde");
                file_view v(std::span<const std::byte>(
                    make_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})", "abc")));
            });
            CHECK(e.tensor() == "a");
            CHECK(e.message().find("expected data_offsets to start at 0") != std::string::npos);
        }
    }

    TEST_CASE("validation_overflow: element counts and bit sizes past 64 bits") {
        const auto t = [](std::string dt, std::string shape) {
            return verdict(make_file(R"({"a":{"dtype":")" + dt + R"(","shape":)" + shape +
                                     R"(,"data_offsets":[0,0]}})"));
        };
        CHECK(t("U8", "[4294967296,4294967296]") == errc::validation_overflow);  // wraps to 0
        CHECK(t("U8", "[4294967296,4294967296,0]") == errc::validation_overflow);
        CHECK(t("U8", "[0,4294967296,4294967296]") == accepted);  // the fold stays at 0
        CHECK(t("U8", "[18446744073709551615,2]") == errc::validation_overflow);
        CHECK(t("U64", "[288230376151711744]") == errc::validation_overflow);  // 2^58 * 64 bits
        CHECK(t("U8", "[2305843009213693952]") == errc::validation_overflow);  // 2^61 * 8 bits
        CHECK(t("U8", "[1152921504606846976]") == errc::tensor_invalid_info);  // 2^63 bits fit
        CHECK(t("U8", "[0,18446744073709551615]") == accepted);
    }

    TEST_CASE("misaligned_slice: sub-byte tensors end on a byte boundary") {
        CHECK(verdict(make_file(R"({"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})",
                                "ab")) == errc::misaligned_slice);
        CHECK(verdict(make_file(R"({"a":{"dtype":"F6_E2M3","shape":[3],"data_offsets":[0,3]}})",
                                "abc")) == errc::misaligned_slice);
        CHECK(verdict(make_file(R"({"a":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}})",
                                "ab")) == accepted);
        CHECK(verdict(make_file(R"({"a":{"dtype":"F6_E3M2","shape":[2,2],"data_offsets":[0,3]}})",
                                "abc")) == accepted);
    }

    TEST_CASE("tensor errors carry the tensor name and its byte offset in the file") {
        const auto f = make_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                                 R"("b":{"dtype":"F32","shape":[2],"data_offsets":[1,5]}})",
                                 "abcde");
        {
            const auto e = expect_error(errc::tensor_invalid_info,
                                        [&] { file_view v{std::span<const std::byte>(f)}; });
            CHECK(e.tensor() == "b");
            REQUIRE(e.offset());
            CHECK(*e.offset() == f.size() - 5 + 1);
            CHECK(e.message() == "dtype F32 and shape [2] need 8 bytes, data_offsets give 4");
        }
    }

    TEST_CASE("C64 as std::complex<float>") {
        const std::complex<float> c[2] = {{1.0f, 2.0f}, {-3.0f, 0.5f}};
        std::string data(16, '\0');
        std::memcpy(data.data(), c, 16);
        const auto f =
            make_file(R"({"c":{"dtype":"C64","shape":[2],"data_offsets":[0,16]}})", data);
        file_view v{std::span<const std::byte>(f)};
        const auto e = v.tensor("c").as<std::complex<float>>();
        CHECK(e[1] == std::complex<float>(-3.0f, 0.5f));
        CHECK(v.tensor("c").as<std::uint64_t>().size() == 2);  // raw bits
    }

    TEST_CASE("tensor_invalid_info: end - begin differs from dtype x shape") {
        CHECK(verdict(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})",
                                "abcd")) == errc::tensor_invalid_info);
        CHECK(verdict(make_file(R"({"a":{"dtype":"F32","shape":[],"data_offsets":[0,8]}})",
                                "abcdefgh")) == errc::tensor_invalid_info);
        CHECK(verdict(make_file(R"({"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})",
                                "abcd")) == accepted);  // rank 0: one element
    }

    TEST_CASE("metadata_incomplete_buffer: trailing bytes and truncation") {
        CHECK(verdict(make_file("{\"a\":" + u8x4 + "}", "abcde")) ==
              errc::metadata_incomplete_buffer);
        CHECK(verdict(make_file("{\"a\":" + u8x4 + "}", "abc")) ==
              errc::metadata_incomplete_buffer);
        CHECK(verdict(make_file("{}", "x")) == errc::metadata_incomplete_buffer);
        // Tensors ending at 2^64-8 must not wrap when 8 + N is added: 8 of 2^61-1 bytes each.
        std::string h = "{";
        const std::uint64_t sz = (std::uint64_t{1} << 61) - 1;
        for (std::uint64_t i = 0; i < 8; ++i)
            h += std::string(i ? "," : "") + "\"t" + std::to_string(i) +
                 R"(":{"dtype":"U8","shape":[)" + std::to_string(sz) + R"(],"data_offsets":[)" +
                 std::to_string(i * sz) + "," + std::to_string((i + 1) * sz) + "]}";
        CHECK(verdict(make_file(h + "}")) == errc::metadata_incomplete_buffer);
    }

    TEST_CASE("the checks run in the reference's order") {
        // Offsets are checked before sizes, tensor by tensor in offset order.
        CHECK(verdict(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,3]},)"
                                R"("b":{"dtype":"U8","shape":[1],"data_offsets":[4,5]}})",
                                "abcde")) == errc::tensor_invalid_info);
        CHECK(verdict(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                R"("b":{"dtype":"U8","shape":[1],"data_offsets":[5,6]}})",
                                "abcd")) == errc::invalid_offset);
        // Deserialization before offsets; header length before UTF-8.
        CHECK(verdict(make_file(R"({"a":{"dtype":"X","shape":[1],"data_offsets":[5,6]}})")) ==
              errc::invalid_header_deserialization);
        CHECK(verdict(make_file_n(5, "\xff\xff")) == errc::invalid_header_length);
    }

    TEST_CASE("truncation at every byte position is refused, never a crash") {
        const auto f = make_file(R"({"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2],)"
                                 R"("data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[],)"
                                 R"("data_offsets":[8,10]}})",
                                 "0123456789");
        REQUIRE(verdict(f) == accepted);
        for (std::size_t n = 0; n < f.size(); ++n) {
            std::vector<std::byte> cut(f.begin(), f.begin() + static_cast<std::ptrdiff_t>(n));
            const errc e = verdict(cut);
            CAPTURE(n);
            if (n < 8)
                CHECK(e == errc::header_too_small);
            else if (n < f.size() - 10)
                CHECK(e == errc::invalid_header_length);
            else
                CHECK(e == errc::metadata_incomplete_buffer);
        }
    }

    TEST_CASE("small files parse both in place and through a padded copy") {
        // 200 data bytes after the header: in place; 4 bytes: copied. Same answer either way.
        const auto big = make_file(R"({"a":{"dtype":"U8","shape":[200],"data_offsets":[0,200]}})",
                                   std::string(200, 'x'));
        const auto small = make_file("{\"a\":" + u8x4 + "}", "abcd");
        CHECK(verdict(big) == accepted);
        CHECK(verdict(small) == accepted);
    }

    TEST_CASE("typed access: natural types, raw bits, unaligned data") {
        // Header "{...}" of odd length puts the data at an odd address in the vector.
        const std::string h = R"({"f":{"dtype":"F32","shape":[2],"data_offsets":[1,9]},)"
                              R"("u":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                              R"("h":{"dtype":"BF16","shape":[1],"data_offsets":[9,11]}})";
        std::string data(11, '\0');
        data[0] = 7;
        const float vals[2] = {1.5f, -2.0f};
        std::memcpy(data.data() + 1, vals, 8);
        const std::uint16_t bf = 0x3f80;
        std::memcpy(data.data() + 9, &bf, 2);
        const auto f = make_file(h, data);
        file_view v{std::span<const std::byte>(f)};
        const auto fl = v.tensor("f").as<float>();
        CHECK(fl.size() == 2);
        CHECK(fl[0] == 1.5f);
        CHECK(fl.at(1) == -2.0f);
        CHECK_THROWS_AS((void)fl.at(2), error);
        CHECK(fl.to_vector() == std::vector<float>{1.5f, -2.0f});
        if (!fl.is_aligned()) CHECK_THROWS_AS((void)fl.span(), error);
        CHECK(v.tensor("u").as<std::uint8_t>().span()[0] == 7);
        CHECK(v.tensor("h").as<std::uint16_t>()[0] == 0x3f80);
        CHECK(v.tensor("f").as<std::uint32_t>().size() == 2);
        {
            const auto e =
                expect_error(errc::invalid_dtype, [&] { (void)v.tensor("h").as<float>(); });
            CHECK(e.tensor() == "h");
        }
        CHECK_THROWS_AS((void)v.tensor("f").as<std::int32_t>(), error);
        std::vector<float> out(1);
        CHECK_THROWS_AS(fl.copy_to(out), error);
    }

    TEST_CASE("file_view opens a path; a missing file is an io_error naming it") {
        safeshard::test::temp_dir d("open");
        const auto f = make_file("{\"a\":" + u8x4 + "}", "abcd");
        safeshard::test::write_bytes(d / "m.safetensors", f);
        file_view v(d / "m.safetensors");
        CHECK(v.file_name() == (d / "m.safetensors").string());
        CHECK(std::memcmp(v.tensor("a").bytes().data(), "abcd", 4) == 0);
        {
            const auto e =
                expect_error(errc::io_error, [&] { file_view w(d / "missing.safetensors"); });
            CHECK(e.file() == (d / "missing.safetensors").string());
        }
        safeshard::test::write_bytes(d / "empty", {});
        {
            const auto e = expect_error(errc::header_too_small, [&] { file_view w(d / "empty"); });
            CHECK(e.file() == (d / "empty").string());
        }
    }

    TEST_CASE("a path opened: the header read with pread gives the span route's verdicts") {
        safeshard::test::temp_dir d("pread");
        const std::string long_name(5000, 'n');  // the header goes past the first 4 KiB read
        const std::string padded_name(4096 - 8 - 60, 'p');
        const std::vector<std::vector<std::byte>> files = {
            make_file("{\"a\":" + u8x4 + "}", "abcd"),
            make_file("{\"" + long_name + "\":" + u8x4 + "}", "abcd"),
            make_file("{\"" + padded_name + "\":" + u8x4 + "}", "abcd"),
            make_file("{\"" + long_name + "\":" + u8x4 + "}", "ab"),  // data cut short
            make_file_n(1u << 20, "{}"),                              // N past the end
            make_file_n(~std::uint64_t{0}, "{}"),                     // over the cap
            make_file("{\"a\":" + u8x4 + "}"),                        // no data
            std::vector<std::byte>(5),                                // under 8 bytes
            make_file("{\"a\":" + u8x4 + ",}", "abcd"),               // not JSON
        };
        for (std::size_t i = 0; i < files.size(); ++i) {
            CAPTURE(i);
            const auto path = d / ("f" + std::to_string(i) + ".safetensors");
            safeshard::test::write_bytes(path, files[i]);
            errc got = accepted;
            try {
                const file_view v(path);
                const file_view w{std::span<const std::byte>(files[i])};
                CHECK(v.header_json() == w.header_json());
                CHECK(v.names() == w.names());
                CHECK(v.data_offset() == w.data_offset());
                const auto a = v.at(0).bytes();
                const auto b = w.at(0).bytes();
                CHECK(std::equal(a.begin(), a.end(), b.begin(), b.end()));
                CHECK(v.bytes().size() == files[i].size());
            } catch (const error& e) {
                got = e.code();
                CHECK(e.file() == path.string());
            }
            CHECK(got == verdict(files[i]));
        }
    }

    TEST_CASE("a path opened maps nothing until tensor bytes are asked for, then once") {
        struct count_mmap : detail::syscall_hooks {
            std::atomic<int> calls{0};
            void* mmap(std::size_t n, int prot, int flags, int fd) override {
                ++calls;
                return detail::syscall_hooks::mmap(n, prot, flags, fd);
            }
        } hooks;
        const detail::scoped_syscall_hooks scope(hooks);
        safeshard::test::temp_dir d("lazy");
        const auto path = d / "m.safetensors";
        safeshard::test::write_bytes(path, make_file("{\"a\":" + u8x4 + "}", "abcd"));
        const file_view v(path);
        CHECK(v.tensor("a").byte_size() == 4);
        CHECK(v.tensor("a").file_begin() == v.data_offset());
        CHECK(v.header_json().starts_with("{\"a\""));
        CHECK_FALSE(v.mapped());
        CHECK(hooks.calls == 0);
        // Eight threads ask at once: one mapping, the same bytes for all.
        std::vector<const std::byte*> seen(8);
        {
            std::vector<std::jthread> threads;
            for (std::size_t k = 0; k < seen.size(); ++k)
                threads.emplace_back([&, k] { seen[k] = v.tensor("a").bytes().data(); });
        }
        CHECK(hooks.calls == 1);
        CHECK(v.mapped());
        for (const std::byte* p : seen) CHECK(p == seen.front());
        CHECK(std::memcmp(seen.front(), "abcd", 4) == 0);
        const file_view moved = [&] {
            file_view a(path);
            (void)a.bytes();
            return a;
        }();
        CHECK(std::memcmp(moved.tensor("a").bytes().data(), "abcd", 4) == 0);
        CHECK(hooks.calls == 2);
    }

    TEST_CASE("a file cut short before its first access: io_error, never SIGBUS") {
        safeshard::test::temp_dir d("cut");
        const auto path = d / "m.safetensors";
        safeshard::test::write_bytes(path, make_file("{\"a\":" + u8x4 + "}", std::string(4, 'x')));
        const file_view v(path);
        std::filesystem::resize_file(path, std::filesystem::file_size(path) - 2);
        {
            const auto e = expect_error(errc::io_error, [&] { (void)v.tensor("a").bytes(); });
            CHECK(std::string(e.what()).find("shorter") != std::string::npos);
            CHECK(e.file() == path.string());
        }
    }

}  // TEST_SUITE
