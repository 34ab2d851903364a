// Shared pieces of the io tests: byte patterns, and the names they use from tests/support/
// (scratch folders, expected errors, fault hooks, tmpfs mounts, permissions).
#pragma once

#include "../support/expect_error.hpp"
#include "../support/fault_hooks.hpp"
#include "../support/permissions.hpp"
#include "../support/temp_dir.hpp"
#include "../support/tmpfs_mount.hpp"
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
using scratch_dir = safeshard::test::temp_dir;

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

using safeshard::test::expect_error;

// Names under `dir` (not recursive), sorted.
[[nodiscard]] inline std::vector<std::string> list_names(const fs::path& dir) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
}

using safeshard::test::expect_permission_denied;
using safeshard::test::fault_hooks;
using safeshard::test::read_only_folder;
using safeshard::test::run_as_nobody;
using safeshard::test::tmpfs_mount;

}  // namespace io_test
