// The list of layout kinds. slice(), the layout's names and status texts, the export
// metadata codec, export and merge iterate over it. A new kind: its header under
// shard/layouts/ (a traits type modelling layout_kind_traits, see kind.hpp), one line below,
// and its id in layout_kind (shard/layout_value.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include "safeshard/config.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/shard/layout_value.hpp"
#include "safeshard/shard/layouts/ceil_split.hpp"
#include "safeshard/shard/layouts/fused.hpp"
#include "safeshard/shard/layouts/gqa.hpp"
#include "safeshard/shard/layouts/kind.hpp"
#include "safeshard/shard/layouts/padded_split.hpp"
#include "safeshard/shard/layouts/replicated.hpp"
#include "safeshard/shard/layouts/split.hpp"
#include "safeshard/shard/layouts/strided_split.hpp"

namespace safeshard {

template <layout_kind_traits... Kinds>
struct layout_kind_list {
    static constexpr std::size_t size = sizeof...(Kinds);
};

using layout_kinds = layout_kind_list<  //
    replicated_kind,                    //
    split_kind,                         //
    padded_split_kind,                  //
    strided_split_kind,                 //
    fused_kind,                         //
    gqa_qkv_kind,                       //
    gqa_o_kind,                         //
    ceil_split_kind>;

namespace detail {
template <class... Kinds>
constexpr bool distinct_ids(layout_kind_list<Kinds...>) noexcept {
    const layout_kind ids[] = {Kinds::id...};
    for (std::size_t i = 0; i < sizeof...(Kinds); ++i)
        for (std::size_t j = i + 1; j < sizeof...(Kinds); ++j)
            if (ids[i] == ids[j]) return false;
    return true;
}

template <class... Kinds, class F>
SAFESHARD_HOST_DEVICE constexpr bool visit_kind(layout_kind_list<Kinds...>, layout_kind k, F& f) {
    return ((k == Kinds::id ? (f(Kinds{}), true) : false) || ...);
}

template <class... Kinds, class F>
constexpr void for_each_kind(layout_kind_list<Kinds...>, F& f) {
    (f(Kinds{}), ...);
}
}  // namespace detail

static_assert(detail::distinct_ids(layout_kinds{}), "two layout kinds share an id");

// Calls f(K{}) with the traits type K of kind k; false when no kind of the list has that id.
template <class F>
SAFESHARD_HOST_DEVICE constexpr bool visit_layout_kind(layout_kind k, F&& f) {
    return detail::visit_kind(layout_kinds{}, k, f);
}

// Calls f(K{}) for every kind of the list, in its order.
template <class F>
constexpr void for_each_layout_kind(F&& f) {
    detail::for_each_kind(layout_kinds{}, f);
}

// Whether kind k cuts along the layout's dim (false: every rank holds the whole tensor).
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr bool cuts_along_dim(layout_kind k) noexcept {
    bool along = true;
    visit_layout_kind(k, [&]<class K>(K) { along = K::cuts_along_dim; });
    return along;
}

// What export and merge ask of a layout's kind (layout_kind_export).
[[nodiscard]] inline bool records_valid_rows(layout_kind k) noexcept {
    bool records = false;
    visit_layout_kind(k, [&]<class K>(K) { records = K::records_valid_rows; });
    return records;
}

[[nodiscard]] inline std::optional<valid_rows_range> valid_rows(const layout& l,
                                                                const shape& global,
                                                                const shape& local,
                                                                std::uint32_t rank) {
    std::optional<valid_rows_range> v;
    visit_layout_kind(l.kind, [&]<class K>(K) { v = K::valid_rows(l, global, local, rank); });
    return v;
}

// valid_rows of a tensor whose dim 0 stacks experts (`stacked`), each expert's slab cut by l:
// the rows of a slab.
[[nodiscard]] inline std::optional<valid_rows_range> slab_valid_rows(
    const layout& l, const shape& global, const shape& local, std::uint32_t rank, bool stacked) {
    if (!stacked) return valid_rows(l, global, local, rank);
    if (global.rank() < 1 || local.rank() < 1) return std::nullopt;
    return valid_rows(l, shape::from(global.dims().subspan(1)),
                      shape::from(local.dims().subspan(1)), rank);
}

[[nodiscard]] inline std::uint64_t rank_kv_multiplier(const layout& l, std::uint32_t world) {
    std::uint64_t m = 0;
    visit_layout_kind(l.kind, [&]<class K>(K) { m = K::kv_multiplier(l, world); });
    return m;
}

}  // namespace safeshard
