// copy_op: one 2-D copy from a checkpoint file into a destination tensor, in bytes.
// No format/ and no simdjson here: the CUDA engine (compiled by nvcc) includes this header.
#pragma once

#include <cstdint>
#include <limits>
#include <ostream>
#include <string>

#include "safeshard/config.hpp"
#include "safeshard/core/dtype.hpp"
#include "safeshard/shard/slice_map.hpp"

namespace safeshard {

enum class copy_kind : std::uint8_t {
    copy,  // rows read from a file (converted when the dtypes differ)
    zero,  // rows of the destination set to zero (vocabulary padding); no file
};

// The box is shard's slice map box in bytes (to_bytes): src_offset is relative to the source
// tensor's data, whose absolute position in the file is `file_offset`; dst_offset is relative
// to the destination tensor's first byte. A zero op uses dst_* and rows only.
struct copy_op {
    static constexpr std::uint32_t no_file = std::numeric_limits<std::uint32_t>::max();

    copy_kind kind = copy_kind::copy;
    std::uint32_t file = no_file;   // index into the plan's files (the engine's read sources)
    std::uint64_t file_offset = 0;  // where the source tensor's data begins in the file
    byte_box box{};
    dtype src_dtype = dtype::u8;
    dtype dst_dtype = dtype::u8;
    std::uint32_t destination = 0;  // index into the plan's destinations

    // The first byte of the file this op reads (sort key with `file`).
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint64_t file_begin() const noexcept {
        return file_offset + box.src_offset;
    }
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint64_t bytes_read() const noexcept {
        return kind == copy_kind::copy ? box.rows * box.src_row_bytes : 0;
    }
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr std::uint64_t bytes_written() const noexcept {
        return box.rows * box.dst_row_bytes;
    }
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr bool converts() const noexcept {
        return src_dtype != dst_dtype;
    }
    // Source rows back to back: one read covers the op.
    [[nodiscard]] SAFESHARD_HOST_DEVICE constexpr bool contiguous_source() const noexcept {
        return box.rows <= 1 || box.src_pitch == box.src_row_bytes;
    }

    friend constexpr bool operator==(const copy_op&, const copy_op&) = default;
};

// "file 1 @ 4096: 128 x 3584 B (pitch 28672) BF16 -> dst 3 + 0 (pitch 3584)"
[[nodiscard]] inline std::string to_string(const copy_op& op) {
    const byte_box& b = op.box;
    std::string s;
    if (op.kind == copy_kind::zero) {
        s = "zero " + std::to_string(b.rows) + " x " + std::to_string(b.dst_row_bytes) + " B";
    } else {
        s = "file " + std::to_string(op.file) + " @ " + std::to_string(op.file_begin()) + ": " +
            std::to_string(b.rows) + " x " + std::to_string(b.src_row_bytes) + " B";
        if (b.rows > 1) s += " (pitch " + std::to_string(b.src_pitch) + ")";
        s += " " + std::string(name(op.src_dtype));
        if (op.converts()) s += "->" + std::string(name(op.dst_dtype));
    }
    s += " -> dst " + std::to_string(op.destination) + " + " + std::to_string(b.dst_offset);
    if (b.rows > 1) s += " (pitch " + std::to_string(b.dst_pitch) + ")";
    return s;
}

inline std::ostream& operator<<(std::ostream& os, const copy_op& op) { return os << to_string(op); }

namespace detail {
// Cuts `op` into pieces for the engines (a work share, a staging buffer), calling piece(p) for
// each; offsets stay absolute. rows_per > 0: groups of that many consecutive rows. rows_per
// == 0: every row alone, cut by elements into runs of at most `limit` bytes on the wider side
// (element counts a multiple of 8, so a run is whole bytes in every dtype). The pieces of a
// zero op read no source bytes.
template <class Piece>
void cut_copy_op(const copy_op& op, std::uint64_t rows_per, std::uint64_t limit, Piece&& piece) {
    const byte_box& b = op.box;
    if (rows_per > 0) {
        for (std::uint64_t r = 0; r < b.rows; r += rows_per) {
            copy_op p = op;
            p.box.rows = b.rows - r < rows_per ? b.rows - r : rows_per;
            p.box.src_offset = b.src_offset + r * b.src_pitch;
            p.box.dst_offset = b.dst_offset + r * b.dst_pitch;
            piece(p);
        }
        return;
    }
    const bool zero = op.kind == copy_kind::zero;
    const std::uint64_t dbits = bit_size(op.dst_dtype);
    const std::uint64_t sbits = zero ? dbits : bit_size(op.src_dtype);
    const std::uint64_t elems = b.dst_row_bytes * 8 / dbits;
    std::uint64_t step = limit * 8 / (sbits > dbits ? sbits : dbits) / 8 * 8;
    if (step < 8) step = 8;
    for (std::uint64_t r = 0; r < b.rows; ++r)
        for (std::uint64_t e = 0; e < elems; e += step) {
            const std::uint64_t n = elems - e < step ? elems - e : step;
            copy_op p = op;
            p.box.rows = 1;
            p.box.src_offset = b.src_offset + r * b.src_pitch + e * sbits / 8;
            p.box.dst_offset = b.dst_offset + r * b.dst_pitch + e * dbits / 8;
            p.box.src_row_bytes = p.box.src_pitch = zero ? 0 : n * sbits / 8;
            p.box.dst_row_bytes = p.box.dst_pitch = n * dbits / 8;
            piece(p);
        }
}
}  // namespace detail

}  // namespace safeshard
