// FP8 weights (F8_E4M3 [N, K]) and their F32 scales, in the three forms published checkpoints
// use, all cut by the same rule (shard/companion.hpp, grid inferred from the stored shapes):
//  - quant_method "fp8" with weight_block_size [128, 128] (DeepSeek-V3/R1, Qwen3-FP8):
//    weight_scale_inv [ceil(N/128), ceil(K/128)], multiplied despite its name (vLLM's
//    fp8.py, Fp8LinearMethod with block_quant; transformers' finegrained_fp8.py); each rank's
//    share of N and of K must be whole blocks (vLLM's validate_fp8_block_shape);
//    without weight_block_size, per tensor: weight_scale [] and input_scale [];
//  - compressed-tensors' float-quantized FP8 (compressed_tensors_w8a8_fp8.py): weight_scale
//    [N, 1] per channel (cut with N) or [1] per tensor (whole), input_scale per tensor;
//  - ModelOpt FP8 (quant_method "modelopt", quant_algo "FP8"; modelopt.py): weight_scale and
//    input_scale per tensor; quant_algo "FP8_PER_CHANNEL_PER_TOKEN": weight_scale [N] or
//    [N, 1] per channel (cut with N).
#pragma once

#include <array>
#include <string_view>

#include "safeshard/shard/quantization/scheme.hpp"

namespace safeshard {

inline constexpr std::array<companion_spec, 3> fp8_companions = {
    {{"weight_scale_inv"}, {"weight_scale"}, {"input_scale"}}};

// w = f32(fp8) x scale, the scale of the value's block (weight_scale_inv, despite its name, or
// weight_scale; vLLM's and transformers' dequantization multiply both).
inline constexpr dequantization fp8_dequantization{.scales = {"weight_scale_inv", "weight_scale"}};

inline constexpr quantization_scheme fp8_scheme{
    .name = "fp8",
    // (quant_method "fp8" with a ModelOpt quant_algo, as DeepSeek-V4's NVFP4 releases write
    // beside their FP8 blocks, is another scheme.)
    .matches =
        [](const quantization_config& q) {
            return q.quant_method == "fp8" && q.quant_algo.empty();
        },
    .companions = fp8_companions,
    .dequant = fp8_dequantization};

inline constexpr quantization_scheme compressed_tensors_fp8_scheme{
    .name = "compressed-tensors float-quantized (FP8)",
    .matches =
        [](const quantization_config& q) {
            return q.quant_method == "compressed-tensors" && q.format == "float-quantized";
        },
    .companions = fp8_companions,
    .whole_tensors = kv_cache_scales,
    .dequant = fp8_dequantization};

inline constexpr quantization_scheme modelopt_fp8_scheme{
    .name = "modelopt FP8",
    .matches =
        [](const quantization_config& q) {
            return is_modelopt(q, "FP8") || is_modelopt(q, "FP8_PER_CHANNEL_PER_TOKEN");
        },
    .companions = fp8_companions,
    .whole_tensors = kv_cache_scales,
    .dequant = fp8_dequantization};

}  // namespace safeshard
