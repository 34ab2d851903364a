// Helpers shared by the format tests: files built byte by byte, temp folders.
#pragma once

#include <unistd.h>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "../support/temp_dir.hpp"

namespace safeshard::test {

// 8-byte little-endian length + header + data.
inline std::vector<std::byte> make_file(std::string_view header, std::string_view data = {}) {
    std::vector<std::byte> out(8 + header.size() + data.size());
    const std::uint64_t n = header.size();
    std::memcpy(out.data(), &n, 8);
    if (!header.empty()) std::memcpy(out.data() + 8, header.data(), header.size());
    if (!data.empty()) std::memcpy(out.data() + 8 + header.size(), data.data(), data.size());
    return out;
}

inline std::vector<std::byte> make_file_n(std::uint64_t n, std::string_view rest) {
    std::vector<std::byte> out(8 + rest.size());
    std::memcpy(out.data(), &n, 8);
    if (!rest.empty()) std::memcpy(out.data() + 8, rest.data(), rest.size());
    return out;
}

inline std::string str(const std::vector<std::byte>& b) {
    return {reinterpret_cast<const char*>(b.data()), b.size()};
}

// temp_dir (a fresh folder, removed at scope exit): tests/support/temp_dir.hpp.

inline void write_bytes(const std::filesystem::path& p, const std::vector<std::byte>& b) {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

inline std::vector<std::byte> read_bytes(const std::filesystem::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<std::byte> out(s.size());
    if (!s.empty()) std::memcpy(out.data(), s.data(), s.size());
    return out;
}

}  // namespace safeshard::test
