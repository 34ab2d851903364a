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
}

TEST_CASE("companion slices: the cuts a scale cannot follow are refused, naming the parameter") {
    // A weight joining two [8, 4] tensors along dim 1, each with a per-channel scale [8, 1]:
    // one column of scales cannot hold both sources' columns.
    const shape two[] = {shape{8, 4}, shape{8, 4}};
    const slice_result joined = slice(make_fused(1), two, 2, 1, 0);
    REQUIRE(joined.ok());
    const shape per_channel[] = {shape{8, 1}, shape{8, 1}};
    expect_error(
        errc::invalid_argument,
        [&] {
            (void)companion_slice({.parameter = "w",
                                   .weight = &joined,
                                   .weight_sources = two,
                                   .companion_sources = per_channel,
                                   .grid = {{1}, {0}}});
        },
        "parameter 'w' joins 2 tensors, each with its own grid<1,*> scale");
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
