// The decoder-only transformer all built-in architectures are variants of: one table, its
// entries switched on by the architecture's features and the schema options.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "safeshard/core/error.hpp"
#include "safeshard/core/model_config.hpp"
#include "safeshard/shard/architectures/table.hpp"
#include "safeshard/shard/layout.hpp"
#include "safeshard/shard/parameter.hpp"
#include "safeshard/shard/schema.hpp"

namespace safeshard {

// What distinguishes one architecture's parameters from llama's.
struct decoder_traits {
    bool qkv_bias = false;        // qwen2: q/k/v biases
    bool qk_norm = false;         // qwen3: q_norm / k_norm (replicated)
    bool sandwich_norms = false;  // gemma2: pre/post feed-forward norms
    bool fused_on_disk = false;   // phi3: qkv_proj and gate_up_proj stored fused
    bool tied_default = false;    // tie_word_embeddings when config.json does not say
    // Mixtures of experts (the layers layer_plan::sparse names hold them).
    bool experts = false;           // mlp.gate, mlp.experts.{e}.{gate,up,down}_proj
    bool mixtral_experts = false;   // block_sparse_moe.gate, block_sparse_moe.experts.{e}.w1/w3/w2
    bool shared_expert = false;     // qwen2_moe: mlp.shared_expert.*, mlp.shared_expert_gate
    bool shared_experts = false;    // deepseek: mlp.shared_experts.*
    bool score_correction = false;  // deepseek_v3: mlp.gate.e_score_correction_bias
    bool latent_attention = false;  // deepseek: multi-head latent attention
    bool multi_token_prediction = false;  // deepseek_v3: layers after num_hidden_layers
    bool gpt_oss_experts = false;         // gpt_oss: mlp.router, mlp.experts.* stacked, with biases
    bool feed_forward = false;     // llama4: feed_forward.router, .experts.*, .shared_expert.*
    bool attention_sinks = false;  // gpt_oss: self_attn.sinks and o_proj.bias

