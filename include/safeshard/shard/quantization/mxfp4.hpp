// MXFP4 (quant_method "mxfp4": OpenAI's gpt-oss; the OCP microscaling format): 32 E2M1 values
// share one E8M0 scale. gpt-oss stores only its experts so (modules_to_not_convert: the rest
// is BF16), as `*_blocks` U8 [E, N, K/32, 16] and `*_scales` U8 [E, N, K/32] beside each
// other, not as a ".weight" with companions: the architecture's table names both
// (shard/architectures/decoder.hpp, "gpt-oss as published") and cuts them by the same rule,
// vLLM's whole blocks a rank (ceil_split), so the scheme adds no companions of its own.
#pragma once

#include "safeshard/shard/quantization/scheme.hpp"

namespace safeshard {

inline constexpr quantization_scheme mxfp4_scheme{
    .name = "MXFP4",
    .matches = [](const quantization_config& q) { return q.quant_method == "mxfp4"; }};

}  // namespace safeshard
