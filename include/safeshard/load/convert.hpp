// dtype conversion fused into the copy: which pairs convert, and the loops that do it.
//
// A loader asks `can_convert` (a constant expression) or `find_converter` (which throws
// unsupported_conversion naming both dtypes) while planning, before any byte is read; the copy
// then calls the converter once per copied row or 2-D box. What converts, beside same-dtype
// copies, is the table `conversions` below (one place: can_convert, find_converter, the refusal
// message and the dtypes a policy converts all read it).
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

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "safeshard/core/dtype.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/load/detail/convert_kernels.hpp"
#include "safeshard/load/detail/dequantize.hpp"

namespace safeshard {

class converter;

// What an input of a conversion is: the values themselves, or a companion tensor that a
// dequantizing conversion reads beside them: the scale of each block of values, the global
// scale of the whole tensor (of each fused part) that multiplies (ModelOpt's weight_scale_2)
// or divides (compressed-tensors' weight_global_scale) the block scales, zero points, group
// indices.
enum class convert_role : std::uint8_t {
    none,
    values,
    scales,
    global_scales,
    global_divisors,
    zeros,
    group_index
};

// One input of a conversion: its role and the dtype it must have.
struct convert_input {
    convert_role role = convert_role::none;
    dtype type = dtype::bool_;
};

// The most inputs one conversion reads (values, scales, zeros, group indices).
inline constexpr std::size_t max_convert_inputs = 4;

// An entry of the conversion table: the inputs it reads (inputs[0] the values; unused ones
// have role none), the dtype it writes and its loops. An element-wise conversion reads one
// input (`kernel`); a dequantizing one reads the values and their companions (`dequant`,
// detail/dequantize.hpp).
struct conversion {
    std::array<convert_input, max_convert_inputs> inputs{};
    dtype to = dtype::bool_;
    detail::convert_kernels kernel{};
    detail::dequant_kernels dequant{};

