// A private tmpfs mounted on a fresh folder while this lives (where the test may mount one:
// root, or a user namespace); mounted() says whether mount(2) agreed, why() why not.
#pragma once

#include <sys/mount.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>

namespace safeshard::test {

class tmpfs_mount {
public:
    tmpfs_mount(std::filesystem::path at, std::string options)
        : at_(std::move(at)), options_(std::move(options)) {
        std::filesystem::create_directories(at_);
        mounted_ = ::mount("tmpfs", at_.c_str(), "tmpfs", 0, options_.c_str()) == 0;
        if (!mounted_) why_ = "mount -t tmpfs -o " + options_ + " failed: " + std::strerror(errno);
    }
    tmpfs_mount(const tmpfs_mount&) = delete;
    tmpfs_mount& operator=(const tmpfs_mount&) = delete;
    ~tmpfs_mount() {
        if (mounted_) (void)::umount2(at_.c_str(), MNT_DETACH);
    }
    [[nodiscard]] bool mounted() const noexcept { return mounted_; }
    [[nodiscard]] const std::string& why() const noexcept { return why_; }
    [[nodiscard]] const std::filesystem::path& path() const noexcept { return at_; }
    // Remounts read-only (EROFS for every write); false when refused.
    [[nodiscard]] bool remount_read_only() const {
        return ::mount("tmpfs", at_.c_str(), "tmpfs", MS_REMOUNT | MS_RDONLY, options_.c_str()) ==
               0;
    }

private:
    std::filesystem::path at_;
    std::string options_;
    std::string why_;
    bool mounted_ = false;
};

}  // namespace safeshard::test
