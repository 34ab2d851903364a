// The loops of the dequantizing conversions: a quantized weight's values (FP8 E4M3, FP4 E2M1
// two a byte, low nibble first) times the scale of their block, rounded once to BF16, F16 or F32;
// and integer codes (U4, U8, I8) less their group's zero point, times its scale (times a
// scheme's constant: bitsandbytes' 1/127), likewise.
//
// Arithmetic as the formats' reference code does it: each value decoded to F32 (exactly: every
// E4M3 and E2M1 value is an F32), its block's scale decoded to F32 (F32, BF16 and F16 exactly,
// E4M3 exactly, E8M0 as 2^(e - 127) with 0xff NaN), then, for a two-level scale (NVFP4), the
// block scale times (ModelOpt's weight_scale_2) or divided by (compressed-tensors'
// weight_global_scale) the tensor's global scale in F32, then value x scale in F32, rounded to
// the target with round-to-nearest-even (detail/convert_elements.hpp's rounding, NaN rules
// included): what numpy computes for `(v.astype(float32) * s).astype(target)` with ml_dtypes'
// types.
//
// Where a value lies is told by its place in the rank's tensor, not by its address: a call
// converts `n` elements from element `at` of the destination (rows of `cols` values, experts of
// `rows` rows), and a dequant_view says where each companion's entry for a place is. The view
// points at host memory: the companions are read before the weights (load/loader.hpp).
//
// Only core/ is included (the CUDA engine converts while staging, on the host).
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "safeshard/core/dtype.hpp"
#include "safeshard/load/detail/convert_elements.hpp"
#include "safeshard/load/detail/convert_kernels.hpp"

namespace safeshard {

// A companion as a dequantizing conversion reads it: its bytes (the rank's part, in host
// memory), its dtype, and its grid over one expert's slab [rows, cols] of the rank's values:
// the entry of value (r, c) is (r / block_rows) x row_step + (c / block_cols) x col_step (a
// block of 0 being one entry for the whole dim; stored [rows-grid, cols-grid]: row_step the
// grid's columns, col_step 1; stored transposed, GPTQ's: row_step 1, col_step its rows);
// `per_part`: one entry for each part of a fused weight (per-tensor scales of q, k and v kept
// one a projection). Experts stacked: `per_expert` entries each. `bits` (zero points): each
// entry is an I32 word of 32 / bits values along the rows, row r's the (r % block_rows)-th from
// the low bits.
struct dequant_operand {
    const std::byte* data = nullptr;
    dtype type = dtype::f32;
    std::uint64_t block_rows = 0;
    std::uint64_t block_cols = 0;
    std::uint64_t row_step = 1;
    std::uint64_t col_step = 1;
    std::uint64_t per_expert = 1;
    std::uint32_t bits = 0;
    bool per_part = false;

    [[nodiscard]] bool present() const noexcept { return data != nullptr; }
};

// One destination's dequantization: the rank's tensor is `experts` slabs (1 unless stacked)
// of [rows, cols] values; `scales` scale each block, `global` (where present) each part; the
// rows of part p begin at part_rows[p] (ascending; one part: {0}). Integer values (GPTQ's,
// compressed-tensors', bitsandbytes'): w = (q - z) x s x post, z read from `zeros` plus
// `zero_adjust`, or `zero` where there are none; where `group_index` is present, column c's
// group is its entry c (act order), not c / the scales' block.
struct dequant_view {
    std::uint64_t rows = 0;
    std::uint64_t cols = 0;
    dequant_operand scales{};
    dequant_operand global{};
    std::vector<std::pair<std::uint64_t, std::uint32_t>> part_rows{{0, 0}};
    dequant_operand zeros{};
    dequant_operand group_index{};
    std::int32_t zero = 0;
    std::int32_t zero_adjust = 0;
    float post = 1.0f;

