// Shared pieces of the io tests: byte patterns, fault hooks, and the names they use from
// tests/support/ (scratch folders, expected errors, tmpfs mounts, permissions).
#pragma once

#include "../support/expect_error.hpp"
#include "../support/permissions.hpp"
#include "../support/temp_dir.hpp"
#include "../support/tmpfs_mount.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/io/syscalls.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

namespace io_test {

namespace fs = std::filesystem;

// A fresh folder under the system temp folder, removed with everything in it.
using scratch_dir = safeshard::test::temp_dir;

// Deterministic bytes that differ per position and per seed, so a misplaced or stale byte shows.
[[nodiscard]] inline std::vector<std::byte> pattern(std::size_t n, std::uint32_t seed = 1) {
    std::vector<std::byte> v(n);
    std::uint32_t x = seed * 2654435761u + 12345u;
    for (std::size_t i = 0; i < n; ++i) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v[i] = static_cast<std::byte>(x >> 24);
    }
    return v;
}

inline void write_file(const fs::path& p, const std::vector<std::byte>& bytes) {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
    REQUIRE(f.good());
}

[[nodiscard]] inline std::vector<std::byte> read_file(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    REQUIRE(f.good());
    std::vector<char> c((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<std::byte> v(c.size());
    if (!c.empty()) std::memcpy(v.data(), c.data(), c.size());
    return v;
}

using safeshard::test::expect_error;

// Names under `dir` (not recursive), sorted.
[[nodiscard]] inline std::vector<std::string> list_names(const fs::path& dir) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
}

// Configurable faults: each knob is off by default; counters show what was called.
struct fault_hooks : safeshard::detail::syscall_hooks {
    // write(2)
    std::optional<std::uint64_t> enospc_after{};  // fail with ENOSPC once this many bytes are in
    std::size_t write_cap = 0;                    // short writes: at most this many bytes per call
    int write_eintr_every = 0;                    // every k-th write call fails with EINTR first
    int write_errno = 0;                          // every write fails with this errno
    int write_returns_zero = 0;                   // writes return 0 (no progress)
    // pread(2) / preadv(2)
    std::size_t read_cap = 0;  // short reads: at most this many bytes per call
    int read_eintr_every = 0;
    int read_errno = 0;
    bool read_eof = false;  // reads return 0 (the file shrank)
    // others
    int open_direct_errno = 0;  // open with O_DIRECT fails with this errno
    int open_errno = 0;
    int fsync_errno = 0;
    int fsync_fail_on_call = 0;  // only the n-th fsync fails (1-based), 0 = all when fsync_errno
    int close_errno = 0;
    int rename_errno = 0;
    unsigned rename_noreplace_einval = 0;  // renameat2 with flags says EINVAL (no support)
    int mkdir_errno = 0;
    int mmap_errno = 0;
    int madvise_errno = 0;

    std::uint64_t bytes_in = 0;
    int write_calls = 0, read_calls = 0, fsync_calls = 0, rename_calls = 0, eintr_count = 0;
    int rename_flags_seen = -1;

    int open(const char* path, int flags, mode_t mode) override {
        if (open_direct_errno != 0 && (flags & O_DIRECT) != 0) return fail(open_direct_errno);
        if (open_errno != 0) return fail(open_errno);
        return syscall_hooks::open(path, flags, mode);
    }
    int close(int fd) override {
        const int r = syscall_hooks::close(fd);
        if (close_errno != 0) return fail(close_errno);
        return r;
    }
    ssize_t write(int fd, const void* buf, std::size_t n) override {
        ++write_calls;
        if (write_errno != 0) return fail(write_errno);
        if (write_returns_zero != 0) return 0;
        if (write_eintr_every > 0 && write_calls % write_eintr_every == 0) {
            ++eintr_count;
            return fail(EINTR);
        }
        if (write_cap > 0 && n > write_cap) n = write_cap;
        if (enospc_after) {
            if (bytes_in >= *enospc_after) return fail(ENOSPC);
            n = std::min<std::uint64_t>(n, *enospc_after - bytes_in);
        }
        const ssize_t r = syscall_hooks::write(fd, buf, n);
        if (r > 0) bytes_in += static_cast<std::uint64_t>(r);
        return r;
    }
    // Short reads are emulated by reading in full and reporting less, which keeps O_DIRECT
    // requests aligned (the caller must then re-read the rest).
    ssize_t pread(int fd, void* buf, std::size_t n, off_t offset) override {
        if (auto r = read_fault()) return *r;
        return cap_read(syscall_hooks::pread(fd, buf, n, offset));
    }
    ssize_t preadv(int fd, const iovec* iov, int count, off_t offset) override {
        if (auto r = read_fault()) return *r;
        return cap_read(syscall_hooks::preadv(fd, iov, count, offset));
    }
    int fsync(int fd) override {
        ++fsync_calls;
        if (fsync_errno != 0 && (fsync_fail_on_call == 0 || fsync_calls == fsync_fail_on_call))
            return fail(fsync_errno);
        return syscall_hooks::fsync(fd);
    }
    int rename(const char* from, const char* to, unsigned flags) override {
        ++rename_calls;
        rename_flags_seen = static_cast<int>(flags);
        if (rename_errno != 0) return fail(rename_errno);
        if (flags != 0 && rename_noreplace_einval != 0) return fail(EINVAL);
        return syscall_hooks::rename(from, to, flags);
    }
    int mkdir(const char* path, mode_t mode) override {
        if (mkdir_errno != 0) return fail(mkdir_errno);
        return syscall_hooks::mkdir(path, mode);
    }
    void* mmap(std::size_t length, int prot, int flags, int fd) override {
        if (mmap_errno != 0) {
            errno = mmap_errno;
            return MAP_FAILED;
        }
        return syscall_hooks::mmap(length, prot, flags, fd);
    }
    int madvise(void* addr, std::size_t length, int advice) override {
        if (madvise_errno != 0) return fail(madvise_errno);
        return syscall_hooks::madvise(addr, length, advice);
    }

private:
    static int fail(int e) {
        errno = e;
        return -1;
    }
    [[nodiscard]] ssize_t cap_read(ssize_t r) const {
        if (read_cap > 0 && r > static_cast<ssize_t>(read_cap))
            return static_cast<ssize_t>(read_cap);
        return r;
    }
    std::optional<ssize_t> read_fault() {
        ++read_calls;
        if (read_errno != 0) return fail(read_errno);
        if (read_eof) return 0;
        if (read_eintr_every > 0 && read_calls % read_eintr_every == 0) {
            ++eintr_count;
            return fail(EINTR);
        }
        return std::nullopt;
    }
};

using safeshard::test::expect_permission_denied;
using safeshard::test::read_only_folder;
using safeshard::test::run_as_nobody;
using safeshard::test::tmpfs_mount;

}  // namespace io_test
