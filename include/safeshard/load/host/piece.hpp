// What every read strategy of host_engine works on: a piece (a copy_op cut to at most a chunk,
// resolved against the bound targets), the worker's tally of bytes and its staging buffer, and
// the one interface the strategies share (`read_strategy`). The strategies, one header each:
// zero_fill.hpp, direct_read.hpp (O_DIRECT, and its io_uring pipeline), mapping_read.hpp
// (copies out of the file's mapping), buffered_read.hpp (pread, preadv, io_uring rows).
#pragma once

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>

#include "safeshard/io/aligned_buffer.hpp"
#include "safeshard/load/convert.hpp"
#include "safeshard/load/copy_op.hpp"
#include "safeshard/load/engine.hpp"

namespace safeshard::host {

// One piece, resolved: where it goes, where it comes from, how its elements convert.
struct piece {
    const copy_op& op;
    std::byte* dst;                    // where the box's first row goes
    const read_source* src = nullptr;  // its file (nullptr for copy_kind::zero)
    converter conv;                    // a same-dtype copy where nothing converts
    std::size_t row_elems = 0;         // elements in one destination row
    bool direct = false;               // the file is read with O_DIRECT (read_mode::direct)

    // One past the last source byte the piece reads.
    [[nodiscard]] std::uint64_t src_end() const noexcept {
        const byte_box& b = op.box;
        return op.file_begin() + (b.rows - 1) * b.src_pitch + b.src_row_bytes;
    }
};

// What one worker did: bytes read from files (the gaps of whole rows too), written into
// destinations, read with O_DIRECT; and whether the kernel refused MADV_POPULATE_READ.
struct tally {
    std::uint64_t read = 0;
    std::uint64_t written = 0;
    std::uint64_t direct = 0;
    bool populate_refused = false;

    // A box's rank bytes read and written.
    void copied(const byte_box& b) noexcept {
        read += b.rows * b.src_row_bytes;
        written += b.rows * b.dst_row_bytes;
    }
};

// A worker's staging buffer: aligned for O_DIRECT, grown to fit, never under its minimum.
class staging {
public:
    explicit staging(std::size_t minimum) noexcept : minimum_(minimum) {}
    [[nodiscard]] std::byte* get(std::size_t n) {
        if (buffer_.size() < n) buffer_ = aligned_buffer(std::max(n, minimum_));
        return buffer_.data();
    }

private:
    aligned_buffer buffer_{};
    std::size_t minimum_;
};

// A read strategy reads a piece into place and returns true, or returns false having done
// nothing: the next strategy in the worker's list takes the piece.
template <class S>
concept read_strategy = requires(S& s, const piece& p) {
    { s.try_run(p) } -> std::same_as<bool>;
};

// Runs `p` with the first strategy that takes it; false when none does.
template <read_strategy... S>
bool run_first(const piece& p, S&... strategies) {
    return (strategies.try_run(p) || ...);
}

}  // namespace safeshard::host
