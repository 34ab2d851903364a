// host_engine: the copy_engine for host memory. Worker threads share the work by bytes (a
// large tensor is cut into pieces), read with pread/preadv straight into the destination
// (or copy out of the mapping), and convert through a bounded per-thread staging buffer.
// Strided boxes with short rows and conversions copy out of the file's mapping
// (strided_read::automatic, the default); each piece's destination is prefaulted with one
// madvise(MADV_POPULATE_WRITE); the direct read mode reads with O_DIRECT into aligned staging
// buffers (cold caches), a piece's reads in flight while the previous piece is copied out.
#pragma once

#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <unistd.h>

// Batched strided reads through io_uring: define SAFESHARD_HAVE_LIBURING and link liburing
// (Debian: liburing-dev; meson: dependency('liburing')). Without it strided_read::batched
// reads row by row with pread.
#if defined(SAFESHARD_HAVE_LIBURING)
#include <liburing.h>
#endif

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "safeshard/core/clock.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/io/aligned_buffer.hpp"
#include "safeshard/io/file_reader.hpp"
#include "safeshard/io/syscalls.hpp"
#include "safeshard/load/convert.hpp"
#include "safeshard/load/copy_op.hpp"
#include "safeshard/load/device.hpp"
#include "safeshard/load/engine.hpp"
#include "safeshard/load/read_mode.hpp"

namespace safeshard {

// Reading a box whose source rows have gaps (a rank's columns of a row-major matrix).
enum class strided_read : std::uint8_t {
    automatic,   // rows under 64 KiB (and every conversion): copied out of the file's mapping,
                 // whose cached pages the kernel maps 16 at a time per fault (fault-around);
                 // longer rows: per_row. Without a mapping, or where the file is shorter than
                 // the plan says: per_row. Only the rank's bytes are copied.
    per_row,     // one pread per row: only the rank's bytes are read
    whole_rows,  // one read of the span from the first row to the last, then scatter: reads
                 // the other ranks' bytes too (world x the rank's bytes at worst)
    batched,     // the rows' reads submitted together through io_uring (one system call per
                 // batch); per_row where io_uring is not compiled in or refused by the kernel
};

struct host_engine_options {
    unsigned threads = 0;  // 0: std::thread::hardware_concurrency()
    read_mode mode = read_mode::pread;
    strided_read strided = strided_read::automatic;
    std::size_t chunk_bytes = std::size_t{8} << 20;    // the unit of work shared among threads
    std::size_t staging_bytes = std::size_t{4} << 20;  // per thread: conversions, whole rows
    // strided_read::automatic: madvise(MADV_POPULATE_READ) the range before copying out of the
    // mapping (one system call instead of a fault per 16 pages). Off by default: on Linux 6.18
    // it ran slower than fault-around (it maps page by page, and every page of the range,
    // the other ranks' columns too); see BENCHMARKS.md. Before Linux 5.14: MADV_WILLNEED.
    bool populate = false;
    // madvise(MADV_HUGEPAGE) on each destination before it is written (the whole pages inside
    // it): fresh memory then faults in 2 MiB at a time where transparent huge pages are in
    // `madvise` mode. Memory that cannot take the advice (not anonymous) is left as it is.
    // Off by default: often 2x faster, but slower where the kernel must compact memory to
    // find 2 MiB pages (BENCHMARKS.md).
    bool huge_pages = false;
    // madvise(MADV_POPULATE_WRITE) on each piece's destination before it is written: the kernel
    // allocates fresh pages in one call instead of taking a fault per 4 KiB page during the copy
    // (faster on fresh destinations: BENCHMARKS.md, "prefault"). Ranges under 64 KiB are left to
    // fault. Pages already there are only looked up; memory that refuses the advice (old
    // kernels, device mappings) faults.
    bool prefault = true;
};

namespace detail {
// MADV_POPULATE_READ (Linux 5.14) where the C library's headers predate it.
#if defined(MADV_POPULATE_READ)
inline constexpr int madv_populate_read = MADV_POPULATE_READ;
#else
inline constexpr int madv_populate_read = 22;
#endif
#if defined(MADV_POPULATE_WRITE)
inline constexpr int madv_populate_write = MADV_POPULATE_WRITE;
#else
inline constexpr int madv_populate_write = 23;
#endif
}  // namespace detail

class host_engine {
public:
    explicit host_engine(host_engine_options o = {}) : opt_(o) {
        if (opt_.chunk_bytes < 4096) opt_.chunk_bytes = 4096;
        if (opt_.staging_bytes < 4096) opt_.staging_bytes = 4096;
    }

    // It fills host memory: every destination of a plan it runs is planned for the host.
    static constexpr device_kind memory = device_kind::host;
    [[nodiscard]] static constexpr safeshard::device target_device() noexcept { return {}; }

    [[nodiscard]] const host_engine_options& options() const noexcept { return opt_; }

