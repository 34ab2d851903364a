// Integer weights packed in I32 (compressed-tensors "pack-quantized", W4A16 / W8A16: the most
// common int4 form on the Hub; Kimi-K2-Thinking's experts), cut by the rules of
// shard/companion.hpp over the weight's values (vLLM's compressed_tensors_wNa16.py,
// CompressedTensorsWNA16.create_weights):
//  - `weight_packed` I32 [N, K / p], p = 32 / num_bits values a word along K, low bits first;
//  - `weight_scale` [N, K / group] (group_size from config_groups' "weights"), or [N, 1] per
//    channel (strategy "channel": no group_size);
//  - `weight_zero_point` I32 [N / p, K / group] (asymmetric only), packed along N: a rank's
//    rows must be whole words of p rows, as vLLM requires of the output partition;
//  - `weight_shape` I64 [2], the logical shape: every rank holds it as stored;
//  - `weight_g_idx` I32 [K] (actorder "group"), each input channel's group, cut with K.
// A rank's share of K must be whole groups (and whole words); under act order the groups are
// weight_g_idx's, not K's: every rank holds all of them (vLLM's
// marlin_repeat_scales_on_all_ranks), and only weight_packed and weight_g_idx are cut on K.
// Dequantized (compressed-tensors' unpack_from_int32 and dequantize): each value is stored plus
// 2^(num_bits - 1), and so is each zero point, so w = (q - z) x weight_scale with the stored
// codes, z = 2^(num_bits - 1) where the checkpoint has no zero points (symmetric).
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "safeshard/shard/quantization/scheme.hpp"

namespace safeshard {

inline constexpr std::array<companion_spec, 4> wna16_companions = {{
    {"weight_scale", nullptr,
     [](const quantization_config& q) {
         return companion_grid{{1}, group_dim(q.group_size, q.act_order)};
     }},
    {"weight_zero_point", nullptr,
     [](const quantization_config& q) {
         return companion_grid{{values_per_word(q)}, group_dim(q.group_size, q.act_order)};
     }},
    {"weight_g_idx", nullptr,
     [](const quantization_config&) {
         return companion_grid{{0}, {1}};
     }},
    {"weight_shape", nullptr, held_whole},
}};

inline constexpr quantization_scheme compressed_tensors_wna16_scheme{
    .name = "compressed-tensors pack-quantized",
    .matches =
        [](const quantization_config& q) {
            return q.quant_method == "compressed-tensors" && q.format == "pack-quantized";
        },
    .companions = wna16_companions,
    .block =
        [](const quantization_config& q) {
            return scale_block{1, q.group_size};
        },
    .packed_dtype = dtype::i32,
    .storage =
        [](const quantization_config& q) {
            return companion_grid{{1}, {values_per_word(q)}};
        },
    .stored_weight = "weight_packed",
    .dequant = {.scales = {"weight_scale"},
                .integer = true,
                .zeros = "weight_zero_point",
                .group_index = "weight_g_idx",
                .zero_without = [](const quantization_config& q) -> std::int32_t {
                    return std::int32_t{1} << ((q.bits ? q.bits : 4) - 1);
                }}};

}  // namespace safeshard
