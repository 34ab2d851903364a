// A slice map: the 2-D boxes, in elements, that copy a rank's slice out of its sources.
#pragma once

#include <cstddef>
#include <cstdint>
#include <ostream>
#include <string>

#include "safeshard/config.hpp"
#include "safeshard/core/checked.hpp"

namespace safeshard {

// One 2-D copy, in elements: `rows` rows of `row_elems` contiguous elements, from source
// tensor `source` (an index into the parameter's sources; row-major, contiguous) to the
// local tensor. Times the element sizes these are cudaMemcpy2DAsync's arguments
// (src + src_offset, spitch = src_row_stride, width = row_elems, height = rows, ...).
struct copy_box {
    std::uint8_t source = 0;
    std::uint64_t src_offset = 0;
    std::uint64_t rows = 0;
    std::uint64_t row_elems = 0;
    std::uint64_t src_row_stride = 0;
    std::uint64_t dst_offset = 0;
    std::uint64_t dst_row_stride = 0;

    friend constexpr bool operator==(const copy_box&, const copy_box&) = default;
};

// A 2-D region of the local tensor to fill with zeros (vocabulary padding).
struct zero_box {
    std::uint64_t dst_offset = 0;
    std::uint64_t rows = 0;
    std::uint64_t row_elems = 0;
    std::uint64_t dst_row_stride = 0;

    friend constexpr bool operator==(const zero_box&, const zero_box&) = default;
};

namespace detail {
// A box whose rows are back to back in source and destination is one long row.
SAFESHARD_HOST_DEVICE constexpr void normalize(copy_box& b) noexcept {
    if (b.rows > 1 && b.row_elems == b.src_row_stride && b.row_elems == b.dst_row_stride) {
        b.row_elems *= b.rows;  // no overflow: the caller checked rows * stride
        b.rows = 1;
    }
    if (b.rows == 1) b.src_row_stride = b.dst_row_stride = b.row_elems;
}

// Merges `b` into `a` when `b` continues `a` in both source and destination.
SAFESHARD_HOST_DEVICE constexpr bool try_merge(copy_box& a, const copy_box& b) noexcept {
    if (a.source != b.source) return false;
    if (a.rows == 1 && b.rows == 1) {  // two runs: contiguous if b starts where a ends
        if (b.src_offset != a.src_offset + a.row_elems ||
            b.dst_offset != a.dst_offset + a.row_elems)
            return false;
        a.row_elems += b.row_elems;
        a.src_row_stride = a.dst_row_stride = a.row_elems;
        return true;
    }
    // Same columns, b's rows follow a's rows (a single row's strides do not matter).
    const std::uint64_t ss = a.rows > 1 ? a.src_row_stride : b.src_row_stride;
    const std::uint64_t ds = a.rows > 1 ? a.dst_row_stride : b.dst_row_stride;
    if (a.row_elems != b.row_elems) return false;
    if (a.rows > 1 && b.rows > 1 &&
        (a.src_row_stride != b.src_row_stride || a.dst_row_stride != b.dst_row_stride))
        return false;
    if (b.src_offset != a.src_offset + a.rows * ss || b.dst_offset != a.dst_offset + a.rows * ds)
        return false;
    a.src_row_stride = ss;
    a.dst_row_stride = ds;
    a.rows += b.rows;
    normalize(a);
    return true;
}
}  // namespace detail

// A short list with a fixed capacity: no allocation, usable in device code and in
// constant expressions. Adjacent boxes merge as they are pushed.
class slice_map {
public:
    // 16 boxes cover every layout of the built-in architectures (at most 3 for fused
    // q/k/v); a strided split or an interleaved GQA with a larger multiplier may need more,
    // and is then refused with layout_status::too_many_pieces.
    static constexpr std::size_t box_capacity = 16;
    static constexpr std::size_t zero_capacity = 2;

    // Appends (merging with the last box when adjacent); false when full. Empty boxes are
    // dropped.
    SAFESHARD_HOST_DEVICE constexpr bool push(const copy_box& box) noexcept {
        if (box.rows == 0 || box.row_elems == 0) return true;
        if (box_count_ == box_capacity) {  // full: only a merge fits
            copy_box b = box;
            detail::normalize(b);
            return detail::try_merge(boxes_[box_count_ - 1], b);
        }
        copy_box& b = boxes_[box_count_];  // built in place (no 56-byte stack copies)
        b = box;
        detail::normalize(b);
        if (box_count_ > 0 && detail::try_merge(boxes_[box_count_ - 1], b)) {
            b = copy_box{};  // keep unused slots zero, so equal maps compare equal bytewise
            return true;
        }
        ++box_count_;
        return true;
    }

    SAFESHARD_HOST_DEVICE constexpr bool push_zero(zero_box z) noexcept {
        if (z.rows == 0 || z.row_elems == 0) return true;
        if (z.rows == 1) z.dst_row_stride = z.row_elems;
        if (zero_count_ == zero_capacity) return false;
        zeros_[zero_count_++] = z;
        return true;
    }

    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::size_t size() const noexcept {
        return box_count_;
    }
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr bool empty() const noexcept {
        return box_count_ == 0 && zero_count_ == 0;
    }
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr const copy_box& operator[](
        std::size_t i) const noexcept {
        return boxes_[i];
    }
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr const copy_box* begin() const noexcept {
        return boxes_;
    }
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr const copy_box* end() const noexcept {
        return boxes_ + box_count_;
    }
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::size_t zero_count() const noexcept {
        return zero_count_;
    }
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr const zero_box& zero(
        std::size_t i) const noexcept {
        return zeros_[i];
    }

