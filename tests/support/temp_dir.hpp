// A fresh folder under the system temp folder, removed with everything in it at scope exit.
#pragma once

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>

namespace safeshard::test {

class temp_dir {
public:
    // `tag` names the folder (safeshard-<tag>-<pid>-<n>), so a leftover one says whose it was.
    explicit temp_dir(std::string_view tag = "test") {
        static std::atomic<int> counter{0};
        path_ = std::filesystem::temp_directory_path() /
                ("safeshard-" + std::string(tag) + "-" + std::to_string(::getpid()) + "-" +
                 std::to_string(counter.fetch_add(1)));
        std::filesystem::remove_all(path_);
        std::filesystem::create_directories(path_);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }
    [[nodiscard]] std::filesystem::path operator/(const std::filesystem::path& rel) const {
        return path_ / rel;
    }

private:
    std::filesystem::path path_;
};

}  // namespace safeshard::test