    // Rows shorter than this are copied out of the mapping by strided_read::automatic.
    static constexpr std::uint64_t automatic_row_limit = std::uint64_t{64} << 10;
    // Destination ranges at least this long are prefaulted (host_engine_options::prefault).
    static constexpr std::uint64_t prefault_min_bytes = std::uint64_t{64} << 10;
    // The largest single O_DIRECT read (a piece's span is cut into reads of this size, all in
    // flight at once where io_uring is compiled in).
    static constexpr std::uint64_t direct_read_bytes = std::uint64_t{512} << 10;

    // How the caller should open the files (load_tensors asks): O_DIRECT for read_mode::direct.
    [[nodiscard]] read_options reader_options() const noexcept {
        return read_options{.direct = opt_.mode == read_mode::direct};
    }
    // What the engine chose differently from what it was asked (a file system that refused
    // O_DIRECT, a kernel without MADV_POPULATE_READ), one line each; handed over once.
    [[nodiscard]] std::vector<std::string> take_notes() { return std::exchange(notes_, {}); }
    // Bytes read with O_DIRECT since construction (0 when every file fell back).
    [[nodiscard]] std::uint64_t direct_bytes_read() const noexcept { return direct_bytes_; }

    void bind(const copy_targets& t) {
        targets_ = t;
        direct_files_.clear();  // file indices name other files now
        if (opt_.huge_pages) advise_huge_pages();
    }
    void set_progress(progress_callback cb) { progress_ = std::move(cb); }
    // Destination names by destination index: submit's errors name the tensor.
    void set_names(std::span<const std::string> names) {
        names_.assign(names.begin(), names.end());
    }

    // Checks every op against the bound targets and queues it, cut into pieces.
    void submit(std::span<const copy_op> ops) {
        for (const copy_op& op : ops) {
            detail::check_submitted_op(op, targets_, names_);
            if (op.kind == copy_kind::copy && opt_.mode == read_mode::pread &&
                targets_.sources[op.file].reader == nullptr)
                throw error(errc::invalid_argument, "copy op without an open file");
            if (op.kind == copy_kind::copy && opt_.mode == read_mode::direct)
                note_fallback(op.file);
            split(op);
        }
    }

    // Runs the queued pieces on the worker threads (and this one); rethrows the first error.
    void wait() {
        const auto t0 = std::chrono::steady_clock::now();
        std::uint64_t total = 0;
        for (const auto& p : pieces_) total += p.bytes_written();
        unsigned n =
            opt_.threads ? opt_.threads : std::max(1u, std::thread::hardware_concurrency());
        // Direct reads wait on the device: more threads keep more reads in flight.
        if (opt_.threads == 0 && opt_.mode == read_mode::direct) n = std::max(n, 4u);
        n = static_cast<unsigned>(
            std::min<std::size_t>(n, std::max<std::size_t>(1, pieces_.size())));
        std::atomic<std::size_t> next{0};
        std::atomic<bool> failed{false};
        std::atomic<std::uint64_t> done{0}, read{0}, written{0}, direct{0};
        std::atomic<bool> populate_refused{false};
        std::exception_ptr first;
        std::mutex m;
        auto work = [&] {
            worker w{*this};
            // Bytes of pieces written (a direct piece is written after the next one's reads
            // are in flight, so progress counts finished pieces, not started ones).
            auto finished = [&](std::uint64_t bytes) {
                if (bytes == 0) return;
                if (!progress_) {
                    done.fetch_add(bytes);
                    return;
                }
                // Counted under the lock, so the callback sees the count only grow.
                const std::lock_guard lock(m);
                progress_(done.fetch_add(bytes) + bytes, total);
            };
            try {
                for (;;) {
                    if (failed.load(std::memory_order_relaxed)) return;
                    const std::size_t i = next.fetch_add(1, std::memory_order_relaxed);
                    if (i >= pieces_.size()) break;
                    finished(w.run(pieces_[i]));
                }
                finished(w.flush());
            } catch (...) {
                const std::lock_guard lock(m);
                if (!first) first = std::current_exception();
                failed = true;
            }
            read += w.read_;
            written += w.written_;
            direct += w.direct_;
            if (w.populate_refused_) populate_refused = true;
        };
        {
            std::vector<std::jthread> threads;
            try {
                for (unsigned i = 1; i < n; ++i) threads.emplace_back(work);
            } catch (...) {  // fewer threads than asked: the others and this one do the work
            }
            work();
        }
        pieces_.clear();
        stats_.bytes_read += read;
        stats_.bytes_written += written;
        direct_bytes_ += direct;
        if (populate_refused && !populate_noted_) {
            populate_noted_ = true;
            notes_.emplace_back(
                "madvise(MADV_POPULATE_READ) is not supported by this kernel (Linux 5.14 has it): "
                "strided rows and conversions were copied out of the mapping after MADV_WILLNEED");
        }
        stats_.seconds += seconds_since(t0);
        if (first) std::rethrow_exception(first);
    }