    [[nodiscard]] constexpr std::uint32_t features() const noexcept {
        return (qkv_bias ? feature_qkv_bias : 0u) | (qk_norm ? feature_qk_norm : 0u) |
               (sandwich_norms ? feature_sandwich_norms : 0u) |
               (fused_on_disk ? feature_fused_on_disk : 0u) | (experts ? feature_experts : 0u) |
               (mixtral_experts ? feature_mixtral_experts : 0u) |
               (shared_expert ? feature_shared_expert : 0u) |
               (shared_experts ? feature_shared_experts : 0u) |
               (score_correction ? feature_score_correction : 0u) |
               (latent_attention ? feature_latent_attention : 0u) |
               (multi_token_prediction ? feature_multi_token_prediction : 0u) |
               (gpt_oss_experts ? feature_gpt_oss_experts : 0u) |
               (feed_forward ? feature_feed_forward : 0u) |
               (attention_sinks ? feature_attention_sinks : 0u);
    }
};

// The features that need experts in config.json.
inline constexpr std::uint32_t expert_features =
    feature_experts | feature_mixtral_experts | feature_gpt_oss_experts | feature_feed_forward;

namespace detail {
inline constexpr layout decoder_gqa_template(gqa_part p) noexcept {
    return make_gqa_qkv(kv_contiguous, 0, 0, 0, p);
}
inline constexpr architecture_entry decoder_layer_entry(std::string_view name, layout l,
                                                        config_shape s) {
    return {.name = name, .layout = l, .shape = s};
}
inline constexpr architecture_entry decoder_attention_entry(std::string_view name, gqa_part p,
                                                            config_shape s,
                                                            std::uint32_t requires_features = 0) {
    return {.name = name,
            .rule = layout_rule::gqa_qkv,
            .layout = decoder_gqa_template(p),
            .shape = s,
            .requires_features = requires_features,
            .excludes_features = feature_fused_on_disk | feature_latent_attention,
            .option = option_rule::separate_qkv};
}
// A projection of the layers with experts, split on `dim` (gate and up 0, down 1): an expert's
// within its expert group ("{e}" in the name), a shared expert's over the world.
inline constexpr architecture_entry expert_entry(std::string_view name, std::uint8_t dim,
                                                 config_shape s, std::uint32_t requires_features) {
    return {.name = name,
            .layout = make_split(dim),
            .shape = s,
            .requires_features = requires_features,
            .layers = layer_rule::sparse};
}
// An expert's projection, stored one tensor per expert ("{e}" in the name).
inline constexpr architecture_entry per_expert_entry(std::string_view name, std::uint8_t dim,
                                                     config_shape s,
                                                     std::uint32_t requires_features) {
    architecture_entry e = expert_entry(name, dim, s, requires_features);
    e.option = option_rule::experts_per_tensor;
    e.fusion = fusion_rule::as_stored;
    return e;
}
// A projection of all the layer's experts stacked on dim 0; `rule` and `l` cut each expert's
// slab.
inline constexpr architecture_entry stacked_expert_entry(
    std::string_view name, layout_rule rule, layout l, config_shape s,
    std::uint32_t requires_features, option_rule option = option_rule::experts_stacked,
    std::uint32_t excludes_features = 0) {
    return {.name = name,
            .rule = rule,
            .layout = l,
            .shape = s,
            .requires_features = requires_features,
            .excludes_features = excludes_features,
            .option = option,
            .layers = layer_rule::sparse,
            .stacked_experts = true,
            .fusion = fusion_rule::as_stored};
}
// One of the engine's fused experts of a layer (schema_options::fuse_experts; vLLM's
// FusedMoE): all the layer's experts stacked on dim 0, gathered from one tensor per expert
// ("{e}" in the sources, `option` experts_per_tensor) or read from the stacked tensor
// (experts_stacked); `rule` and `l` cut each expert's slab. No checkpoint holds the name.
inline constexpr architecture_entry fused_expert_entry(std::string_view name, layout_rule rule,
                                                       layout l, std::string_view first,
                                                       std::string_view second,
                                                       std::uint32_t requires_features,
                                                       option_rule option) {
    return {.name = name,
            .rule = rule,
            .layout = l,
            .sources = {first, second},
            .requires_features = requires_features,
            .option = option,
            .layers = layer_rule::sparse,
            .stacked_experts = true,
            .fusion = fusion_rule::fused};
}
// A router or another replicated tensor of the layers with experts.
inline constexpr architecture_entry sparse_replicated_entry(
    std::string_view name, config_shape s, std::uint32_t requires_features,
    option_rule option = option_rule::always) {
    return {.name = name,
            .shape = s,
            .requires_features = requires_features,
            .option = option,
            .layers = layer_rule::sparse};
}
// A latent-attention projection split in whole heads.
inline constexpr architecture_entry mla_heads_entry(std::string_view name, std::uint8_t dim,
                                                    config_shape s, std::uint32_t requires_features,
                                                    std::uint32_t excludes_features = 0) {
    return {.name = name,
            .rule = layout_rule::heads,
            .layout = make_split(dim),
            .shape = s,
            .requires_features = feature_latent_attention | requires_features,
            .excludes_features = excludes_features};
}
inline constexpr architecture_entry mla_replicated_entry(std::string_view name, config_shape s,
                                                         std::uint32_t requires_features = 0) {
    return {.name = name,
            .shape = s,
            .requires_features = feature_latent_attention | requires_features};
}
inline constexpr architecture_entry trailing_entry(std::string_view name, layout_rule rule,
                                                   config_shape s) {
    return {.name = name,
            .rule = rule,
            .shape = s,
            .requires_features = feature_multi_token_prediction,
            .layers = layer_rule::trailing};
}
}  // namespace detail

// The Hugging Face decoder's parameters, in the schema's order.
inline constexpr std::array decoder_entries = {
    architecture_entry{.name = "model.embed_tokens.weight",
                       .rule = layout_rule::vocab,
                       .shape = dims(config_dim::vocab, config_dim::hidden),
                       .role = parameter_role::embedding},
    detail::decoder_layer_entry("model.layers.{i}.input_layernorm.weight", make_replicated(),
                                dims(config_dim::hidden)),
    architecture_entry{.name = "model.layers.{i}.self_attn.qkv_proj.weight",
                       .rule = layout_rule::gqa_qkv,
                       .layout = detail::decoder_gqa_template(gqa_part::qkv),
                       .shape = dims(config_dim::qkv_rows, config_dim::hidden),
                       .requires_features = feature_fused_on_disk},
    architecture_entry{.name = "model.layers.{i}.self_attn.qkv_proj.weight",
                       .rule = layout_rule::gqa_qkv,
                       .layout = detail::decoder_gqa_template(gqa_part::qkv),
                       .shape = dims(config_dim::qkv_rows, config_dim::hidden),
                       .role = parameter_role::layer,
                       .sources = {"model.layers.{i}.self_attn.q_proj.weight",
                                   "model.layers.{i}.self_attn.k_proj.weight",
                                   "model.layers.{i}.self_attn.v_proj.weight"},
                       .excludes_features = feature_fused_on_disk | feature_latent_attention,
                       .option = option_rule::fuse_qkv},
    architecture_entry{.name = "model.layers.{i}.self_attn.qkv_proj.bias",
                       .rule = layout_rule::gqa_qkv,
                       .layout = detail::decoder_gqa_template(gqa_part::qkv),
                       .role = parameter_role::layer,
                       .sources = {"model.layers.{i}.self_attn.q_proj.bias",
                                   "model.layers.{i}.self_attn.k_proj.bias",
                                   "model.layers.{i}.self_attn.v_proj.bias"},
                       .requires_features = feature_qkv_bias,
                       .excludes_features = feature_fused_on_disk | feature_latent_attention,
                       .option = option_rule::fuse_qkv},
    detail::decoder_attention_entry("model.layers.{i}.self_attn.q_proj.weight", gqa_part::q,
                                    dims(config_dim::q_rows, config_dim::hidden)),
    detail::decoder_attention_entry("model.layers.{i}.self_attn.k_proj.weight", gqa_part::k,
                                    dims(config_dim::kv_rows, config_dim::hidden)),
    detail::decoder_attention_entry("model.layers.{i}.self_attn.v_proj.weight", gqa_part::v,
                                    dims(config_dim::kv_rows, config_dim::hidden)),
    detail::decoder_attention_entry("model.layers.{i}.self_attn.q_proj.bias", gqa_part::q,
                                    dims(config_dim::q_rows), feature_qkv_bias),
    detail::decoder_attention_entry("model.layers.{i}.self_attn.k_proj.bias", gqa_part::k,
                                    dims(config_dim::kv_rows), feature_qkv_bias),
    detail::decoder_attention_entry("model.layers.{i}.self_attn.v_proj.bias", gqa_part::v,
                                    dims(config_dim::kv_rows), feature_qkv_bias),
    architecture_entry{.name = "model.layers.{i}.self_attn.o_proj.weight",
                       .rule = layout_rule::gqa_o,
                       .shape = dims(config_dim::hidden, config_dim::q_rows),
                       .excludes_features = feature_latent_attention},
    // gpt-oss: the row-parallel o_proj's bias stays whole on every rank (the engine adds it
    // on one, as vLLM's RowParallelLinear does); one attention-sink logit per query head,
    // split with the query heads (vLLM's gpt_oss.py: sinks.narrow(0, head_start, heads)).
    architecture_entry{.name = "model.layers.{i}.self_attn.o_proj.bias",
                       .shape = dims(config_dim::hidden),
                       .requires_features = feature_attention_sinks},
    architecture_entry{.name = "model.layers.{i}.self_attn.sinks",
                       .rule = layout_rule::heads,
                       .layout = make_split(0),
                       .shape = dims(config_dim::attention_heads),
                       .requires_features = feature_attention_sinks},
    // Multi-head latent attention (DeepSeek-V2/V3): the low-rank projections and their norms
    // replicated; q_b_proj (q_proj without q_lora_rank), kv_b_proj and o_proj in whole heads
    // (vLLM's deepseek_v2.py: ReplicatedLinear, ColumnParallelLinear, RowParallelLinear).
    detail::mla_replicated_entry("model.layers.{i}.self_attn.q_a_proj.weight",
                                 dims(config_dim::q_lora, config_dim::hidden), feature_q_lora),
    detail::mla_replicated_entry("model.layers.{i}.self_attn.q_a_layernorm.weight",
                                 dims(config_dim::q_lora), feature_q_lora),
    detail::mla_heads_entry("model.layers.{i}.self_attn.q_b_proj.weight", 0,
                            dims(config_dim::mla_q_rows, config_dim::q_lora), feature_q_lora),
    detail::mla_heads_entry("model.layers.{i}.self_attn.q_proj.weight", 0,
                            dims(config_dim::mla_q_rows, config_dim::hidden), 0, feature_q_lora),
    detail::mla_replicated_entry("model.layers.{i}.self_attn.kv_a_proj_with_mqa.weight",
                                 dims(config_dim::kv_a_rows, config_dim::hidden)),
    detail::mla_replicated_entry("model.layers.{i}.self_attn.kv_a_layernorm.weight",
                                 dims(config_dim::kv_lora)),
    detail::mla_heads_entry("model.layers.{i}.self_attn.kv_b_proj.weight", 0,
                            dims(config_dim::mla_kv_b_rows, config_dim::kv_lora), 0),
    detail::mla_heads_entry("model.layers.{i}.self_attn.o_proj.weight", 1,
                            dims(config_dim::hidden, config_dim::mla_o_cols), 0),
    architecture_entry{.name = "model.layers.{i}.self_attn.q_norm.weight",
                       .requires_features = feature_qk_norm},
    architecture_entry{.name = "model.layers.{i}.self_attn.k_norm.weight",
                       .requires_features = feature_qk_norm},
    detail::decoder_layer_entry("model.layers.{i}.post_attention_layernorm.weight",
                                make_replicated(), dims(config_dim::hidden)),
    architecture_entry{.name = "model.layers.{i}.pre_feedforward_layernorm.weight",
                       .shape = dims(config_dim::hidden),
                       .requires_features = feature_sandwich_norms},
    architecture_entry{.name = "model.layers.{i}.post_feedforward_layernorm.weight",
                       .shape = dims(config_dim::hidden),
                       .requires_features = feature_sandwich_norms},
    architecture_entry{.name = "model.layers.{i}.mlp.gate_up_proj.weight",
                       .rule = layout_rule::gate_up,
                       .shape = dims(config_dim::gate_up_rows, config_dim::hidden),
                       .requires_features = feature_fused_on_disk,
                       .excludes_features = feature_feed_forward,
                       .layers = layer_rule::dense},
    architecture_entry{
        .name = "model.layers.{i}.mlp.gate_up_proj.weight",
        .rule = layout_rule::gate_up,
        .shape = dims(config_dim::gate_up_rows, config_dim::hidden),
        .role = parameter_role::layer,
        .sources = {"model.layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.up_proj.weight"},
        .excludes_features = feature_fused_on_disk | feature_feed_forward,
        .option = option_rule::fuse_gate_up,
        .layers = layer_rule::dense},
    architecture_entry{.name = "model.layers.{i}.mlp.gate_proj.weight",
                       .layout = make_split(0),
                       .shape = dims(config_dim::intermediate, config_dim::hidden),
                       .excludes_features = feature_fused_on_disk | feature_feed_forward,
                       .option = option_rule::separate_gate_up,
                       .layers = layer_rule::dense},
    architecture_entry{.name = "model.layers.{i}.mlp.up_proj.weight",
                       .layout = make_split(0),
                       .shape = dims(config_dim::intermediate, config_dim::hidden),
                       .excludes_features = feature_fused_on_disk | feature_feed_forward,
                       .option = option_rule::separate_gate_up,
                       .layers = layer_rule::dense},
    architecture_entry{.name = "model.layers.{i}.mlp.down_proj.weight",
                       .layout = make_split(1),
                       .shape = dims(config_dim::hidden, config_dim::intermediate),
                       .excludes_features = feature_feed_forward,
                       .layers = layer_rule::dense},
    // Llama-4's dense layers (every layer not in moe_layers) under feed_forward.
    architecture_entry{.name = "model.layers.{i}.feed_forward.gate_proj.weight",
                       .layout = make_split(0),
                       .shape = dims(config_dim::intermediate, config_dim::hidden),
                       .requires_features = feature_feed_forward,
                       .layers = layer_rule::dense},
    architecture_entry{.name = "model.layers.{i}.feed_forward.up_proj.weight",
                       .layout = make_split(0),
                       .shape = dims(config_dim::intermediate, config_dim::hidden),
                       .requires_features = feature_feed_forward,
                       .layers = layer_rule::dense},
    architecture_entry{.name = "model.layers.{i}.feed_forward.down_proj.weight",
                       .layout = make_split(1),
                       .shape = dims(config_dim::hidden, config_dim::intermediate),
                       .requires_features = feature_feed_forward,
                       .layers = layer_rule::dense},
    // Mixtures of experts, on the layers with experts: the router replicated, each expert's
    // projections split within its expert group (shard/expert_parallel.hpp), shared experts
    // split over the whole world as a dense MLP.
    detail::sparse_replicated_entry("model.layers.{i}.mlp.gate.weight",
                                    dims(config_dim::experts, config_dim::hidden), feature_experts),
    detail::sparse_replicated_entry("model.layers.{i}.mlp.gate.e_score_correction_bias",
                                    dims(config_dim::experts),
                                    feature_experts | feature_score_correction),
    detail::per_expert_entry("model.layers.{i}.mlp.experts.{e}.gate_proj.weight", 0,
                             dims(config_dim::moe_intermediate, config_dim::hidden),
                             feature_experts),
    detail::per_expert_entry("model.layers.{i}.mlp.experts.{e}.up_proj.weight", 0,
                             dims(config_dim::moe_intermediate, config_dim::hidden),
                             feature_experts),
    detail::per_expert_entry("model.layers.{i}.mlp.experts.{e}.down_proj.weight", 1,
                             dims(config_dim::hidden, config_dim::moe_intermediate),
                             feature_experts),
    detail::expert_entry("model.layers.{i}.mlp.shared_expert.gate_proj.weight", 0,
                         dims(config_dim::shared_intermediate, config_dim::hidden),
                         feature_shared_expert),
    detail::expert_entry("model.layers.{i}.mlp.shared_expert.up_proj.weight", 0,
                         dims(config_dim::shared_intermediate, config_dim::hidden),
                         feature_shared_expert),
    detail::expert_entry("model.layers.{i}.mlp.shared_expert.down_proj.weight", 1,
                         dims(config_dim::hidden, config_dim::shared_intermediate),
                         feature_shared_expert),
    detail::sparse_replicated_entry("model.layers.{i}.mlp.shared_expert_gate.weight",
                                    dims(config_dim::one, config_dim::hidden),
                                    feature_shared_expert),
    detail::expert_entry("model.layers.{i}.mlp.shared_experts.gate_proj.weight", 0,
                         dims(config_dim::shared_intermediate, config_dim::hidden),
                         feature_shared_experts),
    detail::expert_entry("model.layers.{i}.mlp.shared_experts.up_proj.weight", 0,
                         dims(config_dim::shared_intermediate, config_dim::hidden),
                         feature_shared_experts),
    detail::expert_entry("model.layers.{i}.mlp.shared_experts.down_proj.weight", 1,
                         dims(config_dim::hidden, config_dim::shared_intermediate),
                         feature_shared_experts),
    detail::sparse_replicated_entry("model.layers.{i}.block_sparse_moe.gate.weight",
                                    dims(config_dim::experts, config_dim::hidden),
                                    feature_mixtral_experts, option_rule::experts_per_tensor),
    detail::per_expert_entry("model.layers.{i}.block_sparse_moe.experts.{e}.w1.weight", 0,
                             dims(config_dim::moe_intermediate, config_dim::hidden),
                             feature_mixtral_experts),
    detail::per_expert_entry("model.layers.{i}.block_sparse_moe.experts.{e}.w3.weight", 0,
                             dims(config_dim::moe_intermediate, config_dim::hidden),
                             feature_mixtral_experts),
    detail::per_expert_entry("model.layers.{i}.block_sparse_moe.experts.{e}.w2.weight", 1,
                             dims(config_dim::hidden, config_dim::moe_intermediate),
                             feature_mixtral_experts),
    // The experts of a layer stacked in one tensor per projection (transformers v5's fused
    // experts: gate then up concatenated on dim 1, each expert's slab cut within its group;
    // vLLM's #36997 loads the same form). Mixtral's router moves to mlp.gate with them.
    detail::stacked_expert_entry(
        "model.layers.{i}.mlp.experts.gate_up_proj", layout_rule::expert_gate_up, {},
        dims(config_dim::experts, config_dim::moe_gate_up_rows, config_dim::hidden),
        feature_experts),
    detail::stacked_expert_entry(
        "model.layers.{i}.mlp.experts.down_proj", layout_rule::fixed, make_split(1),
        dims(config_dim::experts, config_dim::hidden, config_dim::moe_intermediate),
        feature_experts),
    detail::sparse_replicated_entry("model.layers.{i}.mlp.gate.weight",
                                    dims(config_dim::experts, config_dim::hidden),
                                    feature_mixtral_experts, option_rule::experts_stacked),
    detail::stacked_expert_entry(
        "model.layers.{i}.mlp.experts.gate_up_proj", layout_rule::expert_gate_up, {},
        dims(config_dim::experts, config_dim::moe_gate_up_rows, config_dim::hidden),
        feature_mixtral_experts),
    detail::stacked_expert_entry(
        "model.layers.{i}.mlp.experts.down_proj", layout_rule::fixed, make_split(1),
        dims(config_dim::experts, config_dim::hidden, config_dim::moe_intermediate),
        feature_mixtral_experts),
    // The engine's fused experts (schema_options::fuse_experts): vLLM's FusedMoE w13_weight
    // [E, 2I, H] (each expert's gate rows, then its up rows: fused_moe/layer.py loads gate as
    // shard w1 into the first half and up as w3 into the second) and w2_weight [E, H, I], on
    // the experts module (Mixtral's per-expert checkpoints: block_sparse_moe.experts).
    detail::fused_expert_entry("model.layers.{i}.mlp.experts.w13_weight",
                               layout_rule::expert_gate_up, {},
                               "model.layers.{i}.mlp.experts.{e}.gate_proj.weight",
                               "model.layers.{i}.mlp.experts.{e}.up_proj.weight", feature_experts,
                               option_rule::experts_per_tensor),
    detail::fused_expert_entry("model.layers.{i}.mlp.experts.w2_weight", layout_rule::fixed,
                               make_split(1), "model.layers.{i}.mlp.experts.{e}.down_proj.weight",
                               {}, feature_experts, option_rule::experts_per_tensor),
    detail::fused_expert_entry("model.layers.{i}.block_sparse_moe.experts.w13_weight",
                               layout_rule::expert_gate_up, {},
                               "model.layers.{i}.block_sparse_moe.experts.{e}.w1.weight",
                               "model.layers.{i}.block_sparse_moe.experts.{e}.w3.weight",
                               feature_mixtral_experts, option_rule::experts_per_tensor),
    detail::fused_expert_entry("model.layers.{i}.block_sparse_moe.experts.w2_weight",
                               layout_rule::fixed, make_split(1),
                               "model.layers.{i}.block_sparse_moe.experts.{e}.w2.weight", {},
                               feature_mixtral_experts, option_rule::experts_per_tensor),
    detail::fused_expert_entry("model.layers.{i}.mlp.experts.w13_weight",
                               layout_rule::expert_gate_up, {},
                               "model.layers.{i}.mlp.experts.gate_up_proj", {}, feature_experts,
                               option_rule::experts_stacked),
    detail::fused_expert_entry("model.layers.{i}.mlp.experts.w2_weight", layout_rule::fixed,
                               make_split(1), "model.layers.{i}.mlp.experts.down_proj", {},
                               feature_experts, option_rule::experts_stacked),
    detail::fused_expert_entry("model.layers.{i}.mlp.experts.w13_weight",
                               layout_rule::expert_gate_up, {},
                               "model.layers.{i}.mlp.experts.gate_up_proj", {},
                               feature_mixtral_experts, option_rule::experts_stacked),
    detail::fused_expert_entry("model.layers.{i}.mlp.experts.w2_weight", layout_rule::fixed,
                               make_split(1), "model.layers.{i}.mlp.experts.down_proj", {},
                               feature_mixtral_experts, option_rule::experts_stacked),
    // gpt-oss (transformers' modeling_gpt_oss.py GptOssExperts; vLLM's gpt_oss.py): the
    // router with its bias replicated; the experts stacked, gate_up_proj [E, H, 2I] with gate
    // and up interleaved on the last dim (gate = even columns), so a rank takes a contiguous
    // range of whole (gate, up) pairs, and its bias [E, 2I] likewise; down_proj [E, I, H]
    // rows; down_proj_bias [E, H] whole (row-parallel: added on one rank).
    detail::sparse_replicated_entry("model.layers.{i}.mlp.router.weight",
                                    dims(config_dim::experts, config_dim::hidden),
                                    feature_gpt_oss_experts),
    detail::sparse_replicated_entry("model.layers.{i}.mlp.router.bias", dims(config_dim::experts),
                                    feature_gpt_oss_experts),
    detail::stacked_expert_entry(
        "model.layers.{i}.mlp.experts.gate_up_proj", layout_rule::fixed, make_split(1, 2),
        dims(config_dim::experts, config_dim::hidden, config_dim::moe_gate_up_rows),
        feature_gpt_oss_experts, option_rule::always, feature_mxfp4_experts),
    detail::stacked_expert_entry(
        "model.layers.{i}.mlp.experts.gate_up_proj_bias", layout_rule::fixed, make_split(0, 2),
        dims(config_dim::experts, config_dim::moe_gate_up_rows), feature_gpt_oss_experts,
        option_rule::always, feature_mxfp4_experts),
    detail::stacked_expert_entry(
        "model.layers.{i}.mlp.experts.down_proj", layout_rule::fixed, make_split(0),
        dims(config_dim::experts, config_dim::moe_intermediate, config_dim::hidden),
        feature_gpt_oss_experts, option_rule::always, feature_mxfp4_experts),
    detail::stacked_expert_entry("model.layers.{i}.mlp.experts.down_proj_bias", layout_rule::fixed,
                                 make_replicated(), dims(config_dim::experts, config_dim::hidden),
                                 feature_gpt_oss_experts, option_rule::always),
    // gpt-oss as published (quant_method mxfp4; transformers' integrations/mxfp4.py): each
    // expert's projection stored output-major as MXFP4, `*_blocks` U8 [E, N, K/32, 16] (32
    // E2M1 values a block, two a byte) with `*_scales` U8 (E8M0) [E, N, K/32], one a block.
    // vLLM's cut (gpt_oss.py _load_weights_mxfp4): a rank's intermediate range is
    // cdiv((I/32), tp) whole blocks, the last ranks fewer, zero-padded to the same size; the
    // same range of gate/up pairs (rows 2·start..2·end, interleaved: 64 rows a block) for
    // gate_up's blocks, scales and bias, and of down's K blocks for its blocks and scales.
    detail::stacked_expert_entry("model.layers.{i}.mlp.experts.gate_up_proj_blocks",
                                 layout_rule::fixed, make_ceil_split(0, 2 * mxfp4_block),
                                 dims(config_dim::experts, config_dim::moe_gate_up_rows,
                                      config_dim::hidden_mx_blocks, config_dim::mx_block_bytes),
                                 feature_gpt_oss_experts | feature_mxfp4_experts,
                                 option_rule::always),
    detail::stacked_expert_entry(
        "model.layers.{i}.mlp.experts.gate_up_proj_scales", layout_rule::fixed,
        make_ceil_split(0, 2 * mxfp4_block),
        dims(config_dim::experts, config_dim::moe_gate_up_rows, config_dim::hidden_mx_blocks),
        feature_gpt_oss_experts | feature_mxfp4_experts, option_rule::always),
    detail::stacked_expert_entry("model.layers.{i}.mlp.experts.gate_up_proj_bias",
                                 layout_rule::fixed, make_ceil_split(0, 2 * mxfp4_block),
                                 dims(config_dim::experts, config_dim::moe_gate_up_rows),
                                 feature_gpt_oss_experts | feature_mxfp4_experts,
                                 option_rule::always),
    detail::stacked_expert_entry(
        "model.layers.{i}.mlp.experts.down_proj_blocks", layout_rule::fixed, make_ceil_split(1, 1),
        dims(config_dim::experts, config_dim::hidden, config_dim::moe_intermediate_mx_blocks,
             config_dim::mx_block_bytes),
        feature_gpt_oss_experts | feature_mxfp4_experts, option_rule::always),
    detail::stacked_expert_entry(
        "model.layers.{i}.mlp.experts.down_proj_scales", layout_rule::fixed, make_ceil_split(1, 1),
        dims(config_dim::experts, config_dim::hidden, config_dim::moe_intermediate_mx_blocks),
        feature_gpt_oss_experts | feature_mxfp4_experts, option_rule::always),
    // Llama-4 (transformers' modeling_llama4.py Llama4TextExperts, Llama4TextMoe; vLLM's
    // llama4.py): the router replicated; the experts stacked, gate_up_proj [E, H, 2I] with
    // gate and up concatenated on the last dim (gate_up.chunk(2, dim=-1)), down_proj
    // [E, I, H]; one shared expert, a dense MLP of intermediate_size over the world.
    detail::sparse_replicated_entry("model.layers.{i}.feed_forward.router.weight",
                                    dims(config_dim::experts, config_dim::hidden),
                                    feature_feed_forward),
    detail::stacked_expert_entry(
        "model.layers.{i}.feed_forward.experts.gate_up_proj", layout_rule::expert_gate_up,
        make_fused(1), dims(config_dim::experts, config_dim::hidden, config_dim::moe_gate_up_rows),
        feature_feed_forward, option_rule::always),
    detail::stacked_expert_entry(
        "model.layers.{i}.feed_forward.experts.down_proj", layout_rule::fixed, make_split(0),
        dims(config_dim::experts, config_dim::moe_intermediate, config_dim::hidden),
        feature_feed_forward, option_rule::always),
    detail::expert_entry("model.layers.{i}.feed_forward.shared_expert.gate_proj.weight", 0,
                         dims(config_dim::moe_intermediate, config_dim::hidden),
                         feature_feed_forward),
    detail::expert_entry("model.layers.{i}.feed_forward.shared_expert.up_proj.weight", 0,
                         dims(config_dim::moe_intermediate, config_dim::hidden),
                         feature_feed_forward),
    detail::expert_entry("model.layers.{i}.feed_forward.shared_expert.down_proj.weight", 1,
                         dims(config_dim::hidden, config_dim::moe_intermediate),
                         feature_feed_forward),
    // A multi-token prediction layer's own tensors (DeepSeek-V3's layer 61; vLLM's
    // deepseek_mtp.py): its norms and input projection replicated, its embedding and head
    // split on the vocabulary like the model's.
    detail::trailing_entry("model.layers.{i}.enorm.weight", layout_rule::fixed,
                           dims(config_dim::hidden)),
    detail::trailing_entry("model.layers.{i}.hnorm.weight", layout_rule::fixed,
                           dims(config_dim::hidden)),
    detail::trailing_entry("model.layers.{i}.eh_proj.weight", layout_rule::fixed, {}),
    detail::trailing_entry("model.layers.{i}.embed_tokens.weight", layout_rule::vocab,
                           dims(config_dim::vocab, config_dim::hidden)),
    detail::trailing_entry("model.layers.{i}.shared_head.norm.weight", layout_rule::fixed,
                           dims(config_dim::hidden)),
    detail::trailing_entry("model.layers.{i}.shared_head.head.weight", layout_rule::vocab,
                           dims(config_dim::vocab, config_dim::hidden)),
    architecture_entry{.name = "model.norm.weight",
                       .shape = dims(config_dim::hidden),
                       .role = parameter_role::final_norm},
    architecture_entry{.name = "lm_head.weight",
                       .rule = layout_rule::vocab,
                       .shape = dims(config_dim::vocab, config_dim::hidden),
                       .role = parameter_role::lm_head,
                       .tied_to = "model.embed_tokens.weight"},
};

// A member of the decoder family: the table switched on by its traits.
[[nodiscard]] constexpr architecture_table decoder_table(std::string_view model_type,
                                                         const decoder_traits& t) noexcept {
    return {model_type, decoder_entries, t.features(), t.tied_default};
}

// config.json's sizes, defaults applied and checked; `features`: what the architecture has
// (the expert and latent-attention fields are required where it has them).
[[nodiscard]] inline decoder_dims resolve_dims(const model_config& c, bool tied_default,
                                               std::uint32_t features = 0) {
    auto need = [&](std::uint64_t v, const char* field) {
        if (v == 0)
            throw error(errc::invalid_config, "config.json of model_type '" + c.model_type +
                                                  "' lacks " + field + " (or it is 0)");
        return v;
    };
    decoder_dims d = sizes_of(c);
    d.layers = need(c.num_hidden_layers, "num_hidden_layers");
    d.hidden = need(c.hidden_size, "hidden_size");
    need(c.intermediate_size, "intermediate_size");
    // Llama-4's dense layers have their own size; its intermediate_size is the experts'.
    d.intermediate = c.intermediate_size_mlp ? c.intermediate_size_mlp : c.intermediate_size;
    d.heads = need(c.num_attention_heads, "num_attention_heads");
    d.vocab = need(c.vocab_size, "vocab_size");
    d.kv_heads = c.num_key_value_heads ? c.num_key_value_heads : d.heads;
    if (d.heads % d.kv_heads != 0)
        throw error(errc::invalid_config, "num_attention_heads " + std::to_string(d.heads) +
                                              " is not a multiple of num_key_value_heads " +
                                              std::to_string(d.kv_heads));
    if (c.head_dim) {
        d.head_dim = c.head_dim;
    } else {
        if (d.hidden % d.heads != 0)
            throw error(errc::invalid_config,
                        "no head_dim, and hidden_size " + std::to_string(d.hidden) +
                            " is not a multiple of num_attention_heads " + std::to_string(d.heads));
        d.head_dim = d.hidden / d.heads;
    }
    d.tied = c.tie_word_embeddings.value_or(tied_default);
    if ((features & expert_features) != 0)
        d.experts = need(c.num_experts,
                         "the expert count (num_local_experts, num_experts or "
                         "n_routed_experts)");
    else
        d.experts = 0;
    if ((features & (feature_shared_expert | feature_shared_experts)) != 0 &&
        d.shared_intermediate == 0)
        need(0, (features & feature_shared_expert) != 0
                    ? "shared_expert_intermediate_size"
                    : "n_shared_experts (or n_shared_experts × moe_intermediate_size overflows)");
    if ((features & feature_latent_attention) != 0) {
        need(c.kv_lora_rank, "kv_lora_rank");
        need(c.qk_nope_head_dim, "qk_nope_head_dim");
        need(c.qk_rope_head_dim, "qk_rope_head_dim");
        need(c.v_head_dim, "v_head_dim");
    }
    return d;
}

// config.json's layer structure for a table: which layers hold experts, how many
// multi-token prediction layers follow.
[[nodiscard]] inline layer_plan layer_plan_of(const architecture_table& t, const decoder_dims& d,
                                              const model_config& c) {
    layer_plan p;
    p.layers = d.layers;
    p.experts = d.experts;
    p.first_k_dense_replace = c.first_k_dense_replace;
    p.decoder_sparse_step = c.decoder_sparse_step;
    p.moe_layer_freq = c.moe_layer_freq;
    p.mlp_only_layers = c.mlp_only_layers;
    p.trailing_layers =
        (t.features & feature_multi_token_prediction) != 0 ? c.num_nextn_predict_layers : 0;
    return p;
}

// The run-time schema of an architecture's table for config.json.
// fuse_experts needs experts, stored so that each expert's slab is [2I, H] and [H, I] as the
// engine's layout is (no transpose).
inline void check_fusable(const architecture_table& t, const decoder_dims& d) {
    const std::string family(t.model_type.empty() ? "this architecture" : t.model_type);
    if ((config_features(d) & feature_mxfp4_experts) != 0)
        throw error(errc::invalid_argument,
                    "fuse_experts: " + family +
                        "'s MXFP4 experts are stored stacked in the engine's order already "
                        "(*_blocks [E, N, K/32, 16] and *_scales [E, N, K/32] are vLLM's "
                        "w13_weight and w2_weight with their scales): load them as stored "
                        "(without fuse_experts)");
    if ((t.features & transposed_expert_features) != 0)
        throw error(errc::invalid_argument,
                    "fuse_experts: " + family +
                        " stores its experts as gate_up_proj [E, H, 2I] and down_proj [E, I, H]; "
                        "the fused experts' w13_weight [E, 2I, H] and w2_weight [E, H, I] would "
                        "need a transpose, which the copy does not do: load the experts as "
                        "stored (without fuse_experts)");
    if ((t.features & expert_features) == 0 || d.experts == 0)
        throw error(errc::invalid_argument,
                    "fuse_experts: " + family + " has no experts to fuse" +
                        ((t.features & expert_features) != 0
                             ? std::string(" (config.json gives no number of experts)")
                             : std::string()));
}

[[nodiscard]] inline schema schema_of(const architecture_table& t, const model_config& c,
                                      const schema_options& o) {
    const decoder_dims d = resolve_dims(c, t.tied_default, t.features);
    if (o.fuse_experts) check_fusable(t, d);
    const std::vector<parameter_spec> specs = specs_of(t, d, layout_options_of(o));
    return expand(specs, layer_plan_of(t, d, c), o);
}

// The parameter table of a decoder under the options (names as Hugging Face writes them).
[[nodiscard]] inline std::vector<parameter_spec> decoder_specs(const decoder_dims& d,
                                                               const decoder_traits& t,
                                                               const schema_options& o) {
    return specs_of(decoder_table({}, t), d, layout_options_of(o));
}

[[nodiscard]] inline schema build_decoder(const model_config& c, const schema_options& o,
                                          const decoder_traits& t) {
    return schema_of(decoder_table(c.model_type, t), c, o);
}

}  // namespace safeshard
