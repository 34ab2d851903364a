// Positional reads of a file: pread/preadv that deliver every byte or throw, optionally O_DIRECT.
#pragma once

#include "safeshard/core/error.hpp"
#include "safeshard/io/aligned_buffer.hpp"
#include "safeshard/io/file_identity.hpp"
#include "safeshard/io/syscalls.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

namespace safeshard {

struct read_options {
    bool direct = false;  // O_DIRECT (bypass the page cache) if the file system allows
    // The file the path must still name, as it was when a checkpoint read and validated its
    // header: where the path names another file now, or the file changed since (size, times),
    // the reader refuses to open (io_error) rather than read bytes at offsets that belong to
    // another header. check_unchanged() then compares with this version.
    std::optional<file_version> expect{};
};

// RAII fd, move-only. Reads are const and may run from several threads at once (pread keeps
// no file position). size() is the size at open: reads past it are errors even if the file
// grew since.
class file_reader {
public:
    static constexpr std::size_t direct_alignment = direct_io_alignment;
    // Largest bounce buffer an unaligned direct read allocates (it reads in chunks of this).
    static constexpr std::size_t direct_bounce_bytes = std::size_t{1} << 20;

    // A reader of nothing; every read throws invalid_argument.
    file_reader() noexcept = default;

    explicit file_reader(const std::filesystem::path& p, read_options o = {}) : path_(p) {
        constexpr int base_flags = detail::read_open_flags;
        if (o.direct) {
            fd_.reset(detail::open_retry(path_.c_str(), base_flags | O_DIRECT));
            if (fd_) {
                direct_ = true;
            } else if (errno == EINVAL) {
                // File systems without O_DIRECT support (tmpfs before Linux 6.6, some FUSE)
                // refuse it at open: read through the page cache instead.
                fallback_note_ =
                    "O_DIRECT refused by the file system (open: Invalid argument); using buffered "
                    "reads";
            } else {
                throw detail::errno_error("open (O_DIRECT)", path_);
            }
        }
        if (!fd_) {
            fd_.reset(detail::open_retry(path_.c_str(), base_flags));
            if (!fd_) throw detail::errno_error("open", path_);
        }
        const struct stat st = detail::regular_file_status(fd_.get(), path_);
        if (o.expect) check_expected(*o.expect, file_version::of(st));
        size_ = static_cast<std::uint64_t>(st.st_size);
        opened_ = file_version::of(st);
        if (direct_) direct_align_ = query_direct_align(fd_.get());
    }

    file_reader(file_reader&& o) noexcept
        : fd_(std::move(o.fd_)),
          size_(std::exchange(o.size_, 0)),
          opened_(std::exchange(o.opened_, {})),
          direct_(std::exchange(o.direct_, false)),
          direct_align_(std::exchange(o.direct_align_, direct_alignment)),
          fallback_note_(std::move(o.fallback_note_)),
          path_(std::move(o.path_)) {
        o.fallback_note_.clear();
        o.path_.clear();
    }
    file_reader& operator=(file_reader&& o) noexcept {
        if (this != &o) {
            fd_ = std::move(o.fd_);
            size_ = std::exchange(o.size_, 0);
            opened_ = std::exchange(o.opened_, {});
            direct_ = std::exchange(o.direct_, false);
            direct_align_ = std::exchange(o.direct_align_, direct_alignment);
            fallback_note_ = std::move(o.fallback_note_);
            path_ = std::move(o.path_);
            o.fallback_note_.clear();
            o.path_.clear();
        }
        return *this;
    }
    file_reader(const file_reader&) = delete;
    file_reader& operator=(const file_reader&) = delete;
    ~file_reader() = default;

