// The memory advice host_engine gives before it writes: MADV_HUGEPAGE on whole destinations
// (host_engine_options::huge_pages) and MADV_POPULATE_WRITE on each piece's destination range
// (host_engine_options::prefault); all through the system-call seam.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>

#include "safeshard/io/syscalls.hpp"
#include "safeshard/load/engine.hpp"

namespace safeshard {
namespace detail {
// MADV_POPULATE_READ / _WRITE (Linux 5.14) where the C library's headers predate them.
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

[[nodiscard]] inline std::uintptr_t page_size() noexcept {
    static const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    return page;
}
}  // namespace detail

namespace host {

// Destination ranges at least this long are prefaulted.
inline constexpr std::uint64_t prefault_min_bytes = std::uint64_t{64} << 10;

// MADV_HUGEPAGE on the whole pages inside each destination (memory that refuses is left as is).
inline void advise_huge_pages(const copy_targets& targets) {
    const std::uintptr_t page = detail::page_size();
    const std::size_t n = std::min(targets.destinations.size(), targets.destination_bytes.size());
    for (std::size_t i = 0; i < n; ++i) {
        const auto a = reinterpret_cast<std::uintptr_t>(targets.destinations[i]);
        const std::uintptr_t from = (a + page - 1) / page * page;
        const std::uintptr_t to = (a + targets.destination_bytes[i]) / page * page;
        if (a == 0 || to <= from + page) continue;
        (void)detail::sys::madvise(reinterpret_cast<void*>(from), to - from, MADV_HUGEPAGE);
    }
}

// Maps destination ranges writable with one system call each. EINVAL (a kernel before 5.14,
// memory that cannot take it) turns it off for the rest of the worker's pieces; any other
// failure is left to the copy's faults.
class prefaulter {
public:
    void operator()(std::byte* p, std::uint64_t n) {
        if (refused_ || n < prefault_min_bytes) return;
        const auto a = reinterpret_cast<std::uintptr_t>(p);
        const std::uintptr_t from = a / detail::page_size() * detail::page_size();
        if (detail::sys::madvise(reinterpret_cast<void*>(from), a + n - from,
                                 detail::madv_populate_write) != 0 &&
            errno == EINVAL)
            refused_ = true;
    }

private:
    bool refused_ = false;
};

}  // namespace host
}  // namespace safeshard
