// fused<Dim, Parts...>: the concatenation along Dim of each part's own split (gate|up).
#pragma once

#include <cstddef>
#include <cstdint>

#include "safeshard/core/checked.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/shard/layout.hpp"
#include "safeshard/shard/segment.hpp"

namespace safeshard {

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

}  // namespace safeshard
