// GPTQ (AutoGPTQ, GPTQModel: quant_method "gptq"), integer weights packed in I32 and stored
// transposed, cut by the rules of shard/companion.hpp over the weight's values [N, K] (vLLM's
// gptq.py, GPTQLinearMethod.create_weights):
//  - `qweight` I32 [K / p, N], p = 32 / bits values a word along K (input_dim 0, packed_dim 0);
//  - `scales` F16 [G, N], G = ceil(K / group_size), or [1, N] per channel (group_size -1);
//  - `qzeros` I32 [G, N / p], packed along N: a rank's share of N must be whole words of p;
//  - `g_idx` I32 [K], each input channel's group, cut with K (its values stay global).
// A rank's share of K must be whole words, and whole groups; with `desc_act` (act order) the
// groups are not contiguous along K, so every rank holds all G rows of the scales and zeros
// (vLLM: scale_and_zero_input_dim None for an act-order row-parallel layer) and only qweight
// and g_idx are cut along K. Loaded as stored, the bits are kept as they are: checkpoint_format
// "gptq" (v1, and where none is given) stores each zero less one, "gptq_v2" does not, which the
// engine's kernels decide; other checkpoint formats (GPTQModel's "marlin", "bitblas": other
// layouts) are no GPTQ of this scheme.
// Dequantized (GPTQModel's dequantize_weight, AutoGPTQ's for v1): w[n][k] = (q - z) x
// scales[g][n], q the word's value of column k, z qzeros' value of row n in group g (plus one
// for v1), g = g_idx[k] under desc_act and k / group_size otherwise (vLLM reads g_idx only under
// desc_act).
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "safeshard/shard/quantization/scheme.hpp"

namespace safeshard {

inline constexpr std::array<companion_spec, 3> gptq_companions = {{
    {"scales", nullptr,
     [](const quantization_config& q) {
         return companion_grid{{1}, group_dim(q.group_size, q.act_order), true};
     }},
    {"qzeros", nullptr,
     [](const quantization_config& q) {
         return companion_grid{{values_per_word(q)}, group_dim(q.group_size, q.act_order), true};
     }},
    {"g_idx", nullptr,
     [](const quantization_config&) {
         return companion_grid{{0}, {1}};
     }},
}};

inline constexpr quantization_scheme gptq_scheme{
    .name = "gptq",
    .matches =
        [](const quantization_config& q) {
            return q.quant_method == "gptq" &&
                   (q.checkpoint_format.empty() || q.checkpoint_format == "gptq" ||
                    q.checkpoint_format == "gptq_v2");
        },
    .companions = gptq_companions,
    .packed_dtype = dtype::i32,
    .storage =
        [](const quantization_config& q) {
            return companion_grid{{1}, {values_per_word(q)}, true};
        },
    .stored_weight = "qweight",
    .dequant = {.scales = {"scales"},
                .integer = true,
                .zeros = "qzeros",
                .group_index = "g_idx",
                .zero_adjust = [](const quantization_config& q) -> std::int32_t {
                    return q.checkpoint_format == "gptq_v2" ? 0 : 1;
                }}};

}  // namespace safeshard
