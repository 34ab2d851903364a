// Property tests: for random shapes, element sizes and worlds 1-16, every layout's slice
// maps agree with a naive per-element oracle, cover the sources exactly as the layout says,
// write every local element once (or zero-fill it), and invert bit-exactly.
#include <doctest/doctest.h>

#include <cstring>
#include <optional>
#include <random>
#include <sstream>
#include <utility>
#include <vector>

#include "safeshard/shard/apply.hpp"
#include "safeshard/shard/slice.hpp"

using namespace safeshard;

namespace {

using rng = std::mt19937_64;

std::uint64_t pick(rng& g, std::uint64_t lo, std::uint64_t hi) {
    return std::uniform_int_distribution<std::uint64_t>(lo, hi)(g);
}

// Where local index i along dim comes from: (source, index along dim), or nullopt (zero).
using dim_source = std::optional<std::pair<std::uint8_t, std::uint64_t>>;

// Heads written straight from the documented formulas, independently of select_gqa_heads.
std::pair<std::vector<std::uint64_t>, std::vector<std::uint64_t>> naive_heads(const layout& l,
                                                                              std::uint64_t w,
                                                                              std::uint64_t r) {
    const std::uint64_t h = l.heads, kv = l.kv_heads;
    std::vector<std::uint64_t> q, k;
    if (l.convention == kv_contiguous) {
        for (std::uint64_t i = r * h / w; i < (r + 1) * h / w; ++i) q.push_back(i);
        if (w >= kv)
            k.push_back(r / (w / kv));
        else
            for (std::uint64_t i = r * kv / w; i < (r + 1) * kv / w; ++i) k.push_back(i);
    } else {
        const std::uint64_t m =
            l.kv_multiplier ? l.kv_multiplier : std::max<std::uint64_t>(1, w / kv);
        const std::uint64_t kvr = kv * m / w, g = h / kv, gr = (h / w) / kvr;
        for (std::uint64_t j = 0; j < kvr; ++j) {
            const std::uint64_t p = r * kvr + j;
            for (std::uint64_t x = 0; x < gr; ++x) q.push_back((p % kv) * g + (p / kv) * gr + x);
            k.push_back(p % kv);
        }
    }
    return {q, k};
}

std::vector<dim_source> oracle(const layout& l, const std::vector<std::uint64_t>& ext,
                               std::uint64_t w, std::uint64_t r) {
    std::vector<dim_source> out;
    // loc rows a rank, rank r's from row r·loc on, zeros past the extent.
    auto padded_rows = [&](std::uint64_t loc) {
        for (std::uint64_t i = 0; i < loc; ++i) {
            const std::uint64_t g = r * loc + i;
            if (g < ext[0])
                out.emplace_back(std::pair{std::uint8_t{0}, g});
            else
                out.emplace_back(std::nullopt);
        }
    };
    switch (l.kind) {
        case layout_kind::replicated:
            for (std::uint64_t i = 0; i < ext[0]; ++i)
                out.emplace_back(std::pair{std::uint8_t{0}, i});
            break;
        case layout_kind::split:
            for (std::uint64_t i = 0; i < ext[0] / w; ++i)
                out.emplace_back(std::pair{std::uint8_t{0}, r * (ext[0] / w) + i});
            break;
        case layout_kind::padded_split: {
            const std::uint64_t padded = (ext[0] + l.multiple - 1) / l.multiple * l.multiple;
            padded_rows(padded / w);
            break;
        }
        case layout_kind::ceil_split: {  // vLLM's cdiv(units, world) units a rank
            const std::uint64_t u = l.units[0], units = ext[0] / u;
            padded_rows((units + w - 1) / w * u);
            break;
        }
        case layout_kind::strided_split: {
            const std::uint64_t piece = ext[0] / (w * l.stride);
            for (std::uint64_t i = 0; i < piece * l.stride; ++i)
                out.emplace_back(
                    std::pair{std::uint8_t{0}, (r + (i / piece) * w) * piece + i % piece});
            break;
        }
        case layout_kind::fused: {
            const bool one = l.part_count > 0 && ext.size() == 1;
            const std::size_t parts = l.part_count ? l.part_count : ext.size();
            std::uint64_t base = 0;
            for (std::size_t p = 0; p < parts; ++p) {
                const std::uint64_t size = l.part_count ? l.parts[p] : ext[p];
                for (std::uint64_t i = 0; i < size / w; ++i)
                    out.emplace_back(std::pair{static_cast<std::uint8_t>(one ? 0 : p),
                                               base + r * (size / w) + i});
                if (one) base += size;
            }
            break;
        }
        case layout_kind::gqa_qkv:
        case layout_kind::gqa_o: {
            const auto [q, k] = naive_heads(l, w, r);
            const std::uint64_t d = l.head_dim;
            auto add = [&](const std::vector<std::uint64_t>& hs, std::uint8_t src,
                           std::uint64_t base) {
                for (auto h : hs)
                    for (std::uint64_t x = 0; x < d; ++x)
                        out.emplace_back(std::pair{src, base + h * d + x});
            };
            const gqa_part part = l.kind == layout_kind::gqa_o ? gqa_part::q : l.part;
            if (part == gqa_part::q) add(q, 0, 0);
            if (part == gqa_part::k || part == gqa_part::v) add(k, 0, 0);
            if (part == gqa_part::qkv) {
                const bool one = ext.size() == 1;
                add(q, 0, 0);
                add(k, one ? 0 : 1, one ? l.heads * d : 0);
                add(k, one ? 0 : 2, one ? (l.heads + l.kv_heads) * d : 0);
            }
            break;
        }
    }
    return out;
}

// How often each source element is copied over all ranks, by the layout's definition.
std::uint64_t expected_cover(const layout& l, std::size_t src, std::uint64_t idx, std::uint64_t w) {
    switch (l.kind) {
        case layout_kind::replicated: return w;
        case layout_kind::gqa_qkv: {
            const bool kv_rows =
                l.part == gqa_part::k || l.part == gqa_part::v ||
                (l.part == gqa_part::qkv && (src > 0 || idx >= l.heads * l.head_dim));
            if (!kv_rows) return 1;
            if (l.convention == kv_contiguous) return w >= l.kv_heads ? w / l.kv_heads : 1;
            return l.kv_multiplier ? l.kv_multiplier : std::max<std::uint64_t>(1, w / l.kv_heads);
        }
        default: return 1;
    }
}

struct case_t {
    layout l;
    std::vector<shape> sources;
    std::uint32_t world;
};

// A random layout and source shapes that fit it at a random world.
case_t random_case(rng& g, layout_kind kind) {
    case_t c;
    c.world = static_cast<std::uint32_t>(pick(g, 1, 16));
    const std::uint64_t w = c.world;
    const std::size_t rank = pick(g, 1, 4);
    std::uint8_t dim = static_cast<std::uint8_t>(pick(g, 0, rank - 1));
    std::vector<std::uint64_t> dims(rank);
    for (auto& d : dims) d = pick(g, 1, 4);
    std::uint64_t along = 0;
    switch (kind) {
        case layout_kind::replicated:
            c.l = make_replicated();
            along = pick(g, 1, 6);
            dim = 0;
            break;
        case layout_kind::split:
            c.l = make_split(dim);
            along = w * pick(g, 0, 3);
            break;
        case layout_kind::padded_split:
            c.l = make_padded_split(dim, w * pick(g, 1, 3));
            along = pick(g, 1, 40);
            break;
        case layout_kind::ceil_split:  // any count of units, more ranks than units too
            c.l = make_ceil_split(dim, pick(g, 1, 4));
            along = c.l.units[0] * pick(g, 1, 20);
            break;
        case layout_kind::strided_split:
            c.l = make_strided_split(dim, pick(g, 1, 4));
            along = w * c.l.stride * pick(g, 1, 2);
            break;
        case layout_kind::fused: {
            const std::size_t parts = pick(g, 1, 4);
            std::uint64_t sizes[layout::max_parts] = {}, units[layout::max_parts] = {};
            for (std::size_t p = 0; p < parts; ++p) {
                units[p] = pick(g, 1, 2);
                sizes[p] = w * units[p] * pick(g, 1, 2);
            }
            if (pick(g, 0, 1)) {  // one fused source cut by part sizes
                c.l = make_fused(dim, sizes, parts, units);
                for (std::size_t p = 0; p < parts; ++p) along += sizes[p];
            } else {  // one source per part
                c.l = make_fused(dim);
                for (std::size_t p = 0; p < parts; ++p) {
                    dims[dim] = sizes[p];
                    c.sources.push_back(shape::from(dims));
                }
            }
            break;
        }
        case layout_kind::gqa_qkv:
        case layout_kind::gqa_o: {
            const kv_convention conv = pick(g, 0, 1) ? kv_interleaved : kv_contiguous;
            // KV divides world or world divides KV; H a multiple of world and KV.
            std::uint64_t kv = 0;
            if (pick(g, 0, 1)) {
                std::vector<std::uint64_t> divs;
                for (std::uint64_t x = 1; x <= w; ++x)
                    if (w % x == 0) divs.push_back(x);
                kv = divs[pick(g, 0, divs.size() - 1)];
            } else {
                kv = w * pick(g, 1, 2);
            }
            std::uint64_t m = 0;
            if (conv == kv_interleaved && w > kv && pick(g, 0, 2) == 0) m = (w / kv) * 2;
            const std::uint64_t lcm = std::lcm(w, kv) * (m ? 2 : 1);
            const std::uint64_t h = lcm * pick(g, 1, 2);
            const std::uint64_t d = pick(g, 1, 3);
            if (kind == layout_kind::gqa_o) {
                c.l = make_gqa_o(conv, h, kv, d, m);
                dims.resize(std::max<std::size_t>(rank, 2));
                c.l.dim = 1;
                dim = 1;
                along = h * d;
            } else {
                const auto part = static_cast<gqa_part>(pick(g, 0, 3));
                c.l = make_gqa_qkv(conv, h, kv, d, part, m);
                dim = 0;
                if (part == gqa_part::q)
                    along = h * d;
                else if (part != gqa_part::qkv)
                    along = kv * d;
                else if (pick(g, 0, 1))
                    along = (h + 2 * kv) * d;
                else {
                    for (std::uint64_t e : {h * d, kv * d, kv * d}) {
                        dims[0] = e;
                        c.sources.push_back(shape::from(dims));
                    }
                }
            }
            break;
        }
    }
    if (c.sources.empty()) {
        dims[dim] = along;
        c.sources.push_back(shape::from(dims));
    }
    return c;
}

std::uint64_t count(const shape& s) { return *s.element_count(); }

void check_case(const case_t& c, std::size_t es, rng& g) {
    const std::uint32_t w = c.world;
    const std::size_t n = c.sources.size();
    std::ostringstream ctx;
    ctx << describe(c.l, c.sources, w, 0) << " elem " << es;
    INFO(ctx.str());

    std::vector<std::vector<std::byte>> src(n), back(n);
    std::vector<std::vector<std::uint64_t>> cover(n);
    std::vector<std::span<const std::byte>> src_spans;
    std::vector<std::span<std::byte>> back_spans;
    for (std::size_t i = 0; i < n; ++i) {
        src[i].resize(count(c.sources[i]) * es);
        for (auto& b : src[i]) b = static_cast<std::byte>(pick(g, 0, 255));
        back[i].assign(src[i].size(), std::byte{0});
        cover[i].assign(count(c.sources[i]), 0);
        src_spans.emplace_back(src[i]);
        back_spans.emplace_back(back[i]);
    }
    std::vector<std::uint64_t> ext;
    const std::size_t dim = c.l.kind == layout_kind::replicated ? 0 : c.l.dim;
    for (const auto& s : c.sources) ext.push_back(s.rank() ? s[dim] : 1);

    for (std::uint32_t r = 0; r < w; ++r) {
        const slice_result res = slice(c.l, c.sources, w, r);
        REQUIRE_MESSAGE(res.ok(), to_string(res.status));
        const std::uint64_t local_n = count(res.local);
        std::vector<std::byte> local(local_n * es, std::byte{0xA5});
        apply(res.map, src_spans, local, es);

        // Each local element written once or zero-filled.
        std::vector<int> written(local_n, 0);
        for (const auto& b : res.map) {
            for (std::uint64_t row = 0; row < b.rows; ++row)
                for (std::uint64_t x = 0; x < b.row_elems; ++x) {
                    ++written[b.dst_offset + row * b.dst_row_stride + x];
                    ++cover[b.source][b.src_offset + row * b.src_row_stride + x];
                }
        }
        for (std::size_t z = 0; z < res.map.zero_count(); ++z) {
            const zero_box& zb = res.map.zero(z);
            for (std::uint64_t row = 0; row < zb.rows; ++row)
                for (std::uint64_t x = 0; x < zb.row_elems; ++x)
                    ++written[zb.dst_offset + row * zb.dst_row_stride + x];
        }
        for (auto v : written) REQUIRE(v == 1);

        // Against the oracle, element by element.
        const std::vector<dim_source> along = oracle(c.l, ext, w, r);
        REQUIRE(along.size() == (res.local.rank() ? res.local[dim] : 1));
        std::uint64_t outer = 1, inner = 1;
        for (std::size_t j = 0; j < dim; ++j) outer *= res.local[j];
        for (std::size_t j = dim + 1; j < res.local.rank(); ++j) inner *= res.local[j];
        if (c.l.kind == layout_kind::replicated)
            inner = local_n / (along.empty() ? 1 : along.size());
        for (std::uint64_t o = 0; o < outer; ++o)
            for (std::uint64_t i = 0; i < along.size(); ++i)
                for (std::uint64_t x = 0; x < inner; ++x) {
                    const std::uint64_t li = (o * along.size() + i) * inner + x;
                    const std::byte* got = local.data() + li * es;
                    if (!along[i]) {
                        for (std::size_t b = 0; b < es; ++b) REQUIRE(got[b] == std::byte{0});
                        continue;
                    }
                    const auto [s, idx] = *along[i];
                    const std::uint64_t si = (o * ext[s] + idx) * inner + x;
                    REQUIRE(std::memcmp(got, src[s].data() + si * es, es) == 0);
                }
        apply_inverse(res.map, local, back_spans, es);
    }
    for (std::size_t i = 0; i < n; ++i) {
        REQUIRE(back[i] == src[i]);
        std::uint64_t inner = 1;
        for (std::size_t j = dim + 1; j < c.sources[i].rank(); ++j) inner *= c.sources[i][j];
        for (std::uint64_t e = 0; e < cover[i].size(); ++e) {
            const std::uint64_t idx = c.sources[i].rank() ? (e / inner) % ext[i] : 0;
            REQUIRE(cover[i][e] == expected_cover(c.l, i, idx, w));
        }
    }
}

}  // namespace

