// shard/companion.hpp on its own: the grid a stored scale shape has over its weight, and the
// refusals of cuts a scale cannot follow (the loader's tests, tests/load/quantized_test.cpp,
// check the slices against FP8 checkpoints).
#include <doctest/doctest.h>

#include "../support/expect_error.hpp"
#include "safeshard/shard/companion.hpp"
#include "safeshard/shard/layouts/kinds.hpp"
#include "safeshard/shard/slice.hpp"

using namespace safeshard;
using namespace safeshard::test;

TEST_CASE("companion grids: per tensor, per channel, in blocks, or none") {
    const shape w{300, 520};
    CHECK(infer_companion_grid(w, shape{}, 128, 128) == companion_grid{{0}, {0}});
    CHECK(infer_companion_grid(w, shape{1}, 0, 0) == companion_grid{{0}, {0}});
    CHECK(infer_companion_grid(w, shape{300, 1}, 0, 0) == companion_grid{{1}, {0}});
    CHECK(infer_companion_grid(w, shape{300}, 0, 0) == companion_grid{{1}, {0}});
    CHECK(infer_companion_grid(w, shape{3, 5}, 128, 128) == companion_grid{{128}, {128}});
    CHECK_FALSE(infer_companion_grid(w, shape{3, 5}, 0, 0));  // no blocks declared
    CHECK_FALSE(infer_companion_grid(w, shape{2, 5}, 128, 128));
    CHECK_FALSE(infer_companion_grid(shape{300}, shape{1}, 128, 128));  // 1-D weight
    CHECK(to_string(companion_grid{{128}, {128}}) == "grid<128,128>");
    CHECK(to_string(companion_grid{{1}, {0}}) == "grid<1,*>");
    CHECK(to_string(companion_grid{{1}, {8}, true}) == "grid<1,8>^T");
    CHECK(to_string(companion_grid{{1}, {128, true}, true}) == "grid<1,all/128>^T");
}

TEST_CASE("transposed and 1-D companions: cut in the weight's orientation, stored as they are") {
    // A weight [8, 32] (N 8, K 32) cut on K at world 2, rank 1: K [16, 32).
    const shape w[] = {shape{8, 32}};
    const slice_result r = slice(make_split(1), w, 1, 2, 1);
    REQUIRE(r.ok());
    // Scales [K / 4, N] = [8, 8] stored transposed: rank 1 holds rows [4, 8), all columns.
    const shape scales[] = {shape{8, 8}};
    const slice_result s = companion_slice({.parameter = "w",
                                            .weight = &r,
                                            .weight_sources = w,
                                            .companion_sources = scales,
                                            .grid = {{1}, {4}, true}});
    CHECK(s.local == shape{4, 8});
    CHECK(s.global == shape{8, 8});
    REQUIRE(s.map.size() == 1);
    CHECK(s.map[0].src_offset == 32);
    CHECK(s.map[0].rows * s.map[0].row_elems == 32);
    // Held all (act order): every group, [8, 8].
    const slice_result all = companion_slice({.parameter = "w",
                                              .weight = &r,
                                              .weight_sources = w,
                                              .companion_sources = scales,
                                              .grid = {{1}, {4, true}, true}});
    CHECK(all.local == shape{8, 8});
    REQUIRE(all.map.size() == 1);
    CHECK(all.map[0].src_offset == 0);
    // Packed along N and transposed ([K, N / 4]) cut on N at world 2, rank 1: columns [1, 2)
    // of every row, one element each.
    const slice_result rn = slice(make_split(0), w, 1, 2, 1);
    const shape words[] = {shape{32, 2}};
    const slice_result p = companion_slice({.parameter = "w",
                                            .weight = &rn,
                                            .weight_sources = w,
                                            .companion_sources = words,
                                            .grid = {{4}, {1}, true}});
    CHECK(p.local == shape{32, 1});
    REQUIRE(p.map.size() == 1);
    CHECK(p.map[0].src_offset == 1);
    CHECK(p.map[0].rows == 32);
    CHECK(p.map[0].row_elems == 1);
    CHECK(p.map[0].src_row_stride == 2);
    CHECK(p.map[0].dst_row_stride == 1);
    // A 1-D companion along K ([K]: GPTQ's g_idx) stays 1-D: rank 1's [16, 32).
    const shape g_idx[] = {shape{32}};
    const slice_result gi = companion_slice({.parameter = "w",
                                             .weight = &r,
                                             .weight_sources = w,
                                             .companion_sources = g_idx,
                                             .grid = {{0}, {1}}});
    CHECK(gi.local == shape{16});
    CHECK(gi.global == shape{32});
    REQUIRE(gi.map.size() == 1);
    CHECK(gi.map[0].src_offset == 16);
    // A scale of the untransposed shape where the transposed one is due is off the grid.
    const shape wrong[] = {shape{8, 8 + 1}};
    expect_error(
        errc::shape_mismatch,
        [&] {
            (void)companion_slice({.parameter = "w",
                                   .weight = &r,
                                   .weight_sources = w,
                                   .companion_sources = wrong,
                                   .grid = {{1}, {4}, true}});
        },
        "its grid<1,4>^T quantization scale does not have the grid's shapes over its sources");
}

