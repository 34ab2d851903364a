// ceil_split<Dim, Unit>: vLLM's rounded-up partition of an extent in whole units (gpt-oss's
// MXFP4 experts, gpt_oss.py _load_weights_mxfp4: per_rank = cdiv(I / 32, tp) blocks).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "safeshard/config.hpp"
#include "safeshard/core/checked.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/shard/layout_value.hpp"
#include "safeshard/shard/layouts/kind.hpp"
#include "safeshard/shard/layouts/padded_split.hpp"
#include "safeshard/shard/segment.hpp"

namespace safeshard {

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr layout make_ceil_split(std::uint8_t dim,
                                                                     std::uint64_t unit) noexcept {
    layout l;
    l.kind = layout_kind::ceil_split;
    l.dim = dim;
    l.units[0] = unit;
    return l;
}

// The dim is whole units of Unit; each rank takes ceil(units / world) of them in rank order,
// so the last ranks hold fewer (or none) and are zero-padded to the same local extent: 90
// blocks over 4 ranks are 23, 23, 23 and 21 blocks (+ 2 of zeros). The global shape stays the
// source shape; each rank records which global rows it holds.
template <std::size_t Dim, std::uint64_t Unit>
struct ceil_split {
    static_assert(Dim < shape::capacity, "ceil_split<Dim>: Dim beyond the highest tensor rank");
    static_assert(Unit > 0, "ceil_split: Unit must be positive");
    static constexpr layout value = make_ceil_split(static_cast<std::uint8_t>(Dim), Unit);
};

namespace detail {
SAFESHARD_HOST_DEVICE constexpr layout_status plan_ceil_split(
    std::uint64_t extent, std::uint64_t unit, std::uint32_t world, std::uint32_t rank,
    segment_list& runs, std::uint64_t& local_extent) noexcept {
    if (unit == 0) return layout_status::invalid_parameters;
    if (extent % unit != 0) return layout_status::indivisible;
    const std::uint64_t units = extent / unit;
    const std::uint64_t per = units / world + (units % world != 0 ? 1 : 0);
    std::uint64_t local = 0;
    if (mul_overflows(per, unit, local)) return layout_status::overflow;
    local_extent = local;
    const auto [lo, hi] = padded_valid_range(extent, local, rank);
    if (hi > lo) runs.push(segment{0, lo, hi - lo});
    return layout_status::ok;
}
}  // namespace detail

struct ceil_split_kind : layout_kind_defaults {
    static constexpr layout_kind id = layout_kind::ceil_split;
    static constexpr std::string_view name = "ceil_split";

    SAFESHARD_HOST_DEVICE static constexpr layout_status cut(const layout& l,
                                                             const std::uint64_t* extents,
                                                             std::size_t n, std::uint32_t world,
                                                             std::uint32_t rank, segment_list& runs,
                                                             std::uint64_t& local_extent) noexcept {
        if (n != 1) return layout_status::source_count;
        return detail::plan_ceil_split(extents[0], l.units[0], world, rank, runs, local_extent);
    }
    SAFESHARD_HOST_DEVICE static constexpr void slice(const layout& l, const shape* sources,
                                                      std::size_t n, std::uint32_t world,
                                                      std::uint32_t rank,
                                                      slice_result& r) noexcept {
        detail::slice_along_dim<ceil_split_kind>(l, sources, n, world, rank, r);
    }

    static std::string parameters(const layout& l) {
        return "<" + std::to_string(l.dim) + "," + std::to_string(l.units[0]) + ">";
    }
    static std::string reason(const layout& l, const slice_failure& f, layout_status st) {
        if (st != layout_status::indivisible) return {};
        return f.dim(l) + " (extent " + f.extent(l) + ") is not whole units of " +
               std::to_string(l.units[0]);
    }

    static constexpr std::array<std::string_view, 1> json_fields = {"unit"};
    template <class W>
    static void write_fields(const layout& l, W& w) {
        w.number("unit", l.units[0]);
    }
    template <class R>
    static void read_fields(R& r, layout& l) {
        l.units[0] = r.number_or_zero("unit");
    }

    // The padding holds no data: each rank records which global rows it holds, as
    // padded_split's ranks do ([rank · local, min((rank + 1) · local, extent))).
    static constexpr bool records_valid_rows = true;
    static std::optional<valid_rows_range> valid_rows(const layout& l, const shape& global,
                                                      const shape& local, std::uint32_t rank) {
        return padded_split_kind::valid_rows(l, global, local, rank);
    }
};
static_assert(layout_kind_traits<ceil_split_kind>);

}  // namespace safeshard
