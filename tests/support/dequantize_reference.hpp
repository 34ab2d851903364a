// A reference dequantization for the loader's tests, written from the formats' definitions
// (not with the library's view, kernels or plan): a rank's tensors as stored (a load of part 1,
// checked against the definitions by its own tests) dequantized element by element, to compare
// with the rank's tensors dequantized in the copy. The decode of E4M3 and E2M1 and E8M0 is
// arithmetic here (ldexp); the final rounding is the library's element-wise F32 -> target
// conversion, itself checked bit for bit against numpy and ml_dtypes (tests/differential).
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "safeshard/load/convert.hpp"
#include "safeshard/load/loader.hpp"

namespace safeshard::test {

inline float ref_e4m3(std::uint8_t x) {
    const int e = (x >> 3) & 15, m = x & 7;
    const float sign = (x & 0x80) ? -1.0f : 1.0f;
    if (e == 15 && m == 7) return std::numeric_limits<float>::quiet_NaN();
    if (e == 0) return sign * std::ldexp(static_cast<float>(m), -9);
    return sign * std::ldexp(1.0f + static_cast<float>(m) / 8.0f, e - 7);
}

inline float ref_e2m1(std::uint8_t x) {
    const int e = (x >> 1) & 3, m = x & 1;
    const float sign = (x & 8) ? -1.0f : 1.0f;
    if (e == 0) return sign * 0.5f * static_cast<float>(m);
    return sign * std::ldexp(1.0f + 0.5f * static_cast<float>(m), e - 1);
}

inline float ref_e8m0(std::uint8_t x) {
    if (x == 0xff) return std::numeric_limits<float>::quiet_NaN();
    return std::ldexp(1.0f, static_cast<int>(x) - 127);
}

// IEEE half precision (sign, 5 exponent bits of bias 15, 10 fraction bits).
inline float ref_f16(std::uint16_t h) {
    const int e = (h >> 10) & 31, m = h & 1023;
    const float sign = (h & 0x8000) ? -1.0f : 1.0f;
    if (e == 31)
        return m ? std::numeric_limits<float>::quiet_NaN()
                 : sign * std::numeric_limits<float>::infinity();
    if (e == 0) return sign * std::ldexp(static_cast<float>(m), -24);
    return sign * std::ldexp(1.0f + static_cast<float>(m) / 1024.0f, e - 15);
}

// Entry i of a stored scale tensor as F32 (U8: E8M0).
inline float ref_scale(const host_tensor& t, std::uint64_t i) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(t.data());
    switch (t.dtype()) {
        case dtype::f32: {
            float f = 0;
            std::memcpy(&f, p + i * 4, 4);
            return f;
        }
        case dtype::bf16: {
            std::uint32_t u = 0;
            std::memcpy(reinterpret_cast<char*>(&u) + 2, p + i * 2, 2);
            float f = 0;
            std::memcpy(&f, &u, 4);
            return f;
        }
        case dtype::f16: {
            std::uint16_t h = 0;
            std::memcpy(&h, p + i * 2, 2);
            return ref_f16(h);
        }
        case dtype::f8_e4m3: return ref_e4m3(p[i]);
        case dtype::u8: return ref_e8m0(p[i]);
        default: FAIL("no reference for this scale dtype"); return 0;
    }
}

// How a rank's stored weight [experts x rows, cols] of values dequantizes: its values (FP8 or
// FP4 two a byte), its block scales' blocks (0: one for the dim) and entries per row of blocks,
// its global scale (entry by row, or none), multiplying or dividing.
struct ref_quantized {
    const host_tensor* values = nullptr;
    bool fp4 = false;
    std::uint64_t experts = 1, rows = 0, cols = 0;
    const host_tensor* scales = nullptr;
    std::uint64_t block_rows = 0, block_cols = 0;
    // the scale entry of (expert, row, col), where blocks alone do not say it (per part)
    std::function<std::uint64_t(std::uint64_t, std::uint64_t, std::uint64_t)> scale_entry{};
    const host_tensor* global = nullptr;
    std::function<std::uint64_t(std::uint64_t, std::uint64_t)> global_entry{};  // (expert, row)
    bool divides = false;
};

