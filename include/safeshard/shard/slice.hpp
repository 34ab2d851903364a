// slice(): a layout applied to source extents for (world, rank) -> local shape + slice map.
#pragma once

#include <cstddef>
#include <cstdint>
#include <ostream>
#include <span>
#include <string>
#include <string_view>

#include "safeshard/config.hpp"
#include "safeshard/core/checked.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/shard/layout.hpp"
#include "safeshard/shard/layouts/fused.hpp"
#include "safeshard/shard/layouts/gqa.hpp"
#include "safeshard/shard/layouts/padded_split.hpp"
#include "safeshard/shard/layouts/replicated.hpp"
#include "safeshard/shard/layouts/split.hpp"
#include "safeshard/shard/layouts/strided_split.hpp"
#include "safeshard/shard/segment.hpp"
#include "safeshard/shard/slice_map.hpp"

namespace safeshard {

// Most source tensors one parameter is made of (q, k, v).
inline constexpr std::size_t max_sources = 4;

struct slice_result {
    layout_status status = layout_status::ok;
    shape global{};       // the parameter's whole shape: sources concatenated along dim
    shape local{};        // this rank's shape (padded rows included)
    slice_map map{};      // boxes from the sources into the local tensor, zero regions
    segment_list runs{};  // the same, as runs along dim (for printing and planning)
    std::uint8_t dim = 0;

    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr bool ok() const noexcept {
        return status == layout_status::ok;
    }
};

// The one implementation, for constant expressions, host and device: `sources` are the
// extents of the parameter's source tensors (one, or one per fused part / q, k, v).
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr slice_result slice(const layout& l,
                                                                 const shape* sources,
                                                                 std::size_t n, std::uint32_t world,
                                                                 std::uint32_t rank) noexcept {
    slice_result r;
    r.dim = l.kind == layout_kind::replicated ? 0 : l.dim;
    if (world == 0) {
        r.status = layout_status::invalid_world;
        return r;
    }
    if (rank >= world) {
        r.status = layout_status::rank_out_of_range;
        return r;
    }
    if (n == 0 || n > max_sources) {
        r.status = layout_status::source_count;
        return r;
    }
    const std::size_t nd = sources[0].rank();
    for (std::size_t i = 1; i < n; ++i)
        if (sources[i].rank() != nd) {
            r.status = layout_status::shape_mismatch;
            return r;
        }

    if (l.kind == layout_kind::replicated) {
        if (n != 1) {
            r.status = layout_status::source_count;
            return r;
        }
        std::uint64_t count = 1;
        for (std::size_t i = 0; i < nd; ++i)
            if (mul_overflows(count, sources[0][i], count)) {
                r.status = layout_status::overflow;
                return r;
            }
        r.global = r.local = sources[0];
        r.map.push(copy_box{0, 0, 1, count, count, 0, count});
        if (nd > 0) r.runs.push(segment{0, 0, sources[0][0]});
        return r;
    }

    const std::size_t dim = l.dim;
    if (dim >= nd) {
        r.status = layout_status::dim_out_of_range;
        return r;
    }
    for (std::size_t i = 1; i < n; ++i)
        for (std::size_t j = 0; j < nd; ++j)
            if (j != dim && sources[i][j] != sources[0][j]) {
                r.status = layout_status::shape_mismatch;
                return r;
            }
    std::uint64_t outer = 1, inner = 1;
    for (std::size_t j = 0; j < dim; ++j)
        if (mul_overflows(outer, sources[0][j], outer)) {
            r.status = layout_status::overflow;
            return r;
        }
    for (std::size_t j = dim + 1; j < nd; ++j)
        if (mul_overflows(inner, sources[0][j], inner)) {
            r.status = layout_status::overflow;
            return r;
        }

    std::uint64_t extents[max_sources] = {};
    std::uint64_t total = 0, scratch = 0;
    for (std::size_t i = 0; i < n; ++i) {
        extents[i] = sources[i][dim];
        if (add_overflows(total, extents[i], total) || mul_overflows(outer, extents[i], scratch) ||
            mul_overflows(scratch, inner, scratch)) {
            r.status = layout_status::overflow;
            return r;
        }
    }

    std::uint64_t local_extent = 0;
    layout_status st = layout_status::ok;
    const bool single = l.kind == layout_kind::split || l.kind == layout_kind::padded_split ||
                        l.kind == layout_kind::strided_split;
    if (single && n != 1) {
        r.status = layout_status::source_count;
        return r;
    }
    switch (l.kind) {
        case layout_kind::replicated: break;  // handled above
        case layout_kind::split:
            st = detail::plan_split(extents[0], world, rank, r.runs, local_extent);
            break;
        case layout_kind::padded_split:
            st = detail::plan_padded_split(extents[0], l.multiple, world, rank, r.runs,
                                           local_extent);
            break;
        case layout_kind::strided_split:
            st =
                detail::plan_strided_split(extents[0], l.stride, world, rank, r.runs, local_extent);
            break;
        case layout_kind::fused:
            st = detail::plan_fused(l, extents, n, world, rank, r.runs, local_extent);
            break;
        case layout_kind::gqa_qkv:
        case layout_kind::gqa_o:
            st = detail::plan_gqa(l, extents, n, world, rank, r.runs, local_extent);
            break;
    }
    if (st != layout_status::ok) {
        r.status = st;
        return r;
    }
    if (mul_overflows(outer, local_extent, scratch) || mul_overflows(scratch, inner, scratch)) {
        r.status = layout_status::overflow;
        return r;
    }

    r.global = sources[0];
    r.global[dim] = total;
    if (mul_overflows(outer, total, scratch) || mul_overflows(scratch, inner, scratch)) {
        r.status = layout_status::overflow;
        return r;
    }
    r.local = sources[0];
    r.local[dim] = local_extent;

    const std::uint64_t dst_stride = local_extent * inner;
    std::uint64_t pos = 0;
    for (const auto& s : r.runs) {
        if (!r.map.push(copy_box{s.source, s.start * inner, outer, s.length * inner,
                                 extents[s.source] * inner, pos * inner, dst_stride})) {
            r.status = layout_status::too_many_pieces;
            return r;
        }
        pos += s.length;
    }
    if (pos < local_extent &&
        !r.map.push_zero(zero_box{pos * inner, outer, (local_extent - pos) * inner, dst_stride})) {
        r.status = layout_status::too_many_pieces;
        return r;
    }
    return r;
}

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr slice_result slice(const layout& l,
                                                                 const shape& source,
                                                                 std::uint32_t world,
                                                                 std::uint32_t rank) noexcept {
    return slice(l, &source, 1, world, rank);
}

[[nodiscard]] constexpr slice_result slice(const layout& l, std::span<const shape> sources,
                                           std::uint32_t world, std::uint32_t rank) noexcept {
    return slice(l, sources.data(), sources.size(), world, rank);
}

// ---- host: printing and the error boundary ----

namespace detail {
inline std::string extents_string(const shape& s) {
    if (s.rank() == 0) return "scalar";
    std::string out;
    for (std::size_t i = 0; i < s.rank(); ++i) {
        if (i) out += 'x';
        out += std::to_string(s[i]);
    }
    return out;
}

inline std::string sources_string(std::span<const shape> sources) {
    std::string out;
    for (std::size_t i = 0; i < sources.size(); ++i) {
        if (i) out += '+';
        out += extents_string(sources[i]);
    }
    return out;
}

inline std::string dim_word(std::size_t dim) {
    if (dim == 0) return "rows";
    if (dim == 1) return "cols";
    return "dim" + std::to_string(dim);
}

inline std::string reason(const layout& l, std::span<const shape> sources, std::uint32_t world,
                          std::uint32_t rank, layout_status st) {
    const std::string w = std::to_string(world);
    const std::string d = "dim " + std::to_string(unsigned{l.dim});
    auto ext = [&](std::size_t i) {
        return i < sources.size() && l.dim < sources[i].rank() ? std::to_string(sources[i][l.dim])
                                                               : std::string("?");
    };
    const bool gqa = l.kind == layout_kind::gqa_qkv || l.kind == layout_kind::gqa_o;
    switch (st) {
        case layout_status::ok: return "ok";
        case layout_status::invalid_world: return "world must be at least 1";
        case layout_status::rank_out_of_range:
            return "rank " + std::to_string(rank) + " is not below world " + w;
        case layout_status::dim_out_of_range:
            return d + " is not a dim of a tensor of rank " +
                   std::to_string(sources.empty() ? 0 : sources[0].rank());
        case layout_status::source_count:
            return "takes " +
                   std::string(l.kind == layout_kind::fused
                                   ? "one source per part, or one fused source"
                               : l.kind == layout_kind::gqa_qkv && l.part == gqa_part::qkv
                                   ? "three sources (q, k, v) or one fused source"
                                   : "one source") +
                   ", not " + std::to_string(sources.size());
        case layout_status::shape_mismatch:
            if (gqa) {
                const std::uint64_t q = l.heads * l.head_dim, kv = l.kv_heads * l.head_dim;
                return "the sources' " + d + " does not match the heads: expected " +
                       (l.kind == layout_kind::gqa_o || l.part == gqa_part::q
                            ? std::to_string(q) + " (H*d)"
                        : l.part == gqa_part::qkv
                            ? std::to_string(q) + "+" + std::to_string(kv) + "+" +
                                  std::to_string(kv) + " (H*d, KV*d, KV*d) or " +
                                  std::to_string(q + 2 * kv) + " fused"
                            : std::to_string(kv) + " (KV*d)");
            }
            return "the sources disagree outside " + d + ", or do not match the part sizes";
        case layout_status::indivisible:
            if (l.kind == layout_kind::strided_split)
                return d + " (extent " + ext(0) + ") is not divisible by world " + w +
                       " x stride " + std::to_string(l.stride);
            if (l.kind == layout_kind::fused)
                return "a part along " + d + " is not divisible by world " + w;
            return d + " (extent " + ext(0) + ") is not divisible by world " + w;
        case layout_status::padded_indivisible: {
            std::uint64_t padded = 0;
            const std::uint64_t e =
                sources.empty() || l.dim >= sources[0].rank() ? 0 : sources[0][l.dim];
            const bool over = align_up_overflows(e, l.multiple, padded);
            return d + " (extent " + ext(0) + ") padded to a multiple of " +
                   std::to_string(l.multiple) + " (" + (over ? "?" : std::to_string(padded)) +
                   ") is not divisible by world " + w;
        }
        case layout_status::part_misaligned:
            return "a part's share along " + d + " at world " + w +
                   " is not a whole number of its units (a whole head for attention parts)";
        case layout_status::heads_indivisible:
            return "query heads H=" + std::to_string(l.heads) +
                   " must be a multiple of KV=" + std::to_string(l.kv_heads) +
                   " and split into whole heads (and KV groups) " + "over world " + w + " (" + d +
                   ")";
        case layout_status::kv_heads_mismatch:
            if (l.convention == kv_interleaved)
                return "KV=" + std::to_string(l.kv_heads) + " times kv_size_multiplier " +
                       std::to_string(l.kv_multiplier
                                          ? l.kv_multiplier
                                          : (world / l.kv_heads > 1 ? world / l.kv_heads : 1)) +
                       " must be a positive multiple of world " + w + " (" + d + ")";
            return "world " + w + " must be a multiple of KV=" + std::to_string(l.kv_heads) +
                   " or KV a multiple of world (" + d + ")";
        case layout_status::invalid_parameters:
            return "invalid layout parameters (a zero multiple, stride or head count, or more "
                   "than " +
                   std::to_string(layout::max_parts) + " parts)";
        case layout_status::too_many_pieces:
            return "needs more than " + std::to_string(slice_map::box_capacity) +
                   " boxes for one rank at world " + w + " (" + d + ")";
        case layout_status::overflow: return "an extent product overflows 64 bits";
    }
    return "?";
}
}  // namespace detail

// One line: "split<0> 4096x4096 @ rank 1/4 -> rows [1024,2048)".
[[nodiscard]] inline std::string describe(const layout& l, std::span<const shape> sources,
                                          std::uint32_t world, std::uint32_t rank) {
    std::string s = name(l) + " " + detail::sources_string(sources) + " @ rank " +
                    std::to_string(rank) + "/" + std::to_string(world) + " -> ";
    const slice_result r = slice(l, sources, world, rank);
    if (!r.ok()) return s + std::string(to_string(r.status));
    if (l.kind == layout_kind::replicated) return s + "whole";
    const std::string word = detail::dim_word(r.dim);
    const char* sep = "";
    for (const auto& run : r.runs) {
        s += sep;
        if (sources.size() > 1) s += "src" + std::to_string(unsigned{run.source}) + " ";
        s += word + " [" + std::to_string(run.start) + "," +
             std::to_string(run.start + run.length) + ")";
        sep = " + ";
    }
    const std::uint64_t zeros = r.local[r.dim] - r.runs.length();
    if (zeros) s += std::string(sep) + "zero " + word + " " + std::to_string(zeros);
    if (r.runs.size() == 0 && zeros == 0) s += "empty";
    return s;
}

[[nodiscard]] inline std::string describe(const layout& l, const shape& source, std::uint32_t world,
                                          std::uint32_t rank) {
    return describe(l, std::span<const shape>(&source, 1), world, rank);
}

// "ok [1024, 4096] of [4096, 4096] {src0+4194304 1x4194304 -> dst+0}", or the status.
[[nodiscard]] inline std::string to_string(const slice_result& r) {
    if (!r.ok()) return std::string(to_string(r.status));
    return "ok " + r.local.to_string() + " of " + r.global.to_string() + " " + to_string(r.map);
}

inline std::ostream& operator<<(std::ostream& os, const slice_result& r) {
    return os << to_string(r);
}

// The error a failed slice becomes on the host: names the parameter, the layout, the
// sources, the dim and the world.
[[nodiscard]] inline error slice_error(std::string_view parameter, const layout& l,
                                       std::span<const shape> sources, std::uint32_t world,
                                       std::uint32_t rank, layout_status st) {
    const errc code = st == layout_status::shape_mismatch || st == layout_status::source_count
                          ? errc::shape_mismatch
                      : st == layout_status::overflow ? errc::validation_overflow
                      : st == layout_status::invalid_world || st == layout_status::rank_out_of_range
                          ? errc::invalid_argument
                          : errc::invalid_layout;
    std::string msg = "parameter '" + std::string(parameter) + "': " + to_string(l) + " on " +
                      detail::sources_string(sources) + " at world " + std::to_string(world) +
                      ", rank " + std::to_string(rank) + ": " +
                      detail::reason(l, sources, world, rank, st);
    return error(code, msg, error_context{.file = {}, .tensor = std::string(parameter)});
}

// The host boundary: the result, or a safeshard::error saying why not.
[[nodiscard]] inline slice_result slice_or_throw(std::string_view parameter, const layout& l,
                                                 std::span<const shape> sources,
                                                 std::uint32_t world, std::uint32_t rank) {
    slice_result r = slice(l, sources, world, rank);
    if (!r.ok()) throw slice_error(parameter, l, sources, world, rank, r.status);
    return r;
}

[[nodiscard]] inline slice_result slice_or_throw(std::string_view parameter, const layout& l,
                                                 const shape& source, std::uint32_t world,
                                                 std::uint32_t rank) {
    return slice_or_throw(parameter, l, std::span<const shape>(&source, 1), world, rank);
}

}  // namespace safeshard
