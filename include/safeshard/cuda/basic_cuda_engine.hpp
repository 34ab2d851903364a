// basic_cuda_engine<Transport>: the copy_engine for CUDA device memory, written against the
// transport concept (cuda/transport.hpp) so that its scheduling runs on the host in tests.
//
// staged (the default): worker threads read their pieces in file order with pread (or copy
// them out of the mapping) into a ring of pinned staging buffers allocated once, converting
// the dtype in that pass; each filled buffer goes to its destinations with
// cudaMemcpy2DAsync / cudaMemcpyAsync on one of several streams, and an event recorded after
// its copies frees it for the next fill. A strided box (a rank's columns) is read row by row,
// packed in staging, and laid into the destination pitch by the 2-D copy: only the rank's
// bytes are read. Widening conversions (BF16 -> F32) are done on the host too and send the
// wider bytes over the bus.
// pageable: cudaMemcpy2D straight from the file's mapping (the driver stages it).
// registered: the mapping page-locked with cudaHostRegister (read-only) and DMA from it.
// pageable and registered copy what converts, or what has no mapping, the staged way.
//
// A file cut short while it is read: every copy this engine makes out of a mapping runs under
// guard_mapped_read (io/mapping_guard.hpp) and becomes io_error naming the file. The driver's
// own reads cannot be guarded: pageable touches each piece's pages under the guard just before
// cudaMemcpy2D, which leaves a window of one call; registered pages are pinned (a cut file
// fails the registration, io_error, or leaves the DMA reading the pinned old pages, which the
// loader's check that the file is unchanged reports).
//
// Every transport call is checked: a failure throws safeshard::error (errc::cuda_error) with
// the CUDA function, the error's name, the copy op and its tensor; streams are synchronised
// and every resource (ring, streams, events, registrations) released before it propagates.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "safeshard/core/clock.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/cuda/transport.hpp"
#include "safeshard/io/aligned_buffer.hpp"
#include "safeshard/io/file_reader.hpp"
#include "safeshard/load/convert.hpp"
#include "safeshard/load/copy_op.hpp"
#include "safeshard/load/device.hpp"
#include "safeshard/load/engine.hpp"
#include "safeshard/load/read_mode.hpp"

namespace safeshard {

enum class cuda_policy : std::uint8_t {
    staged,      // pread into a pinned ring, then async copies (the default)
    pageable,    // cudaMemcpy2D from the file's mapping
    registered,  // cudaHostRegister the mapping (read-only), async copies from it
};

[[nodiscard]] constexpr std::string_view to_string(cuda_policy p) noexcept {
    switch (p) {
        case cuda_policy::staged: return "staged";
        case cuda_policy::pageable: return "pageable";
        case cuda_policy::registered: return "registered";
    }
    return "unknown";
}

struct cuda_engine_options {
    int device = 0;  // the CUDA device every destination lives on
    cuda_policy policy = cuda_policy::staged;
    read_mode mode = read_mode::pread;  // how staged pieces leave the files
    // ... when their rows have gaps (a rank's columns): one pread per row, or copies out of
    // the mapping (no system call per row; page faults where the mapping is fresh)
    read_mode strided = read_mode::mmap;
    // The defaults come from the sweep over buffers x buffer size x streams x threads
    // (BENCHMARKS.md, section "cuda: page cache", for the figures): a reader thread alone cannot
    // fill the link from the page cache, so several read at once; 4 MiB buffers ran as fast as
    // 8 MiB ones and pin half the memory, which a load pays for once (cudaHostAlloc) before its
    // first byte moves.
    unsigned buffers = 16;  // pinned staging buffers in the ring (16 x 4 MiB = 64 MiB)
    std::size_t buffer_bytes = std::size_t{4} << 20;
    unsigned streams = 2;
    unsigned threads = 8;  // readers filling the ring (the calling thread is one of them)
};

template <cuda_transport Transport>
class basic_cuda_engine {
public:
    explicit basic_cuda_engine(cuda_engine_options o = {}, Transport t = Transport{})
        : opt_(o), tr_(std::move(t)) {
        opt_.buffers = std::max(1u, opt_.buffers);
        opt_.streams = std::max(1u, opt_.streams);
        opt_.threads = std::max(1u, opt_.threads);
        opt_.buffer_bytes = std::max<std::size_t>(opt_.buffer_bytes, 4096);
    }
    basic_cuda_engine(const basic_cuda_engine&) = delete;
    basic_cuda_engine& operator=(const basic_cuda_engine&) = delete;
    ~basic_cuda_engine() { release(); }

