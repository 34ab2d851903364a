// strided_split<Dim, Stride>: neuronx create_local_weight with stride > 1.
#pragma once

#include <cstddef>
#include <cstdint>

#include "safeshard/core/checked.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/shard/layout.hpp"
#include "safeshard/shard/segment.hpp"

namespace safeshard {

// The dim is cut into world * Stride equal pieces; rank r takes pieces r, r + world, ...
template <std::size_t Dim, std::uint64_t Stride>
struct strided_split {
    static_assert(Dim < shape::capacity, "strided_split<Dim>: Dim beyond the highest tensor rank");
    static_assert(Stride > 0, "strided_split: Stride must be positive");
    static constexpr layout value = make_strided_split(static_cast<std::uint8_t>(Dim), Stride);
};

namespace detail {
SAFESHARD_HOST_DEVICE constexpr layout_status plan_strided_split(
    std::uint64_t extent, std::uint64_t stride, std::uint32_t world, std::uint32_t rank,
    segment_list& runs, std::uint64_t& local_extent) noexcept {
    if (stride == 0) return layout_status::invalid_parameters;
    std::uint64_t pieces = 0;
    if (mul_overflows(std::uint64_t{world}, stride, pieces)) return layout_status::overflow;
    if (extent % pieces != 0) return layout_status::indivisible;
    const std::uint64_t piece = extent / pieces;
    local_extent = piece * stride;
    // The loop below runs at most capacity + 1 times otherwise (the pieces do not touch); an
    // empty dim and world 1 (where they all merge) would make it run `stride` times, and the
    // stride may come from a file (an export's metadata).
    if (piece == 0) return layout_status::ok;
    if (world == 1)
        return runs.push(segment{0, 0, extent}) ? layout_status::ok
                                                : layout_status::too_many_pieces;
    for (std::uint64_t i = 0; i < stride; ++i)
        if (!runs.push(segment{0, (rank + i * world) * piece, piece}))
            return layout_status::too_many_pieces;
    return layout_status::ok;
}
}  // namespace detail

}  // namespace safeshard