TEST_CASE("property: every layout over random shapes, element sizes and worlds 1-16") {
    rng g(20261123);
    const layout_kind kinds[] = {layout_kind::replicated,   layout_kind::split,
                                 layout_kind::padded_split, layout_kind::strided_split,
                                 layout_kind::fused,        layout_kind::gqa_qkv,
                                 layout_kind::gqa_o,        layout_kind::ceil_split};
    const std::size_t sizes[] = {1, 2, 4, 8};  // u8/f8, bf16, f32, f64 widths
    for (const auto kind : kinds) {
        CAPTURE(to_string(kind));
        for (int it = 0; it < 150; ++it) {
            const case_t c = random_case(g, kind);
            check_case(c, sizes[pick(g, 0, 3)], g);
        }
    }
}

TEST_CASE("property: an indivisible extent is refused exactly when the layout says") {
    rng g(7);
    for (int it = 0; it < 500; ++it) {
        const std::uint32_t w = static_cast<std::uint32_t>(pick(g, 1, 16));
        const std::uint64_t e = pick(g, 0, 100), m = pick(g, 1, 70), s = pick(g, 1, 4);
        const std::uint32_t r = static_cast<std::uint32_t>(pick(g, 0, w - 1));
        CHECK(slice(make_split(0), shape{e, 3}, w, r).ok() == (e % w == 0));
        const std::uint64_t padded = (e + m - 1) / m * m;
        CHECK(slice(make_padded_split(0, m), shape{e}, w, r).ok() == (padded % w == 0));
        CHECK(slice(make_strided_split(1, s), shape{2, e}, w, r).ok() == (e % (w * s) == 0));
    }
}

TEST_CASE("scalars and empty tensors") {
    const auto s = slice(replicated::value, shape{}, 4, 3);
    REQUIRE(s.ok());
    CHECK(s.map.size() == 1);
    CHECK(s.map[0].row_elems == 1);
    const auto e = slice(split<0>::value, shape{0, 5}, 4, 3);
    REQUIRE(e.ok());
    CHECK(e.local == shape{0, 5});
    CHECK(e.map.empty());
}
