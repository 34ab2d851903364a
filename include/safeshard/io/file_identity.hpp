// Which file an open descriptor is: a path may name another file later (a download or an
// atomic save renames a new file over it), so a reader opened after a mapping checks it.
#pragma once

#include <cstdint>
#include <string>

#include <sys/stat.h>
#include <sys/sysmacros.h>

namespace safeshard {

struct file_identity {
    std::uint64_t device = 0;
    std::uint64_t inode = 0;

    [[nodiscard]] static file_identity of(const struct stat& st) noexcept {
        return {static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino)};
    }
    friend bool operator==(const file_identity&, const file_identity&) = default;
};

// A file's identity with what changes whenever its bytes do: size, modification and status
// change times (statx: ino, size, mtime, ctime). A write in place changes ctime even when it
// keeps the size and sets mtime back (only the kernel's clock sets ctime).
struct file_version {
    file_identity id{};
    std::uint64_t size = 0;
    std::int64_t mtime_sec = 0, ctime_sec = 0;
    std::uint32_t mtime_nsec = 0, ctime_nsec = 0;

    [[nodiscard]] static file_version of(const struct stat& st) noexcept {
        return {file_identity::of(st),
                static_cast<std::uint64_t>(st.st_size),
                static_cast<std::int64_t>(st.st_mtim.tv_sec),
                static_cast<std::int64_t>(st.st_ctim.tv_sec),
                static_cast<std::uint32_t>(st.st_mtim.tv_nsec),
                static_cast<std::uint32_t>(st.st_ctim.tv_nsec)};
    }
    // Fields the file system did not fill in (stx_mask) are taken from `known`.
    [[nodiscard]] static file_version of(const struct statx& sx,
                                         const file_version& known) noexcept {
        file_version v = known;
        v.id.device = static_cast<std::uint64_t>(makedev(sx.stx_dev_major, sx.stx_dev_minor));
        if (sx.stx_mask & STATX_INO) v.id.inode = sx.stx_ino;
        if (sx.stx_mask & STATX_SIZE) v.size = sx.stx_size;
        if (sx.stx_mask & STATX_MTIME) {
            v.mtime_sec = sx.stx_mtime.tv_sec;
            v.mtime_nsec = sx.stx_mtime.tv_nsec;
        }
        if (sx.stx_mask & STATX_CTIME) {
            v.ctime_sec = sx.stx_ctime.tv_sec;
            v.ctime_nsec = sx.stx_ctime.tv_nsec;
        }
        return v;
    }
    friend bool operator==(const file_version&, const file_version&) = default;

    // What differs from `before`, in words ("" when nothing does).
    [[nodiscard]] std::string changes_since(const file_version& before) const {
        if (id != before.id)
            return "another file is there now (inode " + std::to_string(before.id.inode) +
                   ", now " + std::to_string(id.inode) + ")";
        if (size != before.size)
            return "its size went from " + std::to_string(before.size) + " to " +
                   std::to_string(size) + " bytes";
        if (mtime_sec != before.mtime_sec || mtime_nsec != before.mtime_nsec)
            return "it was modified (same size)";
        if (ctime_sec != before.ctime_sec || ctime_nsec != before.ctime_nsec)
            return "its status changed (a write with its time set back, or new permissions)";
        return {};
    }
};

}  // namespace safeshard