    [[nodiscard]] engine_stats stats() const noexcept { return stats_; }
    void reset_stats() noexcept { stats_ = {}; }

private:
    void advise_huge_pages() const {
        static const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
        const std::size_t n =
            std::min(targets_.destinations.size(), targets_.destination_bytes.size());
        for (std::size_t i = 0; i < n; ++i) {
            const auto a = reinterpret_cast<std::uintptr_t>(targets_.destinations[i]);
            const std::uintptr_t from = (a + page - 1) / page * page;
            const std::uintptr_t to = (a + targets_.destination_bytes[i]) / page * page;
            if (a == 0 || to <= from + page) continue;
            (void)detail::sys::madvise(reinterpret_cast<void*>(from), to - from, MADV_HUGEPAGE);
        }
    }

    // read_mode::direct: whether each file is read with O_DIRECT, decided once per file (and
    // said in a note when not): the caller may have opened it without O_DIRECT (refused by
    // the file system), and on tmpfs or ramfs O_DIRECT would only add a copy.
    void note_fallback(std::uint32_t file) {
        if (direct_files_.size() <= file) direct_files_.resize(file + 1, 0);
        if (direct_files_[file] != 0) return;
        const file_reader* f = targets_.sources[file].reader;
        direct_files_[file] = 2;
        if (f == nullptr) return;
        if (!f->direct()) {
            notes_.push_back(f->path().string() + ": " +
                             (f->fallback_note().empty() ? std::string("opened without O_DIRECT")
                                                         : std::string(f->fallback_note())));
            return;
        }
        struct statfs fs {};
        constexpr long tmpfs_magic = 0x01021994, ramfs_magic = 0x858458f6;
        if (detail::sys::fstatfs(f->fd(), &fs) == 0 &&
            (static_cast<long>(fs.f_type) == tmpfs_magic ||
             static_cast<long>(fs.f_type) == ramfs_magic)) {
            notes_.push_back(f->path().string() +
                             ": on tmpfs (files in memory, O_DIRECT bypasses nothing); read "
                             "through the page cache instead");
            return;
        }
        direct_files_[file] = 1;
    }
    [[nodiscard]] bool direct_file(std::uint32_t file) const noexcept {
        return file < direct_files_.size() && direct_files_[file] == 1;
    }

    // A piece is a copy_op cut to at most chunk_bytes (staging_bytes when it converts or reads
    // whole rows); its offsets stay absolute.
    void split(const copy_op& op) {
        const byte_box& b = op.box;
        if (b.rows == 0 || b.dst_row_bytes == 0) return;
        const bool staged = op.kind == copy_kind::copy &&
                            (op.converts() || opt_.mode == read_mode::direct ||
                             (opt_.strided == strided_read::whole_rows && !op.contiguous_source()));
        // Direct reads of same-dtype pieces take whole chunks (more reads in flight at once);
        // their staging grows to fit.
        const bool direct_copy = opt_.mode == read_mode::direct && !op.converts();
        const std::uint64_t limit = staged && !direct_copy
                                        ? std::min(opt_.chunk_bytes, opt_.staging_bytes)
                                        : opt_.chunk_bytes;
        const std::uint64_t row_in = op.kind == copy_kind::zero ? b.dst_row_bytes : b.src_row_bytes;
        const std::uint64_t row_span = std::max(b.src_pitch, row_in);
        // Rows that fit: groups of them; long rows: each alone, cut by elements.
        std::uint64_t per = 0;
        if (b.rows > 1 && (staged ? row_span : row_in) <= limit)
            per = std::max<std::uint64_t>(
                1,
                limit / (staged && opt_.strided == strided_read::whole_rows ? row_span : row_in));
        detail::cut_copy_op(op, per, limit, [&](const copy_op& p) { pieces_.push_back(p); });
    }

    struct worker {
        const host_engine& e;
        aligned_buffer staging{};
        std::uint64_t read_ = 0;
        std::uint64_t written_ = 0;
        std::uint64_t direct_ = 0;
        bool populate_refused_ = false;
        bool prefault_refused_ = false;
        struct span_read {
            std::uint64_t begin, end, at;  // aligned file range, its place in staging
        };
        std::vector<span_read> spans_{};
        std::vector<std::pair<std::uint64_t, std::uint64_t>> shorts_{};  // read, bytes got

        std::byte* stage(std::size_t n) {
            if (staging.size() < n) staging = aligned_buffer(std::max(n, e.opt_.staging_bytes));
            return staging.data();
        }

