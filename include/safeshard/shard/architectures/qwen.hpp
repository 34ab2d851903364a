// qwen2 (q/k/v biases) and qwen3 (q_norm / k_norm, replicated).
#pragma once

#include "safeshard/shard/architectures/decoder.hpp"

namespace safeshard {

inline constexpr architecture_table qwen2_table = decoder_table("qwen2", {.qkv_bias = true});
inline constexpr architecture_table qwen3_table = decoder_table("qwen3", {.qk_norm = true});

[[nodiscard]] inline schema qwen2_schema(const model_config& c, const schema_options& o = {}) {
    return schema_of(qwen2_table, c, o);
}

[[nodiscard]] inline schema qwen3_schema(const model_config& c, const schema_options& o = {}) {
    return schema_of(qwen3_table, c, o);
}

}  // namespace safeshard
