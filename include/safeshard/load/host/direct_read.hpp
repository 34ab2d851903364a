// The read strategies for read_mode::direct: the piece's source rows as aligned spans of the
// file (merged where they touch), read with O_DIRECT into aligned staging, then converted or
// copied into place. `direct_read` does it piece by piece (its reads batched through io_uring
// where compiled in); `direct_pipeline` (io_uring only) puts a piece's reads in flight before
// copying the previous piece out of its staging, so reading and copying overlap in one worker.
#pragma once

#if defined(SAFESHARD_HAVE_LIBURING)
#include <liburing.h>
#endif
#include <sys/types.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "safeshard/core/error.hpp"
#include "safeshard/io/aligned_buffer.hpp"
#include "safeshard/io/file_reader.hpp"
#include "safeshard/io/syscalls.hpp"
#include "safeshard/load/host/options.hpp"
#include "safeshard/load/host/piece.hpp"
#include "safeshard/load/host/uring.hpp"

namespace safeshard::host {

// The largest single O_DIRECT read (a piece's span is cut into reads of this size, all in
// flight at once where io_uring is compiled in).
inline constexpr std::uint64_t direct_read_bytes = std::uint64_t{512} << 10;

// How one piece is read with O_DIRECT: aligned file spans, their places in staging, and the
// reads (of at most direct_read_bytes) that fill them.
class direct_plan {
public:
    struct span {
        std::uint64_t begin, end, at;  // aligned file range, its place in staging
    };

    // Plans `op`'s source rows of `f`: the spans and their places in staging; returns the
    // staging bytes they need. io_error where the file is shorter than the op.
    std::uint64_t plan(const copy_op& op, const file_reader& f) {
        const std::uint64_t align = f.direct_io_align();  // 512 on most disks
        const byte_box& b = op.box;
        const std::uint64_t end = op.file_begin() + (b.rows - 1) * b.src_pitch + b.src_row_bytes;
        if (end > f.size())
            throw error(errc::io_error,
                        "expected " + std::to_string(end - op.file_begin()) + " bytes at offset " +
                            std::to_string(op.file_begin()) + ", file has " +
                            std::to_string(f.size()),
                        error_context{.file = f.path().string(), .offset = op.file_begin()});
        spans_.clear();
        const bool dense = op.contiguous_source();
        const std::uint64_t rows = dense ? 1 : b.rows;
        const std::uint64_t row_bytes = dense ? b.rows * b.src_row_bytes : b.src_row_bytes;
        for (std::uint64_t r = 0; r < rows; ++r) {
            const std::uint64_t p = op.file_begin() + r * b.src_pitch;
            const std::uint64_t s = p / align * align;
            const std::uint64_t t = (p + row_bytes + align - 1) / align * align;
            if (!spans_.empty() && s <= spans_.back().end)
                spans_.back().end = std::max(spans_.back().end, t);
            else
                spans_.push_back({s, t, 0});
        }
        std::uint64_t total = 0;
        reads_count_ = 0;
        for (auto& sp : spans_) {
            sp.at = total;
            total += sp.end - sp.begin;
            reads_count_ += (sp.end - sp.begin + direct_read_bytes - 1) / direct_read_bytes;
        }
        return total;
    }

    // The reads that fill staging at `s`, at most direct_read_bytes each.
    [[nodiscard]] const std::vector<ring_read>& reads(std::byte* s) {
        reads_.clear();
        for (const auto& sp : spans_)
            for (std::uint64_t o = sp.begin; o < sp.end; o += direct_read_bytes)
                reads_.push_back(
                    {o, std::min(direct_read_bytes, sp.end - o), s + sp.at + (o - sp.begin)});
        return reads_;
    }
    [[nodiscard]] std::size_t reads_count() const noexcept { return reads_count_; }