    [[nodiscard]] constexpr std::size_t input_count() const noexcept {
        std::size_t n = 0;
        while (n < inputs.size() && inputs[n].role != convert_role::none) ++n;
        return n;
    }
    // The dtype of the values read.
    [[nodiscard]] constexpr dtype from() const noexcept { return inputs[0].type; }
    // Whether the entry converts elements of `from` alone (no companion tensors) into `to`.
    [[nodiscard]] constexpr bool is_elementwise() const noexcept { return input_count() == 1; }
};

namespace detail {

struct converter_access;

template <class Op>
[[nodiscard]] constexpr conversion elementwise(dtype from, dtype to) noexcept {
    conversion c;
    c.inputs[0] = {convert_role::values, from};
    c.to = to;
    c.kernel = kernels_of<Op>();
    return c;
}

template <class V, class Out, global_scale G>
[[nodiscard]] constexpr conversion dequantizing(dtype scales) noexcept {
    conversion c;
    c.inputs[0] = {convert_role::values, V::type};
    c.inputs[1] = {convert_role::scales, scales};
    if constexpr (G == global_scale::multiplies)
        c.inputs[2] = {convert_role::global_scales, dtype::f32};
    if constexpr (G == global_scale::divides)
        c.inputs[2] = {convert_role::global_divisors, dtype::f32};
    c.to = Out::to;
    c.dequant = dequant_kernels_of<V, Out, G>();
    return c;
}

// One dequantizing conversion to each target a policy converts to: BF16, F16, F32.
template <class V, global_scale G = global_scale::none>
[[nodiscard]] constexpr std::array<conversion, 3> dequantizing_to_all(dtype scales) noexcept {
    return {dequantizing<V, out_bf16, G>(scales), dequantizing<V, out_f16, G>(scales),
            dequantizing<V, out_f32, G>(scales)};
}

// The integer dequantizing conversions of values V with `scales`, to each target: with and
// without zero points (I32 words), with and without a group index (I32, act order).
template <class V>
[[nodiscard]] constexpr std::array<conversion, 12> integer_dequantizing(dtype scales) noexcept {
    std::array<conversion, 12> out{};
    const std::array<conversion, 3> to = dequantizing_to_all<V>(scales);
    std::size_t i = 0;
    for (const bool zeros : {false, true})
        for (const bool group_index : {false, true})
            for (conversion c : to) {
                std::size_t k = 2;
                if (zeros) c.inputs[k++] = {convert_role::zeros, dtype::i32};
                if (group_index) c.inputs[k++] = {convert_role::group_index, dtype::i32};
                out[i++] = c;
            }
    return out;
}

template <std::size_t... N>
[[nodiscard]] constexpr auto join(const std::array<conversion, N>&... parts) noexcept {
    std::array<conversion, (N + ...)> out{};
    std::size_t i = 0;
    ((std::copy(parts.begin(), parts.end(), out.begin() + static_cast<std::ptrdiff_t>(i)), i += N),
     ...);
    return out;
}

}  // namespace detail

// Every conversion the copy does, beside same-dtype copies: the element-wise ones (their
// order is the order the refusal message lists them in; a pair converting both ways reads
// "A<->B", in the order of its first entry), then the dequantizing ones, each to BF16, F16
// and F32: FP8 (E4M3) values with F32, BF16 or F16 scales (FP8 blocks, per tensor, per
// channel) or E8M0 ones (MXFP8), FP4 (E2M1) values with E8M0 scales (MXFP4) or E4M3 scales
// and a global F32 scale (NVFP4: ModelOpt multiplies by it, compressed-tensors divides), 4- and
// 8-bit unsigned integer codes (U4, U8: GPTQ, compressed-tensors pack-quantized) with F16, BF16
// or F32 group scales, zero points or not, a group index or not, and I8 values with F32 row
// scales (bitsandbytes 8-bit).
inline constexpr auto conversions = detail::join(
    std::array{detail::elementwise<detail::op_bf16_f32>(dtype::bf16, dtype::f32),
               detail::elementwise<detail::op_f32_bf16>(dtype::f32, dtype::bf16),
               detail::elementwise<detail::op_f16_f32>(dtype::f16, dtype::f32),
               detail::elementwise<detail::op_f32_f16>(dtype::f32, dtype::f16),
               detail::elementwise<detail::op_bf16_f16>(dtype::bf16, dtype::f16),
               detail::elementwise<detail::op_f16_bf16>(dtype::f16, dtype::bf16),
               detail::elementwise<detail::op_f64_f32>(dtype::f64, dtype::f32),
               detail::elementwise<detail::op_f32_f64>(dtype::f32, dtype::f64),
               detail::elementwise<detail::op_e4m3_f16>(dtype::f8_e4m3, dtype::f16),
               detail::elementwise<detail::op_e4m3_bf16>(dtype::f8_e4m3, dtype::bf16),
               detail::elementwise<detail::op_e4m3_f32>(dtype::f8_e4m3, dtype::f32),
               detail::elementwise<detail::op_e5m2_f16>(dtype::f8_e5m2, dtype::f16),
               detail::elementwise<detail::op_e5m2_bf16>(dtype::f8_e5m2, dtype::bf16),
               detail::elementwise<detail::op_e5m2_f32>(dtype::f8_e5m2, dtype::f32)},
    detail::dequantizing_to_all<detail::values_e4m3>(dtype::f32),
    detail::dequantizing_to_all<detail::values_e4m3>(dtype::bf16),
    detail::dequantizing_to_all<detail::values_e4m3>(dtype::f16),
    detail::dequantizing_to_all<detail::values_e4m3>(dtype::f8_e8m0),
    detail::dequantizing_to_all<detail::values_e2m1>(dtype::f8_e8m0),
    detail::dequantizing_to_all<detail::values_e2m1, detail::global_scale::multiplies>(
        dtype::f8_e4m3),
    detail::dequantizing_to_all<detail::values_e2m1, detail::global_scale::divides>(dtype::f8_e4m3),
    detail::integer_dequantizing<detail::values_u4>(dtype::f16),
    detail::integer_dequantizing<detail::values_u4>(dtype::bf16),
    detail::integer_dequantizing<detail::values_u4>(dtype::f32),
    detail::integer_dequantizing<detail::values_u8>(dtype::f16),
    detail::integer_dequantizing<detail::values_u8>(dtype::bf16),
    detail::integer_dequantizing<detail::values_u8>(dtype::f32),
    detail::dequantizing_to_all<detail::values_i8>(dtype::f32));

namespace detail {

// The table without its kernels: what device code may read (the kernels are host functions).
struct dtype_pair {
    dtype from;
    dtype to;
};

[[nodiscard]] constexpr auto elementwise_pairs() noexcept {
    std::array<dtype_pair, conversions.size()> out{};
    std::size_t n = 0;
    for (const conversion& c : conversions)
        if (c.is_elementwise()) out[n++] = {c.from(), c.to};
    for (; n < out.size(); ++n) out[n] = {dtype::bool_, dtype::bool_};  // same dtype: inert
    return out;
}

// The table entry converting `from` alone into `to`, or nullptr.
[[nodiscard]] constexpr const conversion* find_elementwise(dtype from, dtype to) noexcept {
    for (const conversion& c : conversions)
        if (c.is_elementwise() && c.from() == from && c.to == to) return &c;
    return nullptr;
}

// The conversion kernel for a pair other than a same-dtype copy, or nullptr.
[[nodiscard]] inline convert_fn find_convert_kernel(dtype from, dtype to,
                                                    convert_isa isa) noexcept {
    const conversion* c = find_elementwise(from, to);
    return c != nullptr ? c->kernel.pick(isa) : nullptr;
}

}  // namespace detail

// Whether elements of `from` can be copied into elements of `to` (same dtype: always).
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr bool can_convert(dtype from, dtype to) noexcept {
    if (from == to) return true;
    // A constant copy of the pairs: device code can read it where it cannot read the table.
    constexpr auto pairs = detail::elementwise_pairs();
    for (const detail::dtype_pair& p : pairs)
        if (p.from == from && p.to == to && p.from != p.to) return true;
    return false;
}

// A conversion from one dtype to another, chosen once while planning and called per row or box.
// A small value (two dtypes and a function pointer); copy it freely. src and dst may have any
// alignment but must not overlap. For sub-byte dtypes (F4, F6_*), which only copy to themselves,
// n_elements x bits must be a whole number of bytes (as the loader's slices guarantee).
//
// A dequantizing converter (`dequantizes()`) also reads the companions of its destination
// through a dequant_view, and must know where in the destination its elements go: an engine
// gives each op's piece `placed(dst_offset, dst_pitch)` (the op's box, in destination bytes)
// and then calls it with that box's rows, or `row(r)` for the box's row r alone.
class converter {
public:
    // A same-dtype copy of `t`.
    constexpr explicit converter(dtype t) noexcept : from_(t), to_(t), kernel_(nullptr) {}

