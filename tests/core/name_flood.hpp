// Names crafted the way a hostile file would: tensor-like names whose unkeyed std::hash falls
// into the first `window` slots of a table of `slots` (a power of two), found by brute force.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace safeshard::test {

[[nodiscard]] inline std::vector<std::string> flooding_names(std::size_t n, std::size_t slots,
                                                             std::size_t window) {
    std::vector<std::string> out;
    out.reserve(n);
    for (std::size_t k = 0; out.size() < n; ++k) {
        std::string name = "model.layers." + std::to_string(k) + ".mlp.down_proj.weight";
        if ((std::hash<std::string_view>{}(name) & (slots - 1)) < window)
            out.push_back(std::move(name));
    }
    return out;
}

}  // namespace safeshard::test