    [[nodiscard]] std::uint64_t size() const noexcept { return size_; }
    [[nodiscard]] bool direct() const noexcept { return direct_; }
    // The alignment the file system asks of O_DIRECT offsets, lengths and buffers, from
    // statx(STATX_DIOALIGN) (Linux 6.1): 512 on most disks, which lets a rank's short strided
    // rows be read with far fewer bytes around them; direct_alignment (4096) where the kernel
    // does not say or asks for more. read_exact keeps to direct_alignment, a multiple of it.
    [[nodiscard]] std::size_t direct_io_align() const noexcept { return direct_align_; }
    [[nodiscard]] std::string_view fallback_note() const noexcept { return fallback_note_; }
    [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }
    [[nodiscard]] int fd() const noexcept { return fd_.get(); }
    [[nodiscard]] bool is_open() const noexcept { return static_cast<bool>(fd_); }
    // The file as it was when opened (identity, size, times).
    [[nodiscard]] const file_version& opened_version() const noexcept { return opened_; }

    // Called when the reading is done: io_error "changed while being read" where the file is
    // not what it was when opened (statx: another inode, size, mtime or ctime), so that bytes
    // of two versions of a file are never taken for one. (Times are as fine as the file
    // system keeps them: a rewrite within the same clock tick as the last write before the
    // open can pass unseen where the kernel keeps coarse times.)
    void check_unchanged() const {
        if (!fd_) return;
        const std::string what = version_now().changes_since(opened_);
        if (!what.empty())
            throw error(errc::io_error, "the file changed while being read: " + what,
                        {.file = path_.string()});
    }

    // Fills dst with the bytes at [offset, offset + dst.size()); all of them or an error.
    // Direct reads of unaligned ranges or buffers go through an aligned bounce buffer.
    void read_exact(std::span<std::byte> dst, std::uint64_t offset) const {
        check_range(dst.size(), offset);
        if (dst.empty()) return;
        if (direct_)
            read_direct(dst, offset);
        else
            read_buffered(dst.data(), dst.size(), offset);
    }

    // Scatter read: fills the buffers in order from the bytes starting at offset.
    void read_exact_v(std::span<const iovec> iov, std::uint64_t offset) const {
        std::uint64_t total = 0;
        for (const auto& v : iov) {
            if (add_overflows(total, static_cast<std::uint64_t>(v.iov_len), total))
                throw error(errc::validation_overflow, "scatter read lengths overflow 64 bits",
                            {.file = path_.string(), .offset = offset});
        }
        check_range(total, offset);
        if (total == 0) return;
        if (direct_ && !all_aligned(iov, offset)) {
            // Piece by piece, each through read_direct's bounce buffer where needed.
            for (const auto& v : iov) {
                read_direct({static_cast<std::byte*>(v.iov_base), v.iov_len}, offset);
                offset += v.iov_len;
            }
            return;
        }
        read_vectored(iov, offset);
    }

private:
    // statx(2); fstat(2) where the kernel has no statx (before Linux 4.11).
    [[nodiscard]] file_version version_now() const {
        struct statx sx {};
        constexpr unsigned mask = STATX_INO | STATX_SIZE | STATX_MTIME | STATX_CTIME;
        if (detail::sys::fstatx(fd_.get(), mask, &sx) == 0) return file_version::of(sx, opened_);
        if (errno != ENOSYS) throw detail::errno_error("statx", path_);
        struct stat st {};
        if (detail::sys::fstat(fd_.get(), &st) != 0) throw detail::errno_error("fstat", path_);
        return file_version::of(st);
    }

    // At open: the file must be the version a checkpoint validated.
    void check_expected(const file_version& expected, const file_version& now) const {
        if (now.id != expected.id)
            throw error(errc::io_error,
                        "the file was replaced after the checkpoint was opened (its path names "
                        "another file now); open the checkpoint again",
                        {.file = path_.string()});
        const std::string what = now.changes_since(expected);
        if (!what.empty())
            throw error(errc::io_error,
                        "the file changed while being read: " + what +
                            " since the checkpoint was opened; open the checkpoint again",
                        {.file = path_.string()});
    }

    [[nodiscard]] static std::size_t query_direct_align(int fd) noexcept {
#if defined(STATX_DIOALIGN)
        struct statx sx {};
        if (detail::sys::fstatx(fd, STATX_DIOALIGN, &sx) != 0 || !(sx.stx_mask & STATX_DIOALIGN))
            return direct_alignment;
        const std::size_t a = std::max<std::size_t>(sx.stx_dio_offset_align, sx.stx_dio_mem_align);
        const bool usable = sx.stx_dio_offset_align != 0 && (a & (a - 1)) == 0;
        return usable && a <= direct_alignment ? a : direct_alignment;
#else
        (void)fd;
        return direct_alignment;
#endif
    }

