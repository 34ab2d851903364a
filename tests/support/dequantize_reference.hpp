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

}  // namespace safeshard::test
