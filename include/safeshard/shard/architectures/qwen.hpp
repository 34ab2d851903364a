// qwen2 (q/k/v biases), qwen3 (q_norm / k_norm, replicated), and their mixtures of experts:
// qwen2_moe (mlp.gate, mlp.experts.{e}.*, a shared expert with its sigmoid gate
// mlp.shared_expert_gate [1, hidden]; dense layers by decoder_sparse_step and mlp_only_layers)
// and qwen3_moe (no shared expert). Names and shapes as in transformers' modeling_qwen2_moe.py
// and modeling_qwen3_moe.py.
#pragma once

#include "safeshard/shard/architectures/decoder.hpp"

namespace safeshard {

inline constexpr architecture_table qwen2_table = decoder_table("qwen2", {.qkv_bias = true});
inline constexpr architecture_table qwen3_table = decoder_table("qwen3", {.qk_norm = true});
inline constexpr architecture_table qwen2_moe_table =
    decoder_table("qwen2_moe", {.qkv_bias = true, .experts = true, .shared_expert = true});
inline constexpr architecture_table qwen3_moe_table =
    decoder_table("qwen3_moe", {.qk_norm = true, .experts = true});

[[nodiscard]] inline schema qwen2_schema(const model_config& c, const schema_options& o = {}) {
    return schema_of(qwen2_table, c, o);
}

[[nodiscard]] inline schema qwen3_schema(const model_config& c, const schema_options& o = {}) {
    return schema_of(qwen3_table, c, o);
}

}  // namespace safeshard