    // It fills the memory of one CUDA device, cuda_engine_options::device.
    static constexpr device_kind memory = device_kind::cuda;
    [[nodiscard]] safeshard::device target_device() const noexcept {
        return {device_kind::cuda, opt_.device};
    }
    // The files are read through the page cache (or their mappings): no O_DIRECT.
    [[nodiscard]] read_options reader_options() const noexcept { return {}; }
    // Nothing is chosen differently from what was asked: no notes.
    [[nodiscard]] std::vector<std::string> take_notes() { return {}; }

    [[nodiscard]] const cuda_engine_options& options() const noexcept { return opt_; }
    [[nodiscard]] Transport& transport() noexcept { return tr_; }

    void bind(const copy_targets& t) { targets_ = t; }
    void set_progress(progress_callback cb) { progress_ = std::move(cb); }
    // Destination names by destination index, for error messages.
    void set_names(std::span<const std::string> names) {
        names_.assign(names.begin(), names.end());
    }

    // Checks every op against the bound targets and queues it, cut into pieces that fit a
    // staging buffer.
    void submit(std::span<const copy_op> ops) {
        for (const copy_op& op : ops) {
            detail::check_submitted_op(op, targets_, names_);
            split(op);
        }
    }

    // Runs the queued pieces; rethrows the first error after every stream is synchronised.
    void wait() {
        const auto t0 = std::chrono::steady_clock::now();
        std::vector<piece> pieces = std::move(pieces_);
        pieces_.clear();
        run_state st;
        for (const piece& p : pieces) st.total += p.op.bytes_written();
        try {
            run(pieces, st);
        } catch (...) {
            st.fail(std::current_exception());
        }
        finish(st);
        stats_.bytes_read += st.read;
        stats_.bytes_written += st.written;
        stats_.seconds += seconds_since(t0);
        if (st.first) {
            release();  // a failed load leaves nothing behind; the next wait() starts afresh
            std::rethrow_exception(st.first);
        }
    }

    // Copies host bytes to device memory now (created parameters, initialised on the host).
    void upload(std::byte* dst, std::span<const std::byte> src) {
        if (src.empty()) return;
        check(tr_.set_device(opt_.device), "cudaSetDevice", nullptr);
        pageable_pending_ = true;  // until the device is synchronised (release() does it too)
        constexpr std::size_t chunk = std::size_t{1} << 30;  // below cudaMemcpy2D's pitch limit
        for (std::size_t off = 0; off < src.size(); off += chunk) {
            const std::size_t n = std::min(chunk, src.size() - off);
            check(tr_.memcpy_2d(dst + off, n, src.data() + off, n, n, 1), "cudaMemcpy2D", nullptr);
        }
        check(tr_.device_synchronize(), "cudaDeviceSynchronize", nullptr);
        pageable_pending_ = false;
    }

    [[nodiscard]] engine_stats stats() const noexcept { return stats_; }
    void reset_stats() noexcept { stats_ = {}; }
    // Whether the staging ring is allocated (it is kept between loads, freed on an error).
    [[nodiscard]] bool ring_allocated() const noexcept { return !ring_.empty(); }

private:
    enum class path : std::uint8_t { zero, staged, direct };

    struct piece {
        copy_op op;
        path how = path::staged;
        std::uint64_t staged_bytes = 0;  // room taken in a staging buffer (aligned)
    };

    struct buffer {
        std::byte* data = nullptr;
        transport_event event = nullptr;
        bool recorded = false;  // an event was recorded after copies out of it
        unsigned index = 0;
    };

    struct run_state {
        std::uint64_t total = 0;
        std::atomic<std::uint64_t> done{0}, read{0}, written{0};
        std::atomic<bool> failed{false};
        std::atomic<std::uint64_t> pageable_copies{0};
        std::exception_ptr first{};
        std::mutex m{};
        std::size_t cursor = 0;  // next piece to claim (under m)

        void fail(std::exception_ptr e) {
            const std::lock_guard lock(m);
            if (!first) first = std::move(e);
            failed = true;
        }
    };

    static constexpr std::uint64_t staging_alignment = 256;

    // ---- errors ----

