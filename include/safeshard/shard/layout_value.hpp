// The layout value: how one parameter is cut for tensor parallelism, as a small constexpr
// struct. What each kind means and computes lives in its header under shard/layouts/; the
// list of kinds is shard/layouts/kinds.hpp; shard/layout.hpp brings them all.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string_view>

#include "safeshard/config.hpp"

namespace safeshard {

// A kind's id: one enumerator per kind of shard/layouts/kinds.hpp (its traits' `id`).
enum class layout_kind : std::uint8_t {
    replicated,     // every rank holds the whole tensor
    split,          // even split along dim
    padded_split,   // dim padded to a multiple, then split evenly (vocabulary)
    strided_split,  // dim cut in world*stride pieces, rank r takes r, r+world, ...
    fused,          // concatenation along dim of each part's own split
    gqa_qkv,        // attention q/k/v rows (weights and biases), by whole heads
    gqa_o,          // o_proj's input dim, the same q heads as gqa_qkv
    ceil_split,     // whole units, ceil(units / world) a rank, the last ones zero-padded
};

// How KV heads and their query groups are spread over ranks when the engines differ.
enum class kv_convention : std::uint8_t {
    kv_contiguous,   // vLLM, Megatron: contiguous q heads, KV head rank / (world / KV)
    kv_interleaved,  // optimum-neuron GQAQKVColumnParallelLinear
};
inline constexpr kv_convention kv_contiguous = kv_convention::kv_contiguous;
inline constexpr kv_convention kv_interleaved = kv_convention::kv_interleaved;

// Which of q, k, v a gqa_qkv parameter holds: all three fused ([q_r; k_r; v_r]) or one.
enum class gqa_part : std::uint8_t { qkv, q, k, v };

// Every field is a plain number so the value is a constant expression, comparable, and
// copyable into device code. Fields that a kind does not use stay zero.
struct layout {
    static constexpr std::size_t max_parts = 4;

    layout_kind kind = layout_kind::replicated;
    std::uint8_t dim = 0;
    std::uint8_t part_count = 0;  // fused: 0 = one part per source tensor
    kv_convention convention = kv_contiguous;
    gqa_part part = gqa_part::qkv;
    std::uint64_t multiple = 0;           // padded_split: pad dim to a multiple of this
    std::uint64_t stride = 0;             // strided_split: pieces per rank
    std::uint64_t parts[max_parts] = {};  // fused: part sizes along dim (one fused source)
    std::uint64_t units[max_parts] = {};  // fused: each part's split must be whole units;
                                          // split, ceil_split: units[0], the unit
    std::uint64_t heads = 0;              // gqa: query heads H
    std::uint64_t kv_heads = 0;           // gqa: key/value heads KV
    std::uint64_t head_dim = 0;           // gqa: d (may differ from hidden / H)
    std::uint64_t kv_multiplier = 0;      // gqa interleaved: m, 0 = max(1, world / KV)

    friend constexpr bool operator==(const layout&, const layout&) = default;
};

[[nodiscard]] constexpr std::string_view to_string(kv_convention c) noexcept {
    return c == kv_contiguous ? "kv_contiguous" : "kv_interleaved";
}

// Accepts `contiguous` / `interleaved` (and the enumerator names); nullopt otherwise.
[[nodiscard]] constexpr std::optional<kv_convention> parse_kv_convention(
    std::string_view s) noexcept {
    if (s == "contiguous" || s == "kv_contiguous") return kv_contiguous;
    if (s == "interleaved" || s == "kv_interleaved") return kv_interleaved;
    return std::nullopt;
}

[[nodiscard]] constexpr std::string_view to_string(gqa_part p) noexcept {
    switch (p) {
        case gqa_part::qkv: return "qkv";
        case gqa_part::q: return "q";
        case gqa_part::k: return "k";
        case gqa_part::v: return "v";
    }
    return "?";
}

inline std::ostream& operator<<(std::ostream& os, kv_convention c) { return os << to_string(c); }

}  // namespace safeshard
