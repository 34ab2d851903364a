// A layout: how one parameter is cut for tensor parallelism, as a small constexpr value;
// every kind of shard/layouts/kinds.hpp with its factory, and the layout's names.
#pragma once

#include <ostream>
#include <string>
#include <string_view>

#include "safeshard/shard/layout_value.hpp"
#include "safeshard/shard/layouts/kinds.hpp"

namespace safeshard {

[[nodiscard]] constexpr std::string_view to_string(layout_kind k) noexcept {
    std::string_view s = "?";
    visit_layout_kind(k, [&]<class K>(K) { s = K::name; });
    return s;
}

// The stable short name for the CLI's JSON: "split<1>", "padded_split<0,64>",
// "strided_split<0,2>", "fused<0>", "gqa_qkv<kv_contiguous>", "gqa_o<kv_interleaved>".
[[nodiscard]] inline std::string name(const layout& l) {
    std::string s(to_string(l.kind));
    visit_layout_kind(l.kind, [&]<class K>(K) { s += K::parameters(l); });
    return s;
}

// The name plus the run-time parameters, in one line.
[[nodiscard]] inline std::string to_string(const layout& l) {
    std::string s = name(l);
    visit_layout_kind(l.kind, [&]<class K>(K) { s += K::details(l); });
    return s;
}

inline std::ostream& operator<<(std::ostream& os, const layout& l) { return os << to_string(l); }

}  // namespace safeshard
