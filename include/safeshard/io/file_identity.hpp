// Which file an open descriptor is: a path may name another file later (a download or an
// atomic save renames a new file over it), so a reader opened after a mapping checks it.
#pragma once

#include <cstdint>

#include <sys/stat.h>

namespace safeshard {

struct file_identity {
    std::uint64_t device = 0;
    std::uint64_t inode = 0;

    [[nodiscard]] static file_identity of(const struct stat& st) noexcept {
        return {static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino)};
    }
    friend bool operator==(const file_identity&, const file_identity&) = default;
};

}  // namespace safeshard
