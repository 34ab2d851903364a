// The quantization schemes a plan cuts with their companions: one line each.
#pragma once

#include <array>

#include "safeshard/shard/quantization/awq.hpp"
#include "safeshard/shard/quantization/bitsandbytes.hpp"
#include "safeshard/shard/quantization/fp8.hpp"
#include "safeshard/shard/quantization/gptq.hpp"
#include "safeshard/shard/quantization/modelopt_mixed.hpp"
#include "safeshard/shard/quantization/mxfp4.hpp"
#include "safeshard/shard/quantization/mxfp8.hpp"
#include "safeshard/shard/quantization/nvfp4.hpp"
#include "safeshard/shard/quantization/scheme.hpp"
#include "safeshard/shard/quantization/wna16.hpp"

namespace safeshard {

inline constexpr std::array<const quantization_scheme*, 13> quantization_schemes = {
    &fp8_scheme,
    &compressed_tensors_fp8_scheme,
    &modelopt_fp8_scheme,
    &modelopt_nvfp4_scheme,
    &modelopt_mixed_scheme,
    &modelopt_mxfp8_scheme,
    &compressed_tensors_nvfp4_scheme,
    &compressed_tensors_wna16_scheme,
    &gptq_scheme,
    &awq_scheme,
    &mxfp4_scheme,
    &bitsandbytes_8bit_scheme,
    &bitsandbytes_4bit_scheme};

// The scheme of a quantization_config, or nullptr where none is known.
[[nodiscard]] inline const quantization_scheme* find_quantization_scheme(
    const quantization_config& q) {
    for (const quantization_scheme* s : quantization_schemes)
        if (s->matches(q)) return s;
    return nullptr;
}

// The scheme a plan cuts a checkpoint of `config` with: none for one that says no
// quantization_config, or when its raw tensors are asked for (`raw`).
[[nodiscard]] inline const quantization_scheme* plan_quantization_scheme(const model_config* config,
                                                                         bool raw) {
    if (!config || !config->quantization || raw) return nullptr;
    return find_quantization_scheme(*config->quantization);
}

}  // namespace safeshard