    [[nodiscard]] constexpr dtype from() const noexcept { return from_; }
    [[nodiscard]] constexpr dtype to() const noexcept { return to_; }
    // True when the converter is a plain byte copy (an engine may use cudaMemcpy2D instead).
    [[nodiscard]] constexpr bool is_copy() const noexcept {
        return kernel_ == nullptr && dequant_ == nullptr;
    }
    // True when it reads companions (scales) beside the values.
    [[nodiscard]] constexpr bool dequantizes() const noexcept { return dequant_ != nullptr; }

    // Bytes read from the source / written to the destination for n elements.
    [[nodiscard]] constexpr std::size_t src_bytes(std::size_t n) const noexcept {
        return bytes_of(from_, n);
    }
    [[nodiscard]] constexpr std::size_t dst_bytes(std::size_t n) const noexcept {
        return bytes_of(to_, n);
    }

    // The converter for the elements of a box whose first row begins `dst_offset` bytes into
    // the destination, rows `dst_pitch` bytes apart there (itself for an element-wise one).
    [[nodiscard]] constexpr converter placed(std::uint64_t dst_offset,
                                             std::uint64_t dst_pitch) const noexcept {
        converter c = *this;
        if (dequant_ == nullptr) return c;
        c.at_ = dst_offset * 8 / bit_size(to_);
        c.pitch_ = dst_pitch * 8 / bit_size(to_);
        return c;
    }
    // The converter placed at row r of its box.
    [[nodiscard]] constexpr converter row(std::uint64_t r) const noexcept {
        converter c = *this;
        c.at_ += r * pitch_;
        return c;
    }

