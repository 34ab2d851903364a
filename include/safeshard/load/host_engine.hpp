// host_engine: the copy_engine for host memory. Worker threads share the work by bytes (a
// large tensor is cut into pieces); each piece goes to the first read strategy that takes it
// (load/host/: zero_fill, direct_read and its io_uring pipeline, mapping_read, buffered_read),
// after its destination is prefaulted with one madvise(MADV_POPULATE_WRITE). Conversions go
// through a bounded per-thread staging buffer. The options are in load/host/options.hpp.
#pragma once

#include <sys/vfs.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "safeshard/core/clock.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/io/file_reader.hpp"
#include "safeshard/load/convert.hpp"
#include "safeshard/load/copy_op.hpp"
#include "safeshard/load/device.hpp"
#include "safeshard/load/engine.hpp"
#include "safeshard/load/host/advice.hpp"
#include "safeshard/load/host/buffered_read.hpp"
#include "safeshard/load/host/direct_read.hpp"
#include "safeshard/load/host/mapping_read.hpp"
#include "safeshard/load/host/options.hpp"
#include "safeshard/load/host/piece.hpp"
#include "safeshard/load/host/uring.hpp"
#include "safeshard/load/host/zero_fill.hpp"
#include "safeshard/load/read_mode.hpp"

namespace safeshard {

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
    static constexpr std::uint64_t automatic_row_limit = host::automatic_row_limit;
    // Destination ranges at least this long are prefaulted (host_engine_options::prefault).
    static constexpr std::uint64_t prefault_min_bytes = host::prefault_min_bytes;
    // The largest single O_DIRECT read (a piece's span is cut into reads of this size, all in
    // flight at once where io_uring is compiled in).
    static constexpr std::uint64_t direct_read_bytes = host::direct_read_bytes;

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
        if (opt_.huge_pages) host::advise_huge_pages(targets_);
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
            read += w.counts().read;
            written += w.counts().written;
            direct += w.counts().direct;
            if (w.counts().populate_refused) populate_refused = true;
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

    // One thread's reader: the read strategies in the order they are tried, sharing the
    // thread's tally, staging buffer and io_uring.
    class worker {
    public:
        explicit worker(const host_engine& e)
            : e_(e),
              staging_(e.opt_.staging_bytes),
              pipeline_(e.opt_, tally_, ring_),
              zero_(tally_),
              direct_(tally_, staging_, ring_),
              mapping_(e.opt_, tally_),
              buffered_(e.opt_, tally_, staging_, ring_) {}

        // Runs one piece; returns the bytes written by the pieces this call finished (with
        // direct reads in flight, the previous piece's).
        std::uint64_t run(const copy_op& op) {
            const host::piece p = resolve(op);
            const byte_box& b = op.box;
            // A sparse piece (a strip down the rows: GPTQ's transposed words, a word a row)
            // writes a sliver of its span: its pages are faulted by its writes rather than the
            // whole span populated again for each strip.
            const std::uint64_t span = (b.rows - 1) * b.dst_pitch + b.dst_row_bytes;
            if (e_.opt_.prefault && 2 * b.rows * b.dst_row_bytes >= span) prefault_(p.dst, span);
            if (const auto finished = pipeline_.try_start(p)) return *finished;
            const std::uint64_t before = pipeline_.flush();  // the ring and the order stay simple
            if (!host::run_first(p, zero_, direct_, mapping_, buffered_))
                throw error(errc::invalid_argument, "copy op of an unknown kind");
            return before + op.bytes_written();
        }

        // Finishes the piece whose reads are still in flight, if any; returns its bytes.
        std::uint64_t flush() { return pipeline_.flush(); }

        [[nodiscard]] const host::tally& counts() const noexcept { return tally_; }

    private:
        [[nodiscard]] host::piece resolve(const copy_op& op) const {
            std::byte* dst = e_.targets_.destinations[op.destination] + op.box.dst_offset;
            if (op.kind != copy_kind::copy)
                return host::piece{.op = op, .dst = dst, .conv = converter(op.dst_dtype)};
            return host::piece{
                .op = op,
                .dst = dst,
                .src = &e_.targets_.sources[op.file],
                .conv = detail::op_converter(op, e_.targets_),
                .row_elems = op.box.dst_row_bytes * 8 / bit_size(op.dst_dtype),
                .direct = e_.opt_.mode == read_mode::direct && e_.direct_file(op.file)};
        }

        const host_engine& e_;
        host::tally tally_{};
        host::staging staging_;
        host::uring ring_{};
        host::prefaulter prefault_{};
        // After ring_: it reaps its reads before the ring goes.
        host::direct_pipeline pipeline_;
        host::zero_fill zero_;
        host::direct_read direct_;
        host::mapping_read mapping_;
        host::buffered_read buffered_;
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
