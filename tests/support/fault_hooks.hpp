// Faults and file systems injected through the syscall seam (io/syscalls.hpp), so that a check of
// a full disk, a read-only mount, a file system that refuses or lacks O_DIRECT, tmpfs, or
// madvise advice runs the same on every machine, without a mount or a privilege.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/vfs.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <set>
#include <vector>

#include "safeshard/io/syscalls.hpp"

namespace safeshard::test {

// f_type values of statfs(2) (linux/magic.h).
inline constexpr long tmpfs_magic = 0x01021994;
inline constexpr long ramfs_magic = 0x858458f6;
inline constexpr long ext4_magic = 0xEF53;

// Configurable faults: each knob is off by default, set before the hooks are installed; the
// counters show what was called. Safe to use from the load engines' worker threads.
struct fault_hooks : safeshard::detail::syscall_hooks {
    // write(2)
    // A disk that fills up: once this many bytes are in, writes fail with full_errno (a write
    // that crosses the limit is cut short there, as a real one is).
    std::optional<std::uint64_t> enospc_after{};
    int full_errno = ENOSPC;     // ENOSPC, or EDQUOT for a user's quota
    std::size_t write_cap = 0;   // short writes: at most this many bytes per call
    int write_eintr_every = 0;   // every k-th write call fails with EINTR first
    int write_errno = 0;         // every write fails with this errno
    int write_returns_zero = 0;  // writes return 0 (no progress)
    // pread(2) / preadv(2)
    std::size_t read_cap = 0;  // short reads: at most this many bytes per call
    int read_eintr_every = 0;
    int read_errno = 0;
    bool read_eof = false;  // reads return 0 (the file shrank)
    // A read-only file system (EROFS): opens for writing or creating, mkdir and rename fail.
    bool read_only = false;
    // O_DIRECT
    int open_direct_errno = 0;  // open with O_DIRECT fails with this errno
    // O_DIRECT accepted at open whatever the file system underneath (the file is opened
    // without it): reads of such a file whose offset, length or buffer is not a multiple of
    // this alignment fail with EINVAL, as O_DIRECT's do, and statx reports it as the file's
    // STATX_DIOALIGN. 0: off.
    std::size_t emulate_direct = 0;
    // others
    int open_errno = 0;
    int fstatx_errno = 0;   // statx fails with this errno (ENOSYS: before Linux 4.11)
    long fstatfs_type = 0;  // the f_type fstatfs reports (tmpfs_magic...); 0: the real one
    int fsync_errno = 0;
    int fsync_fail_on_call = 0;  // only the n-th fsync fails (1-based), 0 = all when fsync_errno
    int close_errno = 0;
    int rename_errno = 0;
    unsigned rename_noreplace_einval = 0;  // renameat2 with flags says EINVAL (no support)
    int mkdir_errno = 0;
    int mmap_errno = 0;
    int madvise_errno = 0;

    std::atomic<std::uint64_t> bytes_in{0};
    std::atomic<int> write_calls{0}, read_calls{0}, fsync_calls{0}, rename_calls{0}, eintr_count{0};
    std::atomic<int> rename_flags_seen{-1};
    std::atomic<int> direct_opens{0};      // opens with O_DIRECT that succeeded (emulated)
    std::atomic<int> misaligned_reads{0};  // reads of an emulated O_DIRECT file refused
    std::atomic<int> fstatx_calls{0}, fstatfs_calls{0};
    // Bytes read by pread/preadv from files opened with emulated O_DIRECT, and from others.
    std::atomic<std::uint64_t> direct_read_bytes{0}, buffered_read_bytes{0};

    struct advice {
        std::uintptr_t addr;
        std::size_t length;
        int advice;
    };
    // The madvise(2) calls given `what` as advice, in order.
    [[nodiscard]] std::vector<advice> advised(int what) const {
        const std::lock_guard lock(m_);
        std::vector<advice> v;
        for (const auto& a : advice_)
            if (a.advice == what) v.push_back(a);
        return v;
    }

