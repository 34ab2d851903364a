// Temp folders and files for the checkpoint tests.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include <doctest/doctest.h>

#include "../support/temp_dir.hpp"
#include "safeshard/core/error.hpp"

namespace safeshard::test {

// temp_dir (a fresh folder, removed at scope exit): tests/support/temp_dir.hpp.

inline void write_file(const std::filesystem::path& p, std::string_view bytes) {
    std::filesystem::create_directories(p.parent_path());
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    REQUIRE(out.good());
}

// A tensor for make_safetensors: its bytes are `nbytes` copies of `fill`.
struct fake_tensor {
    std::string name;
    std::string dtype = "F32";
    std::vector<std::uint64_t> shape{};
    std::uint64_t nbytes = 0;
    char fill = 0;
};

// The bytes of a safetensors file holding `tensors` in that order (header padded to 8).
inline std::string make_safetensors(const std::vector<fake_tensor>& tensors,
                                    std::string_view metadata_json = {}) {
    std::string header = "{";
    if (!metadata_json.empty()) {
        header += "\"__metadata__\":";
        header += metadata_json;
    }
    std::uint64_t offset = 0;
    for (const auto& t : tensors) {
        if (header.size() > 1) header += ',';
        header += "\"" + t.name + "\":{\"dtype\":\"" + t.dtype + "\",\"shape\":[";
        for (std::size_t i = 0; i < t.shape.size(); ++i) {
            header += (i ? "," : "") + std::to_string(t.shape[i]);
        }
        header += "],\"data_offsets\":[" + std::to_string(offset) + "," +
                  std::to_string(offset + t.nbytes) + "]}";
        offset += t.nbytes;
    }
    header += "}";
    while (header.size() % 8 != 0) header += ' ';
    std::string out(8, '\0');
    std::uint64_t n = header.size();
    for (int i = 0; i < 8; ++i)
        out[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
    out += header;
    for (const auto& t : tensors) out.append(t.nbytes, t.fill);
    return out;
}

// The errc of what `f` throws; fails the test when it throws nothing or something else.
template <class F>
[[nodiscard]] errc code_of(F&& f, std::string* what = nullptr) {
    try {
        f();
    } catch (const error& e) {
        if (what != nullptr) *what = e.what();
        return e.code();
    }
    FAIL("no safeshard::error thrown");
    return errc::interrupted;
}

}  // namespace safeshard::test
