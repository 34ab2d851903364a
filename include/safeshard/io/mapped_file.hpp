// A read-only memory map of a whole file: RAII, move-only, with madvise hints.
#pragma once

#include "safeshard/core/error.hpp"
#include "safeshard/io/file_identity.hpp"
#include "safeshard/io/file_reader.hpp"
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

// Only regular files are mapped: a FIFO, a device or a folder is an io_error naming what it is
// (opening never blocks on them). The bytes stay valid while the object lives. Another process
// truncating the file while it is mapped makes reads past the new end raise SIGBUS: map only files
// nobody rewrites in place (atomic_file replaces files by rename, which is safe).
class mapped_file {
public:
    // An empty object: no file, empty span.
    mapped_file() noexcept = default;

    explicit mapped_file(const std::filesystem::path& p, access_advice a = access_advice::normal)
        : path_(p) {
        const auto [fd, st] = detail::open_regular_file(path_);
        identity_ = file_identity::of(st);
        map(fd.get(), static_cast<std::uint64_t>(st.st_size), a);
    }

    // Maps the file a reader has open, as long as the reader saw it (file_reader::size()): the
    // very file it reads, whatever its path names now. The reader keeps its descriptor.
    explicit mapped_file(const file_reader& r, access_advice a = access_advice::normal)
        : identity_(r.opened_version().id), path_(r.path()) {
        map(r.fd(), r.size(), a);
    }

    // Maps a file opened by detail::open_regular_file, as large as it was then (named `p` in
    // errors); the caller keeps the descriptor.
    mapped_file(const detail::opened_file& f, const std::filesystem::path& p,
                access_advice a = access_advice::normal)
        : identity_(file_identity::of(f.status)), path_(p) {
        map(f.fd.get(), static_cast<std::uint64_t>(f.status.st_size), a);
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
    void map(int fd, std::uint64_t size, access_advice a) {
        // An empty file maps to an empty span: mmap(2) refuses length 0.
        if (size == 0) return;
        void* p_map = detail::sys::mmap(static_cast<std::size_t>(size), PROT_READ, MAP_SHARED, fd);
        if (p_map == MAP_FAILED) throw detail::errno_error("mmap", path_);
        data_ = static_cast<std::byte*>(p_map);
        size_ = static_cast<std::size_t>(size);
        if (a != access_advice::normal) {
            try {
                advise(a);
            } catch (...) {
                unmap();
                throw;
            }
        }
    }

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