    [[noreturn]] void throw_cuda(int code, std::string_view call, const copy_op* op) const {
        std::string msg(call);
        msg += " failed: ";
        msg += tr_.error_name(code);
        msg += " (device " + std::to_string(opt_.device) + ")";
        error_context ctx{};
        if (op) {
            msg += " while copying {" + to_string(*op) + "}";
            if (op->destination < names_.size()) ctx.tensor = names_[op->destination];
        }
        throw error(errc::cuda_error, msg, std::move(ctx));
    }
    void check(int code, std::string_view call, const copy_op* op) const {
        if (code != Transport::success) throw_cuda(code, call, op);
    }

    // ---- planning ----

    void split(const copy_op& op) {
        const byte_box& b = op.box;
        if (b.rows == 0 || b.dst_row_bytes == 0) return;
        const read_source* src = op.kind == copy_kind::copy ? &targets_.sources[op.file] : nullptr;
        path how = path::staged;
        if (op.kind == copy_kind::zero)
            how = path::zero;
        else if (opt_.policy != cuda_policy::staged && !op.converts() && !src->mapping.empty())
            how = path::direct;
        const std::uint64_t limit = opt_.buffer_bytes;
        const std::uint64_t src_row = op.kind == copy_kind::zero ? 0 : b.src_row_bytes;
        const std::uint64_t row_max = std::max(src_row, b.dst_row_bytes);
        auto add = [&](const copy_op& p) {
            const std::uint64_t bytes = p.box.rows * p.box.dst_row_bytes;
            pieces_.push_back(piece{
                p, how, (bytes + staging_alignment - 1) / staging_alignment * staging_alignment});
        };
        // Rows that fit a buffer: as many as fit; longer rows: each alone, cut by elements.
        const std::uint64_t per =
            row_max <= limit ? std::max<std::uint64_t>(1, limit / row_max) : 0;
        detail::cut_copy_op(op, per, limit, add);
    }

    // ---- resources ----

    // Streams, events and the pinned ring, allocated once (by the first load that needs them).
    void allocate(bool need_ring) {
        if (streams_.empty()) {
            streams_.reserve(opt_.streams);
            for (unsigned i = 0; i < opt_.streams; ++i) {
                transport_stream s = nullptr;
                check(tr_.stream_create(&s), "cudaStreamCreate", nullptr);
                streams_.push_back(s);
            }
        }
        if (!need_ring || !ring_.empty()) return;
        ring_.reserve(opt_.buffers);
        for (unsigned i = 0; i < opt_.buffers; ++i) {
            buffer b{};
            b.index = i;
            void* p = nullptr;
            check(tr_.host_alloc(&p, opt_.buffer_bytes), "cudaHostAlloc", nullptr);
            b.data = static_cast<std::byte*>(p);
            const int rc = tr_.event_create(&b.event);
            if (rc != Transport::success) {
                (void)tr_.host_free(p);
                throw_cuda(rc, "cudaEventCreate", nullptr);
            }
            ring_.push_back(b);
        }
    }

    // Frees everything; errors are ignored here (an error is already on its way, or the
    // engine is going away).
    void release() noexcept {
        if (ring_.empty() && streams_.empty() && !pageable_pending_) return;
        (void)tr_.set_device(opt_.device);
        if (pageable_pending_) (void)tr_.device_synchronize();
        pageable_pending_ = false;
        for (transport_stream s : streams_) (void)tr_.stream_synchronize(s);
        for (buffer& b : ring_) {
            if (b.recorded) (void)tr_.event_synchronize(b.event);
            (void)tr_.event_destroy(b.event);
            (void)tr_.host_free(b.data);
        }
        ring_.clear();
        for (transport_stream s : streams_) (void)tr_.stream_destroy(s);
        streams_.clear();
        free_.clear();
    }

    // ---- running ----