    // The piece's rows out of staging `s` into place, converted; counts the bytes.
    void copy_out(const piece& p, const file_reader& f, const std::byte* s, tally& t) const {
        const copy_op& op = p.op;
        const byte_box& b = op.box;
        if (op.contiguous_source()) {
            p.conv(s + (op.file_begin() - spans_[0].begin), p.dst, b.rows, p.row_elems,
                   b.src_row_bytes, b.dst_pitch);
        } else {
            std::size_t k = 0;
            for (std::uint64_t r = 0; r < b.rows; ++r) {
                const std::uint64_t at = op.file_begin() + r * b.src_pitch;
                while (at >= spans_[k].end) ++k;
                p.conv.row(r)(s + spans_[k].at + (at - spans_[k].begin), p.dst + r * b.dst_pitch,
                              p.row_elems);
            }
        }
        std::uint64_t got = 0;  // what came from the device (the last block may end early)
        for (const auto& sp : spans_) got += std::min(sp.end, f.size()) - sp.begin;
        t.read += got;
        t.direct += got;
        t.written += b.rows * b.dst_row_bytes;
    }

private:
    std::vector<span> spans_{};
    std::vector<ring_read> reads_{};
    std::size_t reads_count_ = 0;
};

// One aligned O_DIRECT read of [off + got, off + len) into buf + got; the end of the file may
// come first (the last block), anything else short is an error.
inline void direct_pread(const file_reader& f, std::byte* buf, std::uint64_t off, std::uint64_t len,
                         std::uint64_t got) {
    const std::uint64_t need = std::min(len, f.size() - off);
    while (got < need) {
        if (got % f.direct_io_align() != 0)
            throw error(errc::io_error,
                        "a direct read returned an unaligned count before the end of the file",
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
                            ", the file ended early (it is shorter than when it was opened: " +
                            std::to_string(f.size()) + " bytes)",
                        error_context{.file = f.path().string(), .offset = off + got});
        got += static_cast<std::uint64_t>(r);
    }
}

// Piece by piece: plan, read every span (batched through io_uring where there is a ring, else
// one read after the other), copy out.
class direct_read {
public:
    direct_read(tally& t, staging& s, uring& r) noexcept : tally_(t), staging_(s), ring_(r) {}

    bool try_run(const piece& p) {
        if (p.op.kind != copy_kind::copy || !p.direct) return false;
        const file_reader& f = *p.src->reader;
        std::byte* s = staging_.get(plan_.plan(p.op, f));
        const auto& reads = plan_.reads(s);
        if (ring_.ready()) {
            ring_.read_all(f, reads, "read (O_DIRECT)",
                           [&](const ring_read& q, std::uint64_t got) {  // the end of the file
                               direct_pread(f, q.into, q.off, q.len, got);
                           });
        } else {
            for (const ring_read& q : reads) direct_pread(f, q.into, q.off, q.len, 0);
        }
        plan_.copy_out(p, f, s, tally_);
        return true;
    }

private:
    tally& tally_;
    staging& staging_;
    uring& ring_;
    direct_plan plan_{};
};

static_assert(read_strategy<direct_read>);

#if defined(SAFESHARD_HAVE_LIBURING)
// Two slots: at most one piece waits to be copied out while the next one is read.
class direct_pipeline {
public:
    direct_pipeline(const host_engine_options& o, tally& t, uring& r) noexcept
        : opt_(o), tally_(t), ring_(r) {}
    direct_pipeline(const direct_pipeline&) = delete;
    direct_pipeline& operator=(const direct_pipeline&) = delete;
    // The kernel must not write into a staging buffer after it is freed: every counted read is
    // reaped first; where that cannot be known, the buffers are kept.
    ~direct_pipeline() {
        try {
            while (!lost_ && (jobs_[0].outstanding > 0 || jobs_[1].outstanding > 0)) reap_one();
        } catch (...) {
        }
        if (lost_)
            for (auto& j : jobs_)
                if (j.staging.size() > 0) (void)new aligned_buffer(std::move(j.staging));
    }

    // Puts the piece's reads in flight and finishes the previous piece; returns the bytes that
    // finished. nullopt (nothing done) for a piece it does not take: not direct, no ring, or
    // more reads than half the ring (short strided rows).
    std::optional<std::uint64_t> try_start(const piece& p) {
        if (p.op.kind != copy_kind::copy || !p.direct || !ring_.ready()) return std::nullopt;
        const int slot = start(p);
        if (slot < 0) return std::nullopt;
        return finish(std::exchange(pending_, slot));
    }

    // Finishes the piece whose reads are still in flight, if any; returns its bytes.
    std::uint64_t flush() { return finish(std::exchange(pending_, -1)); }

private:
    struct job {
        copy_op op{};
        std::byte* dst = nullptr;
        const read_source* src = nullptr;
        converter conv{dtype::u8};
        direct_plan plan{};
        std::vector<ring_read> reads{};
        std::vector<int> res{};
        std::size_t outstanding = 0;  // reads submitted and not yet reaped
        aligned_buffer staging{};
    };