    // Elements copied from the sources, and elements zero-filled.
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint64_t copied_elements() const noexcept {
        std::uint64_t n = 0;
        for (std::size_t i = 0; i < box_count_; ++i) n += boxes_[i].rows * boxes_[i].row_elems;
        return n;
    }
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint64_t zero_elements() const noexcept {
        std::uint64_t n = 0;
        for (std::size_t i = 0; i < zero_count_; ++i) n += zeros_[i].rows * zeros_[i].row_elems;
        return n;
    }

    friend constexpr bool operator==(const slice_map& a, const slice_map& b) noexcept {
        if (a.box_count_ != b.box_count_ || a.zero_count_ != b.zero_count_) return false;
        for (std::size_t i = 0; i < a.box_count_; ++i)
            if (!(a.boxes_[i] == b.boxes_[i])) return false;
        for (std::size_t i = 0; i < a.zero_count_; ++i)
            if (!(a.zeros_[i] == b.zeros_[i])) return false;
        return true;
    }

private:
    copy_box boxes_[box_capacity] = {};
    zero_box zeros_[zero_capacity] = {};
    std::uint8_t box_count_ = 0;
    std::uint8_t zero_count_ = 0;
};

// ---- bytes: the loader's view, also for sub-byte dtypes and converting copies ----

// One box in bytes, with the source and destination element widths in bits (they differ
// when the copy converts dtype).
struct byte_box {
    std::uint8_t source = 0;
    std::uint64_t src_offset = 0;     // bytes into the source tensor's data
    std::uint64_t src_row_bytes = 0;  // width read per row
    std::uint64_t src_pitch = 0;
    std::uint64_t dst_offset = 0;     // bytes into the local tensor's data
    std::uint64_t dst_row_bytes = 0;  // width written per row
    std::uint64_t dst_pitch = 0;
    std::uint64_t rows = 0;

    friend constexpr bool operator==(const byte_box&, const byte_box&) = default;
};

namespace detail {
// elements * bits / 8, false when not a whole number of bytes or on overflow.
SAFESHARD_HOST_DEVICE constexpr bool elems_to_bytes(std::uint64_t elems, std::uint64_t bits,
                                                    std::uint64_t& out) noexcept {
    std::uint64_t b = 0;
    if (mul_overflows(elems, bits, b) || b % 8 != 0) return false;
    out = b / 8;
    return true;
}
}  // namespace detail

// False when a boundary of the box falls inside a byte (F4, F6 slices) or a size overflows.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr bool to_bytes(const copy_box& b,
                                                            std::uint64_t src_bits,
                                                            std::uint64_t dst_bits,
                                                            byte_box& out) noexcept {
    out.source = b.source;
    out.rows = b.rows;
    return detail::elems_to_bytes(b.src_offset, src_bits, out.src_offset) &&
           detail::elems_to_bytes(b.row_elems, src_bits, out.src_row_bytes) &&
           detail::elems_to_bytes(b.src_row_stride, src_bits, out.src_pitch) &&
           detail::elems_to_bytes(b.dst_offset, dst_bits, out.dst_offset) &&
           detail::elems_to_bytes(b.row_elems, dst_bits, out.dst_row_bytes) &&
           detail::elems_to_bytes(b.dst_row_stride, dst_bits, out.dst_pitch);
}

// Whether every box and zero region starts and ends on a byte for elements of `bits` bits.
[[nodiscard]] SAFESHARD_HOST_DEVICE constexpr bool is_byte_granular(const slice_map& m,
                                                                    std::uint64_t bits) noexcept {
    byte_box scratch;
    for (const auto& b : m)
        if (!to_bytes(b, bits, bits, scratch)) return false;
    for (std::size_t i = 0; i < m.zero_count(); ++i) {
        const zero_box& z = m.zero(i);
        std::uint64_t x = 0;
        if (!detail::elems_to_bytes(z.dst_offset, bits, x) ||
            !detail::elems_to_bytes(z.row_elems, bits, x) ||
            !detail::elems_to_bytes(z.dst_row_stride, bits, x))
            return false;
    }
    return true;
}

// ---- printing ----

[[nodiscard]] inline std::string to_string(const copy_box& b) {
    std::string s = "src" + std::to_string(b.source) + "+" + std::to_string(b.src_offset) + " " +
                    std::to_string(b.rows) + "x" + std::to_string(b.row_elems);
    if (b.rows > 1)
        s += " (stride " + std::to_string(b.src_row_stride) + "->" +
             std::to_string(b.dst_row_stride) + ")";
    return s + " -> dst+" + std::to_string(b.dst_offset);
}

[[nodiscard]] inline std::string to_string(const zero_box& z) {
    std::string s = "zero " + std::to_string(z.rows) + "x" + std::to_string(z.row_elems);
    if (z.rows > 1) s += " (stride " + std::to_string(z.dst_row_stride) + ")";
    return s + " at dst+" + std::to_string(z.dst_offset);
}

// "{src0+1024 1x4096 -> dst+0; zero 1x64 at dst+4096}"
[[nodiscard]] inline std::string to_string(const slice_map& m) {
    std::string s = "{";
    const char* sep = "";
    for (const auto& b : m) {
        s += sep + to_string(b);
        sep = "; ";
    }
    for (std::size_t i = 0; i < m.zero_count(); ++i) {
        s += sep + to_string(m.zero(i));
        sep = "; ";
    }
    return s + "}";
}

inline std::ostream& operator<<(std::ostream& os, const copy_box& b) { return os << to_string(b); }
inline std::ostream& operator<<(std::ostream& os, const zero_box& z) { return os << to_string(z); }
inline std::ostream& operator<<(std::ostream& os, const slice_map& m) { return os << to_string(m); }

}  // namespace safeshard
