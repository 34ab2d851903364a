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
#include <utility>
#include <vector>

#include <sys/stat.h>

#include "safeshard/core/checked.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/io/file_reader.hpp"
#include "safeshard/io/mapping_guard.hpp"
#include "safeshard/io/syscalls.hpp"
#include "safeshard/load/convert.hpp"
#include "safeshard/load/copy_op.hpp"
#include "safeshard/load/device.hpp"

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
// `converters`, by destination index where some destination is dequantized in the copy: its
// dequantizing converter (whose view of the companions outlives the copy); a destination
// without one converts element-wise as its ops' dtypes say.
struct copy_targets {
    std::span<const read_source> sources{};
    std::span<std::byte* const> destinations{};
    std::span<const std::uint64_t> destination_bytes{};
    std::span<const converter> converters{};
};

// What an engine counted: every byte it read from a file and wrote to a destination.
struct engine_stats {
    std::uint64_t bytes_read = 0;
    std::uint64_t bytes_written = 0;
    double seconds = 0;
};

// An engine binds targets, takes ops (any number of submits), and wait() finishes them,
// rethrowing the first error. Ops of one submit may run in any order and concurrently:
// their destinations do not overlap. Besides, every engine says
//   - `static constexpr device_kind memory`: the kind of memory its destinations are;
//   - `device target_device() const`: the one device it fills (one engine per device: the
//     loader checks that every destination of a plan is planned for it);
//   - `read_options reader_options() const`: how the caller opens the files (O_DIRECT);
//   - `set_names(span<const string>)`: destination names by index, for its error messages;
//   - `vector<string> take_notes()`: what it chose differently from what it was asked (a file
//     system that refused O_DIRECT), one line each, handed over once (into the load_report).
template <class E>
concept copy_engine_core = requires(E& e, const copy_targets& t, std::span<const copy_op> ops,
                                    progress_callback cb) {
    e.bind(t);
    e.submit(ops);
    e.wait();
    e.set_progress(std::move(cb));
    { std::as_const(e).stats() } -> std::convertible_to<engine_stats>;
};

template <class E>
concept copy_engine_names_memory = requires(const E& e) {
    { E::memory } -> std::convertible_to<device_kind>;
    { e.target_device() } -> std::same_as<device>;
};

template <class E>
concept copy_engine_opens_files = requires(const E& e) {
    { e.reader_options() } -> std::convertible_to<read_options>;
};

template <class E>
concept copy_engine_reports = requires(E& e, std::span<const std::string> names) {
    e.set_names(names);
    { e.take_notes() } -> std::convertible_to<std::vector<std::string>>;
};

template <class E>
concept copy_engine = copy_engine_core<E> && copy_engine_names_memory<E> &&
    copy_engine_opens_files<E> && copy_engine_reports<E>;

// An engine that fills host memory: the loader writes created parameters in place.
template <class E>
concept host_copy_engine = copy_engine<E> &&(E::memory == device_kind::host);

// An engine that fills device memory: created parameters are initialised on the host and
// handed to `upload(device pointer, host bytes)`, which copies them before it returns.
template <class E>
concept device_copy_engine = copy_engine<E> &&(E::memory != device_kind::host) &&
                             requires(E& e, std::byte* dst, std::span<const std::byte> src) {
    e.upload(dst, src);
};

// Readable messages, one per missing piece (use in a function templated on E).
template <class E>
consteval bool check_copy_engine() {
    static_assert(copy_engine_core<E>,
                  "a copy engine needs bind(const copy_targets&), submit(span<const copy_op>), "
                  "wait(), set_progress(progress_callback) and `engine_stats stats() const` "
                  "(see load/engine.hpp)");
    static_assert(copy_engine_names_memory<E>,
                  "a copy engine needs `static constexpr device_kind memory` (the memory it "
                  "fills) and `device target_device() const` (the device it fills)");
    static_assert(copy_engine_opens_files<E>,
                  "a copy engine needs `read_options reader_options() const` (how the loader "
                  "opens the files)");
    static_assert(copy_engine_reports<E>,
                  "a copy engine needs set_names(span<const string>) and "
                  "`vector<string> take_notes()`");
    static_assert(!copy_engine<E> || host_copy_engine<E> || device_copy_engine<E>,
                  "a copy engine that fills device memory needs upload(std::byte* device, "
                  "span<const std::byte> host) for the parameters the loader creates");
    return true;
}

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

// The dequantizing converter bound for the op's destination, if any.
[[nodiscard]] inline const converter* dequantizer_of(const copy_op& op,
                                                     const copy_targets& t) noexcept {
    if (op.kind != copy_kind::copy || op.destination >= t.converters.size()) return nullptr;
    const converter& c = t.converters[op.destination];
    return c.dequantizes() ? &c : nullptr;
}

// How the op's elements convert: its destination's dequantizer placed at the op's box, the
// element-wise conversion of its dtypes, or a copy.
[[nodiscard]] inline converter op_converter(const copy_op& op, const copy_targets& t) {
    if (const converter* c = dequantizer_of(op, t))
        return c->placed(op.box.dst_offset, op.box.dst_pitch);
    return op.converts() ? find_converter(op.src_dtype, op.dst_dtype) : converter(op.src_dtype);
}

// What every engine checks of an op before it queues it: its bounds (check_op_bounds) and,
// for a converting copy, that the conversion exists (unsupported_conversion). The error names
// the op's destination where `names` (by destination index, from set_names) has it.
inline void check_submitted_op(const copy_op& op, const copy_targets& t,
                               std::span<const std::string> names = {}) {
    try {
        check_op_bounds(op, t);
        const converter* deq = dequantizer_of(op, t);
        if (deq && (deq->from() != op.src_dtype || deq->to() != op.dst_dtype))
            throw error(errc::invalid_argument,
                        "copy op {" + to_string(op) + "}: its destination dequantizes " +
                            std::string(name(deq->from())) + " to " + std::string(name(deq->to())));
        if (!deq && op.kind == copy_kind::copy && op.converts() &&
            !can_convert(op.src_dtype, op.dst_dtype))
            throw error(errc::unsupported_conversion,
                        unsupported_conversion_message(op.src_dtype, op.dst_dtype));
    } catch (const error& e) {
        if (op.destination >= names.size() || !e.tensor().empty()) throw;
        error_context ctx = e.context();
        ctx.tensor = names[op.destination];
        throw error(e.code(), e.message(), std::move(ctx));
    }
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
