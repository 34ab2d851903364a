// The reference copy loop for slice maps on the host: sources -> local, and back.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "safeshard/core/checked.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/shard/slice_map.hpp"

namespace safeshard {

// Refuses (misaligned_slice) a map whose boxes or zero regions start or end inside a byte
// for elements of `bits` bits (F4, F6): such slices cannot be copied byte-wise.
inline void check_byte_granular(const slice_map& m, std::uint64_t bits,
                                std::string_view parameter = {}) {
    if (bits == 0) throw error(errc::invalid_argument, "element size of 0 bits");
    if (is_byte_granular(m, bits)) return;
    throw error(errc::misaligned_slice,
                "the slice " + to_string(m) + " of elements of " + std::to_string(bits) +
                    " bits does not start and end on whole bytes; choose a world size that "
                    "cuts sub-byte tensors on byte boundaries",
                error_context{.file = {}, .tensor = std::string(parameter)});
}

namespace detail {
// Elements a box spans in a buffer: offset + (rows - 1) * stride + row_elems.
inline std::uint64_t box_end(std::uint64_t offset, std::uint64_t rows, std::uint64_t row_elems,
                             std::uint64_t stride) {
    if (rows == 0 || row_elems == 0) return 0;
    std::uint64_t e = 0;
    if (mul_overflows(rows - 1, stride, e) || add_overflows(e, offset, e) ||
        add_overflows(e, row_elems, e))
        throw error(errc::validation_overflow, "slice map box extent overflows 64 bits");
    return e;
}

inline void check_fits(std::uint64_t end_elems, std::size_t buffer_bytes, std::size_t element_size,
                       const char* what) {
    std::uint64_t bytes = 0;
    if (mul_overflows(end_elems, std::uint64_t{element_size}, bytes) || bytes > buffer_bytes)
        throw error(errc::shape_mismatch,
                    std::string("slice map reaches beyond the ") + what + " buffer (" +
                        std::to_string(end_elems) + " elements of " + std::to_string(element_size) +
                        " bytes, buffer " + std::to_string(buffer_bytes) + " bytes)");
}

inline void check_map(const slice_map& m, std::size_t source_count,
                      std::span<const std::size_t> source_bytes, std::size_t dst_bytes,
                      std::size_t element_size) {
    if (element_size == 0) throw error(errc::invalid_argument, "element size of 0 bytes");
    for (const auto& b : m) {
        if (b.source >= source_count)
            throw error(errc::invalid_argument, "slice map names source " +
                                                    std::to_string(unsigned{b.source}) + " of " +
                                                    std::to_string(source_count));
        check_fits(box_end(b.src_offset, b.rows, b.row_elems, b.src_row_stride),
                   source_bytes[b.source], element_size, "source");
        check_fits(box_end(b.dst_offset, b.rows, b.row_elems, b.dst_row_stride), dst_bytes,
                   element_size, "local");
    }
    for (std::size_t i = 0; i < m.zero_count(); ++i) {
        const zero_box& z = m.zero(i);
        check_fits(box_end(z.dst_offset, z.rows, z.row_elems, z.dst_row_stride), dst_bytes,
                   element_size, "local");
    }
}
// The copy loops, kept out of line: inlined next to a buffer of known size, g++ 12 warns
// (-Warray-bounds) about boxes that check_map has already refused.
#if defined(__GNUC__)
#define SAFESHARD_DETAIL_NOINLINE [[gnu::noinline]]
#else
#define SAFESHARD_DETAIL_NOINLINE
#endif
SAFESHARD_DETAIL_NOINLINE inline void copy_rows(std::byte* dst, std::uint64_t dst_offset,
                                                std::uint64_t dst_stride, const std::byte* src,
                                                std::uint64_t src_offset, std::uint64_t src_stride,
                                                std::uint64_t rows, std::uint64_t row_elems,
                                                std::size_t es) {
    for (std::uint64_t r = 0; r < rows; ++r)
        std::memcpy(dst + (dst_offset + r * dst_stride) * es,
                    src + (src_offset + r * src_stride) * es, row_elems * es);
}

SAFESHARD_DETAIL_NOINLINE inline void copy_bytes(std::byte* dst, const std::byte* src,
                                                 std::uint64_t n) {
    std::memcpy(dst, src, n);
}

SAFESHARD_DETAIL_NOINLINE inline void zero_rows(std::byte* dst, const zero_box& z, std::size_t es) {
    for (std::uint64_t r = 0; r < z.rows; ++r)
        std::memset(dst + (z.dst_offset + r * z.dst_row_stride) * es, 0, z.row_elems * es);
}
#undef SAFESHARD_DETAIL_NOINLINE
}  // namespace detail

// Copies a rank's slice: every box from its source into `dst`, then the zero regions.
// Every box is checked against the buffers first (shape_mismatch when one reaches beyond).
inline void apply(const slice_map& m, std::span<const std::span<const std::byte>> sources,
                  std::span<std::byte> dst, std::size_t element_size) {
    std::size_t sizes[slice_map::box_capacity] = {};
    const std::size_t n =
        sources.size() < slice_map::box_capacity ? sources.size() : slice_map::box_capacity;
    for (std::size_t i = 0; i < n; ++i) sizes[i] = sources[i].size();
    detail::check_map(m, n, std::span<const std::size_t>(sizes, n), dst.size(), element_size);
    for (const auto& b : m)
        detail::copy_rows(dst.data(), b.dst_offset, b.dst_row_stride, sources[b.source].data(),
                          b.src_offset, b.src_row_stride, b.rows, b.row_elems, element_size);
    for (std::size_t i = 0; i < m.zero_count(); ++i)
        detail::zero_rows(dst.data(), m.zero(i), element_size);
}

inline void apply(const slice_map& m, std::span<const std::byte> source, std::span<std::byte> dst,
                  std::size_t element_size) {
    apply(m, std::span<const std::span<const std::byte>>(&source, 1), dst, element_size);
}

// The inverse copy, row by row, for elements of `bits` bits: f(box, at, from, n) for every
// row of every box, where n bytes at byte `from` of the local tensor came from byte `at` of
// source box.source (whole bytes: see check_byte_granular for sub-byte elements). apply_inverse
// and consolidation (save/merge.hpp) run it.
template <class F>
void for_each_inverse_row(const slice_map& m, std::uint64_t bits, F&& f) {
    const auto bytes = [bits](std::uint64_t elements) {
        return bits % 8 == 0 ? elements * (bits / 8) : elements * bits / 8;
    };
    for (const copy_box& b : m)
        for (std::uint64_t row = 0; row < b.rows; ++row)
            f(b, bytes(b.src_offset + row * b.src_row_stride),
              bytes(b.dst_offset + row * b.dst_row_stride), (b.row_elems * bits + 7) / 8);
}

// The inverse copy (consolidation): writes the local tensor back to where each box came
// from in the sources. Zero-filled padding has no source and is dropped. Applied for every
// rank, it rebuilds the sources (replicated data is written once per rank, identically).
inline void apply_inverse(const slice_map& m, std::span<const std::byte> local,
                          std::span<const std::span<std::byte>> sources, std::size_t element_size) {
    std::size_t sizes[slice_map::box_capacity] = {};
    const std::size_t n =
        sources.size() < slice_map::box_capacity ? sources.size() : slice_map::box_capacity;
    for (std::size_t i = 0; i < n; ++i) sizes[i] = sources[i].size();
    detail::check_map(m, n, std::span<const std::size_t>(sizes, n), local.size(), element_size);
    for_each_inverse_row(
        m, std::uint64_t{element_size} * 8,
        [&](const copy_box& b, std::uint64_t at, std::uint64_t from, std::uint64_t bytes) {
            detail::copy_bytes(sources[b.source].data() + at, local.data() + from, bytes);
        });
}

inline void apply_inverse(const slice_map& m, std::span<const std::byte> local,
                          std::span<std::byte> source, std::size_t element_size) {
    apply_inverse(m, local, std::span<const std::span<std::byte>>(&source, 1), element_size);
}

}  // namespace safeshard
