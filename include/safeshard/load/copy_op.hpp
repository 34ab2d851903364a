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

}  // namespace safeshard
