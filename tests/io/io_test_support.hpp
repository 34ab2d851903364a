// Shared pieces of the io tests: scratch folders, byte patterns, fault hooks, tmpfs mounts.
#pragma once

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
class scratch_dir {
public:
    scratch_dir() {
        static std::atomic<int> counter{0};
        path_ = fs::temp_directory_path() / ("safeshard-io-test-" + std::to_string(::getpid()) +
                                             "-" + std::to_string(counter.fetch_add(1)));
        fs::remove_all(path_);
        fs::create_directories(path_);
    }
    scratch_dir(const scratch_dir&) = delete;
    scratch_dir& operator=(const scratch_dir&) = delete;
    ~scratch_dir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    [[nodiscard]] const fs::path& path() const noexcept { return path_; }
    [[nodiscard]] fs::path operator/(const std::string& name) const { return path_ / name; }

private:
    fs::path path_;
};

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

// Runs `f`, expecting a safeshard::error; returns it for further checks.
template <class F>
[[nodiscard]] safeshard::error expect_error(F&& f) {
    try {
        std::forward<F>(f)();
    } catch (const safeshard::error& e) {
        return e;
    }
    FAIL("expected a safeshard::error");
    return safeshard::error(safeshard::errc::invalid_argument, "unreachable");
}

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

// A small tmpfs mounted on a fresh folder (root only); empty optional when mount(2) refuses.
class tmpfs_mount {
public:
    static std::optional<std::string> try_mount(const fs::path& dir, const std::string& options,
                                                std::optional<tmpfs_mount>& out) {
        fs::create_directories(dir);
        if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, options.c_str()) != 0)
            return "mount -t tmpfs -o " + options + " failed: " + std::strerror(errno);
        out.emplace(dir);
        return std::nullopt;
    }
    explicit tmpfs_mount(fs::path dir) : dir_(std::move(dir)) {}
    tmpfs_mount(tmpfs_mount&& o) noexcept : dir_(std::exchange(o.dir_, {})) {}
    tmpfs_mount(const tmpfs_mount&) = delete;
    tmpfs_mount& operator=(const tmpfs_mount&) = delete;
    tmpfs_mount& operator=(tmpfs_mount&&) = delete;
    ~tmpfs_mount() {
        if (!dir_.empty()) (void)::umount2(dir_.c_str(), MNT_DETACH);
    }
    // Remounts read-only (EROFS for every write); false when refused.
    [[nodiscard]] bool remount_read_only(const std::string& options) const {
        return ::mount("tmpfs", dir_.c_str(), "tmpfs", MS_REMOUNT | MS_RDONLY, options.c_str()) ==
               0;
    }
    [[nodiscard]] const fs::path& path() const noexcept { return dir_; }

private:
    fs::path dir_;
};

// Makes a folder r-x for everyone for a scope (so no one but root may add entries).
class read_only_folder {
public:
    explicit read_only_folder(fs::path dir) : dir_(std::move(dir)) {
        fs::permissions(dir_, fs::perms::owner_read | fs::perms::owner_exec |
                                  fs::perms::group_read | fs::perms::group_exec |
                                  fs::perms::others_read | fs::perms::others_exec);
    }
    read_only_folder(const read_only_folder&) = delete;
    read_only_folder& operator=(const read_only_folder&) = delete;
    ~read_only_folder() {
        std::error_code ec;
        fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add, ec);
    }

private:
    fs::path dir_;
};

// Runs `f` in a child process that has dropped root (uid/gid 65534, so permission bits
// apply); returns the child's exit status, or nullopt when it cannot drop privileges.
[[nodiscard]] inline std::optional<int> run_as_nobody(const std::function<int()>& f) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        if (::geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) ::_exit(100);
        int code = 99;
        try {
            code = f();
        } catch (...) {
            code = 98;
        }
        ::_exit(code);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) == 100) return std::nullopt;
    return WEXITSTATUS(status);
}

}  // namespace io_test