// The dequantized tensor's bytes in `to`.
inline std::vector<std::byte> ref_dequantize(const ref_quantized& q, dtype to) {
    const auto* v = reinterpret_cast<const std::uint8_t*>(q.values->data());
    const std::uint64_t n = q.experts * q.rows * q.cols;
    std::vector<float> out(n);
    const std::uint64_t scale_rows = q.block_rows ? (q.rows + q.block_rows - 1) / q.block_rows : 1;
    const std::uint64_t scale_cols = q.block_cols ? (q.cols + q.block_cols - 1) / q.block_cols : 1;
    for (std::uint64_t e = 0; e < q.experts; ++e)
        for (std::uint64_t r = 0; r < q.rows; ++r)
            for (std::uint64_t c = 0; c < q.cols; ++c) {
                const std::uint64_t i = (e * q.rows + r) * q.cols + c;
                const float x = q.fp4 ? ref_e2m1((v[i / 2] >> ((i & 1) * 4)) & 15) : ref_e4m3(v[i]);
                const std::uint64_t si =
                    q.scale_entry ? q.scale_entry(e, r, c)
                                  : e * scale_rows * scale_cols +
                                        (q.block_rows ? r / q.block_rows : 0) * scale_cols +
                                        (q.block_cols ? c / q.block_cols : 0);
                float s = ref_scale(*q.scales, si);
                if (q.global) {
                    const float g = ref_scale(*q.global, q.global_entry ? q.global_entry(e, r) : e);
                    s = q.divides ? s / g : s * g;
                }
                out[i] = x * s;
            }
    std::vector<std::byte> bytes(n * bit_size(to) / 8);
    const converter c = to == dtype::f32 ? converter(to) : find_converter(dtype::f32, to);
    c(reinterpret_cast<const std::byte*>(out.data()), bytes.data(), n);
    return bytes;
}

// How a rank's stored integer weight [rows N, cols K] of values dequantizes, from the formats'
// definitions: w[n][k] = (q - z) x s x post.
//  - q: `codes` I32 words of `bits`-bit codes, low bits first, p = 32 / bits a word, either
//    along K ([N, K/p]: compressed-tensors) or along K stored transposed ([K/p, N]: GPTQ); or
//    (bits 0) I8 [N, K], signed (bitsandbytes);
//  - the group g of column k: group_index[k] (act order), else k / group (group 0: one group);
//  - s: scales [N, G] (or [N]), or transposed [G, N] (GPTQ);
//  - z: zeros' code of row n in group g (I32 words, p codes along N: [N/p, G], or transposed
//    [G, N/p]) plus zero_adjust, or zero where there are none.
struct ref_integer {
    const host_tensor* codes = nullptr;
    unsigned bits = 4;
    bool transposed = false;
    std::uint64_t rows = 0, cols = 0;
    const host_tensor* scales = nullptr;
    std::uint64_t group = 0;
    const host_tensor* group_index = nullptr;
    const host_tensor* zeros = nullptr;
    int zero_adjust = 0;
    int zero = 0;
    float post = 1.0f;
};

inline std::uint32_t ref_word(const host_tensor& t, std::uint64_t i) {
    std::uint32_t w = 0;
    std::memcpy(&w, static_cast<const std::byte*>(t.data()) + i * 4, 4);
    return w;
}

inline std::vector<std::byte> ref_dequantize_int(const ref_integer& q, dtype to) {
    const std::uint64_t N = q.rows, K = q.cols;
    const std::uint64_t p = q.bits ? 32 / q.bits : 1;
    const std::uint32_t mask = q.bits ? (1u << q.bits) - 1u : 0u;
    const std::uint64_t G = q.group ? K / q.group : 1;
    std::vector<float> out(N * K);
    for (std::uint64_t n = 0; n < N; ++n)
        for (std::uint64_t k = 0; k < K; ++k) {
            int code = 0;
            if (q.bits == 0) {
                code = static_cast<std::int8_t>(std::to_integer<std::uint8_t>(
                    static_cast<const std::byte*>(q.codes->data())[n * K + k]));
            } else {
                const std::uint64_t word = q.transposed ? (k / p) * N + n : n * (K / p) + k / p;
                code = static_cast<int>((ref_word(*q.codes, word) >> (q.bits * (k % p))) & mask);
            }
            std::uint64_t g = q.group ? k / q.group : 0;
            if (q.group_index) g = static_cast<std::uint64_t>(ref_word(*q.group_index, k));
            const std::uint64_t groups =
                q.group_index ? q.scales->shape().element_count().value_or(0) / N : G;
            const float s = ref_scale(*q.scales, q.transposed ? g * N + n : n * groups + g);
            int z = q.zero;
            if (q.zeros) {
                const std::uint64_t word =
                    q.transposed ? g * (N / p) + n / p : (n / p) * groups + g;
                z = static_cast<int>((ref_word(*q.zeros, word) >> (q.bits * (n % p))) & mask) +
                    q.zero_adjust;
            }
            out[n * K + k] = static_cast<float>(code - z) * s * q.post;
        }
    std::vector<std::byte> bytes(N * K * bit_size(to) / 8);
    const converter c = to == dtype::f32 ? converter(to) : find_converter(dtype::f32, to);
    c(reinterpret_cast<const std::byte*>(out.data()), bytes.data(), N * K);
    return bytes;
}

}  // namespace safeshard::test