        // Runs one piece; returns the bytes written by the pieces this call finished (with
        // direct reads in flight, the previous piece's).
        std::uint64_t run(const copy_op& op) {
            const byte_box& b = op.box;
            std::byte* dst = e.targets_.destinations[op.destination] + b.dst_offset;
            if (e.opt_.prefault && !prefault_refused_)
                prefault(dst, (b.rows - 1) * b.dst_pitch + b.dst_row_bytes);
#if defined(SAFESHARD_HAVE_LIBURING)
            if (op.kind == copy_kind::copy && e.opt_.mode == read_mode::direct &&
                e.direct_file(op.file) && ring_ready()) {
                const int slot = start_direct(op, dst);
                if (slot >= 0) {  // its reads in flight: copy out the previous piece meanwhile
                    const int previous = std::exchange(pending_, slot);
                    return finish_direct(previous);
                }
            }
#endif
            const std::uint64_t before = flush();  // the ring and the order stay simple
            run_one(op, dst);
            return before + op.bytes_written();
        }

        // Finishes the piece whose direct reads are still in flight, if any; returns its bytes.
        std::uint64_t flush() {
#if defined(SAFESHARD_HAVE_LIBURING)
            return finish_direct(std::exchange(pending_, -1));
#else
            return 0;
#endif
        }

        void run_one(const copy_op& op, std::byte* dst) {
            const byte_box& b = op.box;
            if (op.kind == copy_kind::zero) {
                for (std::uint64_t r = 0; r < b.rows; ++r)
                    std::memset(dst + r * b.dst_pitch, 0, b.dst_row_bytes);
                written_ += b.rows * b.dst_row_bytes;
                return;
            }
            const read_source& src = e.targets_.sources[op.file];
            const std::size_t row_elems = b.dst_row_bytes * 8 / bit_size(op.dst_dtype);
            const converter conv = op.converts() ? find_converter(op.src_dtype, op.dst_dtype)
                                                 : converter(op.src_dtype);
            const std::uint64_t end =
                op.file_begin() + (b.rows - 1) * b.src_pitch + b.src_row_bytes;
            if (e.opt_.mode == read_mode::direct && e.direct_file(op.file)) {
                run_direct(op, *src.reader, dst, conv, row_elems);
                return;
            }
            if (from_mapping(op, src, end) && prepare_mapping(src, op.file_begin(), end)) {
                detail::convert_from_mapping(src, op, src.mapping.data() + op.file_begin(), conv,
                                             dst, row_elems, b.dst_pitch);
                read_ += b.rows * b.src_row_bytes;
                written_ += b.rows * b.dst_row_bytes;
                return;
            }
            if (e.opt_.mode == read_mode::mmap && !src.mapping.empty()) {
                detail::convert_from_mapping(src, op, detail::mapped_source(src, op), conv, dst,
                                             row_elems, b.dst_pitch);
                read_ += b.rows * b.src_row_bytes;
                written_ += b.rows * b.dst_row_bytes;
                return;
            }
            const file_reader& f = *src.reader;
            const bool dst_dense = b.rows == 1 || b.dst_pitch == b.dst_row_bytes;
            if (!op.converts()) {
                if (op.contiguous_source() && dst_dense) {
                    f.read_exact({dst, b.rows * b.src_row_bytes}, op.file_begin());
                } else if (op.contiguous_source()) {
                    scatter_rows(f, op, dst);  // dense source, strided destination: preadv
                } else if (e.opt_.strided == strided_read::whole_rows) {
                    const std::uint64_t span = (b.rows - 1) * b.src_pitch + b.src_row_bytes;
                    std::byte* s = stage(span);
                    f.read_exact({s, span}, op.file_begin());
                    read_ += span - b.rows * b.src_row_bytes;  // the gaps, counted too
                    conv(s, dst, b.rows, row_elems, b.src_pitch, b.dst_pitch);
                } else {
                    read_rows(f, dst, b.dst_pitch, op.file_begin(), b.src_pitch, b.src_row_bytes,
                              b.rows);
                }
                read_ += b.rows * b.src_row_bytes;
                written_ += b.rows * b.dst_row_bytes;
                return;
            }
            // Converting: the source rows into staging (packed), then converted once.
            std::byte* s = nullptr;
            std::uint64_t pitch = b.src_row_bytes;
            if (op.contiguous_source()) {
                s = stage(b.rows * b.src_row_bytes);
                f.read_exact({s, b.rows * b.src_row_bytes}, op.file_begin());
            } else if (e.opt_.strided == strided_read::whole_rows) {
                const std::uint64_t span = (b.rows - 1) * b.src_pitch + b.src_row_bytes;
                s = stage(span);
                f.read_exact({s, span}, op.file_begin());
                read_ += span - b.rows * b.src_row_bytes;
                pitch = b.src_pitch;
            } else {
                s = stage(b.rows * b.src_row_bytes);
                read_rows(f, s, b.src_row_bytes, op.file_begin(), b.src_pitch, b.src_row_bytes,
                          b.rows);
            }
            conv(s, dst, b.rows, row_elems, pitch, b.dst_pitch);
            read_ += b.rows * b.src_row_bytes;
            written_ += b.rows * b.dst_row_bytes;
        }