    void run(std::vector<piece>& pieces, run_state& st) {
        if (pieces.empty()) return;
        check(tr_.set_device(opt_.device), "cudaSetDevice", nullptr);
        bool need_ring = false;
        for (const piece& p : pieces) need_ring = need_ring || p.how == path::staged;
        allocate(need_ring);
        free_.clear();
        for (buffer& b : ring_) free_.push_back(&b);
        if (opt_.policy == cuda_policy::registered) register_mappings(pieces);

        unsigned n = static_cast<unsigned>(std::min<std::size_t>(opt_.threads, pieces.size()));
        auto work = [&](bool own_thread) {
            worker w{*this, st, {}, 0};
            try {
                if (own_thread) check(tr_.set_device(opt_.device), "cudaSetDevice", nullptr);
                for (;;) {
                    if (st.failed.load(std::memory_order_relaxed)) break;
                    const auto [first, last] = claim(pieces, st);
                    if (first == last) break;
                    w.run(std::span<const piece>(pieces.data() + first, last - first));
                }
            } catch (...) {
                st.fail(std::current_exception());
                wake_all();
            }
        };
        std::vector<std::jthread> threads;
        try {
            for (unsigned i = 1; i < n; ++i) threads.emplace_back(work, true);
        } catch (...) {  // fewer threads than asked: the others and this one do the work
        }
        work(false);
        threads.clear();  // joins
    }

    // The next pieces in file order: one piece, or consecutive staged pieces sharing a buffer.
    std::pair<std::size_t, std::size_t> claim(const std::vector<piece>& pieces,
                                              run_state& st) const {
        const std::lock_guard lock(st.m);
        const std::size_t first = st.cursor;
        if (first >= pieces.size()) return {first, first};
        std::size_t last = first + 1;
        if (pieces[first].how == path::staged) {
            std::uint64_t used = pieces[first].staged_bytes;
            while (last < pieces.size() && pieces[last].how == path::staged &&
                   used + pieces[last].staged_bytes <= opt_.buffer_bytes)
                used += pieces[last++].staged_bytes;
        }
        st.cursor = last;
        return {first, last};
    }

    // After the work: every stream synchronised, registrations undone (errors recorded unless
    // one is already).
    void finish(run_state& st) {
        if (!streams_.empty()) {
            try {
                check(tr_.set_device(opt_.device), "cudaSetDevice", nullptr);
            } catch (...) {
                st.fail(std::current_exception());
            }
            bool synced = true;
            for (transport_stream s : streams_) {
                const int rc = tr_.stream_synchronize(s);
                if (rc != Transport::success) {
                    synced = false;
                    try {
                        throw_cuda(rc, "cudaStreamSynchronize", nullptr);
                    } catch (...) {
                        st.fail(std::current_exception());
                    }
                }
            }
            // Once more before the registrations go: no copy may still read them.
            if (!synced)
                for (transport_stream s : streams_) (void)tr_.stream_synchronize(s);
            for (buffer& b : ring_) b.recorded = false;  // their copies are done
        }
        // cudaMemcpy2D from pageable memory may return before its copy lands
        if (st.pageable_copies.load() > 0) {
            pageable_pending_ = true;
            const int rc = tr_.device_synchronize();
            if (rc == Transport::success) pageable_pending_ = false;
            if (rc != Transport::success) {
                try {
                    throw_cuda(rc, "cudaDeviceSynchronize", nullptr);
                } catch (...) {
                    st.fail(std::current_exception());
                }
            }
        }
        unregister_mappings(st);
    }

    void register_mappings(const std::vector<piece>& pieces) {
        std::vector<bool> used(targets_.sources.size(), false);
        for (const piece& p : pieces)
            if (p.how == path::direct) used[p.op.file] = true;
        for (std::size_t f = 0; f < used.size(); ++f) {
            if (!used[f]) continue;
            const auto m = targets_.sources[f].mapping;
            // pages past the file's end cannot be locked (nor read): say which file shrank
            if (!detail::file_holds(targets_.sources[f], m.size()))
                throw error(errc::io_error,
                            "the file is shorter than its mapping (" + std::to_string(m.size()) +
                                " bytes): it changed after the checkpoint was opened",
                            error_context{.file = targets_.sources[f].reader
                                                      ? targets_.sources[f].reader->path().string()
                                                      : ""});
            void* base = const_cast<std::byte*>(m.data());  // read-only registration
            // whole pages: a mapping starts on one and covers the last one entirely
            const std::size_t bytes = (m.size() + 4095) / 4096 * 4096;
            const int rc = tr_.host_register_read_only(base, bytes);
            if (rc != Transport::success && !detail::file_holds(targets_.sources[f], m.size()))
                throw error(
                    errc::io_error,
                    "the file was cut short while its mapping was being registered (" +
                        std::to_string(m.size()) +
                        " bytes mapped; cudaHostRegister: " + tr_.error_name(rc) + ")",
                    error_context{.file = std::string(detail::file_name_of(targets_.sources[f]))});
            if (rc != Transport::success) {
                std::string file =
                    targets_.sources[f].reader ? targets_.sources[f].reader->path().string() : "";
                throw error(errc::cuda_error,
                            "cudaHostRegister failed: " + tr_.error_name(rc) + " (device " +
                                std::to_string(opt_.device) + ", " + std::to_string(m.size()) +
                                " bytes of mapped file, read-only)",
                            error_context{.file = std::move(file)});
            }
            registered_.push_back(base);
        }
    }

