// Durations for reports and progress lines: seconds of the steady clock since a point.
#pragma once

#include <chrono>

namespace safeshard {

[[nodiscard]] inline double seconds_since(std::chrono::steady_clock::time_point t0) noexcept {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace safeshard
