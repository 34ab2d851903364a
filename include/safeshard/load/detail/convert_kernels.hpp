// Array loops over the element conversions: unaligned, in fixed-size blocks that vectorise.
//
// The default build has no -march flags and GCC's -O2 vectoriser ("very cheap" cost model) only
// takes loops whose trip count is a known multiple of the vector width and that need no aliasing
// checks. So every loop runs over a block of exactly convert_block elements between __restrict
// pointers, loading and storing each element with memcpy (plain unaligned vector moves once
// vectorised): no aliasing, alignment or remainder question is left. The last partial block
// goes through the same element function on zero-padded local arrays.
//
// On x86-64 with GCC or clang the same loops are compiled a second time for AVX2 (a function
// target attribute, no intrinsics) and picked at run time by the CPU's feature bits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "safeshard/load/detail/convert_elements.hpp"

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__)) && \
    !defined(__CUDA_ARCH__) && !defined(SAFESHARD_NO_CONVERT_DISPATCH)
#define SAFESHARD_CONVERT_X86_DISPATCH 1
#else
#define SAFESHARD_CONVERT_X86_DISPATCH 0
#endif

namespace safeshard::detail {

// Elements per block: 256 x (8 + 4) bytes at most on the stack, enough to amortise the calls.
inline constexpr std::size_t convert_block = 256;

// One conversion as a type: source and destination element types and the element function.
template <class From, class To, To (*Fn)(From) noexcept>
struct element_op {
    using from_type = From;
    using to_type = To;
    using work_type = To;
    static constexpr To apply(From x) noexcept { return Fn(x); }
    static constexpr To apply_wide(From x) noexcept { return Fn(x); }
};

// A narrowing conversion computed in 32-bit lanes whose low bits are the result. The block
// narrows in a second pass: with the truncation in the same loop, GCC's vectoriser demotes
// parts of the computation to 16-bit lanes and spends more on packing than on converting.
template <class From, class To, std::uint32_t (*Wide)(From) noexcept>
struct narrowing_op {
    using from_type = From;
    using to_type = To;
    using work_type = std::uint32_t;
    static constexpr To apply(From x) noexcept { return static_cast<To>(Wide(x)); }
    static constexpr std::uint32_t apply_wide(From x) noexcept { return Wide(x); }
};

using op_f16_f32 = element_op<std::uint16_t, std::uint32_t, &elem::f16_to_f32>;
using op_f32_f16 = narrowing_op<std::uint32_t, std::uint16_t,
                                &elem::f32_to_f16_wide<elem::nan_rule::keep_payload>>;
using op_bf16_f32 = element_op<std::uint16_t, std::uint32_t, &elem::bf16_to_f32>;
using op_f32_bf16 = narrowing_op<std::uint32_t, std::uint16_t, &elem::f32_to_bf16_wide>;
using op_f16_bf16 = narrowing_op<std::uint16_t, std::uint16_t, &elem::f16_to_bf16_wide>;
using op_bf16_f16 = narrowing_op<std::uint16_t, std::uint16_t, &elem::bf16_to_f16_wide>;
using op_e4m3_f32 = element_op<std::uint8_t, std::uint32_t, &elem::f8_e4m3_to_f32>;
using op_e4m3_f16 = element_op<std::uint8_t, std::uint16_t, &elem::f8_e4m3_to_f16>;
using op_e4m3_bf16 = element_op<std::uint8_t, std::uint16_t, &elem::f8_e4m3_to_bf16>;
using op_e5m2_f32 = element_op<std::uint8_t, std::uint32_t, &elem::f8_e5m2_to_f32>;
using op_e5m2_f16 = element_op<std::uint8_t, std::uint16_t, &elem::f8_e5m2_to_f16>;
using op_e5m2_bf16 = element_op<std::uint8_t, std::uint16_t, &elem::f8_e5m2_to_bf16>;
using op_f64_f32 = element_op<std::uint64_t, std::uint32_t, &elem::f64_to_f32>;
using op_f32_f64 = element_op<std::uint32_t, std::uint64_t, &elem::f32_to_f64>;

// Converts exactly convert_block elements; src and dst may be unaligned, must not overlap.
// Element-wise memcpy loads and stores become plain (unaligned) vector moves.
template <class Op>
[[gnu::always_inline]] inline void convert_one_block(const std::byte* __restrict src,
                                                     std::byte* __restrict dst) noexcept {
    using from_t = typename Op::from_type;
    using to_t = typename Op::to_type;
    using work_t = typename Op::work_type;
    if constexpr (sizeof(work_t) > sizeof(to_t)) {
        work_t wide[convert_block];
        for (std::size_t i = 0; i < convert_block; ++i) {
            from_t x;
            std::memcpy(&x, src + i * sizeof(from_t), sizeof(from_t));
            wide[i] = Op::apply_wide(x);
        }
        for (std::size_t i = 0; i < convert_block; ++i) {
            const auto y = static_cast<to_t>(wide[i]);
            std::memcpy(dst + i * sizeof(to_t), &y, sizeof(to_t));
        }
    } else {
        for (std::size_t i = 0; i < convert_block; ++i) {
            from_t x;
            std::memcpy(&x, src + i * sizeof(from_t), sizeof(from_t));
            const to_t y = Op::apply(x);
            std::memcpy(dst + i * sizeof(to_t), &y, sizeof(to_t));
        }
    }
}

template <class Op>
[[gnu::always_inline]] inline void convert_loop(const std::byte* src, std::byte* dst,
                                                std::size_t n) noexcept {
    using from_t = typename Op::from_type;
    using to_t = typename Op::to_type;
    constexpr std::size_t src_block = convert_block * sizeof(from_t);
    constexpr std::size_t dst_block = convert_block * sizeof(to_t);
    std::size_t full = n / convert_block;
    for (; full != 0; --full, src += src_block, dst += dst_block) convert_one_block<Op>(src, dst);
    const std::size_t rest = n % convert_block;
    if (rest == 0) return;
    from_t in[convert_block] = {};
    to_t out[convert_block];
    std::memcpy(in, src, rest * sizeof(from_t));
    for (std::size_t i = 0; i < convert_block; ++i) out[i] = Op::apply(in[i]);
    std::memcpy(dst, out, rest * sizeof(to_t));
}

// The signature every converter shares: n elements from src to dst, both possibly unaligned.
using convert_fn = void (*)(const std::byte* src, std::byte* dst, std::size_t n) noexcept;

template <class Op>
inline void convert_portable(const std::byte* src, std::byte* dst, std::size_t n) noexcept {
    convert_loop<Op>(src, dst, n);
}

#if SAFESHARD_CONVERT_X86_DISPATCH
template <class Op>
[[gnu::target("avx2")]] inline void convert_avx2(const std::byte* src, std::byte* dst,
                                                 std::size_t n) noexcept {
    convert_loop<Op>(src, dst, n);
}
#endif

// Which compiled copy of the loops to use.
enum class convert_isa : std::uint8_t { portable, avx2 };

[[nodiscard]] inline bool cpu_has_avx2() noexcept {
#if SAFESHARD_CONVERT_X86_DISPATCH
    static const bool has = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") != 0;
    }();
    return has;
#else
    return false;
#endif
}

// The best copy of the loops this CPU runs.
[[nodiscard]] inline convert_isa best_convert_isa() noexcept {
    return cpu_has_avx2() ? convert_isa::avx2 : convert_isa::portable;
}

// Every compiled copy of one conversion's loops: what an entry of the conversion table holds.
struct convert_kernels {
    convert_fn portable = nullptr;
    convert_fn avx2 = nullptr;  // the portable copy where no AVX2 copy is compiled

    [[nodiscard]] constexpr convert_fn pick(convert_isa isa) const noexcept {
        return isa == convert_isa::avx2 ? avx2 : portable;
    }
};

template <class Op>
[[nodiscard]] constexpr convert_kernels kernels_of() noexcept {
#if SAFESHARD_CONVERT_X86_DISPATCH
    return {&convert_portable<Op>, &convert_avx2<Op>};
#else
    return {&convert_portable<Op>, &convert_portable<Op>};
#endif
}

// The copy of Op's loops for `isa`.
template <class Op>
[[nodiscard]] inline convert_fn pick_kernel(convert_isa isa) noexcept {
    return kernels_of<Op>().pick(isa);
}

}  // namespace safeshard::detail
