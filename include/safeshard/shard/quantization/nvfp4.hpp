// NVFP4 weights: E2M1 values packed two a byte along K (low nibble first), a FP8 (E4M3) scale
// for each 16 values of a row, and per-tensor F32 scales, in the two forms published
// checkpoints use, cut by the same rule (shard/companion.hpp over the weight's values):
//  - ModelOpt (quant_method "modelopt", quant_algo "NVFP4", or "W4A16_NVFP4" without
//    input_scale, in config.json or in hf_quant_config.json; vLLM's modelopt.py,
//    ModelOptNvFp4LinearMethod): `weight` U8 [N, K/2], `weight_scale` F8_E4M3 [N, K/16],
//    `weight_scale_2` F32 scalar (the global scale), `input_scale` F32 scalar;
//  - compressed-tensors "nvfp4-pack-quantized" (compressed_tensors_w4a4_nvfp4.py):
//    `weight_packed` U8 [N, K/2], `weight_scale` F8_E4M3 [N, K/16], `weight_global_scale` F32
//    [1] (the reciprocal of ModelOpt's weight_scale_2), `input_global_scale` F32 [1].
// A rank's share of K must be whole groups of 16 values (whole bytes, whole scales); the
// per-tensor scales of fused layers are kept one per projection.
#pragma once

#include <array>
#include <string_view>

#include "safeshard/shard/quantization/scheme.hpp"

namespace safeshard {

inline constexpr std::uint64_t nvfp4_group = 16;

[[nodiscard]] constexpr scale_block nvfp4_block(const quantization_config& q) {
    return {1, q.group_size ? q.group_size : nvfp4_group};
}

inline constexpr std::array<companion_spec, 3> modelopt_nvfp4_companions = {
    {{"weight_scale"}, {"weight_scale_2"}, {"input_scale"}}};

// Two E2M1 values a byte along K.
[[nodiscard]] constexpr companion_grid fp4_bytes(const quantization_config&) { return {{1}, {2}}; }

inline constexpr quantization_scheme modelopt_nvfp4_scheme{
    .name = "modelopt NVFP4",
    .matches =
        [](const quantization_config& q) {
            return is_modelopt(q, "NVFP4") || is_modelopt(q, "W4A16_NVFP4");
        },
    .companions = modelopt_nvfp4_companions,
    .block = nvfp4_block,
    .packed_dtype = dtype::u8,
    .storage = fp4_bytes,
    .whole_tensors = kv_cache_scales,
    // w = f32(e2m1) x (f32(weight_scale) x weight_scale_2)
    .dequant = {
        .scales = {"weight_scale"}, .global = "weight_scale_2", .packed_values = dtype::f4}};

inline constexpr std::array<companion_spec, 3> compressed_tensors_nvfp4_companions = {
    {{"weight_scale"}, {"weight_global_scale"}, {"input_global_scale"}}};

inline constexpr quantization_scheme compressed_tensors_nvfp4_scheme{
    .name = "compressed-tensors nvfp4-pack-quantized",
    .matches =
        [](const quantization_config& q) {
            return q.quant_method == "compressed-tensors" && q.format == "nvfp4-pack-quantized";
        },
    .companions = compressed_tensors_nvfp4_companions,
    .block =
        [](const quantization_config&) {
            return scale_block{1, nvfp4_group};
        },
    .packed_dtype = dtype::u8,
    .storage = fp4_bytes,
    .stored_weight = "weight_packed",
    .whole_tensors = kv_cache_scales,
    // w = f32(e2m1) x (f32(weight_scale) / weight_global_scale), as compressed-tensors'
    // dequantize divides by the global scale
    .dequant = {.scales = {"weight_scale"},
                .global = "weight_global_scale",
                .global_divides = true,
                .packed_values = dtype::f4}};

}  // namespace safeshard