    void unregister_mappings(run_state& st) {
        for (void* p : registered_) {
            const int rc = tr_.host_unregister(p);
            if (rc != Transport::success) {
                try {
                    throw_cuda(rc, "cudaHostUnregister", nullptr);
                } catch (...) {
                    st.fail(std::current_exception());
                }
            }
        }
        registered_.clear();
    }

    // A free staging buffer, its previous copies finished; nullptr when the load failed.
    buffer* acquire(run_state& st) {
        buffer* b = nullptr;
        {
            std::unique_lock lock(ring_m_);
            ring_cv_.wait(lock, [&] { return !free_.empty() || st.failed.load(); });
            if (free_.empty() || st.failed.load()) return nullptr;
            b = free_.front();
            free_.pop_front();
        }
        if (b->recorded) {
            const int rc = tr_.event_synchronize(b->event);
            if (rc != Transport::success) {
                give_back(b);
                throw_cuda(rc, "cudaEventSynchronize", nullptr);
            }
            b->recorded = false;
        }
        return b;
    }
    void give_back(buffer* b) {
        {
            const std::lock_guard lock(ring_m_);
            free_.push_back(b);
        }
        ring_cv_.notify_one();
    }
    void wake_all() {
        { const std::lock_guard lock(ring_m_); }
        ring_cv_.notify_all();
    }

    struct worker {
        basic_cuda_engine& e;
        run_state& st;
        aligned_buffer scratch{};  // source rows of converting pieces (pread mode)
        unsigned next_stream = 0;

        transport_stream stream_for(unsigned i) const { return e.streams_[i % e.streams_.size()]; }

        void run(std::span<const piece> ps) {
            if (ps.front().how == path::staged) {
                staged(ps);
            } else {
                const piece& p = ps.front();
                if (p.how == path::zero)
                    zero(p.op);
                else
                    direct(p.op);
                progress(p.op.bytes_written());
            }
        }

        void progress(std::uint64_t bytes) {
            if (!e.progress_) {
                st.done.fetch_add(bytes);
                return;
            }
            // Counted under the lock, so the callback sees the count only grow.
            const std::lock_guard lock(st.m);
            e.progress_(st.done.fetch_add(bytes) + bytes, st.total);
        }

        void zero(const copy_op& op) {
            const byte_box& b = op.box;
            std::byte* dst = e.targets_.destinations[op.destination] + b.dst_offset;
            e.check(e.tr_.memset_2d_async(dst, b.rows > 1 ? b.dst_pitch : b.dst_row_bytes,
                                          b.dst_row_bytes, b.rows, stream_for(next_stream++)),
                    "cudaMemset2DAsync", &op);
            st.written += op.bytes_written();
        }

        void direct(const copy_op& op) {
            const byte_box& b = op.box;
            const read_source& src = e.targets_.sources[op.file];
            const std::byte* from = detail::mapped_source(src, op);
            std::byte* dst = e.targets_.destinations[op.destination] + b.dst_offset;
            const std::uint64_t spitch = b.rows > 1 ? b.src_pitch : b.src_row_bytes;
            const std::uint64_t dpitch = b.rows > 1 ? b.dst_pitch : b.dst_row_bytes;
            if (e.opt_.policy == cuda_policy::pageable) {
                // The driver reads pageable memory on this thread, where no guard can jump out
                // of it: the pages are read under the guard first, so that a file cut before
                // now is io_error. One cut between this and the driver's read still raises
                // SIGBUS (the window the pageable policy keeps; staged has none).
                touch_mapping(detail::mapped_span(op, from), detail::file_name_of(src),
                              op.file_begin());
                ++st.pageable_copies;
                e.check(e.tr_.memcpy_2d(dst, dpitch, from, spitch, b.dst_row_bytes, b.rows),
                        "cudaMemcpy2D", &op);
            } else {
                e.check(e.tr_.memcpy_2d_async(dst, dpitch, from, spitch, b.dst_row_bytes, b.rows,
                                              stream_for(next_stream++)),
                        "cudaMemcpy2DAsync", &op);
            }
            st.read += op.bytes_read();
            st.written += op.bytes_written();
        }