    [[nodiscard]] static std::uint64_t down(std::uint64_t v) noexcept {
        return v / direct_alignment * direct_alignment;
    }
    // Callers pass sizes bounded by the file size plus one block: no overflow.
    [[nodiscard]] static std::size_t round_up(std::size_t v) noexcept {
        return (v + direct_alignment - 1) / direct_alignment * direct_alignment;
    }
    [[nodiscard]] static bool aligned(std::uint64_t v) noexcept {
        return v % direct_alignment == 0;
    }
    [[nodiscard]] static bool aligned(const void* p) noexcept {
        return reinterpret_cast<std::uintptr_t>(p) % direct_alignment == 0;
    }
    [[nodiscard]] static bool all_aligned(std::span<const iovec> iov,
                                          std::uint64_t offset) noexcept {
        if (!aligned(offset)) return false;
        return std::all_of(iov.begin(), iov.end(), [](const iovec& v) {
            return aligned(v.iov_base) && aligned(static_cast<std::uint64_t>(v.iov_len));
        });
    }

    void check_range(std::uint64_t n, std::uint64_t offset) const {
        if (!fd_) throw error(errc::invalid_argument, "read from a file_reader that has no file");
        std::uint64_t end = 0;
        if (add_overflows(offset, n, end) || end > size_) throw past_end(n, offset);
    }

    [[nodiscard]] error past_end(std::uint64_t n, std::uint64_t offset) const {
        return error(errc::io_error,
                     "expected " + std::to_string(n) + " bytes at offset " +
                         std::to_string(offset) + ", file has " + std::to_string(size_),
                     {.file = path_.string(), .offset = offset});
    }

    // The file ended early (it shrank since it was opened).
    [[noreturn]] void throw_truncated(std::uint64_t n, std::uint64_t offset,
                                      std::uint64_t got) const {
        throw error(errc::io_error,
                    "expected " + std::to_string(n) + " bytes at offset " + std::to_string(offset) +
                        ", the file ended after " + std::to_string(got) +
                        " (it is shorter than when it was opened: " + std::to_string(size_) +
                        " bytes)",
                    {.file = path_.string(), .offset = offset});
    }

    // A direct read gave less than a block and cannot go on aligned: say whether the file
    // shrank (the usual cause) or the file system returned an odd count.
    [[noreturn]] void throw_short_direct(std::size_t r, std::uint64_t at, std::uint64_t n,
                                         std::uint64_t offset, std::uint64_t got) const {
        struct stat st {};
        if (detail::sys::fstat(fd_.get(), &st) == 0 &&
            static_cast<std::uint64_t>(st.st_size) < offset + n)
            throw_truncated(n, offset, got);
        throw error(errc::io_error,
                    "direct read returned " + std::to_string(r) +
                        " bytes, less than one block, before the end of the file",
                    {.file = path_.string(), .offset = at});
    }

    [[noreturn]] void throw_read_error(const char* op, int err, std::uint64_t offset) const {
        std::string what = op;
        if (direct_ && err == EINVAL) what += " (O_DIRECT: alignment refused by the file system)";
        throw system_error(what, err, path_.string(), offset);
    }

    // One pread, retried on EINTR; returns bytes read (0 at end of file).
    [[nodiscard]] std::size_t pread_once(std::byte* p, std::size_t n, std::uint64_t offset) const {
        for (;;) {
            const ssize_t r = detail::sys::pread(fd_.get(), p, std::min(n, detail_max_io),
                                                 static_cast<off_t>(offset));
            if (r >= 0) return static_cast<std::size_t>(r);
            const int e = errno;
            if (e != EINTR) throw_read_error("pread", e, offset);
        }
    }

