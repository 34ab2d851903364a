#include "safeshard/shard/layout.hpp"

#include <doctest/doctest.h>

#include <sstream>

#include "safeshard/shard/layouts/fused.hpp"
#include "safeshard/shard/layouts/gqa.hpp"
#include "safeshard/shard/layouts/padded_split.hpp"
#include "safeshard/shard/layouts/replicated.hpp"
#include "safeshard/shard/layouts/split.hpp"
#include "safeshard/shard/layouts/strided_split.hpp"

using namespace safeshard;

TEST_CASE("layout names are the stable CLI spellings") {
    CHECK(name(replicated::value) == "replicated");
    CHECK(name(split<1>::value) == "split<1>");
    CHECK(name(padded_split<0>::value) == "padded_split<0,64>");
    CHECK(name(padded_split<0, 128>::value) == "padded_split<0,128>");
    CHECK(name(strided_split<0, 2>::value) == "strided_split<0,2>");
    CHECK(name(fused<0>::value) == "fused<0>");
    CHECK(name(fused<0, 8, 8>::value) == "fused<0>");
    CHECK(name(gqa_qkv<kv_contiguous>::make(32, 8, 128)) == "gqa_qkv<kv_contiguous>");
    CHECK(name(gqa_o<kv_interleaved>::make(32, 8, 128)) == "gqa_o<kv_interleaved>");
}

TEST_CASE("to_string and operator<< print the parameters in one line") {
    CHECK(to_string(gqa_qkv<kv_interleaved>::make(32, 8, 128, gqa_part::k, 2)) ==
          "gqa_qkv<kv_interleaved> H=32 KV=8 d=128 m=2 part=k");
    CHECK(to_string(gqa_o<>::make(32, 8, 64)) == "gqa_o<kv_contiguous> H=32 KV=8 d=64");
    const std::uint64_t sizes[] = {96, 32, 32};
    const std::uint64_t units[] = {16, 16, 16};
    CHECK(to_string(make_fused(0, sizes, 3, units)) == "fused<0> parts=96/16+32/16+32/16");
    std::ostringstream os;
    os << split<0>::value << ' ' << kv_interleaved;
    CHECK(os.str() == "split<0> kv_interleaved");
}

TEST_CASE("kv conventions parse their short spellings and their names") {
    CHECK(parse_kv_convention("contiguous") == kv_contiguous);
    CHECK(parse_kv_convention("interleaved") == kv_interleaved);
    CHECK(parse_kv_convention("kv_interleaved") == kv_interleaved);
    CHECK(parse_kv_convention(to_string(kv_contiguous)) == kv_contiguous);
    CHECK_FALSE(parse_kv_convention("Interleaved").has_value());
    CHECK_FALSE(parse_kv_convention("").has_value());
}

TEST_CASE("tags build the same values as the run-time factories") {
    CHECK(split<1>::value == make_split(1));
    CHECK(padded_split<0>::value == make_padded_split(0, 64));
    CHECK(strided_split<1, 3>::value == make_strided_split(1, 3));
    const std::uint64_t sizes[] = {8, 8};
    CHECK(fused<0, 8, 8>::value == make_fused(0, sizes, 2));
    CHECK_FALSE(fused<0, 8, 8>::value == fused<0>::value);
    CHECK(gqa_qkv<kv_interleaved>::make(32, 8, 128) == make_gqa_qkv(kv_interleaved, 32, 8, 128));
    CHECK(gqa_o<>::make(32, 8, 128).dim == 1);
    const std::uint64_t many[] = {1, 1, 1, 1, 1};
    CHECK(make_fused(0, many, 5).part_count == 0xff);
}