        // Fills one buffer with the pieces (dst dtype, rows packed), then sends each piece to
        // its destination and records the buffer's event after the copies.
        void staged(std::span<const piece> ps) {
            buffer* b = e.acquire(st);
            if (b == nullptr) return;  // the load failed elsewhere
            // Back to the ring when its copies are all followed by its event, or when none
            // was enqueued; a buffer left half-sent (a call failed) stays out until release()
            // has synchronised the streams.
            struct holder {
                basic_cuda_engine& e;
                buffer* b;
                bool sent = false;
                ~holder() {
                    if (sent || !b->recorded) e.give_back(b);
                }
            } hold{e, b};
            std::uint64_t off = 0;
            for (const piece& p : ps) {
                fill(p.op, b->data + off);
                off += p.staged_bytes;
            }
            const transport_stream s = stream_for(b->index);
            off = 0;
            for (const piece& p : ps) {
                const byte_box& x = p.op.box;
                std::byte* dst = e.targets_.destinations[p.op.destination] + x.dst_offset;
                const bool dense = x.rows == 1 || x.dst_pitch == x.dst_row_bytes;
                if (dense)
                    e.check(e.tr_.memcpy_async(dst, b->data + off, x.rows * x.dst_row_bytes, s),
                            "cudaMemcpyAsync", &p.op);
                else
                    e.check(e.tr_.memcpy_2d_async(dst, x.dst_pitch, b->data + off, x.dst_row_bytes,
                                                  x.dst_row_bytes, x.rows, s),
                            "cudaMemcpy2DAsync", &p.op);
                b->recorded = true;  // copies may be in flight: synchronise before reuse
                off += p.staged_bytes;
            }
            e.check(e.tr_.event_record(b->event, s), "cudaEventRecord", &ps.back().op);
            hold.sent = true;
            for (const piece& p : ps) {
                st.read += p.op.bytes_read();
                st.written += p.op.bytes_written();
                progress(p.op.bytes_written());
            }
        }

        // The op's rows into `out`, packed (row pitch dst_row_bytes), converted.
        void fill(const copy_op& op, std::byte* out) {
            const byte_box& b = op.box;
            const read_source& src = e.targets_.sources[op.file];
            const std::size_t row_elems = b.dst_row_bytes * 8 / bit_size(op.dst_dtype);
            const converter conv = detail::op_converter(op, e.targets_);
            const read_mode mode = op.contiguous_source() ? e.opt_.mode : e.opt_.strided;
            if (mode == read_mode::mmap && !src.mapping.empty()) {
                detail::convert_from_mapping(src, op, detail::mapped_source(src, op), conv, out,
                                             row_elems, b.dst_row_bytes);
                return;
            }
            if (src.reader == nullptr)
                throw error(errc::invalid_argument, "copy op without an open file");
            const file_reader& f = *src.reader;
            std::byte* into = out;
            if (op.converts()) {
                const std::size_t need = b.rows * b.src_row_bytes;
                if (scratch.size() < need)
                    scratch = aligned_buffer(std::max<std::size_t>(need, 4096));
                into = scratch.data();
            }
            if (op.contiguous_source())
                f.read_exact({into, b.rows * b.src_row_bytes}, op.file_begin());
            else
                for (std::uint64_t r = 0; r < b.rows; ++r)
                    f.read_exact({into + r * b.src_row_bytes, b.src_row_bytes},
                                 op.file_begin() + r * b.src_pitch);
            if (op.converts()) conv(into, out, b.rows, row_elems, b.src_row_bytes, b.dst_row_bytes);
        }
    };

    cuda_engine_options opt_;
    Transport tr_;
    copy_targets targets_{};
    progress_callback progress_{};
    std::vector<std::string> names_{};
    std::vector<piece> pieces_{};
    engine_stats stats_{};

    std::vector<transport_stream> streams_{};
    std::vector<buffer> ring_{};
    std::deque<buffer*> free_{};
    std::mutex ring_m_{};
    std::condition_variable ring_cv_{};
    std::vector<void*> registered_{};
    bool pageable_pending_ = false;  // pageable copies not yet known to have landed
};

}  // namespace safeshard
