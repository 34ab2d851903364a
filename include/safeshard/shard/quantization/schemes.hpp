// The quantization schemes a plan cuts with their companions: one line each.
#pragma once

#include <array>

#include "safeshard/shard/quantization/fp8.hpp"
#include "safeshard/shard/quantization/scheme.hpp"

namespace safeshard {

inline constexpr std::array<const quantization_scheme*, 3> quantization_schemes = {
    &fp8_scheme, &compressed_tensors_fp8_scheme, &modelopt_fp8_scheme};

// The scheme of a quantization_config, or nullptr where none is known.
[[nodiscard]] inline const quantization_scheme* find_quantization_scheme(
    const quantization_config& q) {
    for (const quantization_scheme* s : quantization_schemes)
        if (s->matches(q)) return s;
    return nullptr;
}

}  // namespace safeshard
