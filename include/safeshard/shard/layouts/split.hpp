// split<Dim>: an even split along one dim (column-parallel Dim 0, row-parallel Dim 1).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "safeshard/config.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/shard/layout_value.hpp"
#include "safeshard/shard/layouts/kind.hpp"
#include "safeshard/shard/segment.hpp"

namespace safeshard {

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr layout make_split(std::uint8_t dim) noexcept {
    layout l;
    l.kind = layout_kind::split;
    l.dim = dim;
    return l;
}

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

struct split_kind : layout_kind_defaults {
    static constexpr layout_kind id = layout_kind::split;
    static constexpr std::string_view name = "split";

    SAFESHARD_HOST_DEVICE static constexpr layout_status cut(const layout&,
                                                             const std::uint64_t* extents,
                                                             std::size_t n, std::uint32_t world,
                                                             std::uint32_t rank, segment_list& runs,
                                                             std::uint64_t& local_extent) noexcept {
        if (n != 1) return layout_status::source_count;
        return detail::plan_split(extents[0], world, rank, runs, local_extent);
    }
    SAFESHARD_HOST_DEVICE static constexpr void slice(const layout& l, const shape* sources,
                                                      std::size_t n, std::uint32_t world,
                                                      std::uint32_t rank,
                                                      slice_result& r) noexcept {
        detail::slice_along_dim<split_kind>(l, sources, n, world, rank, r);
    }
    static std::string parameters(const layout& l) { return "<" + std::to_string(l.dim) + ">"; }
};
static_assert(layout_kind_traits<split_kind>);

}  // namespace safeshard
