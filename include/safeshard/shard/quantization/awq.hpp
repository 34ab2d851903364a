// AWQ (AutoAWQ's GEMM layout: quant_method "awq", version "gemm"), integer weights packed in
// I32 along N and stored transposed, cut by the rules of shard/companion.hpp over the weight's
// values [N, K] (vLLM's awq.py, AWQLinearMethod.create_weights):
//  - `qweight` I32 [K, N / p], p = 32 / bits values a word along N (input_dim 0, packed_dim 1);
//    within a word, column j of the eight is nibble [0, 4, 1, 5, 2, 6, 3, 7][j] (vLLM's
//    AWQ_REVERSE_ORDER), which a cut in whole words keeps;
//  - `scales` F16 [K / group_size, N];
//  - `qzeros` I32 [K / group_size, N / p] (zero_point true).
// A rank's share of N must be whole words of p, and of K whole groups. Other versions (GEMV's
// [N, K / p]) are another layout: refused as an unknown scheme.
#pragma once

#include <array>
#include <string_view>

#include "safeshard/shard/quantization/scheme.hpp"

namespace safeshard {

inline constexpr std::array<companion_spec, 2> awq_companions = {{
    {"scales", nullptr,
     [](const quantization_config& q) {
         return companion_grid{{1}, group_dim(q.group_size), true};
     }},
    {"qzeros", nullptr,
     [](const quantization_config& q) {
         return companion_grid{{values_per_word(q)}, group_dim(q.group_size), true};
     }},
}};

inline constexpr quantization_scheme awq_scheme{
    .name = "awq",
    .matches =
        [](const quantization_config& q) {
            return q.quant_method == "awq" &&
                   (q.version.empty() || q.version == "gemm" || q.version == "GEMM");
        },
    .companions = awq_companions,
    .packed_dtype = dtype::i32,
    .storage =
        [](const quantization_config& q) {
            return companion_grid{{values_per_word(q)}, {1}, true};
        },
    .stored_weight = "qweight"};

}  // namespace safeshard
