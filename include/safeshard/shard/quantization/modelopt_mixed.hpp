// ModelOpt's MIXED_PRECISION (quant_algo "MIXED_PRECISION" with "quantized_layers", in
// config.json's quantization_config or hf_quant_config.json; vLLM's modelopt.py,
// ModelOptMixedPrecisionConfig): each quantized layer names its own quant_algo, typically FP8
// for attention and dense layers and NVFP4 for the experts (nvidia/MiniMax-M3-NVFP4: MXFP8
// and NVFP4). Each weight carries the companions of its own algorithm, which the stored shapes
// tell apart: an NVFP4 (or W4A16_NVFP4) weight is U8 [N, K/2] with weight_scale F8_E4M3
// [N, K/16] (the group size of its layers), weight_scale_2 and input_scale; an FP8 weight is
// F8_E4M3 [N, K] with per-tensor weight_scale and input_scale; an MXFP8 weight is F8_E4M3
// [N, K] with weight_scale U8 (E8M0) [N, K/32]. A checkpoint with layers of another algorithm
// (FP8_PB_WO, ...) is not this scheme.
#pragma once

#include <algorithm>
#include <array>
#include <string_view>

#include "safeshard/shard/quantization/mxfp8.hpp"
#include "safeshard/shard/quantization/nvfp4.hpp"
#include "safeshard/shard/quantization/scheme.hpp"

namespace safeshard {

inline constexpr std::array<std::string_view, 4> modelopt_mixed_algos = {"FP8", "MXFP8", "NVFP4",
                                                                         "W4A16_NVFP4"};

// The MXFP8 layers' scales, beside the NVFP4 layers' (nvfp4_block).
inline constexpr std::array<scale_block, 1> modelopt_mixed_other_blocks = {{{1, mxfp8_block}}};

inline constexpr quantization_scheme modelopt_mixed_scheme{
    .name = "modelopt MIXED_PRECISION (FP8, MXFP8, NVFP4)",
    .matches =
        [](const quantization_config& q) {
            return is_modelopt(q, "MIXED_PRECISION") &&
                   std::all_of(q.layer_algos.begin(), q.layer_algos.end(), [](const auto& a) {
                       return std::find(modelopt_mixed_algos.begin(), modelopt_mixed_algos.end(),
                                        a) != modelopt_mixed_algos.end();
                   });
        },
    .companions = modelopt_nvfp4_companions,
    .block = nvfp4_block,
    .other_blocks = modelopt_mixed_other_blocks,
    .packed_dtype = dtype::u8,
    .storage = fp4_bytes,
    .whole_tensors = kv_cache_scales,
    // each layer as its own algorithm: FP8 and MXFP8 weights by their weight_scale, NVFP4 ones
    // by weight_scale x weight_scale_2
    .dequant = {
        .scales = {"weight_scale"}, .global = "weight_scale_2", .packed_values = dtype::f4}};

}  // namespace safeshard
