// Compile-only: every kind of the list models layout_kind_traits, the ids are the layout
// values' kinds, and dispatch over the list is a constant expression.
#include "safeshard/shard/layout.hpp"
#include "safeshard/shard/layouts/kinds.hpp"
#include "safeshard/shard/slice.hpp"

namespace {
using namespace safeshard;

template <class... Kinds>
consteval bool all_model_the_concept(layout_kind_list<Kinds...>) {
    return (layout_kind_traits<Kinds> && ...);
}
static_assert(all_model_the_concept(layout_kinds{}));
static_assert(layout_kinds::size == 8);

// Each kind's traits carry the id its factories put in the value.
static_assert(split_kind::id == make_split(0).kind);
static_assert(padded_split_kind::id == make_padded_split(0).kind);
static_assert(ceil_split_kind::id == make_ceil_split(0, 32).kind);
static_assert(strided_split_kind::id == make_strided_split(0, 2).kind);
static_assert(fused_kind::id == make_fused(0).kind);
static_assert(gqa_qkv_kind::id == make_gqa_qkv(kv_contiguous, 8, 2, 4).kind);
static_assert(gqa_o_kind::id == make_gqa_o(kv_contiguous, 8, 2, 4).kind);
static_assert(replicated_kind::id == make_replicated().kind);

// Dispatch and names in constant expressions.
static_assert(to_string(layout_kind::padded_split) == "padded_split");
static_assert(to_string(static_cast<layout_kind>(200)) == "?");
static_assert(!cuts_along_dim(layout_kind::replicated) && cuts_along_dim(layout_kind::gqa_o));
static_assert(!visit_layout_kind(static_cast<layout_kind>(200), [](auto) {}));
static_assert(slice(layout{.kind = static_cast<layout_kind>(200)}, shape{4, 4}, 2, 0).status ==
              layout_status::invalid_parameters);

// A type that lacks what a kind needs is not a kind.
struct not_a_kind {
    static constexpr layout_kind id = layout_kind::split;
};
static_assert(!layout_kind_traits<not_a_kind>);
static_assert(!layout_kind_arithmetic<layout_kind_defaults>);

}  // namespace