TEST_CASE("companion slices: the cuts a scale cannot follow are refused, naming the parameter") {
    // A weight joining two [8, 4] tensors along dim 1, each with a per-channel scale [8, 1]:
    // a rank holds both sources' columns, so one column of scales a source, [8, 2].
    const shape two[] = {shape{8, 4}, shape{8, 4}};
    const slice_result joined = slice(make_fused(1), two, 2, 2, 1);
    REQUIRE(joined.ok());
    const shape per_channel[] = {shape{8, 1}, shape{8, 1}};
    const slice_result stacked = companion_slice({.parameter = "w",
                                                  .weight = &joined,
                                                  .weight_sources = two,
                                                  .companion_sources = per_channel,
                                                  .grid = {{1}, {0}}});
    CHECK(stacked.local == shape{8, 2});
    CHECK(stacked.global == shape{8, 2});
    REQUIRE(stacked.map.size() == 2);
    for (std::uint8_t s = 0; s < 2; ++s) {
        CHECK(stacked.map[s].source == s);
        CHECK(stacked.map[s].src_offset == 0);
        CHECK(stacked.map[s].dst_offset == s);
        CHECK(stacked.map[s].rows == 8);
        CHECK(stacked.map[s].dst_row_stride == 2);
    }
    // Held whole on every rank (act order), it cannot hold both sources' blocks.
    const shape grouped[] = {shape{8, 2}, shape{8, 2}};
    expect_error(
        errc::invalid_argument,
        [&] {
            (void)companion_slice({.parameter = "w",
                                   .weight = &joined,
                                   .weight_sources = two,
                                   .companion_sources = grouped,
                                   .grid = {{1}, {2, true}}});
        },
        "parameter 'w' joins 2 tensors along dim 1, which its grid<1,all/2> companion holds "
        "whole on every rank");
    // A box whose rows are not one row apart (no rectangle).
    const shape one[] = {shape{4, 4}};
    const shape blocks[] = {shape{2, 2}};
    slice_result strided;
    strided.global = shape{4, 4};
    strided.local = shape{2, 4};
    (void)strided.map.push(copy_box{0, 0, 2, 4, 8, 0, 4});
    expect_error(
        errc::invalid_layout,
        [&] {
            (void)companion_slice({.parameter = "s",
                                   .weight = &strided,
                                   .weight_sources = one,
                                   .companion_sources = blocks,
                                   .grid = {{2}, {2}}});
        },
        "is no rectangle its quantization scale can follow");
    // Padding rows (a padded cut).
    slice_result padded = slice(make_replicated(), one, 1, 1, 0);
    REQUIRE(padded.map.push_zero(zero_box{0, 1, 4, 4}));
    expect_error(
        errc::invalid_layout,
        [&] {
            (void)companion_slice({.parameter = "p",
                                   .weight = &padded,
                                   .weight_sources = one,
                                   .companion_sources = blocks,
                                   .grid = {{2}, {2}}});
        },
        "a padded cut (zero rows) with a quantization scale is not supported");
    // A 3-D weight.
    const shape cube[] = {shape{2, 4, 4}};
    const slice_result r3 = slice(make_split(0), cube, 1, 2, 0);
    REQUIRE(r3.ok());
    expect_error(
        errc::invalid_layout,
        [&] {
            (void)companion_slice({.parameter = "c",
                                   .weight = &r3,
                                   .weight_sources = cube,
                                   .companion_sources = blocks,
                                   .grid = {{2}, {2}}});
        },
        "follows 2-D weights only");
    // A split whose pieces are not whole blocks: rows [2, 4) of 6 in blocks of 4.
    const shape six[] = {shape{6, 4}};
    const shape six_blocks[] = {shape{2, 1}};
    const slice_result thirds = slice(make_split(0), six, 1, 3, 1);
    expect_error(
        errc::invalid_layout,
        [&] {
            (void)companion_slice({.parameter = "t",
                                   .weight = &thirds,
                                   .weight_sources = six,
                                   .companion_sources = six_blocks,
                                   .grid = {{4}, {4}},
                                   .ways = 3});
        },
        "rows of extent 6 cut 3 ways gives a rank the piece [2, 4), which is not in "
        "whole blocks of 4");
}
