// host_engine: the copy_engine for host memory. Worker threads share the work by bytes (a
// large tensor is cut into pieces), read with pread/preadv straight into the destination
// (or copy out of the mapping), and convert through a bounded per-thread staging buffer.
#pragma once

#include <sys/uio.h>

// Batched strided reads through io_uring: define SAFESHARD_HAVE_LIBURING and link liburing
// (Debian: liburing-dev; meson: dependency('liburing')). Without it strided_read::batched
// reads row by row with pread.
#if defined(SAFESHARD_HAVE_LIBURING)
#include <liburing.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "safeshard/core/error.hpp"
#include "safeshard/io/aligned_buffer.hpp"
#include "safeshard/io/file_reader.hpp"
#include "safeshard/load/convert.hpp"
#include "safeshard/load/copy_op.hpp"
#include "safeshard/load/engine.hpp"

namespace safeshard {

// How bytes leave the files. pread is the default: copying out of a fresh mapping faults once
// per 4 KiB page and ran 4-10x slower on our machines (DESIGN.md, BENCHMARKS.md).
enum class read_mode : std::uint8_t { pread, mmap };

// Reading a box whose source rows have gaps (a rank's columns of a row-major matrix).
enum class strided_read : std::uint8_t {
    per_row,     // one pread per row: only the rank's bytes are read
    whole_rows,  // one read of the span from the first row to the last, then scatter: reads
                 // the other ranks' bytes too (world x the rank's bytes at worst)
    batched,     // the rows' reads submitted together through io_uring (one system call per
                 // batch); per_row where io_uring is not compiled in or refused by the kernel
};

struct host_engine_options {
    unsigned threads = 0;  // 0: std::thread::hardware_concurrency()
    read_mode mode = read_mode::pread;
    strided_read strided = strided_read::per_row;
    std::size_t chunk_bytes = std::size_t{8} << 20;    // the unit of work shared among threads
    std::size_t staging_bytes = std::size_t{4} << 20;  // per thread: conversions, whole rows
};

class host_engine {
public:
    explicit host_engine(host_engine_options o = {}) : opt_(o) {
        if (opt_.chunk_bytes < 4096) opt_.chunk_bytes = 4096;
        if (opt_.staging_bytes < 4096) opt_.staging_bytes = 4096;
    }

    [[nodiscard]] const host_engine_options& options() const noexcept { return opt_; }

    void bind(const copy_targets& t) { targets_ = t; }
    void set_progress(progress_callback cb) { progress_ = std::move(cb); }

