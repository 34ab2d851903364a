// gqa_qkv / gqa_o: attention q, k, v rows and o_proj's input dim, cut by whole heads.
#pragma once

#include <cstddef>
#include <cstdint>

#include "safeshard/core/checked.hpp"
#include "safeshard/shard/layout.hpp"
#include "safeshard/shard/segment.hpp"

namespace safeshard {

// Tags: head counts usually come from config.json, so they are arguments of make();
// with constants the result is a constant expression.
template <kv_convention Convention = kv_contiguous>
struct gqa_qkv {
    static constexpr kv_convention convention = Convention;
    [[nodiscard]] SAFESHARD_HOST_DEVICE static constexpr layout make(
        std::uint64_t heads, std::uint64_t kv_heads, std::uint64_t head_dim,
        gqa_part part = gqa_part::qkv, std::uint64_t kv_multiplier = 0) noexcept {
        return make_gqa_qkv(Convention, heads, kv_heads, head_dim, part, kv_multiplier);
    }
};

template <kv_convention Convention = kv_contiguous>
struct gqa_o {
    static constexpr kv_convention convention = Convention;
    [[nodiscard]] SAFESHARD_HOST_DEVICE static constexpr layout make(
        std::uint64_t heads, std::uint64_t kv_heads, std::uint64_t head_dim,
        std::uint64_t kv_multiplier = 0) noexcept {
        return make_gqa_o(Convention, heads, kv_heads, head_dim, kv_multiplier);
    }
};

// The heads one rank holds, as runs of head indices (source 0): query heads in local order,
// and the KV heads they attend to (k and v alike).
struct gqa_selection {
    segment_list q{};
    segment_list kv{};
};

// Chooses the heads of `rank`. kv_contiguous (vLLM, Megatron): q heads [r*H/w, (r+1)*H/w);
// world >= KV: one KV head r / (w / KV) (w a multiple of KV), else KV/w contiguous heads.
// kv_interleaved (optimum-neuron): m = max(1, w / KV) unless given, KVr = KV*m/w; for
// j < KVr, p = r*KVr + j holds KV head p mod KV and q heads (p mod KV)*G + (p div KV)*Gr
// + [0, Gr), G = H / KV, Gr = (H / w) / KVr.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr layout_status select_gqa_heads(
    const layout& l, std::uint32_t world, std::uint32_t rank, gqa_selection& out) noexcept {
    const std::uint64_t h = l.heads, kv = l.kv_heads, w = world, r = rank;
    if (h == 0 || kv == 0 || l.head_dim == 0 || w == 0) return layout_status::invalid_parameters;
    if (h % kv != 0 || h % w != 0) return layout_status::heads_indivisible;
    const std::uint64_t hr = h / w;
    if (l.convention == kv_contiguous) {
        out.q.push(segment{0, r * hr, hr});
        if (w >= kv) {
            if (w % kv != 0) return layout_status::kv_heads_mismatch;
            out.kv.push(segment{0, r / (w / kv), 1});
        } else {
            if (kv % w != 0) return layout_status::kv_heads_mismatch;
            out.kv.push(segment{0, r * (kv / w), kv / w});
        }
        return layout_status::ok;
    }
    const std::uint64_t m = l.kv_multiplier ? l.kv_multiplier : (w / kv > 1 ? w / kv : 1);
    std::uint64_t kvm = 0;
    if (mul_overflows(kv, m, kvm)) return layout_status::overflow;
    if (kvm % w != 0 || kvm < w) return layout_status::kv_heads_mismatch;
    const std::uint64_t kvr = kvm / w;
    if (hr % kvr != 0) return layout_status::heads_indivisible;
    const std::uint64_t gr = hr / kvr, g = h / kv;
    for (std::uint64_t j = 0; j < kvr; ++j) {
        const std::uint64_t p = r * kvr + j, k = p % kv, t = p / kv;
        if (!out.q.push(segment{0, k * g + t * gr, gr}) || !out.kv.push(segment{0, k, 1}))
            return layout_status::too_many_pieces;
    }
    return layout_status::ok;
}

namespace detail {
// Appends head runs, scaled to rows of d, from source `src` starting at row `base`.
SAFESHARD_HOST_DEVICE constexpr bool push_heads(const segment_list& heads, std::uint8_t src,
                                                std::uint64_t base, std::uint64_t d,
                                                segment_list& runs) noexcept {
    for (const auto& s : heads)
        if (!runs.push(segment{src, base + s.start * d, s.length * d})) return false;
    return true;
}

SAFESHARD_HOST_DEVICE constexpr layout_status plan_gqa(const layout& l,
                                                       const std::uint64_t* extents, std::size_t n,
                                                       std::uint32_t world, std::uint32_t rank,
                                                       segment_list& runs,
                                                       std::uint64_t& local_extent) noexcept {
    gqa_selection sel;
    if (const auto st = select_gqa_heads(l, world, rank, sel); st != layout_status::ok) return st;
    const std::uint64_t d = l.head_dim;
    std::uint64_t qrows = 0, kvrows = 0, all = 0;
    if (mul_overflows(l.heads, d, qrows) || mul_overflows(l.kv_heads, d, kvrows) ||
        add_overflows(qrows, kvrows, all) || add_overflows(all, kvrows, all))
        return layout_status::overflow;

    bool fits = true;
    const gqa_part part = l.kind == layout_kind::gqa_o ? gqa_part::q : l.part;
    switch (part) {
        case gqa_part::q:
            if (n != 1) return layout_status::source_count;
            if (extents[0] != qrows) return layout_status::shape_mismatch;
            fits = push_heads(sel.q, 0, 0, d, runs);
            break;
        case gqa_part::k:
        case gqa_part::v:
            if (n != 1) return layout_status::source_count;
            if (extents[0] != kvrows) return layout_status::shape_mismatch;
            fits = push_heads(sel.kv, 0, 0, d, runs);
            break;
        case gqa_part::qkv:
            if (n == 3) {
                if (extents[0] != qrows || extents[1] != kvrows || extents[2] != kvrows)
                    return layout_status::shape_mismatch;
                fits = push_heads(sel.q, 0, 0, d, runs) && push_heads(sel.kv, 1, 0, d, runs) &&
                       push_heads(sel.kv, 2, 0, d, runs);
            } else if (n == 1) {  // phi3's qkv_proj: rows H*d | KV*d | KV*d
                if (extents[0] != all) return layout_status::shape_mismatch;
                fits = push_heads(sel.q, 0, 0, d, runs) && push_heads(sel.kv, 0, qrows, d, runs) &&
                       push_heads(sel.kv, 0, qrows + kvrows, d, runs);
            } else {
                return layout_status::source_count;
            }
            break;
    }
    if (!fits) return layout_status::too_many_pieces;
    local_extent = runs.length();
    return layout_status::ok;
}
}  // namespace detail

}  // namespace safeshard
