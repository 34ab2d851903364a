// strided_split<Dim, Stride>: neuronx create_local_weight with stride > 1.
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

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr layout make_strided_split(
    std::uint8_t dim, std::uint64_t stride) noexcept {
    layout l;
    l.kind = layout_kind::strided_split;
    l.dim = dim;
    l.stride = stride;
    return l;
}

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

struct strided_split_kind : layout_kind_defaults {
    static constexpr layout_kind id = layout_kind::strided_split;
    static constexpr std::string_view name = "strided_split";

    SAFESHARD_HOST_DEVICE static constexpr layout_status cut(const layout& l,
                                                             const std::uint64_t* extents,
                                                             std::size_t n, std::uint32_t world,
                                                             std::uint32_t rank, segment_list& runs,
                                                             std::uint64_t& local_extent) noexcept {
        if (n != 1) return layout_status::source_count;
        return detail::plan_strided_split(extents[0], l.stride, world, rank, runs, local_extent);
    }
    SAFESHARD_HOST_DEVICE static constexpr void slice(const layout& l, const shape* sources,
                                                      std::size_t n, std::uint32_t world,
                                                      std::uint32_t rank,
                                                      slice_result& r) noexcept {
        detail::slice_along_dim<strided_split_kind>(l, sources, n, world, rank, r);
    }

    static std::string parameters(const layout& l) {
        return "<" + std::to_string(l.dim) + "," + std::to_string(l.stride) + ">";
    }
    static std::string reason(const layout& l, const slice_failure& f, layout_status st) {
        if (st != layout_status::indivisible) return {};
        return f.dim(l) + " (extent " + f.extent(l) + ") is not divisible by world " +
               std::to_string(f.world) + " x stride " + std::to_string(l.stride);
    }

    static constexpr std::array<std::string_view, 1> json_fields = {"stride"};
    template <class W>
    static void write_fields(const layout& l, W& w) {
        w.number("stride", l.stride);
    }
    template <class R>
    static void read_fields(R& r, layout& l) {
        l.stride = r.number_or_zero("stride");
    }
};
static_assert(layout_kind_traits<strided_split_kind>);

}  // namespace safeshard
