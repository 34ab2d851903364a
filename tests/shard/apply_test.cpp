#include "safeshard/shard/apply.hpp"

#include <doctest/doctest.h>

#include <array>
#include <numeric>
#include <vector>

#include "../support/expect_error.hpp"
#include "safeshard/shard/slice.hpp"

using namespace safeshard;
using safeshard::test::expect_error;

TEST_CASE("apply copies a rank's rows; apply_inverse puts them back") {
    std::vector<std::uint16_t> src(6 * 4);
    std::iota(src.begin(), src.end(), std::uint16_t{1});
    const auto r = slice(split<1>::value, shape{6, 4}, 2, 1);
    std::vector<std::uint16_t> local(12, 0);
    apply(r.map, std::as_bytes(std::span(src)), std::as_writable_bytes(std::span(local)), 2);
    CHECK(local == std::vector<std::uint16_t>{3, 4, 7, 8, 11, 12, 15, 16, 19, 20, 23, 24});
    std::vector<std::uint16_t> back(24, 0);
    apply_inverse(r.map, std::as_bytes(std::span(local)), std::as_writable_bytes(std::span(back)),
                  2);
    CHECK(back[2] == 3);
    CHECK(back[0] == 0);  // rank 0's columns are not this rank's
}

TEST_CASE("apply refuses maps that reach beyond the buffers") {
    const auto r = slice(split<0>::value, shape{8, 4}, 2, 1);
    std::vector<std::byte> src(8 * 4 * 4), dst(4 * 4 * 4);
    CHECK_NOTHROW(apply(r.map, src, dst, 4));
    std::vector<std::byte> small(8 * 4 * 4 - 1), small_dst(4 * 4 * 4 - 4);
    CHECK_THROWS_AS(apply(r.map, small, dst, 4), error);
    {
        const auto e = expect_error(errc::shape_mismatch, [&] { apply(r.map, src, small_dst, 4); });
        CHECK(e.message().find("local") != std::string::npos);
    }
    CHECK_THROWS_AS(apply(r.map, src, dst, 0), error);
    CHECK_THROWS_AS(apply_inverse(r.map, small_dst, std::span<std::byte>(src), 4), error);
    // A map naming a second source, given one.
    const std::array<shape, 2> gu{shape{4, 2}, shape{4, 2}};
    const auto f = slice(fused<0>::value, gu, 2, 0);
    std::vector<std::byte> one(8 * 4), out(8 * 4);
    (void)expect_error(errc::invalid_argument, [&] { apply(f.map, one, out, 4); });
}

TEST_CASE("zero regions are filled with zeros") {
    const auto r = slice(padded_split<0, 4>::value, shape{5, 2}, 2, 1);
    REQUIRE(r.ok());
    std::vector<std::uint8_t> src(10, 7), local(8, 9);
    apply(r.map, std::as_bytes(std::span(src)), std::as_writable_bytes(std::span(local)), 1);
    CHECK(local == std::vector<std::uint8_t>{7, 7, 0, 0, 0, 0, 0, 0});
    std::vector<std::uint8_t> back(10, 0);
    apply_inverse(r.map, std::as_bytes(std::span(local)), std::as_writable_bytes(std::span(back)),
                  1);
    CHECK(back == std::vector<std::uint8_t>{0, 0, 0, 0, 0, 0, 0, 0, 7, 7});
}

TEST_CASE("sub-byte dtypes: slices must start and end on whole bytes") {
    // F4: 2 elements a byte. split<1> of [4, 6] at world 2 -> rows of 3 elements: refused.
    const auto odd = slice(split<1>::value, shape{4, 6}, 2, 1);
    CHECK_FALSE(is_byte_granular(odd.map, 4));
    CHECK(is_byte_granular(odd.map, 8));
    {
        const auto e = expect_error(errc::misaligned_slice, [&] {
            check_byte_granular(odd.map, 4, "model.embed_tokens.weight");
        });
        CHECK(e.tensor() == "model.embed_tokens.weight");
    }
    const auto even = slice(split<1>::value, shape{4, 8}, 2, 1);
    CHECK_NOTHROW(check_byte_granular(even.map, 4));
    // F6: 4 elements are 3 bytes.
    CHECK(is_byte_granular(even.map, 6));
    CHECK_FALSE(is_byte_granular(slice(split<1>::value, shape{4, 4}, 2, 1).map, 6));
    CHECK_THROWS_AS(check_byte_granular(even.map, 0), error);
    // Zero regions too.
    const auto pad = slice(padded_split<0, 4>::value, shape{5}, 2, 1);
    CHECK_FALSE(is_byte_granular(pad.map, 4));

    byte_box bb;
    REQUIRE(to_bytes(even.map[0], 4, 16, bb));  // F4 -> BF16: widths differ per side
    CHECK(bb.src_offset == 2);
    CHECK(bb.src_row_bytes == 2);
    CHECK(bb.src_pitch == 4);
    CHECK(bb.dst_offset == 0);
    CHECK(bb.dst_row_bytes == 8);
    CHECK(bb.dst_pitch == 8);
    CHECK(bb.rows == 4);
}

TEST_CASE("slice maps print in one line and merge adjacent boxes") {
    const auto r = slice(padded_split<0, 4>::value, shape{5, 2}, 2, 1);
    CHECK(to_string(r.map) == "{src0+8 1x2 -> dst+0; zero 1x6 at dst+2}");
    const auto c = slice(split<1>::value, shape{3, 4}, 2, 1);
    CHECK(to_string(c.map) == "{src0+2 3x2 (stride 4->2) -> dst+0}");
    slice_map m;
    CHECK(m.push(copy_box{0, 0, 2, 3, 8, 0, 3}));
    CHECK(m.push(copy_box{0, 16, 1, 3, 3, 6, 3}));  // continues the rows: merged
    CHECK(m.size() == 1);
    CHECK(m[0].rows == 3);
    CHECK(m.push(copy_box{1, 0, 1, 3, 3, 9, 3}));  // another source: a new box
    CHECK(m.size() == 2);
    CHECK(m.push(copy_box{1, 0, 0, 3, 3, 9, 3}));  // empty: dropped
    CHECK(m.size() == 2);
    CHECK(m.copied_elements() == 12);
    slice_map full;
    for (std::uint64_t i = 0; i < slice_map::box_capacity; ++i)
        CHECK(full.push(copy_box{0, i * 10, 1, 1, 1, i, 1}));
    CHECK_FALSE(full.push(copy_box{0, 1000, 1, 1, 1, 99, 1}));
    CHECK(full.push_zero(zero_box{0, 1, 1, 1}));
    CHECK(full.push_zero(zero_box{5, 1, 1, 1}));
    CHECK_FALSE(full.push_zero(zero_box{9, 1, 1, 1}));
    CHECK(full.zero_elements() == 2);
}
