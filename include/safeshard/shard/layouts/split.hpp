// split<Dim>: an even split along one dim (column-parallel Dim 0, row-parallel Dim 1).
#pragma once

#include <cstddef>
#include <cstdint>

#include "safeshard/core/shape.hpp"
#include "safeshard/shard/layout.hpp"
#include "safeshard/shard/segment.hpp"

namespace safeshard {

template <std::size_t Dim>
struct split {
    static_assert(Dim < shape::capacity, "split<Dim>: Dim beyond the highest tensor rank");
    static constexpr layout value = make_split(static_cast<std::uint8_t>(Dim));
};

namespace detail {
SAFESHARD_HOST_DEVICE constexpr layout_status plan_split(std::uint64_t extent, std::uint32_t world,
                                                         std::uint32_t rank, segment_list& runs,
                                                         std::uint64_t& local_extent) noexcept {
    if (extent % world != 0) return layout_status::indivisible;
    const std::uint64_t local = extent / world;
    local_extent = local;
    runs.push(segment{0, rank * local, local});
    return layout_status::ok;
}
}  // namespace detail

}  // namespace safeshard
