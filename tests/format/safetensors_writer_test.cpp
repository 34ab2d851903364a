#include "safeshard/format/safetensors_writer.hpp"

#include <doctest/doctest.h>

#include <cstring>
#include <numeric>
#include <string>

#include "safeshard/format/safetensors.hpp"
#include "test_files.hpp"

using namespace safeshard;

namespace {

std::vector<std::byte> pattern(std::size_t n, unsigned seed) {
    std::vector<std::byte> b(n);
    for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::byte>((i * 131 + seed * 17) & 0xff);
    return b;
}

std::string header_of(const std::vector<std::byte>& f) {
    std::uint64_t n = 0;
    std::memcpy(&n, f.data(), 8);
    return {reinterpret_cast<const char*>(f.data()) + 8, static_cast<std::size_t>(n)};
}

}  // namespace

TEST_SUITE("format") {
    TEST_CASE("header bytes match the reference writer (safetensors 0.8.0)") {
        // Expected strings were produced by safetensors.numpy.save in 0.8.0.
        CHECK(header_of(serialize({})) == "{}      ");
        const auto b = pattern(20, 1);
        const std::vector<tensor_data> ts = {
            {"b", dtype::u8, shape{3}, std::span(b).subspan(0, 3)},
            {"a", dtype::f32, shape{2}, std::span(b).subspan(0, 8)},
            {"c", dtype::i64, shape{}, std::span(b).subspan(0, 8)},
            {"A", dtype::u8, shape{1}, std::span(b).subspan(0, 1)},
            {"z", dtype::f16, shape{0, 3}, {}},
        };
        CHECK(header_of(serialize(ts, metadata_map{{"a", "2"}})) ==
              R"({"__metadata__":{"a":"2"},"c":{"dtype":"I64","shape":[],"data_offsets":[0,8]},)"
              R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
              R"("z":{"dtype":"F16","shape":[0,3],"data_offsets":[16,16]},)"
              R"("A":{"dtype":"U8","shape":[1],"data_offsets":[16,17]},)"
              R"("b":{"dtype":"U8","shape":[3],"data_offsets":[17,20]}}       )");
        const std::vector<tensor_data> esc = {
            {"q\"\\\x01\x1f\x7f\n\t\xc3\xa9", dtype::u8, shape{1}, std::span(b).subspan(0, 1)}};
        CHECK(header_of(serialize(esc)) ==
              "{\"q\\\"\\\\\\u0001\\u001f\x7f\\n\\t\xc3\xa9\":{\"dtype\":\"U8\",\"shape\":[1],"
              "\"data_offsets\":[0,1]}}    ");
    }

    TEST_CASE("an empty file: header exactly {} padded to 8, read back with no tensors") {
        const auto f = serialize({});
        CHECK(f.size() == 16);
        file_view v{std::span<const std::byte>(f)};
        CHECK(v.header_size() == 8);
        CHECK(v.header_json() == "{}      ");
        CHECK(v.empty());
        CHECK_FALSE(v.has_metadata());
        CHECK(v.begin() == v.end());
    }

    TEST_CASE("an empty file with empty metadata is valid JSON (unlike the reference's)") {
        const auto f = serialize({}, metadata_map{});
        CHECK(header_of(f) == R"({"__metadata__":{}}     )");
        file_view v{std::span<const std::byte>(f)};
        CHECK(v.has_metadata());
        CHECK(v.empty());
    }

    TEST_CASE("round trip of every dtype, sub-byte, zero-size and rank-0 tensors, metadata") {
        std::vector<std::vector<std::byte>> store;
        std::vector<tensor_data> ts;
        std::vector<std::string> names;
        for (const dtype t : all_dtypes) {
            for (int variant = 0; variant < 3; ++variant) {
                shape s = variant == 0 ? shape{2, 4} : variant == 1 ? shape{} : shape{3, 0, 2};
                if (variant == 1 && is_sub_byte(t)) s = shape{4};  // rank 0 would be a half byte
                const std::uint64_t bytes = *s.element_count() * bit_size(t) / 8;
                names.push_back(std::string(name(t)) + "/" + std::to_string(variant));
                store.push_back(pattern(bytes, static_cast<unsigned>(store.size())));
            }
        }
        std::size_t k = 0;
        for (const dtype t : all_dtypes)
            for (int variant = 0; variant < 3; ++variant, ++k) {
                shape s = variant == 0 ? shape{2, 4} : variant == 1 ? shape{} : shape{3, 0, 2};
                if (variant == 1 && is_sub_byte(t)) s = shape{4};
                ts.push_back({names[k], t, s, store[k]});
            }
        const metadata_map md{{"format", "pt"}, {"note", "caf\xc3\xa9 \"quoted\""}};
        const auto f = serialize(ts, md);
        CHECK((f.size() - 8 - header_of(f).size()) % 1 == 0);
        CHECK(header_of(f).size() % 8 == 0);
        file_view v{std::span<const std::byte>(f)};
        CHECK(v.metadata() == md);
        REQUIRE(v.size() == ts.size());
        for (const auto& t : ts) {
            CAPTURE(t.name);
            const auto tv = v.tensor(t.name);
            CHECK(tv.dtype() == t.dtype);
            CHECK(tv.shape() == t.shape);
            REQUIRE(tv.bytes().size() == t.bytes.size());
            CHECK(std::equal(tv.bytes().begin(), tv.bytes().end(), t.bytes.begin()));
        }
        // Data starts 8-aligned, and the first (widest) tensors are naturally aligned.
        CHECK(v.data_offset() % 8 == 0);
    }

    TEST_CASE("plan_tensors refuses what a reader would refuse") {
        const auto code = [](std::vector<tensor_info> ts) {
            try {
                (void)plan_tensors(std::move(ts));
            } catch (const error& e) {
                return e.code();
            }
            return errc::interrupted;
        };
        CHECK(code({{"a", dtype::u8, shape{1}}, {"a", dtype::u8, shape{2}}}) ==
              errc::duplicate_name);
        CHECK(code({{"a", dtype::u8, shape{1}},
                    {"b", dtype::f32, shape{1}},
                    {"a", dtype::i64, shape{}}}) == errc::duplicate_name);
        CHECK(code({{"__metadata__", dtype::u8, shape{1}}}) == errc::invalid_argument);
        CHECK(code({{"\xff", dtype::u8, shape{1}}}) == errc::invalid_argument);
        CHECK(code({{"a", dtype::f4, shape{3}}}) == errc::misaligned_slice);
        CHECK(code({{"a", dtype::u4, shape{2}}}) == errc::invalid_argument);  // no file's dtype
        CHECK(code({{"a", dtype::u8, shape{1ull << 32, 1ull << 32}}}) == errc::validation_overflow);
        CHECK(code({{"a", dtype::u64, shape{1ull << 58}}}) == errc::validation_overflow);
        CHECK(code({{"a", dtype::u8, shape{1ull << 60}},
                    {"b", dtype::u8, shape{1ull << 60}},
                    {"c", dtype::u8, shape{1ull << 60}},
                    {"d", dtype::u8, shape{1ull << 60}},
                    {"e", dtype::u8, shape{1ull << 60}},
                    {"f", dtype::u8, shape{1ull << 60}},
                    {"g", dtype::u8, shape{1ull << 60}},
                    {"h", dtype::u8, shape{1ull << 60}},
                    {"i", dtype::u8, shape{1ull << 60}},
                    {"j", dtype::u8, shape{1ull << 60}},
                    {"k", dtype::u8, shape{1ull << 60}},
                    {"l", dtype::u8, shape{1ull << 60}},
                    {"m", dtype::u8, shape{1ull << 60}},
                    {"n", dtype::u8, shape{1ull << 60}},
                    {"o", dtype::u8, shape{1ull << 60}},
                    {"p", dtype::u8, shape{1ull << 60}}}) == errc::validation_overflow);
        CHECK_THROWS_AS((void)serialize_header({}, metadata_map{{"k", "\xc3"}}), error);
        std::vector<std::byte> one(1);
        const std::vector<tensor_data> wrong = {{"a", dtype::u8, shape{2}, one}};
        CHECK_THROWS_AS((void)serialize(wrong), error);
    }

    TEST_CASE("save_file writes atomically and a mapped view keeps its bytes (safetensors #762)") {
        safeshard::test::temp_dir d("save");
        const auto p = d / "m.safetensors";
        const auto old_bytes = pattern(64, 3);
        save_file(p, std::vector<tensor_data>{{"w", dtype::f32, shape{16}, old_bytes}});
        file_view before(p);
        (void)before.bytes();  // mapped now: the view holds the old file from here on
        const file_view unmapped(p);
        const auto new_bytes = pattern(8, 9);
        save_file(p, std::vector<tensor_data>{{"x", dtype::u8, shape{8}, new_bytes}});
        // The old view still sees the old tensor, byte for byte.
        const auto w = before.tensor("w").bytes();
        CHECK(std::equal(w.begin(), w.end(), old_bytes.begin(), old_bytes.end()));
        // A view that had not mapped its file yet refuses the new one (never its bytes).
        CHECK_THROWS_WITH_AS((void)unmapped.tensor("w").bytes(),
                             doctest::Contains("was replaced after it was opened"), error);
        file_view after(p);
        CHECK(after.contains("x"));
        CHECK_FALSE(after.contains("w"));
        // No temp file remains beside the target.
        std::size_t files = 0;
        for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(d.path()))
            ++files;
        CHECK(files == 1);
        // Bytes on disk equal serialize().
        CHECK(safeshard::test::read_bytes(p) ==
              serialize(std::vector<tensor_data>{{"x", dtype::u8, shape{8}, new_bytes}}));
    }

    TEST_CASE(
        "streaming writer: chunks in header order, wrong sizes refused, nothing left behind") {
        safeshard::test::temp_dir d("stream");
        const auto p = d / "s.safetensors";
        const std::vector<tensor_info> infos = {{"small", dtype::u8, shape{3}},
                                                {"big", dtype::f32, shape{1000}},
                                                {"none", dtype::f16, shape{0}}};
        {
            safetensors_writer w(p, infos, metadata_map{{"k", "v"}});
            REQUIRE(w.plan().size() == 3);
            CHECK(w.plan()[0].name == "big");
            CHECK(w.plan()[1].name == "none");
            CHECK(w.plan()[2].name == "small");
            CHECK(w.current()->name == "big");
            const auto big = pattern(4000, 1);
            w.write(std::span(big).subspan(0, 1000));
            CHECK(w.current()->name == "big");
            w.write(std::span(big).subspan(1000));
            CHECK(w.current()->name == "small");
            w.write_tensor("none", {});
            const auto s = pattern(3, 2);
            CHECK_THROWS_AS(w.write_tensor("small", std::span(s).subspan(0, 2)), error);
            CHECK_THROWS_AS(w.write(pattern(4, 0)), error);
            w.write_tensor("small", s);
            CHECK(w.current() == nullptr);
            CHECK(w.data_written() == w.data_size());
            w.commit();
            CHECK(std::filesystem::file_size(p) == w.file_size());
        }
        file_view v(p);
        CHECK(v.metadata("k") == "v");
        CHECK(v.tensor("small").bytes().size() == 3);
        CHECK(v.tensor("big").as<float>().size() == 1000);

        // Too few bytes: commit refuses, and the previous file stays.
        const auto q = d / "q.safetensors";
        {
            safetensors_writer w(q, infos);
            w.write(pattern(10, 0));
            CHECK_THROWS_AS(w.commit(), error);
        }
        CHECK_FALSE(std::filesystem::exists(q));

        // The producer form checks each tensor's byte count.
        CHECK_THROWS_AS(save_file_streaming(q, infos, std::nullopt,
                                            [](const planned_tensor& t, safetensors_writer& w) {
                                                w.write(pattern(t.byte_size() / 2, 0));
                                            }),
                        error);
        CHECK_FALSE(std::filesystem::exists(q));
        save_file_streaming(q, infos, std::nullopt,
                            [](const planned_tensor& t, safetensors_writer& w) {
                                w.write(pattern(t.byte_size(), 5));
                            });
        file_view vq(q);
        CHECK(vq.size() == 3);
        CHECK_FALSE(vq.has_metadata());
        CHECK(safeshard::test::read_bytes(q).size() == vq.bytes().size());
    }

}  // TEST_SUITE
