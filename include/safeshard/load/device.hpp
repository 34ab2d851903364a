// Where a tensor lives (host memory, or a CUDA device), named by plans, tensor factories and
// engines alike: an engine fills one device's memory, and the loader checks that it is the
// device every destination of the plan is planned for.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace safeshard {

enum class device_kind : std::uint8_t { host, cuda };

[[nodiscard]] constexpr std::string_view to_string(device_kind d) noexcept {
    return d == device_kind::host ? "host" : "cuda";
}

// Where a tensor lives: host memory, or CUDA device `index`.
struct device {
    device_kind kind = device_kind::host;
    int index = 0;
    friend constexpr bool operator==(const device&, const device&) = default;
};

// "host", "cuda:1".
[[nodiscard]] inline std::string to_string(const device& d) {
    if (d.kind == device_kind::host) return "host";
    return std::string(to_string(d.kind)) + ":" + std::to_string(d.index);
}

}  // namespace safeshard
