// fused<Dim, Parts...>: the concatenation along Dim of each part's own split (gate|up).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "safeshard/config.hpp"
#include "safeshard/core/checked.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/shard/layout_value.hpp"
#include "safeshard/shard/layouts/kind.hpp"
#include "safeshard/shard/segment.hpp"

namespace safeshard {

// Parts from separate source tensors: sizes come from the sources, unit 1.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr layout make_fused(std::uint8_t dim) noexcept {
    layout l;
    l.kind = layout_kind::fused;
    l.dim = dim;
    return l;
}

// Parts with stated sizes (and units): one fused source cut by the sizes, or as many
// sources as parts whose extents along dim must equal the sizes. More than max_parts
// parts mark the value invalid: slice() answers invalid_parameters.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr layout make_fused(
    std::uint8_t dim, const std::uint64_t* sizes, std::size_t count,
    const std::uint64_t* units = nullptr) noexcept {
    layout l = make_fused(dim);
    if (count > layout::max_parts) {
        l.part_count = 0xff;  // refused by slice() as invalid_parameters
        return l;
    }
    l.part_count = static_cast<std::uint8_t>(count);
    for (std::size_t i = 0; i < count; ++i) {
        l.parts[i] = sizes[i];
        l.units[i] = units ? units[i] : 1;
    }
    return l;
}

// Without Parts, one part per source tensor (gate_proj, up_proj -> gate_up_proj). With
// Parts, their sizes along Dim: one fused source on disk is cut by them (phi3's
// gate_up_proj), or as many sources as parts must have exactly these extents.
template <std::size_t Dim, std::uint64_t... Parts>
struct fused {
    static_assert(Dim < shape::capacity, "fused<Dim>: Dim beyond the highest tensor rank");
    static_assert(sizeof...(Parts) <= layout::max_parts, "fused: too many parts");

private:
    static constexpr layout build() noexcept {
        if constexpr (sizeof...(Parts) == 0) {
            return make_fused(static_cast<std::uint8_t>(Dim));
        } else {
            constexpr std::uint64_t sizes[] = {Parts...};
            return make_fused(static_cast<std::uint8_t>(Dim), sizes, sizeof...(Parts));
        }
    }

public:
    static constexpr layout value = build();
};

namespace detail {
// extents[i]: source i's extent along dim.
SAFESHARD_HOST_DEVICE constexpr layout_status plan_fused(const layout& l,
                                                         const std::uint64_t* extents,
                                                         std::size_t n, std::uint32_t world,
                                                         std::uint32_t rank, segment_list& runs,
                                                         std::uint64_t& local_extent) noexcept {
    if (l.part_count > layout::max_parts) return layout_status::invalid_parameters;
    const bool one_fused_source = l.part_count > 0 && n == 1;
    const std::size_t parts = l.part_count > 0 ? l.part_count : n;
    if (parts == 0 || parts > layout::max_parts) return layout_status::source_count;
    if (l.part_count > 0 && !one_fused_source && n != l.part_count)
        return layout_status::source_count;

    std::uint64_t sizes[layout::max_parts] = {};
    std::uint64_t units[layout::max_parts] = {};
    std::uint64_t total = 0;
    for (std::size_t i = 0; i < parts; ++i) {
        sizes[i] = l.part_count > 0 ? l.parts[i] : extents[i];
        units[i] = l.part_count > 0 && l.units[i] > 1 ? l.units[i] : 1;
        if (l.part_count > 0 && !one_fused_source && extents[i] != sizes[i])
            return layout_status::shape_mismatch;
        if (add_overflows(total, sizes[i], total)) return layout_status::overflow;
    }
    if (one_fused_source && total != extents[0]) return layout_status::shape_mismatch;

    std::uint64_t base = 0;  // where the part starts in a fused source
    local_extent = 0;
    for (std::size_t i = 0; i < parts; ++i) {
        if (sizes[i] % world != 0) return layout_status::indivisible;
        const std::uint64_t local = sizes[i] / world;
        if (sizes[i] % units[i] != 0 || local % units[i] != 0)
            return layout_status::part_misaligned;
        const auto src = static_cast<std::uint8_t>(one_fused_source ? 0 : i);
        if (!runs.push(segment{src, base + rank * local, local}))
            return layout_status::too_many_pieces;
        local_extent += local;
        if (one_fused_source) base += sizes[i];
    }
    return layout_status::ok;
}
}  // namespace detail

struct fused_kind : layout_kind_defaults {
    static constexpr layout_kind id = layout_kind::fused;
    static constexpr std::string_view name = "fused";

    SAFESHARD_HOST_DEVICE static constexpr layout_status cut(const layout& l,
                                                             const std::uint64_t* extents,
                                                             std::size_t n, std::uint32_t world,
                                                             std::uint32_t rank, segment_list& runs,
                                                             std::uint64_t& local_extent) noexcept {
        return detail::plan_fused(l, extents, n, world, rank, runs, local_extent);
    }
    SAFESHARD_HOST_DEVICE static constexpr void slice(const layout& l, const shape* sources,
                                                      std::size_t n, std::uint32_t world,
                                                      std::uint32_t rank,
                                                      slice_result& r) noexcept {
        detail::slice_along_dim<fused_kind>(l, sources, n, world, rank, r);
    }

    static std::string parameters(const layout& l) { return "<" + std::to_string(l.dim) + ">"; }
    // " parts=96/16+32/16+32/16" (a unit after the size when above 1).
    static std::string details(const layout& l) {
        if (l.part_count == 0 || l.part_count > layout::max_parts) return {};
        std::string s = " parts=";
        for (std::size_t i = 0; i < l.part_count; ++i) {
            if (i) s += '+';
            s += std::to_string(l.parts[i]);
            if (l.units[i] > 1) s += "/" + std::to_string(l.units[i]);
        }
        return s;
    }
    static std::string reason(const layout& l, const slice_failure& f, layout_status st) {
        if (st == layout_status::source_count)
            return "takes one source per part, or one fused source, not " +
                   std::to_string(f.sources.size());
        if (st == layout_status::indivisible)
            return "a part along " + f.dim(l) + " is not divisible by world " +
                   std::to_string(f.world);
        return {};
    }

    // Stated parts only (parts from separate sources are the sources' extents).
    static constexpr std::array<std::string_view, 2> json_fields = {"parts", "units"};
    template <class W>
    static void write_fields(const layout& l, W& w) {
        if (l.part_count == 0 || l.part_count > layout::max_parts) return;
        w.numbers("parts", l.parts, l.part_count);
        w.numbers("units", l.units, l.part_count);
    }
    template <class R>
    static void read_fields(R& r, layout& l) {
        const auto n = r.numbers("parts", l.parts, layout::max_parts, "bad fused \"parts\"");
        if (!n) return;
        const std::size_t u =
            r.numbers("units", l.units, layout::max_parts, "bad fused \"units\"").value_or(0);
        if (u != *n) r.fail("fused \"parts\" and \"units\" differ in length");
        l.part_count = static_cast<std::uint8_t>(*n);
    }
};
static_assert(layout_kind_traits<fused_kind>);

}  // namespace safeshard
