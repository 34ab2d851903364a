// Files changed under a reader at a chosen moment, for the tests of io/mapping_guard.hpp
// (a file cut short between the size check and the copy out of its mapping) and of
// file_reader::check_unchanged (a file rewritten in place, same size, while it is read).
// Both act through the syscall seam, on the real file, from inside the call they follow.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "safeshard/io/syscalls.hpp"

namespace safeshard::test {

[[nodiscard]] inline std::uint64_t inode_of(const std::filesystem::path& p) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) throw std::runtime_error("stat " + p.string());
    return st.st_ino;
}

// Records the mappings of one file made while installed (the engines map the files they
// read through their own cache, besides any mapping of the checkpoint's views).
struct mappings_of_file : detail::syscall_hooks {
    std::uint64_t inode;
    std::mutex maps_mutex;
    std::vector<std::span<const std::byte>> maps;

    explicit mappings_of_file(std::uint64_t ino) : inode(ino) {}

    void* mmap(std::size_t length, int prot, int flags, int fd) override {
        void* r = syscall_hooks::mmap(length, prot, flags, fd);
        struct stat st {};
        if (r != MAP_FAILED && ::fstat(fd, &st) == 0 && st.st_ino == inode) {
            const std::lock_guard lock(maps_mutex);
            maps.emplace_back(static_cast<const std::byte*>(r), length);
        }
        return r;
    }
    // Whether `p` lies in one of those mappings.
    bool mapped_here(const void* p) {
        const auto* b = static_cast<const std::byte*>(p);
        const std::lock_guard lock(maps_mutex);
        return std::any_of(maps.begin(), maps.end(), [b](std::span<const std::byte> s) {
            return b >= s.data() && b < s.data() + s.size();
        });
    }
};

// Cuts `path` to `to` bytes right after an engine's check that it is long enough: the second
// fstat(2) of a descriptor of it (the first is the reader's open), or a successful
// madvise(MADV_POPULATE_READ) inside `mapping` or a mapping of the file made meanwhile (the
// populate option's check). The check saw
// the whole file; the copy out of the mapping that follows finds its pages gone. Once.
struct cut_after_size_check : mappings_of_file {
    std::filesystem::path path;
    std::span<const std::byte> mapping;
    off_t to = 0;
    std::atomic<bool> done{false};
    std::mutex m;
    std::map<int, int> fstats;  // by descriptor

    cut_after_size_check(std::filesystem::path p, std::span<const std::byte> map, off_t cut_to = 0)
        : mappings_of_file(inode_of(p)), path(std::move(p)), mapping(map), to(cut_to) {}

    int fstat(int fd, struct stat* st) override {
        const int r = syscall_hooks::fstat(fd, st);
        if (r == 0 && st->st_ino == inode) {
            const std::lock_guard lock(m);
            if (++fstats[fd] == 2) cut();
        }
        return r;
    }
    int madvise(void* a, std::size_t n, int advice) override {
        const int r = syscall_hooks::madvise(a, n, advice);
        constexpr int populate_read = 22;  // MADV_POPULATE_READ
        if (r == 0 && advice == populate_read && of_the_file(static_cast<const std::byte*>(a)))
            cut();
        return r;
    }
    bool of_the_file(const std::byte* p) {
        return (p >= mapping.data() && p < mapping.data() + mapping.size()) || mapped_here(p);
    }
    void cut() {
        if (!done.exchange(true) && ::truncate(path.c_str(), to) != 0)
            throw std::runtime_error("truncate " + path.string());
    }
};

// Writes `bytes` at `offset` of the file through a descriptor of its own: its inode and (where
// the bytes lie inside it) its size stay, its contents change.
inline void rewrite_in_place(const std::filesystem::path& p, std::uint64_t offset,
                             std::span<const std::byte> bytes) {
    const int w = ::open(p.c_str(), O_WRONLY | O_CLOEXEC);
    const bool ok = w >= 0 && ::pwrite(w, bytes.data(), bytes.size(), static_cast<off_t>(offset)) ==
                                  static_cast<ssize_t>(bytes.size());
    if (w >= 0) ::close(w);
    if (!ok) throw std::runtime_error("rewrite " + p.string());
}

// Rewrites `path` in place, same size, right before the first read (pread, preadv) of it:
// `bytes` at `offset`, written through a descriptor of its own. Once.
struct rewrite_before_first_read : detail::syscall_hooks {
    std::filesystem::path path;
    std::uint64_t inode;
    std::uint64_t offset;
    std::vector<std::byte> bytes;
    std::atomic<bool> done{false};

    rewrite_before_first_read(std::filesystem::path p, std::uint64_t at, std::vector<std::byte> b)
        : path(std::move(p)), inode(inode_of(path)), offset(at), bytes(std::move(b)) {}

    ssize_t pread(int fd, void* buf, std::size_t n, off_t off) override {
        maybe_rewrite(fd);
        return syscall_hooks::pread(fd, buf, n, off);
    }
    ssize_t preadv(int fd, const iovec* iov, int count, off_t off) override {
        maybe_rewrite(fd);
        return syscall_hooks::preadv(fd, iov, count, off);
    }
    void maybe_rewrite(int fd) {
        if (done.load()) return;
        struct stat st {};
        if (::fstat(fd, &st) != 0 || st.st_ino != inode || done.exchange(true)) return;
        rewrite_in_place(path, offset, bytes);
    }
};

// Waits (10 s at most) until a file written now gets a later change time than `p` has, so
// that a rewrite of `p` shows in its ctime where the file system keeps coarse times (a clock
// tick of a few milliseconds).
inline void wait_for_later_ctime(const std::filesystem::path& p) {
    const auto ctime_of = [](const std::filesystem::path& f) {
        struct stat st {};
        if (::stat(f.c_str(), &st) != 0) throw std::runtime_error("stat " + f.string());
        return std::pair(st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
    };
    const auto before = ctime_of(p);
    const auto probe = p.parent_path() / ".ctime-probe";
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
        std::ofstream(probe) << "x";
        if (ctime_of(probe) > before) break;
        if (std::chrono::steady_clock::now() > deadline)
            throw std::runtime_error("the file system clock did not move in 10 s");
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    std::filesystem::remove(probe);
}

[[nodiscard]] inline std::vector<std::byte> read_bytes(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    const std::vector<char> c((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
    std::vector<std::byte> b(c.size());
    for (std::size_t i = 0; i < c.size(); ++i) b[i] = static_cast<std::byte>(c[i]);
    return b;
}

// Writes `b` over the file in place (the same inode, as a rewrite does).
inline void write_bytes(const std::filesystem::path& p, std::span<const std::byte> b) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    if (!out) throw std::runtime_error("write " + p.string());
}

// `n` bytes of the file at `offset`, each flipped: the same size, other values.
[[nodiscard]] inline std::vector<std::byte> flipped_bytes(const std::filesystem::path& p,
                                                          std::uint64_t offset, std::size_t n) {
    std::vector<std::byte> b(n);
    std::ifstream in(p, std::ios::binary);
    in.seekg(static_cast<std::streamoff>(offset));
    in.read(reinterpret_cast<char*>(b.data()), static_cast<std::streamsize>(n));
    if (!in) throw std::runtime_error("read " + p.string());
    for (auto& x : b) x = ~x;
    return b;
}

}  // namespace safeshard::test
