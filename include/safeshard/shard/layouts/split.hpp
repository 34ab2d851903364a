// split<Dim>: an even split along one dim (column-parallel Dim 0, row-parallel Dim 1);
// optionally in whole units (a unit of `unit` rows or columns, such as one attention head's,
// is never cut: the units must divide among the ranks).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "safeshard/config.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/shard/layout_value.hpp"
#include "safeshard/shard/layouts/kind.hpp"
#include "safeshard/shard/segment.hpp"

namespace safeshard {

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr layout make_split(std::uint8_t dim,
                                                                std::uint64_t unit = 0) noexcept {
    layout l;
    l.kind = layout_kind::split;
    l.dim = dim;
    l.units[0] = unit > 1 ? unit : 0;  // 0 and 1: any split of the extent
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
                                                         std::uint64_t& local_extent,
                                                         std::uint64_t unit = 0) noexcept {
    if (extent % world != 0) return layout_status::indivisible;
    if (unit > 1 && (extent % unit != 0 || (extent / unit) % world != 0))
        return layout_status::indivisible;
    const std::uint64_t local = extent / world;
    local_extent = local;
    runs.push(segment{0, rank * local, local});
    return layout_status::ok;
}
}  // namespace detail

struct split_kind : layout_kind_defaults {
    static constexpr layout_kind id = layout_kind::split;
    static constexpr std::string_view name = "split";

    SAFESHARD_HOST_DEVICE static constexpr layout_status cut(const layout& l,
                                                             const std::uint64_t* extents,
                                                             std::size_t n, std::uint32_t world,
                                                             std::uint32_t rank, segment_list& runs,
                                                             std::uint64_t& local_extent) noexcept {
        if (n != 1) return layout_status::source_count;
        return detail::plan_split(extents[0], world, rank, runs, local_extent, l.units[0]);
    }
    SAFESHARD_HOST_DEVICE static constexpr void slice(const layout& l, const shape* sources,
                                                      std::size_t n, std::uint32_t world,
                                                      std::uint32_t rank,
                                                      slice_result& r) noexcept {
        detail::slice_along_dim<split_kind>(l, sources, n, world, rank, r);
    }
    static std::string parameters(const layout& l) { return "<" + std::to_string(l.dim) + ">"; }
    // " unit=192" when it splits in whole units.
    static std::string details(const layout& l) {
        return l.units[0] > 1 ? " unit=" + std::to_string(l.units[0]) : std::string();
    }
    static std::string reason(const layout& l, const slice_failure& f, layout_status st) {
        if (st != layout_status::indivisible || l.units[0] <= 1) return {};
        return f.dim(l) + " (extent " + f.extent(l) + ") in whole units of " +
               std::to_string(l.units[0]) + " (one head's) does not divide among world " +
               std::to_string(f.world);
    }

    static constexpr std::array<std::string_view, 1> json_fields = {"unit"};
    template <class W>
    static void write_fields(const layout& l, W& w) {
        if (l.units[0] > 1) w.number("unit", l.units[0]);
    }
    template <class R>
    static void read_fields(R& r, layout& l) {
        l.units[0] = r.number_or_zero("unit");
    }
};
static_assert(layout_kind_traits<split_kind>);

}  // namespace safeshard