        // Maps [p, p + n) writable with one system call. EINVAL (a kernel before 5.14, memory
        // that cannot take it) is remembered; any other failure is left to the copy's faults.
        void prefault(std::byte* p, std::uint64_t n) {
            static const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
            if (n < prefault_min_bytes) return;
            const auto a = reinterpret_cast<std::uintptr_t>(p);
            const std::uintptr_t from = a / page * page;
            if (detail::sys::madvise(reinterpret_cast<void*>(from), a + n - from,
                                     detail::madv_populate_write) != 0 &&
                errno == EINVAL)
                prefault_refused_ = true;
        }

        // strided_read::automatic: short strided rows and conversions come out of the mapping.
        [[nodiscard]] bool from_mapping(const copy_op& op, const read_source& src,
                                        std::uint64_t end) const noexcept {
            if (e.opt_.mode == read_mode::mmap || src.mapping.empty()) return false;
            // direct mode on a file read through the page cache: every op from the mapping
            if (e.opt_.mode == read_mode::direct) return end <= src.mapping.size();
            if (e.opt_.strided != strided_read::automatic) return false;
            if (!op.converts() &&
                (op.contiguous_source() || op.box.src_row_bytes >= automatic_row_limit))
                return false;
            return end <= src.mapping.size();
        }

        // Whether [begin, end) of the mapping can be copied from: false where the file is
        // shorter than that now (a copy would die of SIGBUS; the caller reads with pread, which
        // reports the error). With the populate option, maps the cached pages of the range
        // with one system call first (MADV_POPULATE_READ says EFAULT for a short file).
        bool prepare_mapping(const read_source& src, std::uint64_t begin, std::uint64_t end) {
            static const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
            auto* base = const_cast<std::byte*>(src.mapping.data());
            const std::uint64_t from = begin / page * page;
            if (e.opt_.populate && !populate_refused_) {
                if (detail::sys::madvise(base + from, end - from, detail::madv_populate_read) == 0)
                    return true;
                if (errno != EINVAL) return false;
                populate_refused_ = true;  // before Linux 5.14
            }
            if (!detail::file_holds(src, end)) return false;
            if (e.opt_.populate) (void)detail::sys::madvise(base + from, end - from, MADV_WILLNEED);
            return true;
        }

        // read_mode::direct: the piece's rows as aligned spans (merged where they touch) read
        // into staging with O_DIRECT, then converted or copied into place.
        void run_direct(const copy_op& op, const file_reader& f, std::byte* dst,
                        const converter& conv, std::size_t row_elems) {
            const std::uint64_t total = plan_direct(op, f, spans_);
            std::byte* s = stage(total);
            read_spans(f, s);
            copy_direct(op, f, spans_, s, dst, conv, row_elems);
        }

        // The piece's source rows as aligned spans of the file, merged where they touch, and
        // their places in staging; returns the staging bytes they need.
        static std::uint64_t plan_direct(const copy_op& op, const file_reader& f,
                                         std::vector<span_read>& spans) {
            const std::uint64_t align = f.direct_io_align();  // 512 on most disks
            const byte_box& b = op.box;
            const std::uint64_t end =
                op.file_begin() + (b.rows - 1) * b.src_pitch + b.src_row_bytes;
            if (end > f.size())
                throw error(errc::io_error,
                            "expected " + std::to_string(end - op.file_begin()) +
                                " bytes at offset " + std::to_string(op.file_begin()) +
                                ", file has " + std::to_string(f.size()),
                            error_context{.file = f.path().string(), .offset = op.file_begin()});
            spans.clear();
            const bool dense = op.contiguous_source();
            const std::uint64_t rows = dense ? 1 : b.rows;
            const std::uint64_t row_bytes = dense ? b.rows * b.src_row_bytes : b.src_row_bytes;
            for (std::uint64_t r = 0; r < rows; ++r) {
                const std::uint64_t p = op.file_begin() + r * b.src_pitch;
                const std::uint64_t s = p / align * align;
                const std::uint64_t t = (p + row_bytes + align - 1) / align * align;
                if (!spans.empty() && s <= spans.back().end)
                    spans.back().end = std::max(spans.back().end, t);
                else
                    spans.push_back({s, t, 0});
            }
            std::uint64_t total = 0;
            for (auto& sp : spans) {
                sp.at = total;
                total += sp.end - sp.begin;
            }
            return total;
        }

        // The piece's rows out of staging `s` (read per `spans`) into place, converted.
        void copy_direct(const copy_op& op, const file_reader& f,
                         const std::vector<span_read>& spans, const std::byte* s, std::byte* dst,
                         const converter& conv, std::size_t row_elems) {
            const byte_box& b = op.box;
            if (op.contiguous_source()) {
                conv(s + (op.file_begin() - spans[0].begin), dst, b.rows, row_elems,
                     b.src_row_bytes, b.dst_pitch);
            } else {
                std::size_t k = 0;
                for (std::uint64_t r = 0; r < b.rows; ++r) {
                    const std::uint64_t p = op.file_begin() + r * b.src_pitch;
                    while (p >= spans[k].end) ++k;
                    conv(s + spans[k].at + (p - spans[k].begin), dst + r * b.dst_pitch, row_elems);
                }
            }
            std::uint64_t got = 0;  // what came from the device (the last block may end early)
            for (const auto& sp : spans) got += std::min(sp.end, f.size()) - sp.begin;
            read_ += got;
            direct_ += got;
            written_ += b.rows * b.dst_row_bytes;
        }

