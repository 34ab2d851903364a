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
#include "safeshard/shard/layout_status.hpp"
#include "safeshard/shard/layouts/kind.hpp"
#include "safeshard/shard/layouts/kinds.hpp"
#include "safeshard/shard/segment.hpp"
#include "safeshard/shard/slice_map.hpp"
#include "safeshard/shard/slice_result.hpp"

namespace safeshard {

// The one implementation, for constant expressions, host and device: `sources` are the
// extents of the parameter's source tensors (one, or one per fused part / q, k, v). The
// checks every kind shares come first; the kind's traits (shard/layouts/kinds.hpp) do the rest.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr slice_result slice(const layout& l,
                                                                 const shape* sources,
                                                                 std::size_t n, std::uint32_t world,
                                                                 std::uint32_t rank) noexcept {
    slice_result r;
    r.dim = cuts_along_dim(l.kind) ? l.dim : 0;
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
    if (!visit_layout_kind(l.kind, [&]<class K>(K) { K::slice(l, sources, n, world, rank, r); }))
        r.status = layout_status::invalid_parameters;  // not a kind of the list
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

// Why a slice failed, in words: the kind's own text for the status, else the common one.
inline std::string reason(const layout& l, std::span<const shape> sources, std::uint32_t world,
                          std::uint32_t rank, layout_status st) {
    const slice_failure f{sources, world, rank};
    std::string own;
    visit_layout_kind(l.kind, [&]<class K>(K) { own = K::reason(l, f, st); });
    if (!own.empty()) return own;
    const std::string w = std::to_string(world);
    const std::string d = slice_failure::dim(l);
    switch (st) {
        case layout_status::ok: return "ok";
        case layout_status::invalid_world: return "world must be at least 1";
        case layout_status::rank_out_of_range:
            return "rank " + std::to_string(rank) + " is not below world " + w;
        case layout_status::dim_out_of_range:
            return d + " is not a dim of a tensor of rank " +
                   std::to_string(sources.empty() ? 0 : sources[0].rank());
        case layout_status::source_count:
            return "takes one source, not " + std::to_string(sources.size());
        case layout_status::shape_mismatch:
            return "the sources disagree outside " + d + ", or do not match the part sizes";
        case layout_status::indivisible:
            return d + " (extent " + f.extent(l) + ") is not divisible by world " + w;
        case layout_status::part_misaligned:
            return "a part's share along " + d + " at world " + w +
                   " is not a whole number of its units (a whole head for attention parts)";
        case layout_status::invalid_parameters:
            return "invalid layout parameters (a zero multiple, stride or head count, or more "
                   "than " +
                   std::to_string(layout::max_parts) + " parts)";
        case layout_status::too_many_pieces:
            return "needs more than " + std::to_string(slice_map::box_capacity) +
                   " boxes for one rank at world " + w + " (" + d + ")";
        case layout_status::overflow: return "an extent product overflows 64 bits";
        // Given by one kind only, which words them (a kind of its own gives the bare status).
        case layout_status::padded_indivisible:
        case layout_status::heads_indivisible:
        case layout_status::kv_heads_mismatch: break;
    }
    return d + ": " + std::string(to_string(st)) + " at world " + w;
}
}  // namespace detail

// One line: "split<0> 4096x4096 @ rank 1/4 -> rows [1024,2048)".
[[nodiscard]] inline std::string describe(const layout& l, std::span<const shape> sources,
                                          std::uint32_t world, std::uint32_t rank) {
    std::string s = name(l) + " " + detail::sources_string(sources) + " @ rank " +
                    std::to_string(rank) + "/" + std::to_string(world) + " -> ";
    const slice_result r = slice(l, sources, world, rank);
    if (!r.ok()) return s + std::string(to_string(r.status));
    if (!cuts_along_dim(l.kind)) return s + "whole";
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
