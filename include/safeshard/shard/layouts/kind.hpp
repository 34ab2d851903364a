// What a layout kind is: the `layout_kind_traits` concept. Each kind is a traits type in its
// own header under shard/layouts/ (its arithmetic, name, status texts, export metadata fields,
// and what export and merge need of it); shard/layouts/kinds.hpp lists them, and slice(), the
// layout's names, the status texts, the export metadata codec, export and merge iterate over
// that list. A new kind: a header here, its traits type listed in kinds.hpp, its id in
// layout_kind (shard/layout_value.hpp).
#pragma once

#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "safeshard/config.hpp"
#include "safeshard/core/checked.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/shard/layout_status.hpp"
#include "safeshard/shard/layout_value.hpp"
#include "safeshard/shard/segment.hpp"
#include "safeshard/shard/slice_map.hpp"
#include "safeshard/shard/slice_result.hpp"

namespace safeshard {

// What the text of a failed slice is made of (host only): the sources, world and rank.
struct slice_failure {
    std::span<const shape> sources;
    std::uint32_t world = 0;
    std::uint32_t rank = 0;

    // "dim 1"
    [[nodiscard]] static std::string dim(const layout& l) {
        return "dim " + std::to_string(unsigned{l.dim});
    }
    // Source i's extent along the layout's dim, or "?".
    [[nodiscard]] std::string extent(const layout& l, std::size_t i = 0) const {
        return i < sources.size() && l.dim < sources[i].rank() ? std::to_string(sources[i][l.dim])
                                                               : std::string("?");
    }
};

// The global rows [begin, end) along dim that a rank holds real data of (padding excluded).
using valid_rows_range = std::pair<std::uint64_t, std::uint64_t>;

// What a kind's export metadata fields are written with (format/ provides it): `,"key":value`.
template <class W>
concept cut_fields_writer = requires(W& w, std::string_view key, std::uint64_t v,
                                     const std::uint64_t* values, std::size_t n) {
    w.number(key, v);
    w.text(key, key);  // a JSON string, escaped
    w.numbers(key, values, n);
};

// What they are read with: absent numbers read 0, absent or non-string texts nullopt, absent
// or non-array lists nullopt; `numbers` fails with `bad` on an element that is no integer or
// one beyond `capacity`; `fail` throws errc::invalid_export naming the document's place.
template <class R>
concept cut_fields_reader = requires(R& r, std::string_view key, std::uint64_t* out,
                                     std::size_t capacity, const std::string& why) {
    { r.number_or_zero(key) } -> std::same_as<std::uint64_t>;
    { r.text(key) } -> std::same_as<std::optional<std::string_view>>;
    { r.numbers(key, out, capacity, key) } -> std::same_as<std::optional<std::size_t>>;
    r.fail(why);
};

namespace detail {
// The least a writer and a reader offer: what a kind's fields are checked against.
struct cut_fields_writer_archetype {
    void number(std::string_view, std::uint64_t);
    void text(std::string_view, std::string_view);
    void numbers(std::string_view, const std::uint64_t*, std::size_t);
};
struct cut_fields_reader_archetype {
    std::uint64_t number_or_zero(std::string_view);
    std::optional<std::string_view> text(std::string_view);
    std::optional<std::size_t> numbers(std::string_view, std::uint64_t*, std::size_t,
                                       std::string_view);
    [[noreturn]] void fail(const std::string&);
};
static_assert(cut_fields_writer<cut_fields_writer_archetype>);
static_assert(cut_fields_reader<cut_fields_reader_archetype>);
}  // namespace detail

// Its arithmetic: `id` (its layout_kind), whether it cuts along `dim` (false: every rank holds
// the whole tensor), and `slice`, which fills a slice_result for (world, rank) once the common
// checks passed (world >= 1, rank < world, 1..max_sources sources of one tensor rank).
// constexpr, noexcept and usable on the device.
template <class K>
concept layout_kind_arithmetic = requires(const layout& l, const shape* sources, std::size_t n,
                                          std::uint32_t world, std::uint32_t rank,
                                          slice_result& out) {
    { K::id } -> std::convertible_to<layout_kind>;
    { K::cuts_along_dim } -> std::convertible_to<bool>;
    { K::slice(l, sources, n, world, rank, out) }
    noexcept;
};

// Its words: `name` ("split"), `parameters` (what follows the name in name(): "<0,64>"),
// `details` (what to_string adds: " parts=8+8"), and `reason`, the text of a status it gives
// ("" for the common text of that status).
template <class K>
concept layout_kind_text = requires(const layout& l, const slice_failure& f, layout_status st) {
    { K::name } -> std::convertible_to<std::string_view>;
    { K::parameters(l) } -> std::same_as<std::string>;
    { K::details(l) } -> std::same_as<std::string>;
    { K::reason(l, f, st) } -> std::same_as<std::string>;
};

// Its fields in a cut of the export metadata (beside "kind", "dim" when it cuts along dim, and
// "source_dtype"): their keys, and how they are written and read.
template <class K>
concept layout_kind_fields = requires(const layout& l, layout& out,
                                      detail::cut_fields_writer_archetype& w,
                                      detail::cut_fields_reader_archetype& r) {
    { K::json_fields } -> std::convertible_to<std::span<const std::string_view>>;
    K::write_fields(l, w);
    K::read_fields(r, out);
};

// What export and merge record beside the slice map (which merge runs backwards): the rows
// of real data a rank holds when the kind pads (`records_valid_rows`, `valid_rows`), and the
// KV multiplier of the rank record (0 when the kind has none).
template <class K>
concept layout_kind_export = requires(const layout& l, const shape& global, const shape& local,
                                      std::uint32_t rank, std::uint32_t world) {
    { K::records_valid_rows } -> std::convertible_to<bool>;
    { K::valid_rows(l, global, local, rank) } -> std::same_as<std::optional<valid_rows_range>>;
    { K::kv_multiplier(l, world) } -> std::same_as<std::uint64_t>;
};

template <class K>
concept layout_kind_traits = layout_kind_arithmetic<K> && layout_kind_text<K> &&
    layout_kind_fields<K> && layout_kind_export<K>;

// What most kinds leave as it is: no parameters, no own texts or fields, no padding, no KV
// multiplier. A kind derives from it and says the rest.
struct layout_kind_defaults {
    static constexpr bool cuts_along_dim = true;
    static std::string parameters(const layout&) { return {}; }
    static std::string details(const layout&) { return {}; }
    static std::string reason(const layout&, const slice_failure&, layout_status) { return {}; }
    static constexpr std::array<std::string_view, 0> json_fields{};
    template <class W>
    static void write_fields(const layout&, W&) {}
    template <class R>
    static void read_fields(R&, layout&) {}
    static constexpr bool records_valid_rows = false;
    static std::optional<valid_rows_range> valid_rows(const layout&, const shape&, const shape&,
                                                      std::uint32_t) {
        return std::nullopt;
    }
    static std::uint64_t kv_multiplier(const layout&, std::uint32_t) { return 0; }
};

namespace detail {

// The common part of slicing along dim: checks the sources agree outside dim, asks the kind
// for its runs along dim (K::cut), and turns them into boxes and zero regions.
template <class K>
SAFESHARD_HOST_DEVICE constexpr void slice_along_dim(const layout& l, const shape* sources,
                                                     std::size_t n, std::uint32_t world,
                                                     std::uint32_t rank, slice_result& r) noexcept {
    const std::size_t nd = sources[0].rank();
    const std::size_t dim = l.dim;
    if (dim >= nd) {
        r.status = layout_status::dim_out_of_range;
        return;
    }
    for (std::size_t i = 1; i < n; ++i)
        for (std::size_t j = 0; j < nd; ++j)
            if (j != dim && sources[i][j] != sources[0][j]) {
                r.status = layout_status::shape_mismatch;
                return;
            }
    std::uint64_t outer = 1, inner = 1;
    for (std::size_t j = 0; j < dim; ++j)
        if (mul_overflows(outer, sources[0][j], outer)) {
            r.status = layout_status::overflow;
            return;
        }
    for (std::size_t j = dim + 1; j < nd; ++j)
        if (mul_overflows(inner, sources[0][j], inner)) {
            r.status = layout_status::overflow;
            return;
        }

    std::uint64_t extents[max_sources] = {};
    std::uint64_t total = 0, scratch = 0;
    for (std::size_t i = 0; i < n; ++i) {
        extents[i] = sources[i][dim];
        if (add_overflows(total, extents[i], total) || mul_overflows(outer, extents[i], scratch) ||
            mul_overflows(scratch, inner, scratch)) {
            r.status = layout_status::overflow;
            return;
        }
    }

    std::uint64_t local_extent = 0;
    if (const layout_status st = K::cut(l, extents, n, world, rank, r.runs, local_extent);
        st != layout_status::ok) {
        r.status = st;
        return;
    }
    if (mul_overflows(outer, local_extent, scratch) || mul_overflows(scratch, inner, scratch)) {
        r.status = layout_status::overflow;
        return;
    }

    r.global = sources[0];
    r.global[dim] = total;
    if (mul_overflows(outer, total, scratch) || mul_overflows(scratch, inner, scratch)) {
        r.status = layout_status::overflow;
        return;
    }
    r.local = sources[0];
    r.local[dim] = local_extent;

    const std::uint64_t dst_stride = local_extent * inner;
    std::uint64_t pos = 0;
    for (const auto& s : r.runs) {
        if (!r.map.push(copy_box{s.source, s.start * inner, outer, s.length * inner,
                                 extents[s.source] * inner, pos * inner, dst_stride})) {
            r.status = layout_status::too_many_pieces;
            return;
        }
        pos += s.length;
    }
    if (pos < local_extent &&
        !r.map.push_zero(zero_box{pos * inner, outer, (local_extent - pos) * inner, dst_stride}))
        r.status = layout_status::too_many_pieces;
}

}  // namespace detail

}  // namespace safeshard
