// Element conversions between floating-point formats, on bit patterns, branch-free.
//
// Each function maps the bits of one source element to the bits of one destination element.
// They are written with integer operations and selects (no branches, no tables) so that the
// block loops in convert_kernels.hpp auto-vectorise, and they are constexpr and usable in CUDA
// device code. The few float operations only ever see normal operands and results, so the
// answers do not change under flush-to-zero / denormals-are-zero modes (engines often set them).
//
// NaN handling follows the oracle of each pair, bit for bit:
//  - f16 <-> f32 follow numpy's float16 (the owner of that type): widening keeps the payload
//    exactly (no quieting); narrowing keeps the top 10 payload bits and the sign, and a payload
//    that would vanish becomes 1 so the NaN stays a NaN (a signalling NaN stays signalling).
//  - every pair that involves bf16 or an f8 format follows ml_dtypes: a NaN becomes the quiet NaN
//    of the destination with the source's sign and no payload; bf16 -> f32 is a plain shift.
//  - f64 <-> f32 are the language's casts (what numpy does too): quiet the NaN, keep the top
//    payload bits; they honour the current rounding and FTZ modes of the FPU, unlike the others.
#pragma once

#include <bit>
#include <cstdint>

#include "safeshard/config.hpp"

namespace safeshard::detail::elem {

// c ? a : b as mask arithmetic. A ?: whose arms hold float operations becomes a branch under
// -ftrapping-math (GCC's default), and a branch stops the vectoriser; masks do not.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint32_t select(bool c, std::uint32_t a,
                                                                   std::uint32_t b) noexcept {
    const std::uint32_t m = 0u - static_cast<std::uint32_t>(c);
    return (a & m) | (b & ~m);
}

// ---- f16 (IEEE binary16) ------------------------------------------------------------------

// Exact; subnormals become normal f32; NaN payload kept bit for bit (numpy).
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint32_t f16_to_f32(std::uint16_t h) noexcept {
    const std::uint32_t sign = (std::uint32_t{h} & 0x8000u) << 16;
    const std::uint32_t a = std::uint32_t{h} & 0x7fffu;
    const std::uint32_t shifted = a << 13;
    // Normal: rebias the exponent 15 -> 127.
    const std::uint32_t normal = shifted + 0x38000000u;
    // Inf / NaN: all exponent bits set, payload kept.
    const std::uint32_t special = shifted | 0x7f800000u;
    // Zero / subnormal: (1.m x 2^-14) - 2^-14 = m x 2^-24, computed on normal floats only.
    const float sub_f =
        std::bit_cast<float>(shifted + 0x38800000u) - std::bit_cast<float>(0x38800000u);
    const std::uint32_t sub = std::bit_cast<std::uint32_t>(sub_f);
    const std::uint32_t mag = select(a >= 0x7c00u, special, select(a >= 0x0400u, normal, sub));
    return sign | mag;
}

enum class nan_rule : std::uint8_t {
    keep_payload,  // numpy float16: top payload bits kept, never turns into Inf
    canonical,     // ml_dtypes: the format's quiet NaN, sign kept
};

// Round to nearest, ties to even; overflow -> Inf; subnormal results rounded the same way.
template <nan_rule Nan>
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint16_t f32_to_f16(std::uint32_t u) noexcept {
    const std::uint32_t sign = (u >> 16) & 0x8000u;
    const std::uint32_t a = u & 0x7fffffffu;
    // Normal results: clamp so that anything >= 65520 rounds up into exactly 0x7c00 (Inf).
    const std::uint32_t an = a < 0x47800000u ? a : 0x47800000u;
    const std::uint32_t normal = (an - 0x38000000u + 0x0fffu + ((an >> 13) & 1u)) >> 13;
    // Subnormal results (|x| < 2^-14): adding 0.5 puts the units of 2^-24 in the low mantissa
    // bits, and the float add rounds to nearest even. Inputs that DAZ would zero round to 0 anyway.
    const float sub_f = std::bit_cast<float>(a) + std::bit_cast<float>(0x3f000000u);
    const std::uint32_t sub = std::bit_cast<std::uint32_t>(sub_f) - 0x3f000000u;
    std::uint32_t nan = 0;
    if constexpr (Nan == nan_rule::keep_payload) {
        const std::uint32_t payload = (a >> 13) & 0x3ffu;
        nan = 0x7c00u | payload | static_cast<std::uint32_t>(payload == 0);
    } else {
        nan = 0x7e00u;
    }
    const std::uint32_t mag = select(a > 0x7f800000u, nan, select(a >= 0x38800000u, normal, sub));
    return static_cast<std::uint16_t>(sign | mag);
}

