// Private stand-ins for io/mapped_file and io/atomic_file while the io layer is not merged.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <utility>

#include "safeshard/core/error.hpp"

namespace safeshard::detail {

// Read-only whole-file mmap (the subset of io/mapped_file the format layer uses).
class mapped_file_stand_in {
public:
    explicit mapped_file_stand_in(const std::filesystem::path& p) : path_(p) {
        const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) throw system_error("open", errno, p.string());
        struct stat st {};
        if (::fstat(fd, &st) != 0) {
            const int e = errno;
            ::close(fd);
            throw system_error("fstat", e, p.string());
        }
        size_ = static_cast<std::size_t>(st.st_size);
        if (size_ != 0) {
            void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
            if (m == MAP_FAILED) {
                const int e = errno;
                ::close(fd);
                throw system_error("mmap", e, p.string());
            }
            data_ = static_cast<const std::byte*>(m);
        }
        ::close(fd);
    }
    mapped_file_stand_in(mapped_file_stand_in&& o) noexcept
        : path_(std::move(o.path_)),
          data_(std::exchange(o.data_, nullptr)),
          size_(std::exchange(o.size_, 0)) {}
    mapped_file_stand_in& operator=(mapped_file_stand_in&& o) noexcept {
        if (this != &o) {
            unmap();
            path_ = std::move(o.path_);
            data_ = std::exchange(o.data_, nullptr);
            size_ = std::exchange(o.size_, 0);
        }
        return *this;
    }
    mapped_file_stand_in(const mapped_file_stand_in&) = delete;
    mapped_file_stand_in& operator=(const mapped_file_stand_in&) = delete;
    ~mapped_file_stand_in() { unmap(); }

    [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
    [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }

private:
    void unmap() noexcept {
        if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
        data_ = nullptr;
    }
    std::filesystem::path path_;
    const std::byte* data_ = nullptr;
    std::size_t size_ = 0;
};

// Temp file beside the target; commit() = fsync, rename, fsync folder; else the temp is removed.
class atomic_file_stand_in {
public:
    explicit atomic_file_stand_in(std::filesystem::path target) : target_(std::move(target)) {
        temp_ = target_;
        temp_ += ".tmp-" + std::to_string(::getpid());
        fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd_ < 0) throw system_error("open", errno, temp_.string());
    }
    atomic_file_stand_in(const atomic_file_stand_in&) = delete;
    atomic_file_stand_in& operator=(const atomic_file_stand_in&) = delete;
    ~atomic_file_stand_in() {
        if (fd_ >= 0) {
            ::close(fd_);
            ::unlink(temp_.c_str());
        }
    }
    void write(std::span<const std::byte> bytes) {
        while (!bytes.empty()) {
            const ssize_t n = ::write(fd_, bytes.data(), bytes.size());
            if (n < 0) {
                if (errno == EINTR) continue;
                throw system_error("write", errno, temp_.string(), written_);
            }
            bytes = bytes.subspan(static_cast<std::size_t>(n));
            written_ += static_cast<std::uint64_t>(n);
        }
    }
    void commit() {
        if (::fsync(fd_) != 0) throw system_error("fsync", errno, temp_.string());
        if (::close(fd_) != 0) {
            fd_ = -1;
            ::unlink(temp_.c_str());
            throw system_error("close", errno, temp_.string());
        }
        fd_ = -1;
        if (::rename(temp_.c_str(), target_.c_str()) != 0) {
            const int e = errno;
            ::unlink(temp_.c_str());
            throw system_error("rename", e, target_.string());
        }
        auto dir = target_.parent_path();
        if (dir.empty()) dir = ".";
        const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            (void)::fsync(dfd);
            ::close(dfd);
        }
    }
    [[nodiscard]] const std::filesystem::path& target() const noexcept { return target_; }
    [[nodiscard]] std::uint64_t bytes_written() const noexcept { return written_; }

private:
    std::filesystem::path target_;
    std::filesystem::path temp_;
    int fd_ = -1;
    std::uint64_t written_ = 0;
};

}  // namespace safeshard::detail