    // The part of a fused weight row r (of one slab) belongs to.
    [[nodiscard]] std::uint64_t part_of(std::uint64_t r) const noexcept {
        auto it = std::upper_bound(part_rows.begin(), part_rows.end(), r,
                                   [](std::uint64_t x, const auto& p) { return x < p.first; });
        return it == part_rows.begin() ? 0 : std::prev(it)->second;
    }
    // The entry of operand o for row r of expert e's slab, in column block `block` of o.
    [[nodiscard]] std::uint64_t entry_in(const dequant_operand& o, std::uint64_t e, std::uint64_t r,
                                         std::uint64_t block) const noexcept {
        const std::uint64_t i =
            o.per_part ? part_of(r)
                       : (o.block_rows ? r / o.block_rows : 0) * o.row_step + block * o.col_step;
        return e * o.per_expert + i;
    }
    // The entry of operand o for value (r, c) of expert e's slab.
    [[nodiscard]] std::uint64_t entry(const dequant_operand& o, std::uint64_t e, std::uint64_t r,
                                      std::uint64_t c) const noexcept {
        return entry_in(o, e, r, o.block_cols ? c / o.block_cols : 0);
    }
};

namespace detail {

namespace elem {

// E2M1 (ml_dtypes float4_e2m1fn: bias 1, no Inf or NaN) as F32 bits: 0, 0.5, 1, 1.5, 2, 3, 4, 6.
[[nodiscard]] constexpr std::uint32_t f4_e2m1_to_f32(std::uint8_t x) noexcept {
    const std::uint32_t a = x & 7u;
    const std::uint32_t normal = (((a >> 1) + 126u) << 23) | ((a & 1u) << 22);
    const std::uint32_t mag = select(a >= 2u, normal, select(a == 1u, 0x3f000000u, 0u));
    return (std::uint32_t{x} & 8u) << 28 | mag;
}

// E8M0 (ml_dtypes float8_e8m0fnu: 2^(e - 127), 0xff NaN) as F32 bits; 2^-127 is subnormal.
[[nodiscard]] constexpr std::uint32_t f8_e8m0_to_f32(std::uint8_t x) noexcept {
    return select(x == 0xffu, 0x7fc00000u, select(x == 0u, 0x00400000u, std::uint32_t{x} << 23));
}

}  // namespace elem

// A scale entry as F32. U8 scales are E8M0 (both microscaling formats store them so).
[[nodiscard]] inline float scale_as_f32(const std::byte* p, dtype t, std::uint64_t i) noexcept {
    std::uint32_t bits = 0;
    switch (t) {
        case dtype::f32: std::memcpy(&bits, p + i * 4, 4); break;
        case dtype::bf16:
        case dtype::f16: {
            std::uint16_t h = 0;
            std::memcpy(&h, p + i * 2, 2);
            bits = t == dtype::bf16 ? elem::bf16_to_f32(h) : elem::f16_to_f32(h);
            break;
        }
        case dtype::f8_e4m3: bits = elem::f8_e4m3_to_f32(static_cast<std::uint8_t>(p[i])); break;
        default: bits = elem::f8_e8m0_to_f32(static_cast<std::uint8_t>(p[i])); break;
    }
    return std::bit_cast<float>(bits);
}

// FP8 values per fixed-size inner loop (a whole number of vectors, and of the FP8 blocks:
// MXFP8 32, DeepSeek 128; FP4 values go through a table of their 16 codes instead).
inline constexpr std::size_t dequant_chunk = 32;

// How a value codec reads values: `at` one (element i of a run), `chunk` dequant_chunk of them,
// from whole bytes, times s and rounded by Out into dst (FP4: two a byte, low nibble first),
// in one pass: a second pass over a stored array of F32 values would stall on store forwarding.
// The value's magnitude times s, then its sign (the product's sign by IEEE 754; a NaN keeps its
// own), and a NaN value as itself, quieted: the bits x86 gives numpy's `v * s`, made explicit
// in integer operations, as the compiler may reorder a product's operands or fold a constant
// value's sign out of it (which flips a NaN's sign). 0 x Inf keeps the hardware's NaN.
template <class Out>
[[gnu::always_inline]] inline typename Out::type scaled(std::uint32_t f32, float s) noexcept {
    const std::uint32_t p =
        std::bit_cast<std::uint32_t>(std::bit_cast<float>(f32 & 0x7fffffffu) * s);
    const std::uint32_t signed_p =
        elem::select((p & 0x7fffffffu) > 0x7f800000u, p, p ^ (f32 & 0x80000000u));
    return Out::round(elem::select((f32 & 0x7fffffffu) > 0x7f800000u, f32 | 0x00400000u, signed_p));
}

struct values_e4m3 {
    static constexpr dtype type = dtype::f8_e4m3;
    static constexpr bool integer = false;
    [[nodiscard]] static std::uint32_t at(const std::byte* s, std::uint64_t i) noexcept {
        return elem::f8_e4m3_to_f32(static_cast<std::uint8_t>(s[i]));
    }
    template <class Out>
    [[gnu::always_inline]] static void chunk(const std::byte* __restrict src,
                                             std::byte* __restrict dst, float s) noexcept {
        using out_t = typename Out::type;
        for (std::size_t k = 0; k < dequant_chunk; ++k) {
            std::uint8_t x = 0;
            std::memcpy(&x, src + k, 1);
            const out_t y = scaled<Out>(elem::f8_e4m3_to_f32(x), s);
            std::memcpy(dst + k * sizeof(out_t), &y, sizeof(out_t));
        }
    }
};
struct values_e2m1 {
    static constexpr dtype type = dtype::f4;
    static constexpr bool integer = false;
    [[nodiscard]] static std::uint32_t at(const std::byte* s, std::uint64_t i) noexcept {
        const auto b = static_cast<std::uint8_t>(s[i >> 1]);
        return elem::f4_e2m1_to_f32(static_cast<std::uint8_t>((b >> ((i & 1u) * 4u)) & 0xfu));
    }
    // n values (n even) from whole bytes: the 16 codes' results for this scale first, then a
    // lookup a value (as cheap as converting the 16 once; the values are not recomputed).
    template <class Out>
    [[gnu::always_inline]] static void run(const std::byte* __restrict src,
                                           std::byte* __restrict dst, std::size_t n,
                                           float s) noexcept {
        using out_t = typename Out::type;
        out_t table[16];
        for (std::uint8_t code = 0; code < 16; ++code)
            table[code] = scaled<Out>(elem::f4_e2m1_to_f32(code), s);
        for (std::size_t k = 0; k < n / 2; ++k) {
            const auto x = static_cast<std::uint8_t>(src[k]);
            const out_t pair[2] = {table[x & 0xfu], table[x >> 4]};
            std::memcpy(dst + 2 * k * sizeof(out_t), pair, sizeof(pair));
        }
    }
};

// The target: F32 bits rounded to it.
struct out_bf16 {
    using type = std::uint16_t;
    static constexpr dtype to = dtype::bf16;
    [[nodiscard]] static type round(std::uint32_t f) noexcept { return elem::f32_to_bf16(f); }
};
struct out_f16 {
    using type = std::uint16_t;
    static constexpr dtype to = dtype::f16;
    [[nodiscard]] static type round(std::uint32_t f) noexcept {
        return elem::f32_to_f16<elem::nan_rule::keep_payload>(f);  // numpy's float16
    }
};
struct out_f32 {
    using type = std::uint32_t;
    static constexpr dtype to = dtype::f32;
    [[nodiscard]] static type round(std::uint32_t f) noexcept { return f; }
};

// How the global scale applies to a block's scale.
enum class global_scale : std::uint8_t { none, multiplies, divides };

// n values of src from value `first` on times s, rounded, into dst.
template <class V, class Out>
[[gnu::always_inline]] inline void scaled_run(const std::byte* src, std::uint64_t first,
                                              std::byte* dst, std::size_t n, float s) noexcept {
    using out_t = typename Out::type;
    constexpr std::size_t bits = bit_size(V::type);
    auto one = [&](std::uint64_t i, std::byte* to) {  // a value sharing its byte: alone
        const out_t y = scaled<Out>(V::at(src, i), s);
        std::memcpy(to, &y, sizeof(out_t));
    };
    if (bits < 8 && (first & 1u) != 0 && n != 0) {
        one(first++, dst);
        dst += sizeof(out_t);
        --n;
    }
    const std::byte* from = src + first * bits / 8;
    if constexpr (bits < 8) {
        V::template run<Out>(from, dst, n & ~std::size_t{1}, s);
        if ((n & 1u) != 0) one(first + n - 1, dst + (n - 1) * sizeof(out_t));
    } else {
        std::size_t i = 0;
        for (; i + dequant_chunk <= n; i += dequant_chunk)
            V::template chunk<Out>(from + i, dst + i * sizeof(out_t), s);
        if (i == n) return;
        const std::size_t rest = n - i;  // through zero-padded local arrays
        std::byte in[dequant_chunk] = {};
        std::byte out[dequant_chunk * sizeof(out_t)];
        std::memcpy(in, from + i, rest);
        V::template chunk<Out>(in, out, s);
        std::memcpy(dst + i * sizeof(out_t), out, rest * sizeof(out_t));
    }
}

// The global scale (where G has one) of row r of expert e's slab.
template <global_scale G>
[[nodiscard]] inline float global_of(const dequant_view& v, std::uint64_t e,
                                     std::uint64_t r) noexcept {
    if constexpr (G == global_scale::none) {
        return 1.0f;
    } else {
        return scale_as_f32(v.global.data, v.global.type, v.entry(v.global, e, r, 0));
    }
}

// The signature of a dequantizing loop: a box of `rows` rows of n elements, row i's from
// destination element at + i x pitch on, read from src + i x src_stride (bytes), written to
// dst + i x dst_stride (bytes).
using dequant_fn = void (*)(const dequant_view& v, std::uint64_t at, std::uint64_t pitch,
                            const std::byte* src, std::size_t src_stride, std::byte* dst,
                            std::size_t dst_stride, std::size_t rows, std::size_t n) noexcept;

// n values from destination element `at` on: each row's scale entries and global scale found
// once, then one scale a block of the row.
template <class V, class Out, global_scale G>
[[gnu::always_inline]] inline void dequantize_loop(const dequant_view& v, std::uint64_t at,
                                                   const std::byte* src, std::byte* dst,
                                                   std::size_t n) noexcept {
    if (v.cols == 0 || v.rows == 0) return;
    using out_t = typename Out::type;
    const dequant_operand& sc = v.scales;
    std::uint64_t row = at / v.cols, c = at % v.cols, done = 0;
    while (done < n) {
        const std::uint64_t e = row / v.rows, r = row % v.rows;
        const float g = global_of<G>(v, e, r);
        const std::uint64_t row_end = std::min<std::uint64_t>(v.cols, c + (n - done));
        std::uint64_t block = sc.block_cols ? c / sc.block_cols : 0;
        const std::uint64_t first = v.entry(sc, e, r, 0);  // the row's first block
        while (c < row_end) {
            const std::uint64_t block_end =
                sc.block_cols ? std::min(row_end, (block + 1) * sc.block_cols) : row_end;
            float s =
                scale_as_f32(sc.data, sc.type, sc.per_part ? first : first + block * sc.col_step);
            if constexpr (G == global_scale::multiplies) s = s * g;
            if constexpr (G == global_scale::divides) s = s / g;
            const auto run = static_cast<std::size_t>(block_end - c);
            scaled_run<V, Out>(src, done, dst + done * sizeof(out_t), run, s);
            done += run;
            c += run;
            ++block;
        }
        if (c == v.cols) {
            c = 0;
            ++row;
        }
    }
}

// Integer values: a value's stored code (U4: two a byte, low nibble first; I8 signed).
struct values_u4 {
    static constexpr dtype type = dtype::u4;
    static constexpr bool integer = true;
    [[nodiscard]] static std::int32_t at(const std::byte* s, std::uint64_t i) noexcept {
        const auto b = static_cast<std::uint8_t>(s[i >> 1]);
        return (b >> ((i & 1u) * 4u)) & 0xf;
    }
};
struct values_u8 {
    static constexpr dtype type = dtype::u8;
    static constexpr bool integer = true;
    [[nodiscard]] static std::int32_t at(const std::byte* s, std::uint64_t i) noexcept {
        return static_cast<std::uint8_t>(s[i]);
    }
};
struct values_i8 {
    static constexpr dtype type = dtype::i8;
    static constexpr bool integer = true;
    [[nodiscard]] static std::int32_t at(const std::byte* s, std::uint64_t i) noexcept {
        return static_cast<std::int8_t>(static_cast<std::uint8_t>(s[i]));
    }
};

// (q - z) x s x post in F32, the products in that order, rounded by Out. q - z is an integer
// of at most 9 bits, exact in F32, and so is its product with an F16 or BF16 scale: the one
// rounding is to the target (GPTQ's and compressed-tensors' reference products, computed in
// the scales' dtype, round once too where the target is it).
template <class Out>
[[gnu::always_inline]] inline typename Out::type int_scaled(std::int32_t d, float s,
                                                            float post) noexcept {
    const float w = static_cast<float>(d) * s;
    return Out::round(std::bit_cast<std::uint32_t>(w * post));
}

// The group, under act order, of column c of expert e's slab (checked against the scales'
// groups when the group index was read: check_group_index).
[[nodiscard]] inline std::uint64_t group_at(const dequant_view& v, std::uint64_t e,
                                            std::uint64_t c) noexcept {
    std::int32_t g = 0;
    std::memcpy(&g, v.group_index.data + (e * v.group_index.per_expert + c) * 4, 4);
    return static_cast<std::uint64_t>(g);
}

// Operand o's column block of column c, or of group g where a group index gives it.
[[nodiscard]] constexpr std::uint64_t block_of(const dequant_operand& o, std::uint64_t c,
                                               const std::uint64_t* g) noexcept {
    if (o.block_cols == 0) return 0;
    return g ? *g : c / o.block_cols;
}

// The zero point in word `entry` of the zeros, the `sub`-th of the word (low bits first).
[[nodiscard]] inline std::int32_t zero_in(const dequant_view& v, std::uint64_t entry,
                                          std::uint64_t sub) noexcept {
    const dequant_operand& z = v.zeros;
    std::uint32_t word = 0;
    std::memcpy(&word, z.data + entry * 4, 4);
    const std::uint32_t mask = (std::uint32_t{1} << z.bits) - 1u;
    return static_cast<std::int32_t>((word >> (z.bits * sub)) & mask) + v.zero_adjust;
}

// The zero point of row r of expert e's slab in zero block `block`.
[[nodiscard]] inline std::int32_t zero_at(const dequant_view& v, std::uint64_t e, std::uint64_t r,
                                          std::uint64_t block) noexcept {
    const dequant_operand& z = v.zeros;
    if (!z.present()) return v.zero;
    return zero_in(v, v.entry_in(z, e, r, block), z.block_rows ? r % z.block_rows : 0);
}

// n integer values from value `first` of src on, all of one zero point and scale, into dst.
// Long runs of 4-bit codes go through a table of the 16 codes' results.
template <class V, class Out>
[[gnu::always_inline]] inline void int_run(const std::byte* src, std::uint64_t first,
                                           std::byte* dst, std::size_t n, std::int32_t z, float s,
                                           float post) noexcept {
    using out_t = typename Out::type;
    auto put = [&](std::size_t k, out_t y) { std::memcpy(dst + k * sizeof(out_t), &y, sizeof y); };
    std::size_t k = 0;
    if constexpr (bit_size(V::type) < 8) {
        if (n >= 32) {
            out_t table[16];
            for (std::int32_t code = 0; code < 16; ++code)
                table[code] = int_scaled<Out>(code - z, s, post);
            if ((first & 1u) != 0) put(k++, table[V::at(src, first)]);
            const std::byte* from = src + (first + k) / 2;
            for (; k + 2 <= n; k += 2, ++from) {
                const auto x = static_cast<std::uint8_t>(*from);
                const out_t pair[2] = {table[x & 0xfu], table[x >> 4]};
                std::memcpy(dst + k * sizeof(out_t), pair, sizeof(pair));
            }
        }
    }
    for (; k < n; ++k) put(k, int_scaled<Out>(V::at(src, first + k) - z, s, post));
}

// n integer values from destination element `at` on: each block's scale and zero point found
// once (a column's own under act order).
template <class V, class Out>
[[gnu::always_inline]] inline void dequantize_int_loop(const dequant_view& v, std::uint64_t at,
                                                       const std::byte* src, std::byte* dst,
                                                       std::size_t n) noexcept {
    if (v.cols == 0 || v.rows == 0) return;
    using out_t = typename Out::type;
    const dequant_operand& sc = v.scales;
    std::uint64_t row = at / v.cols, c = at % v.cols, done = 0;
    while (done < n) {
        const std::uint64_t e = row / v.rows, r = row % v.rows;
        const std::uint64_t row_end = std::min<std::uint64_t>(v.cols, c + (n - done));
        while (c < row_end) {
            std::uint64_t end = row_end;
            std::uint64_t g = 0;
            const std::uint64_t* by_index = nullptr;
            if (v.group_index.present()) {  // act order: a column at a time
                g = group_at(v, e, c);
                by_index = &g;
                end = c + 1;
            } else if (sc.block_cols != 0) {
                end = std::min(row_end, (c / sc.block_cols + 1) * sc.block_cols);
            }
            if (v.zeros.present() && v.zeros.block_cols != 0 && !by_index)
                end = std::min(end, (c / v.zeros.block_cols + 1) * v.zeros.block_cols);
            const float s =
                scale_as_f32(sc.data, sc.type, v.entry_in(sc, e, r, block_of(sc, c, by_index)));
            const std::int32_t z = zero_at(v, e, r, block_of(v.zeros, c, by_index));
            const auto run = static_cast<std::size_t>(end - c);
            int_run<V, Out>(src, done, dst + done * sizeof(out_t), run, z, s, v.post);
            done += run;
            c = end;
        }
        if (c == v.cols) {
            c = 0;
            ++row;
        }
    }
}

// A box of integer values whose rows are consecutive rows of the tensor over the same columns,
// within one block of the scales and of the zero points (GPTQ's, read a word at a time down
// its transposed storage: rows of p values): each row's scale and zero point stepped to, not
// searched for. False where the box is not such (the rows are then converted one by one).
template <class V, class Out>
[[gnu::always_inline]] inline bool dequantize_int_column(const dequant_view& v, std::uint64_t at,
                                                         std::uint64_t pitch, const std::byte* src,
                                                         std::size_t src_stride, std::byte* dst,
                                                         std::size_t dst_stride, std::size_t rows,
                                                         std::size_t n) noexcept {
    const dequant_operand& sc = v.scales;
    const dequant_operand& zo = v.zeros;
    if (v.cols == 0 || v.rows == 0 || pitch != v.cols || v.group_index.present() || sc.per_part ||
        sc.block_rows > 1 || (zo.present() && zo.block_rows == 0))
        return false;
    const std::uint64_t c = at % v.cols;
    auto one_block = [&](const dequant_operand& o) {
        return o.block_cols == 0 || c / o.block_cols == (c + n - 1) / o.block_cols;
    };
    if (c + n > v.cols || !one_block(sc) || (zo.present() && !one_block(zo))) return false;
    const std::uint64_t sblock = sc.block_cols ? c / sc.block_cols : 0;
    const std::uint64_t zblock = zo.block_cols ? c / zo.block_cols : 0;
    std::uint64_t row = at / v.cols;
    std::uint64_t e = row / v.rows, r = row % v.rows;
    std::uint64_t zr = zo.present() ? r % zo.block_rows : 0;
    for (std::size_t i = 0; i < rows; ++i, src += src_stride, dst += dst_stride) {
        const float s = scale_as_f32(
            sc.data, sc.type,
            e * sc.per_expert + r * sc.block_rows * sc.row_step + sblock * sc.col_step);
        const std::int32_t z = zo.present() ? zero_in(v, v.entry_in(zo, e, r, zblock), zr) : v.zero;
        int_run<V, Out>(src, 0, dst, n, z, s, v.post);
        if (++r == v.rows) {
            r = 0;
            zr = 0;
            ++e;
        } else if (zo.present() && ++zr == zo.block_rows) {
            zr = 0;
        }
    }
    return true;
}

// The loop of a conversion over a box: the integer one for integer values.
template <class V, class Out, global_scale G>
[[gnu::always_inline]] inline void dequantize_any(const dequant_view& v, std::uint64_t at,
                                                  std::uint64_t pitch, const std::byte* src,
                                                  std::size_t src_stride, std::byte* dst,
                                                  std::size_t dst_stride, std::size_t rows,
                                                  std::size_t n) noexcept {
    if constexpr (V::integer)
        if (rows > 1 &&
            dequantize_int_column<V, Out>(v, at, pitch, src, src_stride, dst, dst_stride, rows, n))
            return;
    for (std::size_t i = 0; i < rows; ++i, src += src_stride, dst += dst_stride) {
        if constexpr (V::integer)
            dequantize_int_loop<V, Out>(v, at + i * pitch, src, dst, n);
        else
            dequantize_loop<V, Out, G>(v, at + i * pitch, src, dst, n);
    }
}

template <class V, class Out, global_scale G>
inline void dequantize_portable(const dequant_view& v, std::uint64_t at, std::uint64_t pitch,
                                const std::byte* src, std::size_t src_stride, std::byte* dst,
                                std::size_t dst_stride, std::size_t rows, std::size_t n) noexcept {
    dequantize_any<V, Out, G>(v, at, pitch, src, src_stride, dst, dst_stride, rows, n);
}

#if SAFESHARD_CONVERT_X86_DISPATCH
template <class V, class Out, global_scale G>
[[gnu::target("avx2")]] inline void dequantize_loop_avx2(const dequant_view& v, std::uint64_t at,
                                                         std::uint64_t pitch, const std::byte* src,
                                                         std::size_t src_stride, std::byte* dst,
                                                         std::size_t dst_stride, std::size_t rows,
                                                         std::size_t n) noexcept {
    dequantize_any<V, Out, G>(v, at, pitch, src, src_stride, dst, dst_stride, rows, n);
}
#endif

// Every compiled copy of one dequantizing conversion's loops.
struct dequant_kernels {
    dequant_fn portable = nullptr;
    dequant_fn avx2 = nullptr;
    [[nodiscard]] constexpr dequant_fn pick(convert_isa isa) const noexcept {
        return isa == convert_isa::avx2 ? avx2 : portable;
    }
};

template <class V, class Out, global_scale G>
[[nodiscard]] constexpr dequant_kernels dequant_kernels_of() noexcept {
#if SAFESHARD_CONVERT_X86_DISPATCH
    return {&dequantize_portable<V, Out, G>, &dequantize_loop_avx2<V, Out, G>};
#else
    return {&dequantize_portable<V, Out, G>, &dequantize_portable<V, Out, G>};
#endif
}

}  // namespace detail
}  // namespace safeshard