// ---- bf16 ---------------------------------------------------------------------------------

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint32_t bf16_to_f32(std::uint16_t b) noexcept {
    return std::uint32_t{b} << 16;
}

// Round to nearest, ties to even (subnormals too); NaN -> signed quiet NaN 0x7fc0 (ml_dtypes).
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint16_t f32_to_bf16(std::uint32_t u) noexcept {
    const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const std::uint32_t nan = ((u >> 16) & 0x8000u) | 0x7fc0u;
    return static_cast<std::uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

// ---- between the 16-bit formats (through f32, which holds both exactly) -------------------

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint16_t f16_to_bf16(std::uint16_t h) noexcept {
    return f32_to_bf16(f16_to_f32(h));
}

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint16_t bf16_to_f16(std::uint16_t b) noexcept {
    return f32_to_f16<nan_rule::canonical>(bf16_to_f32(b));
}

// ---- f8 (OCP FP8) -------------------------------------------------------------------------

// E4M3 as in ml_dtypes float8_e4m3fn: bias 7, no infinities, S.1111.111 is NaN. Exact in f32.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint32_t f8_e4m3_to_f32(std::uint8_t x) noexcept {
    const std::uint32_t sign = (std::uint32_t{x} & 0x80u) << 24;
    const std::uint32_t a = std::uint32_t{x} & 0x7fu;
    const std::uint32_t shifted = a << 20;
    const std::uint32_t normal = shifted + (120u << 23);  // rebias 7 -> 127
    // Subnormal: (1.m x 2^-6) - 2^-6 = m x 2^-9, on normal floats only.
    const float sub_f = std::bit_cast<float>(shifted + (121u << 23)) - std::bit_cast<float>(121u << 23);
    const std::uint32_t sub = std::bit_cast<std::uint32_t>(sub_f);
    const std::uint32_t mag = select(a == 0x7fu, 0x7fc00000u, select(a >= 0x08u, normal, sub));
    return sign | mag;
}

// Every E4M3 value is a normal f16 or zero (2^-9 .. 448), so the f32 form narrows exactly.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint16_t f8_e4m3_to_f16(std::uint8_t x) noexcept {
    const std::uint32_t f = f8_e4m3_to_f32(x);
    const std::uint32_t a = f & 0x7fffffffu;
    const std::uint32_t mag = a == 0x7fc00000u ? 0x7e00u : (a == 0 ? 0u : (a - 0x38000000u) >> 13);
    return static_cast<std::uint16_t>(((f >> 16) & 0x8000u) | mag);
}

// Three mantissa bits fit bf16's seven: truncation is exact; 0x7fc00000 -> 0x7fc0.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint16_t f8_e4m3_to_bf16(std::uint8_t x) noexcept {
    return static_cast<std::uint16_t>(f8_e4m3_to_f32(x) >> 16);
}

// E5M2 is the top byte of an f16 (bias 15, Inf and NaN); ml_dtypes makes NaN the quiet 0x7e00.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint16_t f8_e5m2_to_f16(std::uint8_t x) noexcept {
    const std::uint32_t h = std::uint32_t{x} << 8;
    const std::uint32_t nan = (h & 0x8000u) | 0x7e00u;
    return static_cast<std::uint16_t>((h & 0x7fffu) > 0x7c00u ? nan : h);
}

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint32_t f8_e5m2_to_f32(std::uint8_t x) noexcept {
    return f16_to_f32(f8_e5m2_to_f16(x));
}

// Two mantissa bits and a 2^-16 smallest value: exact in bf16.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint16_t f8_e5m2_to_bf16(std::uint8_t x) noexcept {
    return static_cast<std::uint16_t>(f8_e5m2_to_f32(x) >> 16);
}

// ---- f64 <-> f32 ----------------------------------------------------------------------------

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint32_t f64_to_f32(std::uint64_t d) noexcept {
    return std::bit_cast<std::uint32_t>(static_cast<float>(std::bit_cast<double>(d)));
}

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint64_t f32_to_f64(std::uint32_t f) noexcept {
    return std::bit_cast<std::uint64_t>(static_cast<double>(std::bit_cast<float>(f)));
}

}  // namespace safeshard::detail::elem
