// How an engine's bytes leave the files: through the page cache (pread), out of the file's
// mapping, or with O_DIRECT. Shared by host_engine and the CUDA engine's options.
#pragma once

#include <cstdint>

namespace safeshard {

// pread is the default: copying out of a fresh mapping faults once per 4 KiB page and ran
// 4-10x slower on our machines (DESIGN.md, BENCHMARKS.md); where the mapping is faster (short
// strided rows, conversions) host_engine's strided_read::automatic uses it.
enum class read_mode : std::uint8_t {
    pread,   // pread/preadv through the page cache (and the mapping, per strided_read::automatic)
    mmap,    // every copy out of the file's mapping, page faults and all
    direct,  // O_DIRECT into aligned staging buffers, in file order, several reads in flight
             // (io_uring where compiled in, else at least 4 threads). Where the file system
             // refuses O_DIRECT, or keeps files in memory anyway (tmpfs, ramfs: Linux 6.6
             // accepts O_DIRECT on tmpfs), the files are copied out of their mappings (pread
             // without one) and the load_report says so
};

}  // namespace safeshard
