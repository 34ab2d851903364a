// A quantization companion (a scale grid: FP8's weight_scale_inv, a per-channel or per-tensor
// weight_scale; GPTQ's zeros and group indices; a packed weight's storage) follows its
// weight's cut in its own units: each of its two dims either covers the weight's dim in blocks
// of `block` elements (the last block may be partial), or is one entry for the whole dim
// (broadcast), or (`all`) holds its blocks whole on every rank (GPTQ's act-order scales, which
// g_idx indexes rather than their place). A companion may be stored transposed ([K-grid,
// N-grid] over a weight [N, K]: GPTQ's and AWQ's tensors) or 1-D; its cut is computed over the
// weight's orientation and given back in the stored one. The companion's slice map is derived
// from the weight's boxes, whatever layout made them: a rank's piece of the weight must start
// (and end, unless it ends the tensor) on a block boundary, in the source and in the rank's
// tensor, or the cut is refused, naming the parameter, the extent, the block and the ways.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "safeshard/core/checked.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/shard/slice_result.hpp"

namespace safeshard {

// How one dim of a companion follows the same dim of its 2-D weight [N, K].
struct companion_dim {
    std::uint64_t block = 1;  // weight elements per companion element; 0: one for the whole dim
    bool all = false;         // every rank holds all the dim's blocks, whatever its piece
    [[nodiscard]] constexpr bool whole() const noexcept { return block == 0; }
    friend constexpr bool operator==(companion_dim, companion_dim) = default;
};

struct companion_grid {
    companion_dim rows{};
    companion_dim cols{};
    bool transposed = false;  // stored [cols, rows] of the grid
    friend constexpr bool operator==(const companion_grid&, const companion_grid&) = default;
};

// "grid<128,128>", "grid<1,*>" (per channel), "grid<*,*>" (per tensor), "grid<1,8>^T" (stored
// transposed), "grid<1,all/128>" (every rank holds all the blocks of 128 along K).
[[nodiscard]] inline std::string to_string(const companion_grid& g) {
    auto one = [](companion_dim d) {
        if (d.whole()) return std::string("*");
        return (d.all ? "all/" : "") + std::to_string(d.block);
    };
    return "grid<" + one(g.rows) + "," + one(g.cols) + ">" + (g.transposed ? "^T" : "");
}

// The companion's extent along a weight dim of `extent` elements.
[[nodiscard]] constexpr std::uint64_t companion_extent(companion_dim d,
                                                       std::uint64_t extent) noexcept {
    return d.whole() ? 1 : (extent + d.block - 1) / d.block;
}

// The grid a companion of shape `c` has over a 2-D weight of shape `w`, given the block the
// scheme declares (0 when it declares none): a scalar ([], [1], [1, 1]) per tensor, [N, 1] or
// [N] per output channel, [ceil(N / b0), ceil(K / b1)] in blocks; nullopt for any other shape.
[[nodiscard]] inline std::optional<companion_grid> infer_companion_grid(const shape& w,
                                                                        const shape& c,
                                                                        std::uint64_t block_rows,
                                                                        std::uint64_t block_cols) {
    if (w.rank() != 2) return std::nullopt;
    if (c.rank() <= 2 && c.element_count() == std::optional<std::uint64_t>{1})
        return companion_grid{{0}, {0}};
    if ((c.rank() == 2 && c[0] == w[0] && c[1] == 1) || (c.rank() == 1 && c[0] == w[0]))
        return companion_grid{{1}, {0}};
    if (block_rows != 0 && block_cols == 0 && c.rank() == 2 &&
        c[0] == companion_extent({block_rows}, w[0]) && c[1] == 1)
        return companion_grid{{block_rows}, {0}};  // per channel, packed along N
    if (block_rows != 0 && block_cols != 0 && c.rank() == 2 &&
        c[0] == companion_extent({block_rows}, w[0]) &&
        c[1] == companion_extent({block_cols}, w[1]))
        return companion_grid{{block_rows}, {block_cols}};
    return std::nullopt;
}

// A companion source in its weight's orientation, [rows, cols] of its grid: a transposed one
// swapped, a 1-D per-channel [N] as [N, 1], a 1-D one along K ([K], GPTQ's g_idx) as [1, K].
[[nodiscard]] inline shape companion_as_2d(const companion_grid& g, const shape& c) {
    if (c.rank() == 1 && g.cols.whole() && !g.rows.whole()) return shape{c[0], 1};
    if (c.rank() == 1 && g.rows.whole() && !g.cols.whole()) return shape{1, c[0]};
    if (c.rank() == 2 && g.transposed) return shape{c[1], c[0]};
    return c;
}

// A companion's shape in the weight's orientation ([rows, cols] of its grid) as its sources
// store it (`stored_rank` 1 or 2): swapped back where transposed, the 1-D ones flattened
// (unless k of them stack along their whole dim: [k, K]).
[[nodiscard]] inline shape companion_stored_form(const companion_grid& g, const shape& oriented,
                                                 std::size_t stored_rank) {
    if (oriented.rank() != 2) return oriented;
    const bool one_entry = g.rows.whole() ? oriented[0] == 1 : oriented[1] == 1;
    if (stored_rank == 1 && one_entry) return shape{oriented[0] * oriented[1]};
    return g.transposed ? shape{oriented[1], oriented[0]} : oriented;
}

// The values [N, K] a packed weight stored as `stored` covers under its storage grid g (its
// stored elements' grid over its values); nullopt where it is not 2-D, g has a whole dim, or
// its values pass 64 bits.
[[nodiscard]] inline std::optional<shape> weight_values_shape(const companion_grid& g,
                                                              const shape& stored) {
    if (stored.rank() != 2) return std::nullopt;
    shape v = companion_as_2d(g, stored);
    if (g.rows.whole() || g.cols.whole() || mul_overflows(v[0], g.rows.block, v[0]) ||
        mul_overflows(v[1], g.cols.block, v[1]))
        return std::nullopt;
    return v;
}

// The companion's global shape from its sources (one per weight source, as stored), joined
// along the weight's cut `dim`: per tensor, the one source's shape, or [k] for k sources (one
// entry each); otherwise the sources, in the weight's orientation, concatenated along dim
// (one source: its shape), given back as they are stored. nullopt where they are not 2-D
// alike but for dim, or their extent passes 64 bits.
[[nodiscard]] inline std::optional<shape> companion_global(const companion_grid& g, std::size_t dim,
                                                           std::span<const shape> sources) {
    if (sources.empty() || dim > 1) return std::nullopt;
    if (g.rows.whole() && g.cols.whole()) {  // whole: one source as it is, k stacked
        const shape& one = sources.front();
        if (sources.size() == 1) return one;
        shape out{sources.size()};
        if (one.element_count() == std::optional<std::uint64_t>{1}) return out;
        for (const auto d : one.dims())
            if (!out.try_push_back(d)) return std::nullopt;
        return out;
    }
    shape out = companion_as_2d(g, sources.front());
    if (out.rank() != 2) return std::nullopt;
    for (std::size_t k = 1; k < sources.size(); ++k) {
        const shape s = companion_as_2d(g, sources[k]);
        if (s.rank() != 2 || s[1 - dim] != out[1 - dim] || out[dim] + s[dim] < s[dim] ||
            sources[k].rank() != sources.front().rank())
            return std::nullopt;
        out[dim] += s[dim];
    }
    return companion_stored_form(g, out, sources.front().rank());
}

// Whether each companion source has the grid's extents over its weight source (2-D each, as
// many of one as of the other); whole companions (per tensor) all have one shape.
[[nodiscard]] inline bool companion_sources_fit(const companion_grid& g,
                                                std::span<const shape> weights,
                                                std::span<const shape> companions) {
    if (weights.size() != companions.size()) return false;
    for (std::size_t k = 0; k < weights.size(); ++k) {
        const shape& w = weights[k];
        const shape c = companion_as_2d(g, companions[k]);
        if (w.rank() != 2) return false;
        if (g.rows.whole() && g.cols.whole()) {
            if (companions[k] != companions.front() ||
                companions[k].element_count().value_or(0) == 0)
                return false;
        } else if (c.rank() != 2 || c[0] != companion_extent(g.rows, w[0]) ||
                   c[1] != companion_extent(g.cols, w[1])) {
            return false;
        }
    }
    return true;
}

namespace detail {

// A box of a 2-D tensor as a rectangle: rows [r0, r0 + nr), columns [c0, c0 + nc).
struct rect {
    std::uint64_t r0 = 0, c0 = 0, nr = 0, nc = 0;
};

// The rectangle `rows` box rows of `len` elements each, the first at `offset`, one every
// `stride`, cover in a [*, cols] tensor: rows within one tensor row each, one tensor row
// apart; or runs of whole rows, back to back. nullopt for any other pattern.
[[nodiscard]] inline std::optional<rect> as_rect(std::uint64_t offset, std::uint64_t rows,
                                                 std::uint64_t len, std::uint64_t stride,
                                                 std::uint64_t cols) {
    if (cols == 0 || rows == 0 || len == 0) return std::nullopt;
    const std::uint64_t r0 = offset / cols, c0 = offset % cols;
    if (c0 + len <= cols) {
        if (rows > 1 && stride != cols) return std::nullopt;
        return rect{r0, c0, rows, len};
    }
    if (c0 != 0 || len % cols != 0 || (rows > 1 && stride != len)) return std::nullopt;
    return rect{r0, 0, rows * (len / cols), cols};
}

// The companion's range along one dim for the weight's range [at, at + n) of a dim of
// `extent`; nullopt where it does not fall on the grid. A dim held `all`: all its blocks.
[[nodiscard]] inline std::optional<std::pair<std::uint64_t, std::uint64_t>> on_grid(
    companion_dim d, std::uint64_t at, std::uint64_t n, std::uint64_t extent) {
    if (d.whole()) return std::pair<std::uint64_t, std::uint64_t>{0, 1};
    if (d.all) return std::pair<std::uint64_t, std::uint64_t>{0, (extent + d.block - 1) / d.block};
    if (at % d.block != 0 || (n % d.block != 0 && at + n != extent)) return std::nullopt;
    return std::pair<std::uint64_t, std::uint64_t>{at / d.block, (n + d.block - 1) / d.block};
}

// A box over a [rows, cols] tensor (one row of the box a row of the tensor, `cols` apart) as
// the same rectangle of its transpose [cols, rows].
[[nodiscard]] inline copy_box transposed_box(const copy_box& b, std::uint64_t src_rows,
                                             std::uint64_t src_cols, std::uint64_t dst_rows,
                                             std::uint64_t dst_cols) {
    copy_box t = b;
    t.src_offset = (b.src_offset % src_cols) * src_rows + b.src_offset / src_cols;
    t.dst_offset = (b.dst_offset % dst_cols) * dst_rows + b.dst_offset / dst_cols;
    t.rows = b.row_elems;
    t.row_elems = b.rows;
    t.src_row_stride = src_rows;
    t.dst_row_stride = dst_rows;
    return t;
}

}  // namespace detail

// What a companion needs of its weight's cut: the weight's slice (its map and local shape),
// its sources' shapes (2-D), the companion sources' shapes (one per weight source, as the
// file stores them), the grid, and the ways for the message.
struct companion_request {
    std::string_view parameter;  // the weight parameter's name, for errors
    const slice_result* weight = nullptr;
    std::span<const shape> weight_sources{};
    std::span<const shape> companion_sources{};
    companion_grid grid{};
    std::uint32_t ways = 1;
    // What follows the weight, for errors: its scale, or (packed weights, whose stored
    // elements each hold several values) its packed storage.
    std::string_view follower = "quantization scale";
};

namespace detail {
// Whole companions (per-tensor scales) on every rank as stored: of a weight joining k tensors,
// stacked ([k] for scalars, [k, ...] otherwise), source s's at s (each rank's piece of every
// source is scaled by that source's scale). `global`: companion_global's.
[[nodiscard]] inline slice_result whole_companions(const companion_request& q,
                                                   const shape& global) {
    slice_result c;
    const std::uint64_t e = q.companion_sources.front().element_count().value_or(0);
    c.global = c.local = global;
    for (std::uint64_t s = 0; s < q.companion_sources.size(); ++s)
        (void)c.map.push(copy_box{static_cast<std::uint8_t>(s), 0, 1, e, e, s * e, e});
    return c;
}
}  // namespace detail

namespace detail {
// The refusals of a companion request before its boxes: a weight that is not 2-D, sources
// off the grid, a whole (or all) dim that would have to hold several sources' entries.
inline void check_companion_request(const companion_request& q, const error_context& ctx) {
    const slice_result& w = *q.weight;
    const companion_grid g = q.grid;
    if (w.local.rank() != 2)
        throw error(errc::invalid_layout,
                    "parameter '" + std::string(q.parameter) +
                        "': a quantization companion follows 2-D weights only, this one is " +
                        w.local.to_string(),
                    ctx);
    if (!companion_sources_fit(g, q.weight_sources, q.companion_sources))
        throw error(errc::shape_mismatch,
                    "parameter '" + std::string(q.parameter) + "': its " + to_string(g) + " " +
                        std::string(q.follower) +
                        " does not have the grid's shapes over its sources",
                    ctx);
    const companion_dim joined = w.dim == 0 ? g.rows : g.cols;
    if (q.weight_sources.size() > 1 && w.dim <= 1 && joined.all)
        throw error(errc::invalid_argument,
                    "parameter '" + std::string(q.parameter) + "' joins " +
                        std::to_string(q.weight_sources.size()) + " tensors along dim " +
                        std::to_string(w.dim) + ", which its " + to_string(g) +
                        " companion holds whole on every rank (load them unfused)",
                    ctx);
}
}  // namespace detail

// The companion's slice for the rank whose weight slice is `q.weight`: its boxes (in the
// companion sources' elements), its local shape (the grid's over the rank's piece, stored as
// the sources are: transposed, 1-D; a per-tensor companion keeps its stored shape, and of a
// weight joining k tensors is [k], one entry per source in the layout's order: never one kept
// and the others dropped) and global shape. invalid_layout where the weight's piece does not
// fall on the grid; invalid_argument where a whole dim would have to hold several sources'
// entries in one.
[[nodiscard]] inline slice_result companion_slice(const companion_request& q) {
    const slice_result& w = *q.weight;
    const error_context ctx{.file = {}, .tensor = std::string(q.parameter)};
    const companion_grid g = q.grid;
    detail::check_companion_request(q, ctx);
    const auto global = companion_global(g, w.dim, q.companion_sources);
    if (!global)
        throw error(errc::shape_mismatch,
                    "parameter '" + std::string(q.parameter) + "': its " + to_string(g) +
                        " quantization scales cannot be joined along dim " + std::to_string(w.dim),
                    ctx);
    if (g.rows.whole() && g.cols.whole()) return detail::whole_companions(q, *global);
    slice_result c;
    c.dim = w.dim;
    c.global = *global;
    // The rank's companion in the weight's orientation; a dim held `all`, its sources' blocks.
    // A whole dim along which the weight joins k sources holds one entry a source: [k].
    const shape& first = q.weight_sources.front();
    const std::size_t k = q.weight_sources.size();
    const bool stack_rows = k > 1 && w.dim == 0 && g.rows.whole();
    const bool stack_cols = k > 1 && w.dim == 1 && g.cols.whole();
    auto local_extent = [&](companion_dim d, std::size_t dim, bool stacked) {
        return stacked ? k : companion_extent(d, d.all ? first[dim] : w.local[dim]);
    };
    const std::uint64_t local_rows = local_extent(g.rows, 0, stack_rows);
    const std::uint64_t local_cols = local_extent(g.cols, 1, stack_cols);
    auto refuse = [&](std::string_view what, std::uint64_t extent, std::uint64_t block,
                      std::uint64_t at, std::uint64_t n) -> slice_result {
        throw error(errc::invalid_layout,
                    "parameter '" + std::string(q.parameter) + "': its " + std::string(what) +
                        " of extent " + std::to_string(extent) + " cut " + std::to_string(q.ways) +
                        " ways gives a rank the piece [" + std::to_string(at) + ", " +
                        std::to_string(at + n) + "), which is not in whole blocks of " +
                        std::to_string(block) + " (its " + to_string(g) + " " +
                        std::string(q.follower) + " cannot follow)",
                    ctx);
    };
    for (const copy_box& b : w.map) {
        const shape& ws = q.weight_sources[b.source];
        const auto src =
            detail::as_rect(b.src_offset, b.rows, b.row_elems, b.src_row_stride, ws[1]);
        const auto dst =
            detail::as_rect(b.dst_offset, b.rows, b.row_elems, b.dst_row_stride, w.local[1]);
        if (!src || !dst)
            throw error(errc::invalid_layout,
                        "parameter '" + std::string(q.parameter) + "': the cut " + to_string(b) +
                            " is no rectangle its " + std::string(q.follower) + " can follow",
                        ctx);
        const auto rows = detail::on_grid(g.rows, src->r0, src->nr, ws[0]);
        const auto cols = detail::on_grid(g.cols, src->c0, src->nc, ws[1]);
        if (!rows) return refuse("rows", ws[0], g.rows.block, src->r0, src->nr);
        if (!cols) return refuse("columns", ws[1], g.cols.block, src->c0, src->nc);
        const std::pair<std::uint64_t, std::uint64_t> entry{b.source, 1};  // its source's
        const auto drows =
            stack_rows ? entry : detail::on_grid(g.rows, dst->r0, dst->nr, w.local[0]);
        const auto dcols =
            stack_cols ? entry : detail::on_grid(g.cols, dst->c0, dst->nc, w.local[1]);
        if (!drows) return refuse("rows", w.local[0], g.rows.block, dst->r0, dst->nr);
        if (!dcols) return refuse("columns", w.local[1], g.cols.block, dst->c0, dst->nc);
        const std::uint64_t srows = companion_extent(g.rows, ws[0]);
        const std::uint64_t scols = companion_extent(g.cols, ws[1]);
        copy_box cb;
        cb.source = b.source;
        cb.src_offset = rows->first * scols + cols->first;
        cb.rows = rows->second;
        cb.row_elems = cols->second;
        cb.src_row_stride = scols;
        cb.dst_offset = drows->first * local_cols + dcols->first;
        cb.dst_row_stride = local_cols;
        if (g.transposed) cb = detail::transposed_box(cb, srows, scols, local_rows, local_cols);
        bool seen = false;  // a whole dim maps several weight boxes onto one entry: copied once
        for (const copy_box& x : c.map) seen = seen || x == cb;
        // At most as many boxes as the weight's, which fit the same map: a broken invariant.
        if (!seen && !c.map.push(cb))
            throw error(errc::invalid_layout,
                        "parameter '" + std::string(q.parameter) +
                            "': its quantization scale's cut has too many pieces",
                        ctx);
    }
    if (w.map.zero_count() != 0)
        throw error(errc::invalid_layout,
                    "parameter '" + std::string(q.parameter) +
                        "': a padded cut (zero rows) with a quantization scale is not supported",
                    ctx);
    c.local =
        companion_stored_form(g, shape{local_rows, local_cols}, q.companion_sources.front().rank());
    return c;
}

}  // namespace safeshard
