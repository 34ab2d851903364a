// gqa_qkv / gqa_o: attention q, k, v rows and o_proj's input dim, cut by whole heads.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "safeshard/config.hpp"
#include "safeshard/core/checked.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/shard/layout_value.hpp"
#include "safeshard/shard/layouts/kind.hpp"
#include "safeshard/shard/segment.hpp"

namespace safeshard {

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

// The KV multiplier m of the interleaved convention: as given, else max(1, world / KV).
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint64_t resolved_kv_multiplier(
    const layout& l, std::uint32_t world) noexcept {
    if (l.kv_multiplier) return l.kv_multiplier;
    return l.kv_heads && world / l.kv_heads > 1 ? world / l.kv_heads : 1;
}

namespace detail {
// What gqa_qkv and gqa_o share: the heads' arithmetic, texts and fields.
template <class Kind>
struct gqa_kind_base : layout_kind_defaults {
    SAFESHARD_HOST_DEVICE static constexpr layout_status cut(const layout& l,
                                                             const std::uint64_t* extents,
                                                             std::size_t n, std::uint32_t world,
                                                             std::uint32_t rank, segment_list& runs,
                                                             std::uint64_t& local_extent) noexcept {
        return plan_gqa(l, extents, n, world, rank, runs, local_extent);
    }
    SAFESHARD_HOST_DEVICE static constexpr void slice(const layout& l, const shape* sources,
                                                      std::size_t n, std::uint32_t world,
                                                      std::uint32_t rank,
                                                      slice_result& r) noexcept {
        slice_along_dim<Kind>(l, sources, n, world, rank, r);
    }

    static std::string parameters(const layout& l) {
        return "<" + std::string(to_string(l.convention)) + ">";
    }
    static std::string details(const layout& l) {
        std::string s = " H=" + std::to_string(l.heads) + " KV=" + std::to_string(l.kv_heads) +
                        " d=" + std::to_string(l.head_dim);
        if (l.kv_multiplier) s += " m=" + std::to_string(l.kv_multiplier);
        if (l.kind == layout_kind::gqa_qkv) s += " part=" + std::string(to_string(l.part));
        return s;
    }
    static std::string reason(const layout& l, const slice_failure& f, layout_status st) {
        const std::string w = std::to_string(f.world), d = f.dim(l);
        switch (st) {
            case layout_status::source_count:
                if (l.kind != layout_kind::gqa_qkv || l.part != gqa_part::qkv) return {};
                return "takes three sources (q, k, v) or one fused source, not " +
                       std::to_string(f.sources.size());
            case layout_status::shape_mismatch: {
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
            case layout_status::heads_indivisible:
                return "query heads H=" + std::to_string(l.heads) +
                       " must be a multiple of KV=" + std::to_string(l.kv_heads) +
                       " and split into whole heads (and KV groups) " + "over world " + w + " (" +
                       d + ")";
            case layout_status::kv_heads_mismatch:
                if (l.convention == kv_interleaved)
                    return "KV=" + std::to_string(l.kv_heads) + " times kv_size_multiplier " +
                           std::to_string(resolved_kv_multiplier(l, f.world)) +
                           " must be a positive multiple of world " + w + " (" + d + ")";
                return "world " + w + " must be a multiple of KV=" + std::to_string(l.kv_heads) +
                       " or KV a multiple of world (" + d + ")";
            default: return {};
        }
    }

    static constexpr std::array<std::string_view, 6> json_fields = {
        "convention", "part", "heads", "kv_heads", "head_dim", "kv_multiplier"};
    template <class W>
    static void write_fields(const layout& l, W& w) {
        w.text("convention", to_string(l.convention));
        w.text("part", to_string(l.part));
        w.number("heads", l.heads);
        w.number("kv_heads", l.kv_heads);
        w.number("head_dim", l.head_dim);
        w.number("kv_multiplier", l.kv_multiplier);
    }
    template <class R>
    static void read_fields(R& r, layout& l) {
        l.heads = r.number_or_zero("heads");
        l.kv_heads = r.number_or_zero("kv_heads");
        l.head_dim = r.number_or_zero("head_dim");
        l.kv_multiplier = r.number_or_zero("kv_multiplier");
        if (const auto text = r.text("convention")) {
            const auto c = parse_kv_convention(*text);
            if (!c) r.fail("unknown convention '" + std::string(*text) + "'");
            l.convention = *c;
        }
        if (const auto text = r.text("part")) {
            bool found = false;
            for (const gqa_part p : {gqa_part::qkv, gqa_part::q, gqa_part::k, gqa_part::v})
                if (to_string(p) == *text) {
                    l.part = p;
                    found = true;
                }
            if (!found) r.fail("unknown part '" + std::string(*text) + "'");
        }
    }

    // The rank record's KV multiplier (resolved), from the first GQA tensor with KV heads.
    static std::uint64_t kv_multiplier(const layout& l, std::uint32_t world) {
        return l.kv_heads ? resolved_kv_multiplier(l, world) : 0;
    }
};
}  // namespace detail

struct gqa_qkv_kind : detail::gqa_kind_base<gqa_qkv_kind> {
    static constexpr layout_kind id = layout_kind::gqa_qkv;
    static constexpr std::string_view name = "gqa_qkv";
};
static_assert(layout_kind_traits<gqa_qkv_kind>);

struct gqa_o_kind : detail::gqa_kind_base<gqa_o_kind> {
    static constexpr layout_kind id = layout_kind::gqa_o;
    static constexpr std::string_view name = "gqa_o";
};
static_assert(layout_kind_traits<gqa_o_kind>);

}  // namespace safeshard
