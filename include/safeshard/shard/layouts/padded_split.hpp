// padded_split<Dim, Multiple>: vocabulary padding as vLLM does it.
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
#include "safeshard/shard/segment.hpp"

namespace safeshard {

// vLLM pads the vocabulary to a multiple of 64 by default.
inline constexpr std::uint64_t default_vocab_multiple = 64;

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr layout make_padded_split(
    std::uint8_t dim, std::uint64_t multiple = default_vocab_multiple) noexcept {
    layout l;
    l.kind = layout_kind::padded_split;
    l.dim = dim;
    l.multiple = multiple;
    return l;
}

// The dim is padded to a multiple of Multiple, then split evenly; rows beyond the real
// extent are zero-filled. The global shape stays the source shape; the local extent is
// padded / world. A padded size not divisible by world is an error, as in vLLM.
template <std::size_t Dim, std::uint64_t Multiple = default_vocab_multiple>
struct padded_split {
    static_assert(Dim < shape::capacity, "padded_split<Dim>: Dim beyond the highest tensor rank");
    static_assert(Multiple > 0, "padded_split: Multiple must be positive");
    static constexpr layout value = make_padded_split(static_cast<std::uint8_t>(Dim), Multiple);
};

namespace detail {
SAFESHARD_HOST_DEVICE constexpr layout_status plan_padded_split(
    std::uint64_t extent, std::uint64_t multiple, std::uint32_t world, std::uint32_t rank,
    segment_list& runs, std::uint64_t& local_extent) noexcept {
    if (multiple == 0) return layout_status::invalid_parameters;
    std::uint64_t padded = 0;
    if (align_up_overflows(extent, multiple, padded)) return layout_status::overflow;
    if (padded % world != 0) return layout_status::padded_indivisible;
    const std::uint64_t local = padded / world;
    const std::uint64_t lo = rank * local;
    const std::uint64_t real = lo >= extent ? 0 : (extent - lo < local ? extent - lo : local);
    local_extent = local;
    runs.push(segment{0, lo, real});
    return layout_status::ok;
}
}  // namespace detail

// The rows [begin, end) along dim of a padded_split tensor of global extent n that rank
// `rank` holds real data for, `per` rows a rank (saturating: no overflow on hostile input).
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr valid_rows_range padded_valid_range(
    std::uint64_t n, std::uint64_t per, std::uint32_t rank) noexcept {
    std::uint64_t lo = 0, hi = 0;
    if (mul_overflows(per, std::uint64_t{rank}, lo) || lo > n) lo = n;
    if (add_overflows(lo, per, hi) || hi > n) hi = n;
    return {lo, hi};
}

struct padded_split_kind : layout_kind_defaults {
    static constexpr layout_kind id = layout_kind::padded_split;
    static constexpr std::string_view name = "padded_split";

    SAFESHARD_HOST_DEVICE static constexpr layout_status cut(const layout& l,
                                                             const std::uint64_t* extents,
                                                             std::size_t n, std::uint32_t world,
                                                             std::uint32_t rank, segment_list& runs,
                                                             std::uint64_t& local_extent) noexcept {
        if (n != 1) return layout_status::source_count;
        return detail::plan_padded_split(extents[0], l.multiple, world, rank, runs, local_extent);
    }
    SAFESHARD_HOST_DEVICE static constexpr void slice(const layout& l, const shape* sources,
                                                      std::size_t n, std::uint32_t world,
                                                      std::uint32_t rank,
                                                      slice_result& r) noexcept {
        detail::slice_along_dim<padded_split_kind>(l, sources, n, world, rank, r);
    }

    static std::string parameters(const layout& l) {
        return "<" + std::to_string(l.dim) + "," + std::to_string(l.multiple) + ">";
    }
    static std::string reason(const layout& l, const slice_failure& f, layout_status st) {
        if (st != layout_status::padded_indivisible) return {};
        std::uint64_t padded = 0;
        const std::uint64_t e =
            f.sources.empty() || l.dim >= f.sources[0].rank() ? 0 : f.sources[0][l.dim];
        const bool over = align_up_overflows(e, l.multiple, padded);
        return f.dim(l) + " (extent " + f.extent(l) + ") padded to a multiple of " +
               std::to_string(l.multiple) + " (" + (over ? "?" : std::to_string(padded)) +
               ") is not divisible by world " + std::to_string(f.world);
    }

    static constexpr std::array<std::string_view, 1> json_fields = {"multiple"};
    template <class W>
    static void write_fields(const layout& l, W& w) {
        w.number("multiple", l.multiple);
    }
    template <class R>
    static void read_fields(R& r, layout& l) {
        l.multiple = r.number_or_zero("multiple");
    }

    // The padding rows hold no data: each rank records which global rows it holds.
    static constexpr bool records_valid_rows = true;
    static std::optional<valid_rows_range> valid_rows(const layout& l, const shape& global,
                                                      const shape& local, std::uint32_t rank) {
        if (l.dim >= global.rank() || l.dim >= local.rank()) return std::nullopt;
        return padded_valid_range(global[l.dim], local[l.dim], rank);
    }
};
static_assert(layout_kind_traits<padded_split_kind>);

}  // namespace safeshard
