// dtype conversion fused into the copy: which pairs convert, and the loops that do it.
//
// A loader asks `can_convert` (a constant expression) or `find_converter` (which throws
// unsupported_conversion naming both dtypes) while planning, before any byte is read; the copy
// then calls the converter once per copied row or 2-D box. Supported, beside same-dtype copies:
//   BF16 <-> F32, F16 <-> F32, BF16 <-> F16, F64 <-> F32,
//   F8_E4M3 / F8_E5M2 -> F16, BF16, F32.
// Narrowing rounds to nearest, ties to even; Inf, NaN, -0 and subnormals follow numpy (F16 <-> F32)
// and ml_dtypes (the rest) bit for bit; see detail/convert_elements.hpp for the NaN rules.
// Integer, bool, complex and the other narrow float dtypes copy only to themselves.
//
// Speed: the loops are plain C++ that GCC and clang vectorise at -O2 without -march flags (the
// default build); on x86-64 a second copy compiled for AVX2 (a function target attribute, no
// intrinsics) is chosen at run time by find_converter. With -march flags (AVX-512...) the
// compiler vectorises the portable copy for them itself. No F16C/AVX512-BF16 instructions:
// the hardware quiets signalling NaNs and keeps payloads where numpy / ml_dtypes do not, and the
// integer loops already run near memory bandwidth (BENCHMARKS.md). Define
// SAFESHARD_NO_CONVERT_DISPATCH to keep only the portable copy.
//
// Only core/ is included: the CUDA engine compiles this under nvcc for its staging pass.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "safeshard/core/dtype.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/load/detail/convert_kernels.hpp"

namespace safeshard {

class converter;

namespace detail {

struct converter_access;

// The conversion kernel for a pair other than a same-dtype copy, or nullptr.
[[nodiscard]] inline convert_fn find_convert_kernel(dtype from, dtype to,
                                                    convert_isa isa) noexcept {
    switch (from) {
        case dtype::f16:
            if (to == dtype::f32) return pick_kernel<op_f16_f32>(isa);
            if (to == dtype::bf16) return pick_kernel<op_f16_bf16>(isa);
            break;
        case dtype::bf16:
            if (to == dtype::f32) return pick_kernel<op_bf16_f32>(isa);
            if (to == dtype::f16) return pick_kernel<op_bf16_f16>(isa);
            break;
        case dtype::f32:
            if (to == dtype::f16) return pick_kernel<op_f32_f16>(isa);
            if (to == dtype::bf16) return pick_kernel<op_f32_bf16>(isa);
            if (to == dtype::f64) return pick_kernel<op_f32_f64>(isa);
            break;
        case dtype::f64:
            if (to == dtype::f32) return pick_kernel<op_f64_f32>(isa);
            break;
        case dtype::f8_e4m3:
            if (to == dtype::f32) return pick_kernel<op_e4m3_f32>(isa);
            if (to == dtype::f16) return pick_kernel<op_e4m3_f16>(isa);
            if (to == dtype::bf16) return pick_kernel<op_e4m3_bf16>(isa);
            break;
        case dtype::f8_e5m2:
            if (to == dtype::f32) return pick_kernel<op_e5m2_f32>(isa);
            if (to == dtype::f16) return pick_kernel<op_e5m2_f16>(isa);
            if (to == dtype::bf16) return pick_kernel<op_e5m2_bf16>(isa);
            break;
        default: break;
    }
    return nullptr;
}

}  // namespace detail

// Whether elements of `from` can be copied into elements of `to` (same dtype: always).
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr bool can_convert(dtype from, dtype to) noexcept {
    if (from == to) return true;
    switch (from) {
        case dtype::f16: return to == dtype::f32 || to == dtype::bf16;
        case dtype::bf16: return to == dtype::f32 || to == dtype::f16;
        case dtype::f32: return to == dtype::f16 || to == dtype::bf16 || to == dtype::f64;
        case dtype::f64: return to == dtype::f32;
        case dtype::f8_e4m3:
        case dtype::f8_e5m2: return to == dtype::f16 || to == dtype::bf16 || to == dtype::f32;
        default: return false;
    }
}

// A conversion from one dtype to another, chosen once while planning and called per row or box.
// A small value (two dtypes and a function pointer); copy it freely. src and dst may have any
// alignment but must not overlap. For sub-byte dtypes (F4, F6_*), which only copy to themselves,
// n_elements x bits must be a whole number of bytes (as the loader's slices guarantee).
class converter {
public:
    // A same-dtype copy of `t`.
    constexpr explicit converter(dtype t) noexcept : from_(t), to_(t), kernel_(nullptr) {}

    [[nodiscard]] constexpr dtype from() const noexcept { return from_; }
    [[nodiscard]] constexpr dtype to() const noexcept { return to_; }
    // True when the converter is a plain byte copy (an engine may use cudaMemcpy2D instead).
    [[nodiscard]] constexpr bool is_copy() const noexcept { return kernel_ == nullptr; }

    // Bytes read from the source / written to the destination for n elements.
    [[nodiscard]] constexpr std::size_t src_bytes(std::size_t n) const noexcept {
        return bytes_of(from_, n);
    }
    [[nodiscard]] constexpr std::size_t dst_bytes(std::size_t n) const noexcept {
        return bytes_of(to_, n);
    }

    // Converts n contiguous elements.
    void operator()(const std::byte* src, std::byte* dst, std::size_t n_elements) const noexcept {
        if (n_elements == 0) return;
        if (kernel_ == nullptr) {
            std::memcpy(dst, src, bytes_of(from_, n_elements));
        } else {
            kernel_(src, dst, n_elements);
        }
    }