    // Checks every op against the bound targets and queues it, cut into pieces.
    void submit(std::span<const copy_op> ops) {
        for (const copy_op& op : ops) {
            detail::check_op_bounds(op, targets_);
            if (op.kind == copy_kind::copy && op.converts() &&
                !can_convert(op.src_dtype, op.dst_dtype))
                throw error(errc::unsupported_conversion,
                            detail::unsupported_conversion_message(op.src_dtype, op.dst_dtype));
            if (op.kind == copy_kind::copy && opt_.mode == read_mode::pread &&
                targets_.sources[op.file].reader == nullptr)
                throw error(errc::invalid_argument, "copy op without an open file");
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
        n = static_cast<unsigned>(
            std::min<std::size_t>(n, std::max<std::size_t>(1, pieces_.size())));
        std::atomic<std::size_t> next{0};
        std::atomic<bool> failed{false};
        std::atomic<std::uint64_t> done{0}, read{0}, written{0};
        std::exception_ptr first;
        std::mutex m;
        auto work = [&] {
            worker w{*this};
            try {
                for (;;) {
                    if (failed.load(std::memory_order_relaxed)) return;
                    const std::size_t i = next.fetch_add(1, std::memory_order_relaxed);
                    if (i >= pieces_.size()) break;
                    w.run(pieces_[i]);
                    const std::uint64_t d =
                        done.fetch_add(pieces_[i].bytes_written()) + pieces_[i].bytes_written();
                    if (progress_) {
                        const std::lock_guard lock(m);
                        progress_(d, total);
                    }
                }
            } catch (...) {
                const std::lock_guard lock(m);
                if (!first) first = std::current_exception();
                failed = true;
            }
            read += w.read_;
            written += w.written_;
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
        stats_.seconds +=
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (first) std::rethrow_exception(first);
    }

    [[nodiscard]] engine_stats stats() const noexcept { return stats_; }
    void reset_stats() noexcept { stats_ = {}; }

private:
    // A piece is a copy_op cut to at most chunk_bytes (staging_bytes when it converts or reads
    // whole rows); its offsets stay absolute.
    void split(const copy_op& op) {
        const byte_box& b = op.box;
        if (b.rows == 0 || b.dst_row_bytes == 0) return;
        const bool staged = op.kind == copy_kind::copy &&
                            (op.converts() ||
                             (opt_.strided == strided_read::whole_rows && !op.contiguous_source()));
        const std::uint64_t limit =
            staged ? std::min(opt_.chunk_bytes, opt_.staging_bytes) : opt_.chunk_bytes;
        const std::uint64_t row_in = op.kind == copy_kind::zero ? b.dst_row_bytes : b.src_row_bytes;
        const std::uint64_t row_span = std::max(b.src_pitch, row_in);
        if (b.rows > 1 && (staged ? row_span : row_in) <= limit) {
            const std::uint64_t per = std::max<std::uint64_t>(
                1,
                limit / (staged && opt_.strided == strided_read::whole_rows ? row_span : row_in));
            for (std::uint64_t r = 0; r < b.rows; r += per) {
                copy_op p = op;
                p.box.rows = std::min(per, b.rows - r);
                p.box.src_offset = b.src_offset + r * b.src_pitch;
                p.box.dst_offset = b.dst_offset + r * b.dst_pitch;
                pieces_.push_back(p);
            }
            return;
        }
        // Long rows: each row alone, cut by elements (multiples of 8 stay whole bytes).
        const std::uint64_t sbits = bit_size(op.src_dtype), dbits = bit_size(op.dst_dtype);
        const std::uint64_t elems = b.dst_row_bytes * 8 / dbits;
        std::uint64_t step = limit * 8 / std::max(sbits, dbits);
        step = std::max<std::uint64_t>(8, step / 8 * 8);
        for (std::uint64_t r = 0; r < b.rows; ++r)
            for (std::uint64_t e = 0; e < elems; e += step) {
                const std::uint64_t n = std::min(step, elems - e);
                copy_op p = op;
                p.box.rows = 1;
                p.box.src_offset = b.src_offset + r * b.src_pitch + e * sbits / 8;
                p.box.dst_offset = b.dst_offset + r * b.dst_pitch + e * dbits / 8;
                p.box.src_row_bytes = p.box.src_pitch = n * sbits / 8;
                p.box.dst_row_bytes = p.box.dst_pitch = n * dbits / 8;
                pieces_.push_back(p);
            }
    }

    struct worker {
        const host_engine& e;
        aligned_buffer staging{};
        std::uint64_t read_ = 0;
        std::uint64_t written_ = 0;

        std::byte* stage(std::size_t n) {
            if (staging.size() < n) staging = aligned_buffer(std::max(n, e.opt_.staging_bytes));
            return staging.data();
        }

        void run(const copy_op& op) {
            const byte_box& b = op.box;
            std::byte* dst = e.targets_.destinations[op.destination] + b.dst_offset;
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
            if (e.opt_.mode == read_mode::mmap && !src.mapping.empty()) {
                const std::uint64_t end =
                    op.file_begin() + (b.rows - 1) * b.src_pitch + b.src_row_bytes;
                if (end > src.mapping.size())
                    throw error(errc::io_error,
                                "the file is shorter (" + std::to_string(src.mapping.size()) +
                                    " bytes) than the tensor data the plan reads (to byte " +
                                    std::to_string(end) + ")",
                                error_context{.file = src.reader ? src.reader->path().string() : "",
                                              .offset = op.file_begin()});
                conv(src.mapping.data() + op.file_begin(), dst, b.rows, row_elems, b.src_pitch,
                     b.dst_pitch);
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
                            // a short read (end of file, signal): the rest the usual way
                            const auto got = static_cast<std::uint64_t>(res);
                            f.read_exact({dst + r * dst_pitch + got, row_bytes - got},
                                         file_off + r * src_pitch + got);
                        }
                    }
                    if (first_errno) throw system_error("read", first_errno, f.path().string());
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
        worker(const host_engine& engine) : e(engine) {}
        worker(const worker&) = delete;
        worker& operator=(const worker&) = delete;
        ~worker() {
            if (ring_state_ == 1) io_uring_queue_exit(&ring_);
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
};

static_assert(copy_engine<host_engine>);

}  // namespace safeshard
