// The read strategy that copies out of the file's mapping: strided_read::automatic's short
// strided rows and conversions (the kernel maps the cached pages 16 at a time per fault:
// fault-around), files that read_mode::direct reads through the page cache, and read_mode::mmap.
#pragma once

#include <sys/mman.h>

#include <cerrno>
#include <cstdint>

#include "safeshard/io/syscalls.hpp"
#include "safeshard/load/engine.hpp"
#include "safeshard/load/host/advice.hpp"
#include "safeshard/load/host/options.hpp"
#include "safeshard/load/host/piece.hpp"

namespace safeshard::host {

// Rows shorter than this are copied out of the mapping by strided_read::automatic.
inline constexpr std::uint64_t automatic_row_limit = std::uint64_t{64} << 10;

class mapping_read {
public:
    mapping_read(const host_engine_options& o, tally& t) noexcept : opt_(o), tally_(t) {}

    bool try_run(const piece& p) {
        if (p.op.kind != copy_kind::copy) return false;
        const read_source& src = *p.src;
        const std::byte* from = nullptr;
        if (chosen(p) && prepare(src, p.op.file_begin(), p.src_end()))
            from = src.mapping.data() + p.op.file_begin();
        else if (opt_.mode == read_mode::mmap && !src.mapping.empty())
            from = detail::mapped_source(src, p.op);  // io_error where the file is short
        else
            return false;
        detail::convert_from_mapping(src, p.op, from, p.conv, p.dst, p.row_elems,
                                     p.op.box.dst_pitch);
        tally_.copied(p.op.box);
        return true;
    }

private:
    // Whether the piece is one to copy out of the mapping (read_mode::mmap aside).
    [[nodiscard]] bool chosen(const piece& p) const noexcept {
        const read_source& src = *p.src;
        if (opt_.mode == read_mode::mmap || src.mapping.empty()) return false;
        // direct mode on a file read through the page cache: every piece from the mapping
        if (opt_.mode == read_mode::direct) return p.src_end() <= src.mapping.size();
        if (opt_.strided != strided_read::automatic) return false;
        if (!p.op.converts() &&
            (p.op.contiguous_source() || p.op.box.src_row_bytes >= automatic_row_limit))
            return false;
        return p.src_end() <= src.mapping.size();
    }

    // Whether [begin, end) of the mapping can be copied from: false where the file is shorter
    // than that now (a copy would die of SIGBUS; the next strategy reads with pread, which
    // reports the error). With the populate option, maps the cached pages of the range with
    // one system call first (MADV_POPULATE_READ says EFAULT for a short file).
    bool prepare(const read_source& src, std::uint64_t begin, std::uint64_t end) {
        auto* base = const_cast<std::byte*>(src.mapping.data());
        const std::uint64_t from = begin / detail::page_size() * detail::page_size();
        if (opt_.populate && !tally_.populate_refused) {
            if (detail::sys::madvise(base + from, end - from, detail::madv_populate_read) == 0)
                return true;
            if (errno != EINVAL) return false;
            tally_.populate_refused = true;  // before Linux 5.14
        }
        if (!detail::file_holds(src, end)) return false;
        if (opt_.populate) (void)detail::sys::madvise(base + from, end - from, MADV_WILLNEED);
        return true;
    }

    const host_engine_options& opt_;
    tally& tally_;
};

static_assert(read_strategy<mapping_read>);

}  // namespace safeshard::host