    // Plans the piece into the free slot and submits its reads; returns the slot, or -1
    // (nothing submitted) when it needs more reads than half the ring.
    int start(const piece& p) {
        const int slot = pending_ == 0 ? 1 : 0;
        job& j = jobs_[slot];
        const file_reader& f = *p.src->reader;
        const std::uint64_t total = j.plan.plan(p.op, f);
        if (j.plan.reads_count() > uring::depth / 2) return -1;
        if (j.staging.size() < total)
            j.staging = aligned_buffer(std::max<std::size_t>(total, opt_.staging_bytes));
        j.reads = j.plan.reads(j.staging.data());
        j.op = p.op;
        j.dst = p.dst;
        j.src = p.src;
        j.conv = p.conv;
        j.res.assign(j.reads.size(), 0);
        io_uring& ring = ring_.ring();
        for (std::size_t i = 0; i < j.reads.size(); ++i) {
            io_uring_sqe* sqe = io_uring_get_sqe(&ring);  // free: at most uring::depth out
            io_uring_prep_read(sqe, f.fd(), j.reads[i].into, static_cast<unsigned>(j.reads[i].len),
                               j.reads[i].off);
            io_uring_sqe_set_data64(sqe, (std::uint64_t(slot) << 32) | i);
        }
        std::size_t sent = 0;
        while (sent < j.reads.size()) {
            const int rc = io_uring_submit(&ring);
            if (rc == -EINTR) continue;
            if (rc <= 0) {
                j.outstanding += sent;
                lost_ = true;  // the rest may still go out: never reuse the staging
                throw system_error("io_uring_submit", rc < 0 ? -rc : EIO, f.path().string());
            }
            sent += static_cast<std::size_t>(rc);
        }
        j.outstanding = sent;
        return slot;
    }

    // Waits for one completion and files it under its slot.
    void reap_one() {
        io_uring& ring = ring_.ring();
        io_uring_cqe* cqe = nullptr;
        int w = io_uring_wait_cqe(&ring, &cqe);
        while (w == -EINTR) w = io_uring_wait_cqe(&ring, &cqe);
        if (w < 0) {
            lost_ = true;
            throw system_error("io_uring_wait_cqe", -w, "");
        }
        const std::uint64_t d = io_uring_cqe_get_data64(cqe);
        const int res = cqe->res;
        io_uring_cqe_seen(&ring, cqe);
        job& j = jobs_[d >> 32];
        j.res[d & 0xffffffffu] = res;
        --j.outstanding;
    }

    // Waits for the slot's reads and copies its piece into place (nothing for -1); returns
    // the bytes written.
    std::uint64_t finish(int slot) {
        if (slot < 0) return 0;
        job& j = jobs_[slot];
        while (j.outstanding > 0) reap_one();
        const file_reader& f = *j.src->reader;
        for (std::size_t i = 0; i < j.reads.size(); ++i)
            if (j.res[i] < 0)
                throw system_error("read (O_DIRECT)", -j.res[i], f.path().string(), j.reads[i].off);
        for (std::size_t i = 0; i < j.reads.size(); ++i)  // the end of the file, or the rest
            if (static_cast<std::uint64_t>(j.res[i]) < j.reads[i].len)
                direct_pread(f, j.reads[i].into, j.reads[i].off, j.reads[i].len,
                             static_cast<std::uint64_t>(j.res[i]));
        const copy_op& op = j.op;
        const piece p{.op = op,
                      .dst = j.dst,
                      .src = j.src,
                      .conv = j.conv,
                      .row_elems = op.box.dst_row_bytes * 8 / bit_size(op.dst_dtype),
                      .direct = true};
        j.plan.copy_out(p, f, j.staging.data(), tally_);
        return op.bytes_written();
    }

    const host_engine_options& opt_;
    tally& tally_;
    uring& ring_;
    job jobs_[2]{};
    int pending_ = -1;   // the slot whose reads are in flight, not yet copied out
    bool lost_ = false;  // reads may be in flight that were never counted
};
#else
// Without io_uring there is nothing to overlap in one worker: direct_read takes every piece
// (and read_mode::direct runs at least 4 threads).
class direct_pipeline {
public:
    direct_pipeline(const host_engine_options&, tally&, uring&) noexcept {}
    static std::optional<std::uint64_t> try_start(const piece&) noexcept { return std::nullopt; }
    static std::uint64_t flush() noexcept { return 0; }
};
#endif

}  // namespace safeshard::host
