// The copy_engine concept and what an engine reads from and writes to.
// No format/ here: engines (host, CUDA) see files, copy_ops and destination addresses only.
#pragma once

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <sys/stat.h>

#include "safeshard/core/checked.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/io/file_reader.hpp"
#include "safeshard/io/mapping_guard.hpp"
#include "safeshard/io/syscalls.hpp"
#include "safeshard/load/convert.hpp"
#include "safeshard/load/copy_op.hpp"

namespace safeshard {

// One checkpoint file as an engine sees it: an open reader (pread, preadv) and, when the
// caller has one, the file's mapping (for the mmap read mode). Both are borrowed.
struct read_source {
    const file_reader* reader = nullptr;
    std::span<const std::byte> mapping{};
};

// Bytes done and total, called as the copy progresses (from worker threads, serialised).
using progress_callback = std::function<void(std::uint64_t done, std::uint64_t total)>;

// Where copy_ops go: read_sources by file index, destination base addresses by destination
// index (device or host memory, as the engine expects), their sizes for the bounds check.
struct copy_targets {
    std::span<const read_source> sources{};
    std::span<std::byte* const> destinations{};
    std::span<const std::uint64_t> destination_bytes{};
};

// What an engine counted: every byte it read from a file and wrote to a destination.
struct engine_stats {
    std::uint64_t bytes_read = 0;
    std::uint64_t bytes_written = 0;
    double seconds = 0;
};

// An engine binds targets, takes ops (any number of submits), and wait() finishes them,
// rethrowing the first error. Ops of one submit may run in any order and concurrently:
// their destinations do not overlap.
template <class E>
concept copy_engine = requires(E& e, const copy_targets& t, std::span<const copy_op> ops,
                               progress_callback cb) {
    e.bind(t);
    e.submit(ops);
    e.wait();
    e.set_progress(std::move(cb));
    { e.stats() } -> std::convertible_to<engine_stats>;
};

namespace detail {
// Throws invalid_argument when an op reaches outside its destination or names a missing
// file: an engine checks this before it copies, so a wrong plan cannot write out of bounds.
inline void check_op_bounds(const copy_op& op, const copy_targets& t) {
    const byte_box& b = op.box;
    auto fail = [&](const std::string& why) {
        throw error(errc::invalid_argument, "copy op {" + to_string(op) + "}: " + why);
    };
    if (op.destination >= t.destinations.size()) fail("no such destination");
    if (b.rows == 0) return;
    std::uint64_t end = 0;
    if (mul_overflows(b.rows - 1, b.dst_pitch, end) || add_overflows(end, b.dst_offset, end) ||
        add_overflows(end, b.dst_row_bytes, end) ||
        (op.destination < t.destination_bytes.size() && end > t.destination_bytes[op.destination]))
        fail("reaches beyond its destination");
    if (op.kind == copy_kind::zero) return;
    if (op.file >= t.sources.size() || t.sources[op.file].reader == nullptr) fail("no such file");
    if (mul_overflows(b.rows - 1, b.src_pitch, end) || add_overflows(end, op.file_begin(), end) ||
        add_overflows(end, b.src_row_bytes, end))
        fail("source overflows");
}

// Whether the file behind `src` is at least `end` bytes long now. A mapping cannot say that
// its file shrank, and copying past the file's end raises SIGBUS: an engine asks before it
// copies out of a mapping, and copies under guard_mapped_read (io/mapping_guard.hpp) for a
// file cut while its bytes are being copied.
[[nodiscard]] inline std::optional<std::uint64_t> file_size_now(const read_source& src) {
    struct stat st {};
    if (src.reader == nullptr || sys::fstat(src.reader->fd(), &st) != 0) return std::nullopt;
    return static_cast<std::uint64_t>(st.st_size);
}
[[nodiscard]] inline bool file_holds(const read_source& src, std::uint64_t end) {
    const auto n = file_size_now(src);
    return n && *n >= end;
}

// The op's first source byte in the mapping, after checking that the mapping and the file
// both reach its last one; io_error (naming the file) where they do not.
[[nodiscard]] inline const std::byte* mapped_source(const read_source& src, const copy_op& op) {
    const byte_box& b = op.box;
    const std::uint64_t end = op.file_begin() + (b.rows - 1) * b.src_pitch + b.src_row_bytes;
    const auto now = file_size_now(src);
    if (end > src.mapping.size() || !now || *now < end) {
        const std::uint64_t have = std::min<std::uint64_t>(now.value_or(0), src.mapping.size());
        throw error(errc::io_error,
                    "the file is shorter (" + std::to_string(have) +
                        " bytes) than the tensor data the plan reads (to byte " +
                        std::to_string(end) + ")",
                    error_context{.file = src.reader ? src.reader->path().string() : "",
                                  .offset = op.file_begin()});
    }
    return src.mapping.data() + op.file_begin();
}

[[nodiscard]] inline std::string_view file_name_of(const read_source& src) noexcept {
    return src.reader ? std::string_view(src.reader->path().native()) : std::string_view();
}

// The op's source bytes in the mapping, from its first byte `from` to its last row's end.
[[nodiscard]] inline std::span<const std::byte> mapped_span(const copy_op& op,
                                                            const std::byte* from) noexcept {
    const byte_box& b = op.box;
    return {from, static_cast<std::size_t>((b.rows - 1) * b.src_pitch + b.src_row_bytes)};
}

// Converts the op's rows out of the mapping (`from`: its first byte there) into `dst`, rows
// `dst_pitch` apart, under guard_mapped_read: a page cut from the file meanwhile is io_error
// naming the file, not SIGBUS.
inline void convert_from_mapping(const read_source& src, const copy_op& op, const std::byte* from,
                                 const converter& conv, std::byte* dst, std::size_t row_elems,
                                 std::uint64_t dst_pitch) {
    const byte_box& b = op.box;
    guard_mapped_read(mapped_span(op, from), file_name_of(src), op.file_begin(), [&]() noexcept {
        conv(from, dst, b.rows, row_elems, b.src_pitch, dst_pitch);
    });
}
}  // namespace detail

}  // namespace safeshard