        // Reads every span into staging, in reads of at most direct_read_bytes, all submitted
        // at once through io_uring where compiled in, else one after the other.
        void read_spans(const file_reader& f, std::byte* s) {
#if defined(SAFESHARD_HAVE_LIBURING)
            if (ring_ready()) {
                struct one {
                    std::uint64_t off, len, at;
                };
                std::vector<one> reads;
                for (const auto& sp : spans_)
                    for (std::uint64_t o = sp.begin; o < sp.end; o += direct_read_bytes)
                        reads.push_back(
                            {o, std::min(direct_read_bytes, sp.end - o), sp.at + (o - sp.begin)});
                for (std::size_t i0 = 0; i0 < reads.size(); i0 += ring_depth) {
                    const std::size_t n = std::min<std::size_t>(ring_depth, reads.size() - i0);
                    for (std::size_t i = 0; i < n; ++i) {
                        const one& q = reads[i0 + i];
                        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
                        io_uring_prep_read(sqe, f.fd(), s + q.at, static_cast<unsigned>(q.len),
                                           q.off);
                        io_uring_sqe_set_data64(sqe, i0 + i);
                    }
                    int rc = io_uring_submit_and_wait(&ring_, static_cast<unsigned>(n));
                    while (rc == -EINTR) rc = io_uring_submit_and_wait(&ring_, 0);
                    if (rc < 0) throw system_error("io_uring_submit", -rc, f.path().string());
                    // Every completion is reaped before anything throws: the kernel must not
                    // write into staging after it is gone.
                    std::size_t done = 0;
                    int first_errno = 0;
                    std::uint64_t errno_at = 0;
                    shorts_.clear();
                    while (done < n) {
                        io_uring_cqe* cqe = nullptr;
                        const int w = io_uring_wait_cqe(&ring_, &cqe);
                        if (w == -EINTR) continue;
                        if (w < 0) throw system_error("io_uring_wait_cqe", -w, f.path().string());
                        const std::uint64_t i = io_uring_cqe_get_data64(cqe);
                        const int res = cqe->res;
                        io_uring_cqe_seen(&ring_, cqe);
                        ++done;
                        if (res < 0) {
                            if (!first_errno) {
                                first_errno = -res;
                                errno_at = reads[i].off;
                            }
                        } else if (static_cast<std::uint64_t>(res) < reads[i].len) {
                            shorts_.push_back({i, static_cast<std::uint64_t>(res)});
                        }
                    }
                    if (first_errno)
                        throw system_error("read (O_DIRECT)", first_errno, f.path().string(),
                                           errno_at);
                    for (const auto& [i, got] : shorts_)  // the end of the file, or the rest
                        direct_pread(f, s + reads[i].at, reads[i].off, reads[i].len, got);
                }
                return;
            }
#endif
            for (const auto& sp : spans_)
                for (std::uint64_t o = sp.begin; o < sp.end; o += direct_read_bytes)
                    direct_pread(f, s + sp.at + (o - sp.begin), o,
                                 std::min(direct_read_bytes, sp.end - o), 0);
        }

        // One aligned O_DIRECT read of [off + got, off + len) into buf + got; the end of the
        // file may come first (the last block), anything else short is an error.
        static void direct_pread(const file_reader& f, std::byte* buf, std::uint64_t off,
                                 std::uint64_t len, std::uint64_t got) {
            const std::uint64_t need = std::min(len, f.size() - off);
            while (got < need) {
                if (got % f.direct_io_align() != 0)
                    throw error(errc::io_error,
                                "a direct read returned an unaligned count before the end of the "
                                "file",
                                error_context{.file = f.path().string(), .offset = off + got});
                const ssize_t r =
                    detail::sys::pread(f.fd(), buf + got, len - got, static_cast<off_t>(off + got));
                if (r < 0) {
                    const int err = errno;
                    if (err == EINTR) continue;
                    throw system_error("pread (O_DIRECT)", err, f.path().string(), off + got);
                }
                if (r == 0)
                    throw error(errc::io_error,
                                "expected " + std::to_string(need - got) + " bytes at offset " +
                                    std::to_string(off + got) +
                                    ", the file ended early (it is shorter than when it was "
                                    "opened: " +
                                    std::to_string(f.size()) + " bytes)",
                                error_context{.file = f.path().string(), .offset = off + got});
                got += static_cast<std::uint64_t>(r);
            }
        }