    // Converts a 2-D box: `rows` rows of `row_elems` elements; the strides are in bytes and
    // may be anything (rows need not be aligned or dense).
    void operator()(const std::byte* src, std::byte* dst, std::size_t rows, std::size_t row_elems,
                    std::size_t src_stride_bytes, std::size_t dst_stride_bytes) const noexcept {
        if (rows == 0 || row_elems == 0) return;
        if (kernel_ == nullptr) {
            const std::size_t row_bytes = bytes_of(from_, row_elems);
            if (src_stride_bytes == row_bytes && dst_stride_bytes == row_bytes) {
                std::memcpy(dst, src, rows * row_bytes);  // dense on both sides: one copy
                return;
            }
            for (std::size_t r = 0; r < rows; ++r, src += src_stride_bytes, dst += dst_stride_bytes)
                std::memcpy(dst, src, row_bytes);
            return;
        }
        for (std::size_t r = 0; r < rows; ++r, src += src_stride_bytes, dst += dst_stride_bytes)
            kernel_(src, dst, row_elems);
    }

    // The raw kernel for hot loops; nullptr for a same-dtype copy.
    [[nodiscard]] constexpr detail::convert_fn kernel() const noexcept { return kernel_; }

    friend constexpr bool operator==(const converter&, const converter&) noexcept = default;

private:
    friend struct detail::converter_access;

    constexpr converter(dtype from, dtype to, detail::convert_fn k) noexcept
        : from_(from), to_(to), kernel_(k) {}

    static constexpr std::size_t bytes_of(dtype t, std::size_t n) noexcept {
        return n * bit_size(t) / 8;
    }

    dtype from_;
    dtype to_;
    detail::convert_fn kernel_;
};

namespace detail {

[[nodiscard]] inline std::string unsupported_conversion_message(dtype from, dtype to) {
    std::string s = "cannot convert ";
    s += name(from);
    s += " to ";
    s += name(to);
    s += " (supported: BF16<->F32, F16<->F32, BF16<->F16, F64<->F32, "
         "F8_E4M3/F8_E5M2->F16/BF16/F32; other dtypes copy only to themselves)";
    return s;
}

struct converter_access {
    [[nodiscard]] static constexpr converter make(dtype from, dtype to, convert_fn k) noexcept {
        return converter(from, to, k);
    }
};

// The converter for a pair using a chosen copy of the loops (tests compare portable and AVX2).
[[nodiscard]] inline converter find_converter_for(dtype from, dtype to, convert_isa isa) {
    if (from == to) return converter(from);
    const convert_fn k = find_convert_kernel(from, to, isa);
    if (k == nullptr)
        throw error(errc::unsupported_conversion, unsupported_conversion_message(from, to));
    return converter_access::make(from, to, k);
}

}  // namespace detail

// The converter for a pair, using the fastest loops this CPU runs.
// Throws error(unsupported_conversion) naming both dtypes when can_convert(from, to) is false.
[[nodiscard]] inline converter find_converter(dtype from, dtype to) {
    return detail::find_converter_for(from, to, detail::best_convert_isa());
}

// The `by_device` policy: bf16 where the tensor lives on a CUDA device (what its kernels run
// on), f32 for host tensors (what CPU code computes in).
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr dtype by_device_dtype(bool is_cuda_device) noexcept {
    return is_cuda_device ? dtype::bf16 : dtype::f32;
}

// The dtypes a fixed or by-device policy converts: the floating-point ones engines compute in.
// Integer, bool and complex tensors (token ids, masks) and 8-bit and narrower floats (quantized
// weights, with scales beside them) keep their dtype, as torch's module.to(dtype) keeps
// integer buffers; dtype_per_parameter still converts anything it names.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr bool converted_by_policy(dtype t) noexcept {
    return t == dtype::f16 || t == dtype::bf16 || t == dtype::f32 || t == dtype::f64;
}

// What dtype a loaded tensor gets: the checkpoint's own, one fixed dtype, or by device (for
// the dtypes converted_by_policy names; the others keep theirs).
struct dtype_policy {
    enum class kind : std::uint8_t { keep, fixed, by_device };
    kind how = kind::keep;
    dtype fixed_dtype = dtype::f32;  // used when how == fixed

    [[nodiscard]] static constexpr dtype_policy keep() noexcept { return {kind::keep, dtype::f32}; }
    [[nodiscard]] static constexpr dtype_policy fixed(dtype t) noexcept { return {kind::fixed, t}; }
    [[nodiscard]] static constexpr dtype_policy by_device() noexcept {
        return {kind::by_device, dtype::f32};
    }

    // The destination dtype for a tensor stored as `source`.
    [[nodiscard]] constexpr dtype resolve(dtype source, bool is_cuda_device) const noexcept {
        if (!converted_by_policy(source)) return source;
        switch (how) {
            case kind::keep: return source;
            case kind::fixed: return fixed_dtype;
            case kind::by_device: return by_device_dtype(is_cuda_device);
        }
        return source;
    }

    friend constexpr bool operator==(const dtype_policy&, const dtype_policy&) noexcept = default;
};

// Parses a policy as a person spells it: "keep", "by_device" (or "by-device"), or a dtype name
// in any case ("bf16"). "auto" is deliberately not taken here: the command line decides it.
[[nodiscard]] constexpr std::optional<dtype_policy> parse_dtype_policy(
    std::string_view s) noexcept {
    if (s == "keep") return dtype_policy::keep();
    if (s == "by_device" || s == "by-device") return dtype_policy::by_device();
    if (auto t = parse_dtype_ignore_case(s)) return dtype_policy::fixed(*t);
    return std::nullopt;
}

}  // namespace safeshard
