// libFuzzer target: arbitrary bytes into file_view. Any input must be accepted or refused with
// safeshard::error; an accepted file's tensors must lie inside the file and match their sizes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "safeshard/format/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    // An exact-size heap copy, so ASan sees any read past the end of the "file".
    std::vector<std::byte> bytes(size);
    if (size) std::memcpy(bytes.data(), data, size);
    try {
        const safeshard::file_view v{std::span<const std::byte>(bytes)};
        std::uint64_t expected_begin = v.data_offset();
        volatile std::uint8_t sink = 0;
        for (const safeshard::tensor_view t : v) {
            if (t.file_begin() != expected_begin) std::abort();
            if (t.file_end() > bytes.size()) std::abort();
            if (t.byte_size() * 8 != t.element_count() * safeshard::bit_size(t.dtype()))
                std::abort();
            if (!v.contains(t.name())) std::abort();
            if (v.tensor(t.name()).file_begin() != t.file_begin()) std::abort();
            for (const std::byte b : t.bytes()) sink = sink + static_cast<std::uint8_t>(b);
            if (safeshard::bit_size(t.dtype()) == 32) {
                const auto e = t.as<std::uint32_t>();
                for (std::size_t i = 0; i < e.size(); ++i)
                    sink = sink + static_cast<std::uint8_t>(e[i]);
            }
            expected_begin = t.file_end();
        }
        if (expected_begin != bytes.size()) std::abort();
    } catch (const safeshard::error&) {
    }
    return 0;
}
