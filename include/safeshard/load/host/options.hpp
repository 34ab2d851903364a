// host_engine's options: how many threads, how files are read (read_mode), how boxes with
// gaps between their source rows are read (strided_read), and the memory advice it gives.
#pragma once

#include <cstddef>
#include <cstdint>

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

}  // namespace safeshard
