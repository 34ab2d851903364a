// qwen2 (q/k/v biases) and qwen3 (q_norm / k_norm, replicated).
#pragma once

#include "safeshard/shard/architectures/decoder.hpp"

namespace safeshard {

[[nodiscard]] inline schema qwen2_schema(const model_config& c, const schema_options& o = {}) {
    return build_decoder(c, o, decoder_traits{.qkv_bias = true});
}

[[nodiscard]] inline schema qwen3_schema(const model_config& c, const schema_options& o = {}) {
    return build_decoder(c, o, decoder_traits{.qk_norm = true});
}

}  // namespace safeshard
