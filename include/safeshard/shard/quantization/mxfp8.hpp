// MXFP8 weights as ModelOpt writes them (quant_method "modelopt", quant_algo "MXFP8"; vLLM's
// modelopt.py, ModelOptMxFp8LinearMethod and ModelOptMxFp8FusedMoE): `weight` F8_E4M3 [N, K]
// and `weight_scale` U8 (E8M0) [N, K/32], one power-of-two scale for each 32 values of a row,
// no activation scale. A rank's share of K must be whole blocks of 32.
#pragma once

#include <array>
#include <cstdint>

#include "safeshard/shard/quantization/scheme.hpp"

namespace safeshard {

inline constexpr std::uint64_t mxfp8_block = 32;

inline constexpr std::array<companion_spec, 1> mxfp8_companions = {{{"weight_scale"}}};

inline constexpr quantization_scheme modelopt_mxfp8_scheme{
    .name = "modelopt MXFP8",
    .matches = [](const quantization_config& q) { return is_modelopt(q, "MXFP8"); },
    .companions = mxfp8_companions,
    .block =
        [](const quantization_config&) {
            return scale_block{1, mxfp8_block};
        },
    .whole_tensors = kv_cache_scales,
    // w = f32(e4m3) x 2^(e - 127)
    .dequant = {.scales = {"weight_scale"}}};

}  // namespace safeshard
