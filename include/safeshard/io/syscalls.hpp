// The system calls io/ makes, behind one seam so tests can inject faults (ENOSPC, EINTR,
// short reads and writes) without a full disk.
#pragma once

#include "safeshard/core/error.hpp"

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <unistd.h>

namespace safeshard::detail {

// Fault-injection seam: derive, override the calls to fail, install with scoped_syscall_hooks;
// uninstalled it costs one relaxed atomic load per system call. Overrides follow the
// system call's convention (-1 and errno) and may call the base to do the real thing.
class syscall_hooks {
public:
    syscall_hooks() = default;
    syscall_hooks(const syscall_hooks&) = delete;
    syscall_hooks& operator=(const syscall_hooks&) = delete;
    virtual ~syscall_hooks() = default;

    virtual int open(const char* path, int flags, mode_t mode) { return ::open(path, flags, mode); }
    virtual int close(int fd) { return ::close(fd); }
    virtual int fstat(int fd, struct stat* st) { return ::fstat(fd, st); }
    // statx(2) of an open file (AT_EMPTY_PATH).
    virtual int fstatx(int fd, unsigned mask, struct statx* st) {
        return ::statx(fd, "", AT_EMPTY_PATH, mask, st);
    }
    // statfs(2) of an open file: what file system holds it (f_type).
    virtual int fstatfs(int fd, struct statfs* st) { return ::fstatfs(fd, st); }
    virtual ssize_t pread(int fd, void* buf, std::size_t n, off_t offset) {
        return ::pread(fd, buf, n, offset);
    }
    virtual ssize_t preadv(int fd, const iovec* iov, int count, off_t offset) {
        return ::preadv(fd, iov, count, offset);
    }
    virtual ssize_t write(int fd, const void* buf, std::size_t n) { return ::write(fd, buf, n); }
    virtual int fsync(int fd) { return ::fsync(fd); }
    // flags: 0 for rename(2), RENAME_NOREPLACE for renameat2(2).
    virtual int rename(const char* from, const char* to, unsigned flags) {
        return flags == 0 ? ::rename(from, to) : ::renameat2(AT_FDCWD, from, AT_FDCWD, to, flags);
    }
    virtual int mkdir(const char* path, mode_t mode) { return ::mkdir(path, mode); }
    virtual void* mmap(std::size_t length, int prot, int flags, int fd) {
        return ::mmap(nullptr, length, prot, flags, fd, 0);
    }
    virtual int madvise(void* addr, std::size_t length, int advice) {
        return ::madvise(addr, length, advice);
    }
    // Whether reads may go through io_uring: a ring's reads bypass this seam, so hooks that
    // must see every read (or fail them) refuse it, and the engines read with pread instead.
    virtual bool io_uring_allowed() { return true; }
};

// Process-wide so that worker threads see the same faults as the test that installed them.
inline std::atomic<syscall_hooks*> active_syscall_hooks{nullptr};

// Installs hooks for a scope and restores the previous ones (not thread-safe: tests only).
class scoped_syscall_hooks {
public:
    explicit scoped_syscall_hooks(syscall_hooks& hooks) noexcept
        : previous_(active_syscall_hooks.exchange(&hooks)) {}
    scoped_syscall_hooks(const scoped_syscall_hooks&) = delete;
    scoped_syscall_hooks& operator=(const scoped_syscall_hooks&) = delete;
    ~scoped_syscall_hooks() { active_syscall_hooks.store(previous_); }

private:
    syscall_hooks* previous_;
};

namespace sys {

[[nodiscard]] inline syscall_hooks* hooks() noexcept {
    return active_syscall_hooks.load(std::memory_order_relaxed);
}

[[nodiscard]] inline int open(const char* path, int flags, mode_t mode = 0) {
    if (auto* h = hooks()) [[unlikely]]
        return h->open(path, flags, mode);
    return ::open(path, flags, mode);
}
inline int close(int fd) {
    if (auto* h = hooks()) [[unlikely]]
        return h->close(fd);
    return ::close(fd);
}
[[nodiscard]] inline int fstat(int fd, struct stat* st) {
    if (auto* h = hooks()) [[unlikely]]
        return h->fstat(fd, st);
    return ::fstat(fd, st);
}
[[nodiscard]] inline int fstatx(int fd, unsigned mask, struct statx* st) {
    if (auto* h = hooks()) [[unlikely]]
        return h->fstatx(fd, mask, st);
    return ::statx(fd, "", AT_EMPTY_PATH, mask, st);
}
[[nodiscard]] inline int fstatfs(int fd, struct statfs* st) {
    if (auto* h = hooks()) [[unlikely]]
        return h->fstatfs(fd, st);
    return ::fstatfs(fd, st);
}
[[nodiscard]] inline ssize_t pread(int fd, void* buf, std::size_t n, off_t offset) {
    if (auto* h = hooks()) [[unlikely]]
        return h->pread(fd, buf, n, offset);
    return ::pread(fd, buf, n, offset);
}
[[nodiscard]] inline ssize_t preadv(int fd, const iovec* iov, int count, off_t offset) {
    if (auto* h = hooks()) [[unlikely]]
        return h->preadv(fd, iov, count, offset);
    return ::preadv(fd, iov, count, offset);
}
[[nodiscard]] inline ssize_t write(int fd, const void* buf, std::size_t n) {
    if (auto* h = hooks()) [[unlikely]]
        return h->write(fd, buf, n);
    return ::write(fd, buf, n);
}
// SAFESHARD_UNSAFE_SKIP_FSYNC=1 in the environment makes fsync(2) succeed without waiting for
// the disk: for test runs that do not check durability (meson's test environment sets it, except
// for the io/ tests); never for data that must survive a power loss. Read once per process.
[[nodiscard]] inline bool fsync_skipped() noexcept {
    static const bool skip = [] {
        const char* v =
            std::getenv("SAFESHARD_UNSAFE_SKIP_FSYNC");  // NOLINT(concurrency-mt-unsafe)
        return v != nullptr && std::string_view(v) == "1";
    }();
    return skip;
}
[[nodiscard]] inline int fsync(int fd) {
    if (auto* h = hooks()) [[unlikely]]
        return h->fsync(fd);
    if (fsync_skipped()) [[unlikely]]
        return 0;
    return ::fsync(fd);
}
[[nodiscard]] inline int rename(const char* from, const char* to, unsigned flags = 0) {
    if (auto* h = hooks()) [[unlikely]]
        return h->rename(from, to, flags);
    return flags == 0 ? ::rename(from, to) : ::renameat2(AT_FDCWD, from, AT_FDCWD, to, flags);
}
[[nodiscard]] inline int mkdir(const char* path, mode_t mode) {
    if (auto* h = hooks()) [[unlikely]]
        return h->mkdir(path, mode);
    return ::mkdir(path, mode);
}
[[nodiscard]] inline void* mmap(std::size_t length, int prot, int flags, int fd) {
    if (auto* h = hooks()) [[unlikely]]
        return h->mmap(length, prot, flags, fd);
    return ::mmap(nullptr, length, prot, flags, fd, 0);
}
[[nodiscard]] inline int madvise(void* addr, std::size_t length, int advice) {
    if (auto* h = hooks()) [[unlikely]]
        return h->madvise(addr, length, advice);
    return ::madvise(addr, length, advice);
}
[[nodiscard]] inline bool io_uring_allowed() {
    if (auto* h = hooks()) [[unlikely]]
        return h->io_uring_allowed();
    return true;
}

}  // namespace sys

// An owned file descriptor; closing errors are ignored (used for reads and cleanup only).
class unique_fd {
public:
    unique_fd() noexcept = default;
    explicit unique_fd(int fd) noexcept : fd_(fd) {}
    unique_fd(unique_fd&& o) noexcept : fd_(o.release()) {}
    unique_fd& operator=(unique_fd&& o) noexcept {
        if (this != &o) reset(o.release());
        return *this;
    }
    unique_fd(const unique_fd&) = delete;
    unique_fd& operator=(const unique_fd&) = delete;
    ~unique_fd() { reset(); }

