// The read strategy through the page cache, which takes every piece the others leave: one
// pread straight into the destination where both sides are dense, one preadv per batch of rows
// where only the destination is strided, and for strided sources one pread per row
// (strided_read::per_row), the rows' reads batched through io_uring (strided_read::batched), or
// one read of the whole span then a scatter (strided_read::whole_rows). Converting pieces are
// read into staging (packed) and converted once.
#pragma once

#include <sys/uio.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "safeshard/io/file_reader.hpp"
#include "safeshard/load/host/options.hpp"
#include "safeshard/load/host/piece.hpp"
#include "safeshard/load/host/uring.hpp"

namespace safeshard::host {

class buffered_read {
public:
    buffered_read(const host_engine_options& o, tally& t, staging& s, uring& r) noexcept
        : opt_(o), tally_(t), staging_(s), ring_(r) {}

    bool try_run(const piece& p) {
        if (p.op.kind != copy_kind::copy) return false;
        if (p.op.converts())
            run_converting(p);
        else
            run_copy(p);
        tally_.copied(p.op.box);
        return true;
    }

private:
    // Same dtype: read straight into place.
    void run_copy(const piece& p) {
        const copy_op& op = p.op;
        const byte_box& b = op.box;
        const file_reader& f = *p.src->reader;
        const bool dst_dense = b.rows == 1 || b.dst_pitch == b.dst_row_bytes;
        if (op.contiguous_source() && dst_dense)
            f.read_exact({p.dst, b.rows * b.src_row_bytes}, op.file_begin());
        else if (op.contiguous_source())
            scatter_rows(f, op, p.dst);
        else if (opt_.strided == strided_read::whole_rows)
            p.conv(read_whole_rows(f, op), p.dst, b.rows, p.row_elems, b.src_pitch, b.dst_pitch);
        else
            read_rows(f, p.dst, b.dst_pitch, op);
    }

    // Converting: the source rows into staging, then converted once.
    void run_converting(const piece& p) {
        const copy_op& op = p.op;
        const byte_box& b = op.box;
        const file_reader& f = *p.src->reader;
        if (!op.contiguous_source() && opt_.strided == strided_read::whole_rows) {
            p.conv(read_whole_rows(f, op), p.dst, b.rows, p.row_elems, b.src_pitch, b.dst_pitch);
            return;
        }
        std::byte* s = staging_.get(b.rows * b.src_row_bytes);
        if (op.contiguous_source())
            f.read_exact({s, b.rows * b.src_row_bytes}, op.file_begin());
        else
            read_rows(f, s, b.src_row_bytes, op);
        p.conv(s, p.dst, b.rows, p.row_elems, b.src_row_bytes, b.dst_pitch);
    }

    // The span from the first source row to the last, in one read into staging (the gaps are
    // counted as read too).
    const std::byte* read_whole_rows(const file_reader& f, const copy_op& op) {
        const byte_box& b = op.box;
        const std::uint64_t span = (b.rows - 1) * b.src_pitch + b.src_row_bytes;
        std::byte* s = staging_.get(span);
        f.read_exact({s, span}, op.file_begin());
        tally_.read += span - b.rows * b.src_row_bytes;
        return s;
    }

    // The op's source rows into dst + r * dst_pitch: batched through io_uring
    // (strided_read::batched), else one pread each.
    void read_rows(const file_reader& f, std::byte* dst, std::uint64_t dst_pitch,
                   const copy_op& op) {
        const byte_box& b = op.box;
        if (opt_.strided == strided_read::batched && !f.direct() &&
            b.src_row_bytes <= (std::uint64_t{1} << 30) && ring_.ready()) {
            reads_.clear();
            for (std::uint64_t r = 0; r < b.rows; ++r)
                reads_.push_back(
                    {op.file_begin() + r * b.src_pitch, b.src_row_bytes, dst + r * dst_pitch});
            ring_.read_all(f, reads_, "read", [&](const ring_read& q, std::uint64_t got) {
                f.read_exact({q.into + got, q.len - got}, q.off + got);
            });
            return;
        }
        for (std::uint64_t r = 0; r < b.rows; ++r)
            f.read_exact({dst + r * dst_pitch, b.src_row_bytes}, op.file_begin() + r * b.src_pitch);
    }

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

    const host_engine_options& opt_;
    tally& tally_;
    staging& staging_;
    uring& ring_;
    std::vector<ring_read> reads_{};
};

static_assert(read_strategy<buffered_read>);

}  // namespace safeshard::host