        // `rows` reads of `row_bytes` at file_off + r * src_pitch into dst + r * dst_pitch.
        void read_rows(const file_reader& f, std::byte* dst, std::uint64_t dst_pitch,
                       std::uint64_t file_off, std::uint64_t src_pitch, std::uint64_t row_bytes,
                       std::uint64_t rows) {
#if defined(SAFESHARD_HAVE_LIBURING)
            if (e.opt_.strided == strided_read::batched && !f.direct() && row_bytes <= (1u << 30) &&
                ring_ready()) {
                constexpr std::uint64_t depth = ring_depth;
                for (std::uint64_t r0 = 0; r0 < rows; r0 += depth) {
                    const std::uint64_t n = std::min(depth, rows - r0);
                    for (std::uint64_t i = 0; i < n; ++i) {
                        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
                        io_uring_prep_read(sqe, f.fd(), dst + (r0 + i) * dst_pitch,
                                           static_cast<unsigned>(row_bytes),
                                           file_off + (r0 + i) * src_pitch);
                        io_uring_sqe_set_data64(sqe, r0 + i);
                    }
                    int rc = io_uring_submit_and_wait(&ring_, static_cast<unsigned>(n));
                    while (rc == -EINTR) rc = io_uring_submit_and_wait(&ring_, 0);
                    if (rc < 0) throw system_error("io_uring_submit", -rc, f.path().string());
                    std::uint64_t done = 0;
                    int first_errno = 0;
                    shorts_.clear();  // finished after every completion is reaped
                    while (done < n) {
                        io_uring_cqe* cqe = nullptr;
                        const int w = io_uring_wait_cqe(&ring_, &cqe);
                        if (w == -EINTR) continue;
                        if (w < 0) throw system_error("io_uring_wait_cqe", -w, f.path().string());
                        const std::uint64_t r = io_uring_cqe_get_data64(cqe);
                        const int res = cqe->res;
                        io_uring_cqe_seen(&ring_, cqe);
                        ++done;
                        if (res < 0) {
                            if (!first_errno) first_errno = -res;
                        } else if (static_cast<std::uint64_t>(res) < row_bytes) {
                            shorts_.push_back({r, static_cast<std::uint64_t>(res)});
                        }
                    }
                    if (first_errno) throw system_error("read", first_errno, f.path().string());
                    // short reads (end of file, signal): the rest the usual way
                    for (const auto& [r, got] : shorts_)
                        f.read_exact({dst + r * dst_pitch + got, row_bytes - got},
                                     file_off + r * src_pitch + got);
                }
                return;
            }
#endif
            for (std::uint64_t r = 0; r < rows; ++r)
                f.read_exact({dst + r * dst_pitch, row_bytes}, file_off + r * src_pitch);
        }

#if defined(SAFESHARD_HAVE_LIBURING)
        static constexpr std::uint64_t ring_depth = 64;
        io_uring ring_{};
        int ring_state_ = 0;  // 0 untried, 1 ready, -1 refused

        bool ring_ready() {
            if (ring_state_ == 0)
                ring_state_ = io_uring_queue_init(ring_depth, &ring_, 0) == 0 ? 1 : -1;
            return ring_state_ == 1;
        }

        // read_mode::direct through io_uring: a piece's reads go in flight before the previous
        // piece is copied out of its staging, so reading and copying overlap in one worker.
        // Two slots: at most one piece waits to be copied while the next one is read.
        struct direct_read {
            std::uint64_t off, len, at;
        };
        struct direct_job {
            copy_op op{};
            std::byte* dst = nullptr;
            const file_reader* f = nullptr;
            std::vector<span_read> spans{};
            std::vector<direct_read> reads{};
            std::vector<int> res{};
            std::size_t outstanding = 0;  // reads submitted and not yet reaped
            aligned_buffer staging{};
        };
        direct_job jobs_[2]{};
        int pending_ = -1;        // the slot whose reads are in flight, not yet copied out
        bool ring_lost_ = false;  // reads may be in flight that were never counted

        // Plans the piece into the free slot and submits its reads; returns the slot, or -1
        // (nothing submitted) when it needs more reads than half the ring (short strided
        // rows): run_one reads those.
        int start_direct(const copy_op& op, std::byte* dst) {
            const int slot = pending_ == 0 ? 1 : 0;
            direct_job& j = jobs_[slot];
            const file_reader& f = *e.targets_.sources[op.file].reader;
            const std::uint64_t total = plan_direct(op, f, j.spans);
            j.reads.clear();
            for (const auto& sp : j.spans)
                for (std::uint64_t o = sp.begin; o < sp.end; o += direct_read_bytes)
                    j.reads.push_back(
                        {o, std::min(direct_read_bytes, sp.end - o), sp.at + (o - sp.begin)});
            if (j.reads.size() > ring_depth / 2) return -1;
            if (j.staging.size() < total)
                j.staging = aligned_buffer(std::max<std::size_t>(total, e.opt_.staging_bytes));
            j.op = op;
            j.dst = dst;
            j.f = &f;
            j.res.assign(j.reads.size(), 0);
            for (std::size_t i = 0; i < j.reads.size(); ++i) {
                io_uring_sqe* sqe = io_uring_get_sqe(&ring_);  // free: at most ring_depth out
                io_uring_prep_read(sqe, f.fd(), j.staging.data() + j.reads[i].at,
                                   static_cast<unsigned>(j.reads[i].len), j.reads[i].off);
                io_uring_sqe_set_data64(sqe, (std::uint64_t(slot) << 32) | i);
            }
            std::size_t sent = 0;
            while (sent < j.reads.size()) {
                const int rc = io_uring_submit(&ring_);
                if (rc == -EINTR) continue;
                if (rc <= 0) {
                    j.outstanding += sent;
                    ring_lost_ = true;  // the rest may still go out: never reuse the staging
                    throw system_error("io_uring_submit", rc < 0 ? -rc : EIO, f.path().string());
                }
                sent += static_cast<std::size_t>(rc);
            }
            j.outstanding = sent;
            return slot;
        }

