#include "safeshard/core/dtype.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cctype>
#include <set>
#include <sstream>
#include <string>

using namespace safeshard;

// The table is constexpr: check it at compile time.
static_assert(all_dtypes.size() == 22);
static_assert(all_dtypes.front() == dtype::bool_ && all_dtypes.back() == dtype::u64);
static_assert(bit_size(dtype::f4) == 4);
static_assert(bit_size(dtype::f6_e2m3) == 6 && bit_size(dtype::f6_e3m2) == 6);
static_assert(bit_size(dtype::bool_) == 8 && byte_size(dtype::bool_) == 1);
static_assert(bit_size(dtype::bf16) == 16 && byte_size(dtype::bf16) == 2);
static_assert(bit_size(dtype::c64) == 64);
static_assert(byte_size(dtype::f4) == 0 && is_sub_byte(dtype::f4));
static_assert(!is_sub_byte(dtype::f8_e8m0));
static_assert(name(dtype::f8_e4m3fnuz) == "F8_E4M3FNUZ");
static_assert(parse_dtype("BF16") == dtype::bf16);
static_assert(!parse_dtype("bf16").has_value());  // the file format is case-sensitive
static_assert(parse_dtype_ignore_case("bf16") == dtype::bf16);
static_assert(parse_dtype_ignore_case("f8_E5m2") == dtype::f8_e5m2);
static_assert(!parse_dtype_ignore_case("BF1").has_value());
static_assert(!parse_dtype("").has_value());
static_assert(is_floating_point(dtype::bf16) && !is_floating_point(dtype::i32));
// U4, the codes of packed integer weights, is a load's, no file's: no header or person names it.
static_assert(bit_size(dtype::u4) == 4 && is_sub_byte(dtype::u4) && name(dtype::u4) == "U4");
static_assert(!is_file_dtype(dtype::u4) && is_file_dtype(dtype::u64));
static_assert(!parse_dtype("U4").has_value() && !parse_dtype_ignore_case("u4").has_value());
static_assert(std::find(all_dtypes.begin(), all_dtypes.end(), dtype::u4) == all_dtypes.end());

TEST_CASE("the dtype table follows the reference crate's enum order") {
    const char* expected[] = {"BOOL",    "F4",      "F6_E2M3", "F6_E3M2",     "U8",          "I8",
                              "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16",
                              "U16",     "F16",     "BF16",    "I32",         "U32",         "F32",
                              "C64",     "F64",     "I64",     "U64"};
    const unsigned bits[] = {8,  4,  6,  6,  8,  8,  8,  8,  8,  8,  8,
                             16, 16, 16, 16, 32, 32, 32, 64, 64, 64, 64};
    REQUIRE(std::size(expected) == all_dtypes.size());
    for (std::size_t i = 0; i < all_dtypes.size(); ++i) {
        CAPTURE(i);
        CHECK(static_cast<std::size_t>(all_dtypes[i]) == i);
        CHECK(name(all_dtypes[i]) == expected[i]);
        CHECK(bit_size(all_dtypes[i]) == bits[i]);
        CHECK(info(all_dtypes[i]).type == all_dtypes[i]);
    }
}

TEST_CASE("every name parses back to its dtype, in either case") {
    std::set<std::string> seen;
    for (dtype t : all_dtypes) {
        std::string n(name(t));
        CHECK(seen.insert(n).second);
        CHECK(parse_dtype(n) == t);
        std::string lower = n;
        for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        CHECK(parse_dtype_ignore_case(lower) == t);
        if (lower != n) CHECK_FALSE(parse_dtype(lower).has_value());
    }
    CHECK_FALSE(parse_dtype("F8").has_value());
    CHECK_FALSE(parse_dtype(" F32").has_value());
    CHECK_FALSE(parse_dtype_ignore_case("float32").has_value());
}

TEST_CASE("byte sizes agree with bit sizes") {
    for (dtype t : all_dtypes) {
        CAPTURE(name(t));
        if (is_sub_byte(t))
            CHECK(byte_size(t) == 0);
        else
            CHECK(byte_size(t) * 8 == bit_size(t));
    }
}

TEST_CASE("a dtype prints as its file name") {
    std::ostringstream os;
    os << dtype::bf16 << ' ' << dtype::bool_;
    CHECK(os.str() == "BF16 BOOL");
}
