// A read-only memory map of a whole file: RAII, move-only, with madvise hints.
#pragma once

#include "safeshard/core/error.hpp"
#include "safeshard/io/file_identity.hpp"
#include "safeshard/io/syscalls.hpp"

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <utility>

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace safeshard {

// How the mapping will be read; forwarded to madvise(2).
enum class access_advice { normal, sequential, random, willneed, dontneed };

[[nodiscard]] constexpr std::string_view to_string(access_advice a) noexcept {
    switch (a) {
        case access_advice::normal: return "normal";
        case access_advice::sequential: return "sequential";
        case access_advice::random: return "random";
        case access_advice::willneed: return "willneed";
        case access_advice::dontneed: return "dontneed";
    }
    return "unknown";
}

namespace detail {
[[nodiscard]] constexpr int madvise_flag(access_advice a) noexcept {
    switch (a) {
        case access_advice::normal: return MADV_NORMAL;
        case access_advice::sequential: return MADV_SEQUENTIAL;
        case access_advice::random: return MADV_RANDOM;
        case access_advice::willneed: return MADV_WILLNEED;
        case access_advice::dontneed: return MADV_DONTNEED;
    }
    return MADV_NORMAL;
}
}  // namespace detail

// The bytes stay valid while the object lives. Another process truncating the file while it is
// mapped makes reads past the new end raise SIGBUS: map only files nobody rewrites in place
// (atomic_file replaces files by rename, which is safe).
class mapped_file {
public:
    // An empty object: no file, empty span.
    mapped_file() noexcept = default;

    explicit mapped_file(const std::filesystem::path& p, access_advice a = access_advice::normal)
        : path_(p) {
        detail::unique_fd fd(detail::open_retry(path_.c_str(), O_RDONLY | O_CLOEXEC));
        if (!fd) throw detail::errno_error("open", path_);
        struct stat st {};
        if (detail::sys::fstat(fd.get(), &st) != 0) throw detail::errno_error("fstat", path_);
        if (S_ISDIR(st.st_mode)) throw system_error("map", EISDIR, path_.string());
        if (!S_ISREG(st.st_mode))
            throw error(errc::io_error, "not a regular file; only regular files can be mapped",
                        {.file = path_.string()});
        identity_ = file_identity::of(st);
        // An empty file maps to an empty span: mmap(2) refuses length 0.
        if (st.st_size == 0) return;
        const auto size = static_cast<std::size_t>(st.st_size);
        void* p_map = detail::sys::mmap(size, PROT_READ, MAP_SHARED, fd.get());
        if (p_map == MAP_FAILED) throw detail::errno_error("mmap", path_);
        data_ = static_cast<std::byte*>(p_map);
        size_ = size;
        if (a != access_advice::normal) {
            try {
                advise(a);
            } catch (...) {
                unmap();
                throw;
            }
        }
    }

    mapped_file(mapped_file&& o) noexcept
        : data_(std::exchange(o.data_, nullptr)),
          size_(std::exchange(o.size_, 0)),
          identity_(std::exchange(o.identity_, {})),
          path_(std::move(o.path_)) {
        o.path_.clear();
    }
    mapped_file& operator=(mapped_file&& o) noexcept {
        if (this != &o) {
            unmap();
            data_ = std::exchange(o.data_, nullptr);
            size_ = std::exchange(o.size_, 0);
            identity_ = std::exchange(o.identity_, {});
            path_ = std::move(o.path_);
            o.path_.clear();
        }
        return *this;
    }
    mapped_file(const mapped_file&) = delete;
    mapped_file& operator=(const mapped_file&) = delete;
    ~mapped_file() { unmap(); }

    [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
    [[nodiscard]] const std::byte* data() const noexcept { return data_; }
    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
    [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }
    // The file that was mapped (its path may name another one by now).
    [[nodiscard]] file_identity identity() const noexcept { return identity_; }

    // Advice for [offset, offset + length) (clipped to the file; offset rounded down to a
    // page). An offset past the end is invalid_argument; an empty range does nothing.
    void advise(access_advice a, std::size_t offset = 0, std::size_t length = SIZE_MAX) const {
        if (offset > size_)
            throw error(errc::invalid_argument,
                        "advise offset " + std::to_string(offset) + " is past the end of a " +
                            std::to_string(size_) + "-byte mapping",
                        {.file = path_.string(), .offset = offset});
        const std::size_t end = length >= size_ - offset ? size_ : offset + length;
        if (end == offset) return;
        const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
        const std::size_t begin = offset / page * page;
        if (detail::sys::madvise(data_ + begin, end - begin, detail::madvise_flag(a)) != 0) {
            const int e = errno;
            throw system_error("madvise(" + std::string(to_string(a)) + ")", e, path_.string(),
                               offset);
        }
    }

private:
    void unmap() noexcept {
        if (data_ != nullptr) ::munmap(data_, size_);
        data_ = nullptr;
        size_ = 0;
    }

    std::byte* data_ = nullptr;
    std::size_t size_ = 0;
    file_identity identity_{};
    std::filesystem::path path_{};
};

}  // namespace safeshard