        // Waits for one completion and files it under its slot.
        void reap_one() {
            io_uring_cqe* cqe = nullptr;
            int w = io_uring_wait_cqe(&ring_, &cqe);
            while (w == -EINTR) w = io_uring_wait_cqe(&ring_, &cqe);
            if (w < 0) {
                ring_lost_ = true;
                throw system_error("io_uring_wait_cqe", -w, "");
            }
            const std::uint64_t d = io_uring_cqe_get_data64(cqe);
            const int res = cqe->res;
            io_uring_cqe_seen(&ring_, cqe);
            direct_job& j = jobs_[d >> 32];
            j.res[d & 0xffffffffu] = res;
            --j.outstanding;
        }

        // Waits for the slot's reads and copies its piece into place (nothing for -1); returns
        // the bytes written.
        std::uint64_t finish_direct(int slot) {
            if (slot < 0) return 0;
            direct_job& j = jobs_[slot];
            while (j.outstanding > 0) reap_one();
            for (std::size_t i = 0; i < j.reads.size(); ++i)
                if (j.res[i] < 0)
                    throw system_error("read (O_DIRECT)", -j.res[i], j.f->path().string(),
                                       j.reads[i].off);
            for (std::size_t i = 0; i < j.reads.size(); ++i)  // the end of the file, or the rest
                if (static_cast<std::uint64_t>(j.res[i]) < j.reads[i].len)
                    direct_pread(*j.f, j.staging.data() + j.reads[i].at, j.reads[i].off,
                                 j.reads[i].len, static_cast<std::uint64_t>(j.res[i]));
            const copy_op& op = j.op;
            const converter conv = op.converts() ? find_converter(op.src_dtype, op.dst_dtype)
                                                 : converter(op.src_dtype);
            copy_direct(op, *j.f, j.spans, j.staging.data(), j.dst, conv,
                        op.box.dst_row_bytes * 8 / bit_size(op.dst_dtype));
            return op.bytes_written();
        }

        worker(const host_engine& engine) : e(engine) {}
        worker(const worker&) = delete;
        worker& operator=(const worker&) = delete;
        ~worker() {
            if (ring_state_ != 1) return;
            // The kernel must not write into a staging buffer after it is freed: every
            // counted read is reaped first; where that cannot be known, the buffers are kept.
            try {
                while (!ring_lost_ && (jobs_[0].outstanding > 0 || jobs_[1].outstanding > 0))
                    reap_one();
            } catch (...) {
            }
            if (ring_lost_)
                for (auto& j : jobs_)
                    if (j.staging.size() > 0) (void)new aligned_buffer(std::move(j.staging));
            io_uring_queue_exit(&ring_);
        }
#endif

        // One preadv per batch of rows: contiguous in the file, spread in the destination.
        static void scatter_rows(const file_reader& f, const copy_op& op, std::byte* dst) {
            const byte_box& b = op.box;
            constexpr std::uint64_t batch = 512;  // below IOV_MAX (1024)
            iovec iov[batch];
            for (std::uint64_t r = 0; r < b.rows; r += batch) {
                const std::uint64_t n = std::min(batch, b.rows - r);
                for (std::uint64_t i = 0; i < n; ++i)
                    iov[i] = iovec{dst + (r + i) * b.dst_pitch, b.src_row_bytes};
                f.read_exact_v({iov, n}, op.file_begin() + r * b.src_row_bytes);
            }
        }
    };

    host_engine_options opt_;
    copy_targets targets_{};
    progress_callback progress_{};
    std::vector<copy_op> pieces_{};
    engine_stats stats_{};
    std::uint64_t direct_bytes_ = 0;
    std::vector<std::string> notes_{};
    std::vector<std::string> names_{};
    std::vector<std::uint8_t> direct_files_{};  // by file: 0 unknown, 1 O_DIRECT, 2 buffered
    bool populate_noted_ = false;
};

static_assert(host_copy_engine<host_engine>);

}  // namespace safeshard