    void read_buffered(std::byte* p, std::size_t n, std::uint64_t offset) const {
        std::size_t done = 0;
        while (done < n) {
            const std::size_t r = pread_once(p + done, n - done, offset + done);
            if (r == 0) throw_truncated(n, offset, done);
            done += r;
        }
    }

    void read_direct(std::span<std::byte> dst, std::uint64_t offset) const {
        std::size_t done = 0;
        aligned_buffer bounce;
        while (done < dst.size()) {
            const std::uint64_t pos = offset + done;
            std::byte* out = dst.data() + done;
            const std::size_t left = dst.size() - done;
            if (aligned(pos) && aligned(out) && left >= direct_alignment) {
                // Straight into the caller's memory: whole blocks only.
                const std::size_t r = pread_once(out, down(left), pos);
                if (r == 0) throw_truncated(dst.size(), offset, done);
                done += r;  // a short count is fine: the next round picks up from there
                continue;
            }
            // Read the aligned blocks around [pos, pos + chunk) into the bounce buffer.
            const std::uint64_t block = down(pos);
            const auto head = static_cast<std::size_t>(pos - block);
            if (bounce.empty())
                bounce = aligned_buffer(std::min(direct_bounce_bytes, round_up(head + left)),
                                        direct_alignment);
            const std::size_t want = std::min(left, bounce.capacity() - head);
            const std::size_t span_len = round_up(head + want);
            std::size_t got = 0;
            while (got < head + want) {
                const std::size_t r = pread_once(bounce.data() + got, span_len - got, block + got);
                if (r == 0) throw_truncated(dst.size(), offset, done);
                if (got + r >= head + want) break;
                // Short of what is needed: go on from the last whole block, keeping offsets
                // aligned. Less than a block from an aligned start cannot be continued.
                const auto next = static_cast<std::size_t>(down(got + r));
                if (next == got) throw_short_direct(r, block + got, dst.size(), offset, done);
                got = next;
            }
            std::memcpy(out, bounce.data() + head, want);
            done += want;
        }
    }

    void read_vectored(std::span<const iovec> iov, std::uint64_t offset) const {
        std::vector<iovec> rest;
        std::uint64_t total = 0;
        for (const auto& v : iov) {
            if (v.iov_len == 0) continue;
            rest.push_back(v);
            total += v.iov_len;
        }
        std::size_t first = 0;
        std::uint64_t done = 0;
        while (first < rest.size()) {
            const int count = static_cast<int>(std::min<std::size_t>(rest.size() - first, IOV_MAX));
            const ssize_t r = detail::sys::preadv(fd_.get(), rest.data() + first, count,
                                                  static_cast<off_t>(offset + done));
            if (r < 0) {
                const int e = errno;
                if (e == EINTR) continue;
                throw_read_error("preadv", e, offset + done);
            }
            if (r == 0) throw_truncated(total, offset, done);
            done += static_cast<std::uint64_t>(r);
            // Skip the buffers filled, shorten the one filled in part.
            auto left = static_cast<std::size_t>(r);
            while (left > 0 && left >= rest[first].iov_len) {
                left -= rest[first].iov_len;
                ++first;
            }
            if (left > 0) {
                rest[first].iov_base = static_cast<std::byte*>(rest[first].iov_base) + left;
                rest[first].iov_len -= left;
                if (direct_ &&
                    !all_aligned({rest.data() + first, rest.size() - first}, offset + done)) {
                    // A short direct read left us unaligned: finish through the bounce path.
                    for (std::size_t i = first; i < rest.size(); ++i) {
                        read_direct({static_cast<std::byte*>(rest[i].iov_base), rest[i].iov_len},
                                    offset + done);
                        done += rest[i].iov_len;
                    }
                    return;
                }
            }
        }
    }

    static constexpr std::size_t detail_max_io = std::size_t{1} << 30;

    detail::unique_fd fd_{};
    std::uint64_t size_ = 0;
    file_version opened_{};
    bool direct_ = false;
    std::size_t direct_align_ = direct_alignment;
    std::string fallback_note_{};
    std::filesystem::path path_{};
};

}  // namespace safeshard
