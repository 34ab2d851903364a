// A layout: how one parameter is cut for tensor parallelism, as a small constexpr value.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>

#include "safeshard/config.hpp"

namespace safeshard {

enum class layout_kind : std::uint8_t {
    replicated,     // every rank holds the whole tensor
    split,          // even split along dim
    padded_split,   // dim padded to a multiple, then split evenly (vocabulary)
    strided_split,  // dim cut in world*stride pieces, rank r takes r, r+world, ...
    fused,          // concatenation along dim of each part's own split
    gqa_qkv,        // attention q/k/v rows (weights and biases), by whole heads
    gqa_o,          // o_proj's input dim, the same q heads as gqa_qkv
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
    std::uint64_t units[max_parts] = {};  // fused: each part's split must be whole units
    std::uint64_t heads = 0;              // gqa: query heads H
    std::uint64_t kv_heads = 0;           // gqa: key/value heads KV
    std::uint64_t head_dim = 0;           // gqa: d (may differ from hidden / H)
    std::uint64_t kv_multiplier = 0;      // gqa interleaved: m, 0 = max(1, world / KV)

    friend constexpr bool operator==(const layout&, const layout&) = default;
};

// ---- factories (CuTe style): the same code at compile time and at run time ----

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr layout make_replicated() noexcept { return {}; }

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr layout make_split(std::uint8_t dim) noexcept {
    layout l;
    l.kind = layout_kind::split;
    l.dim = dim;
    return l;
}

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

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr layout make_strided_split(
    std::uint8_t dim, std::uint64_t stride) noexcept {
    layout l;
    l.kind = layout_kind::strided_split;
    l.dim = dim;
    l.stride = stride;
    return l;
}

// Parts from separate source tensors: sizes come from the sources, unit 1.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr layout make_fused(std::uint8_t dim) noexcept {
    layout l;
    l.kind = layout_kind::fused;
    l.dim = dim;
    return l;
}

// Parts with stated sizes (and units): one fused source cut by the sizes, or as many
// sources as parts whose extents along dim must equal the sizes. More than max_parts
// parts mark the value invalid: slice() answers invalid_parameters.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr layout make_fused(
    std::uint8_t dim, const std::uint64_t* sizes, std::size_t count,
    const std::uint64_t* units = nullptr) noexcept {
    layout l = make_fused(dim);
    if (count > layout::max_parts) {
        l.part_count = 0xff;  // refused by slice() as invalid_parameters
        return l;
    }
    l.part_count = static_cast<std::uint8_t>(count);
    for (std::size_t i = 0; i < count; ++i) {
        l.parts[i] = sizes[i];
        l.units[i] = units ? units[i] : 1;
    }
    return l;
}

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr layout make_gqa_qkv(
    kv_convention c, std::uint64_t heads, std::uint64_t kv_heads, std::uint64_t head_dim,
    gqa_part part = gqa_part::qkv, std::uint64_t kv_multiplier = 0) noexcept {
    layout l;
    l.kind = layout_kind::gqa_qkv;
    l.dim = 0;
    l.convention = c;
    l.part = part;
    l.heads = heads;
    l.kv_heads = kv_heads;
    l.head_dim = head_dim;
    l.kv_multiplier = kv_multiplier;
    return l;
}

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr layout make_gqa_o(
    kv_convention c, std::uint64_t heads, std::uint64_t kv_heads, std::uint64_t head_dim,
    std::uint64_t kv_multiplier = 0) noexcept {
    layout l = make_gqa_qkv(c, heads, kv_heads, head_dim, gqa_part::q, kv_multiplier);
    l.kind = layout_kind::gqa_o;
    l.dim = 1;
    return l;
}

// ---- names ----

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

[[nodiscard]] constexpr std::string_view to_string(layout_kind k) noexcept {
    switch (k) {
        case layout_kind::replicated: return "replicated";
        case layout_kind::split: return "split";
        case layout_kind::padded_split: return "padded_split";
        case layout_kind::strided_split: return "strided_split";
        case layout_kind::fused: return "fused";
        case layout_kind::gqa_qkv: return "gqa_qkv";
        case layout_kind::gqa_o: return "gqa_o";
    }
    return "?";
}

// The stable short name for the CLI's JSON: "split<1>", "padded_split<0,64>",
// "strided_split<0,2>", "fused<0>", "gqa_qkv<kv_contiguous>", "gqa_o<kv_interleaved>".
[[nodiscard]] inline std::string name(const layout& l) {
    std::string s(to_string(l.kind));
    const std::string d = std::to_string(l.dim);
    switch (l.kind) {
        case layout_kind::replicated: return s;
        case layout_kind::split:
        case layout_kind::fused: return s + "<" + d + ">";
        case layout_kind::padded_split: return s + "<" + d + "," + std::to_string(l.multiple) + ">";
        case layout_kind::strided_split: return s + "<" + d + "," + std::to_string(l.stride) + ">";
        case layout_kind::gqa_qkv:
        case layout_kind::gqa_o: return s + "<" + std::string(to_string(l.convention)) + ">";
    }
    return s;
}

// The name plus the run-time parameters, in one line.
[[nodiscard]] inline std::string to_string(const layout& l) {
    std::string s = name(l);
    if (l.kind == layout_kind::fused && l.part_count != 0 && l.part_count <= layout::max_parts) {
        s += " parts=";
        for (std::size_t i = 0; i < l.part_count; ++i) {
            if (i) s += '+';
            s += std::to_string(l.parts[i]);
            if (l.units[i] > 1) s += "/" + std::to_string(l.units[i]);
        }
    }
    if (l.kind == layout_kind::gqa_qkv || l.kind == layout_kind::gqa_o) {
        s += " H=" + std::to_string(l.heads) + " KV=" + std::to_string(l.kv_heads) +
             " d=" + std::to_string(l.head_dim);
        if (l.kv_multiplier) s += " m=" + std::to_string(l.kv_multiplier);
        if (l.kind == layout_kind::gqa_qkv) s += " part=" + std::string(to_string(l.part));
    }
    return s;
}

inline std::ostream& operator<<(std::ostream& os, const layout& l) { return os << to_string(l); }
inline std::ostream& operator<<(std::ostream& os, kv_convention c) { return os << to_string(c); }

}  // namespace safeshard