    int open(const char* path, int flags, mode_t mode) override {
        if (open_direct_errno != 0 && (flags & O_DIRECT) != 0) return fail(open_direct_errno);
        if (open_errno != 0) return fail(open_errno);
        if (read_only && (flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC)) != 0) return fail(EROFS);
        if (emulate_direct != 0 && (flags & O_DIRECT) != 0) {
            const int fd = syscall_hooks::open(path, flags & ~O_DIRECT, mode);
            if (fd >= 0) {
                ++direct_opens;
                const std::lock_guard lock(m_);
                direct_fds_.insert(fd);
            }
            return fd;
        }
        return syscall_hooks::open(path, flags, mode);
    }
    int close(int fd) override {
        {
            const std::lock_guard lock(m_);
            direct_fds_.erase(fd);
        }
        const int r = syscall_hooks::close(fd);
        if (close_errno != 0) return fail(close_errno);
        return r;
    }
    int fstatx(int fd, unsigned mask, struct statx* st) override {
        ++fstatx_calls;
        if (fstatx_errno != 0) return fail(fstatx_errno);
        const int r = syscall_hooks::fstatx(fd, mask, st);
#if defined(STATX_DIOALIGN)
        if (r == 0 && is_direct(fd)) {
            st->stx_mask |= STATX_DIOALIGN;
            st->stx_dio_mem_align = static_cast<std::uint32_t>(emulate_direct);
            st->stx_dio_offset_align = static_cast<std::uint32_t>(emulate_direct);
        }
#endif
        return r;
    }
    int fstatfs(int fd, struct statfs* st) override {
        ++fstatfs_calls;
        const int r = syscall_hooks::fstatfs(fd, st);
        if (r == 0 && fstatfs_type != 0) st->f_type = fstatfs_type;
        return r;
    }
    ssize_t write(int fd, const void* buf, std::size_t n) override {
        const int call = ++write_calls;
        if (write_errno != 0) return fail(write_errno);
        if (write_returns_zero != 0) return 0;
        if (write_eintr_every > 0 && call % write_eintr_every == 0) {
            ++eintr_count;
            return fail(EINTR);
        }
        if (write_cap > 0 && n > write_cap) n = write_cap;
        if (enospc_after) {
            if (bytes_in >= *enospc_after) return fail(full_errno);
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
        const bool direct = is_direct(fd);
        if (direct && !aligned(reinterpret_cast<std::uintptr_t>(buf), n, offset))
            return refuse_misaligned();
        return count_read(direct, cap_read(syscall_hooks::pread(fd, buf, n, offset)));
    }
    ssize_t preadv(int fd, const iovec* iov, int count, off_t offset) override {
        if (auto r = read_fault()) return *r;
        const bool direct = is_direct(fd);
        if (direct)
            for (int i = 0; i < count; ++i)
                if (!aligned(reinterpret_cast<std::uintptr_t>(iov[i].iov_base), iov[i].iov_len,
                             offset))
                    return refuse_misaligned();
        return count_read(direct, cap_read(syscall_hooks::preadv(fd, iov, count, offset)));
    }
    int fsync(int fd) override {
        const int call = ++fsync_calls;
        if (fsync_errno != 0 && (fsync_fail_on_call == 0 || call == fsync_fail_on_call))
            return fail(fsync_errno);
        return syscall_hooks::fsync(fd);
    }
    int rename(const char* from, const char* to, unsigned flags) override {
        ++rename_calls;
        rename_flags_seen = static_cast<int>(flags);
        if (rename_errno != 0) return fail(rename_errno);
        if (read_only) return fail(EROFS);
        if (flags != 0 && rename_noreplace_einval != 0) return fail(EINVAL);
        return syscall_hooks::rename(from, to, flags);
    }
    int mkdir(const char* path, mode_t mode) override {
        if (mkdir_errno != 0) return fail(mkdir_errno);
        if (read_only) return fail(EROFS);
        return syscall_hooks::mkdir(path, mode);
    }
    void* mmap(std::size_t length, int prot, int flags, int fd) override {
        if (mmap_errno != 0) {
            errno = mmap_errno;
            return MAP_FAILED;
        }
        return syscall_hooks::mmap(length, prot, flags, fd);
    }
    // Emulated O_DIRECT checks every read's alignment: none may bypass the seam.
    bool io_uring_allowed() override { return emulate_direct == 0; }
    int madvise(void* addr, std::size_t length, int what) override {
        {
            const std::lock_guard lock(m_);
            advice_.push_back({reinterpret_cast<std::uintptr_t>(addr), length, what});
        }
        if (madvise_errno != 0) return fail(madvise_errno);
        return syscall_hooks::madvise(addr, length, what);
    }

private:
    static int fail(int e) {
        errno = e;
        return -1;
    }
    [[nodiscard]] bool is_direct(int fd) const {
        if (emulate_direct == 0) return false;
        const std::lock_guard lock(m_);
        return direct_fds_.count(fd) != 0;
    }
    [[nodiscard]] bool aligned(std::uintptr_t buf, std::size_t n, off_t offset) const {
        const auto a = static_cast<std::uint64_t>(emulate_direct);
        return buf % a == 0 && n % a == 0 && static_cast<std::uint64_t>(offset) % a == 0;
    }
    int refuse_misaligned() {
        ++misaligned_reads;
        return fail(EINVAL);
    }
    [[nodiscard]] ssize_t cap_read(ssize_t r) const {
        if (read_cap > 0 && r > static_cast<ssize_t>(read_cap))
            return static_cast<ssize_t>(read_cap);
        return r;
    }
    ssize_t count_read(bool direct, ssize_t r) {
        if (r > 0)
            (direct ? direct_read_bytes : buffered_read_bytes) += static_cast<std::uint64_t>(r);
        return r;
    }
    std::optional<ssize_t> read_fault() {
        const int call = ++read_calls;
        if (read_errno != 0) return fail(read_errno);
        if (read_eof) return 0;
        if (read_eintr_every > 0 && call % read_eintr_every == 0) {
            ++eintr_count;
            return fail(EINTR);
        }
        return std::nullopt;
    }

    mutable std::mutex m_;
    std::set<int> direct_fds_;
    std::vector<advice> advice_;
};

}  // namespace safeshard::test