    [[nodiscard]] int get() const noexcept { return fd_; }
    [[nodiscard]] explicit operator bool() const noexcept { return fd_ >= 0; }
    [[nodiscard]] int release() noexcept {
        int fd = fd_;
        fd_ = -1;
        return fd;
    }
    void reset(int fd = -1) noexcept {
        if (fd_ >= 0) (void)sys::close(fd_);
        fd_ = fd;
    }

private:
    int fd_ = -1;
};

// system_error() for the errno of the call that just failed; reads errno before anything can
// allocate (argument evaluation order would otherwise leave that open).
[[nodiscard]] inline error errno_error(std::string_view operation, const std::filesystem::path& p,
                                       std::optional<std::uint64_t> offset = std::nullopt) {
    const int e = errno;
    return system_error(operation, e, p.string(), offset);
}

// open(2), retried on EINTR (possible on slow file systems). Readers open with
// read_open_flags, so a FIFO or a device never blocks here (a SIGINT that ends the process
// has nothing to wait for).
[[nodiscard]] inline int open_retry(const char* path, int flags, mode_t mode = 0) {
    int fd;
    do {
        fd = sys::open(path, flags, mode);
    } while (fd < 0 && errno == EINTR);
    return fd;
}

// What a file of this mode is, for messages: "a FIFO", "a directory"...
[[nodiscard]] constexpr std::string_view file_type_name(mode_t mode) noexcept {
    switch (mode & S_IFMT) {
        case S_IFREG: return "a regular file";
        case S_IFDIR: return "a directory";
        case S_IFIFO: return "a FIFO";
        case S_IFSOCK: return "a socket";
        case S_IFCHR: return "a character device";
        case S_IFBLK: return "a block device";
        case S_IFLNK: return "a symbolic link";
    }
    return "a file of unknown type";
}

// What is at `p` (links followed), for messages: "a FIFO", "a directory", "a dangling link to
// 'x'", "nothing"...
[[nodiscard]] inline std::string describe_path(const std::filesystem::path& p) {
    struct stat st {};
    if (::stat(p.c_str(), &st) == 0) return std::string(file_type_name(st.st_mode));
    const int e = errno;
    if (::lstat(p.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
        std::error_code ec;
        const auto to = std::filesystem::read_symlink(p, ec);
        return "a dangling link" + (ec ? std::string() : " to '" + to.string() + "'");
    }
    if (e == ENOENT || e == ENOTDIR) return "nothing";
    return std::string("unreadable (") + std::strerror(e) + ")";
}

// The flags every reader of a file opens it with: O_NONBLOCK, so that a FIFO or a device
// named by a hostile or unlucky input cannot block open(2) (regular_file_status then refuses
// it, and clears O_NONBLOCK for the regular files it accepts).
inline constexpr int read_open_flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK;

// The status of `fd` (opened with read_open_flags), which must be a regular file: anything
// else is an error of code `not_regular` naming the file and what it is ("not a regular file:
// a FIFO"; a directory also carries EISDIR). A failed call is io_error with its errno.
[[nodiscard]] inline struct stat regular_file_status(int fd, const std::filesystem::path& p,
                                                     errc not_regular = errc::io_error) {
    struct stat st {};
    if (sys::fstat(fd, &st) != 0) throw errno_error("fstat", p);
    if (!S_ISREG(st.st_mode))
        throw error(not_regular, "not a regular file: " + std::string(file_type_name(st.st_mode)),
                    error_context{.file = p.string(),
                                  .tensor = {},
                                  .offset = std::nullopt,
                                  .sys_errno = S_ISDIR(st.st_mode) ? EISDIR : 0});
    // Reads of a regular file never block, but some file systems honour O_NONBLOCK anyway.
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) throw errno_error("fcntl", p);
    return st;
}

// An open regular file to read and its status: read_open_flags (plus `extra_flags`, e.g.
// O_NOFOLLOW), then regular_file_status. The one way readers open a file.
struct opened_file {
    unique_fd fd;
    struct stat status;
};
[[nodiscard]] inline opened_file open_regular_file(const std::filesystem::path& p,
                                                   errc not_regular = errc::io_error,
                                                   int extra_flags = 0) {
    unique_fd fd(open_retry(p.c_str(), read_open_flags | extra_flags));
    if (!fd) throw errno_error("open", p);
    const struct stat st = regular_file_status(fd.get(), p, not_regular);
    return {std::move(fd), st};
}

// fsync(2), retried on EINTR.
[[nodiscard]] inline int fsync_retry(int fd) {
    int r;
    do {
        r = sys::fsync(fd);
    } while (r < 0 && errno == EINTR);
    return r;
}

// fsync(2) of an open folder. EINVAL counts as done: some file systems (FUSE, 9p, some
// network ones) cannot sync a folder and say so; their entries are as durable as they get.
[[nodiscard]] inline int fsync_open_directory(int fd) {
    if (fsync_retry(fd) != 0 && errno != EINVAL) return -1;
    return 0;
}

// fsync(2) of a folder, so that a rename or a new entry inside it survives a power loss.
// Returns 0, or the errno of the failed call.
[[nodiscard]] inline int fsync_directory(const char* path) {
    unique_fd fd(open_retry(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd) return errno;
    if (fsync_open_directory(fd.get()) != 0) return errno;
    return 0;
}

// True only when no process has this id (kill(2) says ESRCH); EPERM means alive, not ours.
[[nodiscard]] inline bool process_is_gone(pid_t pid) noexcept {
    return pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH;
}

}  // namespace safeshard::detail
