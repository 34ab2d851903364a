// Element conversions between floating-point formats, on bit patterns, branch-free.
//
// Each function maps the bits of one source element to the bits of one destination element.
// They are written with integer operations and selects (no branches, no tables) so that the
// block loops in convert_kernels.hpp auto-vectorise, and they are constexpr and usable in CUDA
// device code. The few float operations only ever produce normal results, and a subnormal
// operand (which DAZ would read as 0) rounds to 0 anyway, so the answers do not change under
// flush-to-zero / denormals-are-zero modes (engines often set them; a test checks);
// the one inexact one (f32 -> f16 subnormal results) rounds in the FPU's current mode, which is
// nearest-even unless the program changed it with fesetround.
//
// NaN handling follows the oracle of each pair, bit for bit:
//  - f16 <-> f32 follow numpy's float16 (the owner of that type): widening keeps the payload
//    exactly (no quieting); narrowing keeps the top 10 payload bits and the sign, and a payload
//    that would vanish becomes 1 so the NaN stays a NaN (a signalling NaN stays signalling).
//  - every pair that involves bf16 or an f8 format follows ml_dtypes: a NaN becomes the quiet NaN
//    of the destination with the source's sign and no payload; bf16 -> f32 is a plain shift.
//  - f64 <-> f32 are the language's casts (what numpy does too): quiet the NaN, keep the top
//    payload bits; they honour the FPU's rounding mode and FTZ/DAZ (under FTZ an f32 subnormal
//    result becomes 0, as it does in the program's own arithmetic).
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

// The same on 16-bit values: 16-bit masks keep the vector lanes 16 bits wide.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint16_t select16(bool c, std::uint16_t a,
                                                                     std::uint16_t b) noexcept {
    const auto m = static_cast<std::uint16_t>(0u - static_cast<std::uint32_t>(c));
    return static_cast<std::uint16_t>((a & m) | (b & ~m));
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
// (The _wide forms return the result in the low 16 bits of a 32-bit value: see convert_kernels.)
template <nan_rule Nan>
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint32_t f32_to_f16_wide(
    std::uint32_t u) noexcept {
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
    return sign | mag;
}

template <nan_rule Nan>
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint16_t f32_to_f16(std::uint32_t u) noexcept {
    return static_cast<std::uint16_t>(f32_to_f16_wide<Nan>(u));
}

// ---- bf16 ---------------------------------------------------------------------------------

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint32_t bf16_to_f32(std::uint16_t b) noexcept {
    return std::uint32_t{b} << 16;
}

// Round to nearest, ties to even (subnormals too); NaN -> signed quiet NaN 0x7fc0 (ml_dtypes).
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint32_t f32_to_bf16_wide(
    std::uint32_t u) noexcept {
    const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const std::uint32_t nan = ((u >> 16) & 0x8000u) | 0x7fc0u;
    return select((u & 0x7fffffffu) > 0x7f800000u, nan, rounded);
}

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint16_t f32_to_bf16(std::uint32_t u) noexcept {
    return static_cast<std::uint16_t>(f32_to_bf16_wide(u));
}

// ---- between the 16-bit formats (through f32, which holds both exactly) -------------------

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint32_t f16_to_bf16_wide(
    std::uint16_t h) noexcept {
    return f32_to_bf16_wide(f16_to_f32(h));
}

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint16_t f16_to_bf16(std::uint16_t h) noexcept {
    return static_cast<std::uint16_t>(f16_to_bf16_wide(h));
}

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint32_t bf16_to_f16_wide(
    std::uint16_t b) noexcept {
    return f32_to_f16_wide<nan_rule::canonical>(bf16_to_f32(b));
}

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint16_t bf16_to_f16(std::uint16_t b) noexcept {
    return static_cast<std::uint16_t>(bf16_to_f16_wide(b));
}

// ---- f8 (OCP FP8) -------------------------------------------------------------------------

// E4M3 as in ml_dtypes float8_e4m3fn: bias 7, no infinities, S.1111.111 is NaN; every value is
// exact in bf16 and f16. Computed in 16-bit quantities (twice the lanes of 32-bit ones); the
// seven subnormals (m x 2^-9) are normalised by a short select chain. Base encodes 2^-9, Step is
// one exponent step, ManTop the top mantissa bit, Rebias/Shift move a normal's bits into place.
template <std::uint16_t Nan, std::uint16_t Base, std::uint16_t Step, int ManTop,
          std::uint16_t Rebias, int Shift>
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint16_t f8_e4m3_to_16(std::uint8_t x) noexcept {
    const auto u = static_cast<std::uint16_t>(x);
    const auto sign = static_cast<std::uint16_t>((u & 0x80u) << 8);
    const auto a = static_cast<std::uint16_t>(u & 0x7fu);
    const auto m = static_cast<std::uint16_t>(a & 7u);
    const auto normal = static_cast<std::uint16_t>((a << Shift) + Rebias);
    const auto sub = select16(
        m >= 4u,
        static_cast<std::uint16_t>((Base + 2 * Step) | (m & 3u) << (ManTop - 1)),  // 2^-7 x 1.mm
        select16(m >= 2u,
                 static_cast<std::uint16_t>((Base + Step) | (m & 1u) << ManTop),  // 2^-8 x 1.m
                 select16(m == 1u, Base, 0)));                                    // 2^-9 or 0
    const auto mag = select16(a == 0x7fu, Nan, select16(a >= 8u, normal, sub));
    return static_cast<std::uint16_t>(sign | mag);
}

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint16_t f8_e4m3_to_bf16(
    std::uint8_t x) noexcept {
    // bf16: 2^-9 is 118 << 7; rebias 7 -> 127 is 120 << 7.
    return f8_e4m3_to_16<0x7fc0, 0x3b00, 0x0080, 6, (120u << 7), 4>(x);
}

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint16_t f8_e4m3_to_f16(
    std::uint8_t x) noexcept {
    // f16: 2^-9 is 6 << 10; rebias 7 -> 15 is 8 << 10.
    return f8_e4m3_to_16<0x7e00, 0x1800, 0x0400, 9, (8u << 10), 7>(x);
}

// The bf16 form widened: exact, NaN -> 0x7fc00000 with the sign.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint32_t f8_e4m3_to_f32(
    std::uint8_t x) noexcept {
    return std::uint32_t{f8_e4m3_to_bf16(x)} << 16;
}

// E5M2 is the top byte of an f16 (bias 15, Inf and NaN); ml_dtypes makes NaN the quiet 0x7e00.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint16_t f8_e5m2_to_f16(
    std::uint8_t x) noexcept {
    const std::uint32_t h = std::uint32_t{x} << 8;
    const std::uint32_t nan = (h & 0x8000u) | 0x7e00u;
    return static_cast<std::uint16_t>((h & 0x7fffu) > 0x7c00u ? nan : h);
}

[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint32_t f8_e5m2_to_f32(
    std::uint8_t x) noexcept {
    return f16_to_f32(f8_e5m2_to_f16(x));
}

// Two mantissa bits and a 2^-16 smallest value: exact in bf16.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint16_t f8_e5m2_to_bf16(
    std::uint8_t x) noexcept {
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