    // Converts n contiguous elements.
    void operator()(const std::byte* src, std::byte* dst, std::size_t n_elements) const noexcept {
        if (n_elements == 0) return;
        if (dequant_ != nullptr) {
            dequant_(*view_, at_, pitch_, src, 0, dst, 0, 1, n_elements);
        } else if (kernel_ == nullptr) {
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
        if (dequant_ != nullptr) {
            dequant_(*view_, at_, pitch_, src, src_stride_bytes, dst, dst_stride_bytes, rows,
                     row_elems);
            return;
        }
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

    // The raw kernel for hot loops; nullptr for a same-dtype copy or a dequantizing one.
    [[nodiscard]] constexpr detail::convert_fn kernel() const noexcept { return kernel_; }

    friend constexpr bool operator==(const converter&, const converter&) noexcept = default;

private:
    friend struct detail::converter_access;

    constexpr converter(dtype from, dtype to, detail::convert_fn k) noexcept
        : from_(from), to_(to), kernel_(k) {}
    constexpr converter(dtype from, dtype to, detail::dequant_fn k, const dequant_view* v) noexcept
        : from_(from), to_(to), kernel_(nullptr), dequant_(k), view_(v) {}

    static constexpr std::size_t bytes_of(dtype t, std::size_t n) noexcept {
        return n * bit_size(t) / 8;
    }

    dtype from_;
    dtype to_;
    detail::convert_fn kernel_;
    detail::dequant_fn dequant_ = nullptr;
    const dequant_view* view_ = nullptr;
    std::uint64_t at_ = 0;     // the destination element of the first row's first element
    std::uint64_t pitch_ = 0;  // destination elements from one row of the box to the next
};

namespace detail {

// The element-wise conversions as a person reads them: "BF16<->F32, ..., F8_E4M3/F8_E5M2->
// F16/BF16/F32". A pair converting both ways is "A<->B"; the other entries are grouped by
// source, and sources with the same targets share one "S1/S2->T1/T2".
[[nodiscard]] inline std::string supported_conversions_text() {
    constexpr std::size_t n = conversions.size();
    std::array<bool, n> done{};
    auto reverse_of = [](const conversion& c) { return find_elementwise(c.to, c.from()); };
    // The one-way targets of a source, in table order.
    auto one_way_targets = [&](dtype from) {
        std::string t;
        for (const conversion& c : conversions) {
            if (!c.is_elementwise() || c.from() != from || reverse_of(c) != nullptr) continue;
            if (!t.empty()) t += '/';
            t += name(c.to);
        }
        return t;
    };
    std::string out;
    auto add = [&](std::string_view part) {
        if (!out.empty()) out += ", ";
        out += part;
    };
    for (std::size_t i = 0; i < n; ++i) {
        const conversion& c = conversions[i];
        if (done[i] || !c.is_elementwise()) continue;
        if (const conversion* r = reverse_of(c)) {
            done[i] = true;
            done[static_cast<std::size_t>(r - conversions.data())] = true;
            add(std::string(name(c.from())) + "<->" + std::string(name(c.to)));
            continue;
        }
        const std::string targets = one_way_targets(c.from());
        std::string sources;
        for (std::size_t j = i; j < n; ++j) {
            const conversion& d = conversions[j];
            if (done[j] || !d.is_elementwise() || reverse_of(d) != nullptr ||
                one_way_targets(d.from()) != targets)
                continue;
            if (!sources.empty()) sources += '/';
            sources += name(d.from());
            for (std::size_t k = j; k < n; ++k) {  // the source's one-way entries are listed now
                const conversion& e = conversions[k];
                if (e.is_elementwise() && e.from() == d.from() && reverse_of(e) == nullptr)
                    done[k] = true;
            }
        }
        add(sources + "->" + targets);
    }
    return out;
}

[[nodiscard]] inline std::string unsupported_conversion_message(dtype from, dtype to) {
    std::string s = "cannot convert ";
    s += name(from);
    s += " to ";
    s += name(to);
    s += " (supported: ";
    s += supported_conversions_text();
    s += "; other dtypes copy only to themselves)";
    return s;
}

struct converter_access {
    [[nodiscard]] static constexpr converter make(dtype from, dtype to, convert_fn k) noexcept {
        return converter(from, to, k);
    }
    [[nodiscard]] static constexpr converter make(dtype from, dtype to, dequant_fn k,
                                                  const dequant_view* v) noexcept {
        return converter(from, to, k, v);
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

namespace detail {
// The dequantizing entry of the table reading exactly `inputs` (values first) into `to`, or
// nullptr.
[[nodiscard]] constexpr const conversion* find_dequantizing(std::span<const convert_input> inputs,
                                                            dtype to) noexcept {
    for (const conversion& c : conversions) {
        if (c.is_elementwise() || c.to != to || c.input_count() != inputs.size()) continue;
        bool same = true;
        for (std::size_t i = 0; i < inputs.size(); ++i)
            same = same && c.inputs[i].role == inputs[i].role && c.inputs[i].type == inputs[i].type;
        if (same) return &c;
    }
    return nullptr;
}

// A conversion's inputs as a person reads them: "F4 x F8_E4M3 scales x F32 global scale",
// "(U4 - I32 zeros) x F16 scales by I32 group index".
[[nodiscard]] inline std::string inputs_text(std::span<const convert_input> inputs) {
    std::string s, zeros;
    for (const convert_input& in : inputs)
        if (in.role == convert_role::zeros) zeros = " - " + std::string(name(in.type)) + " zeros";
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        const std::string t(name(inputs[i].type));
        switch (inputs[i].role) {
            case convert_role::values: s += zeros.empty() ? t : "(" + t + zeros + ")"; break;
            case convert_role::zeros: break;
            case convert_role::group_index: s += " by " + t + " group index"; break;
            case convert_role::global_divisors: s += " / " + t + " global scale"; break;
            case convert_role::global_scales: s += " x " + t + " global scale"; break;
            case convert_role::scales: s += " x " + t + " scales"; break;
            case convert_role::none: break;
        }
    }
    return s;
}

// The dequantizing conversions as a person reads them: "F8_E4M3 x F32 scales, ... -> BF16/F16/F32".
[[nodiscard]] inline std::string dequantizing_conversions_text() {
    std::string out;
    for (const conversion& c : conversions)
        if (!c.is_elementwise() && c.to == dtype::bf16)  // each is listed once
            out += (out.empty() ? "" : ", ") + inputs_text({c.inputs.data(), c.input_count()});
    return out + " -> BF16/F16/F32";
}

// The dequantizing converter reading `inputs` into `to` through `view` (which must outlive it),
// with the loops of `isa`; unsupported_conversion naming what is supported where none is.
[[nodiscard]] inline converter find_dequantizer_for(std::span<const convert_input> inputs, dtype to,
                                                    const dequant_view* view, convert_isa isa) {
    const conversion* c = find_dequantizing(inputs, to);
    if (c == nullptr)
        throw error(errc::unsupported_conversion,
                    "cannot dequantize " + inputs_text(inputs) + " to " + std::string(name(to)) +
                        " (supported: " + dequantizing_conversions_text() + ")");
    return converter_access::make(inputs[0].type, to, c->dequant.pick(isa), view);
}
}  // namespace detail

// The dequantizing converter for `inputs` (values first, then their companions) into `to`.
[[nodiscard]] inline converter find_dequantizer(std::span<const convert_input> inputs, dtype to,
                                                const dequant_view* view) {
    return detail::find_dequantizer_for(inputs, to, view, detail::best_convert_isa());
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
// They are the dtypes the conversion table writes.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr bool converted_by_policy(dtype t) noexcept {
    constexpr auto pairs = detail::elementwise_pairs();
    for (const detail::dtype_pair& p : pairs)
        if (p.to == t && p.from != p.to) return true;
    return false;
}

// The dtypes converted_by_policy names, in dtype order: "F16, BF16, F32, F64".
[[nodiscard]] inline std::string policy_dtypes_text() {
    std::string out;
    for (const auto& info : detail::dtype_table) {
        if (!converted_by_policy(info.type)) continue;
        if (!out.empty()) out += ", ";
        out += info.name;
    }
    return out;
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

    // The dtype the policy asks of a tensor on the device: nullopt for keep.
    [[nodiscard]] constexpr std::optional<dtype> asked(bool is_cuda_device) const noexcept {
        switch (how) {
            case kind::keep: return std::nullopt;
            case kind::fixed: return fixed_dtype;
            case kind::by_device: return by_device_dtype(is_cuda_device);
        }
        return std::nullopt;
    }

    // The destination dtype for a tensor stored as `source`.
    [[nodiscard]] constexpr dtype resolve(dtype source, bool is_cuda_device) const noexcept {
        if (!converted_by_policy(source)) return source;
        return asked(is_cuda_device).value_or(source);
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
