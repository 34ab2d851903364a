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

    [[nodiscard]] constexpr std::uint32_t features() const noexcept {
        return (qkv_bias ? feature_qkv_bias : 0u) | (qk_norm ? feature_qk_norm : 0u) |
               (sandwich_norms ? feature_sandwich_norms : 0u) |
               (fused_on_disk ? feature_fused_on_disk : 0u);
    }
};

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
            .excludes_features = feature_fused_on_disk,
            .option = option_rule::separate_qkv};
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
                       .excludes_features = feature_fused_on_disk,
                       .option = option_rule::fuse_qkv},
    architecture_entry{.name = "model.layers.{i}.self_attn.qkv_proj.bias",
                       .rule = layout_rule::gqa_qkv,
                       .layout = detail::decoder_gqa_template(gqa_part::qkv),
                       .role = parameter_role::layer,
                       .sources = {"model.layers.{i}.self_attn.q_proj.bias",
                                   "model.layers.{i}.self_attn.k_proj.bias",
                                   "model.layers.{i}.self_attn.v_proj.bias"},
                       .requires_features = feature_qkv_bias,
                       .excludes_features = feature_fused_on_disk,
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
                       .shape = dims(config_dim::hidden, config_dim::q_rows)},
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
                       .requires_features = feature_fused_on_disk},
    architecture_entry{
        .name = "model.layers.{i}.mlp.gate_up_proj.weight",
        .rule = layout_rule::gate_up,
        .shape = dims(config_dim::gate_up_rows, config_dim::hidden),
        .role = parameter_role::layer,
        .sources = {"model.layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.up_proj.weight"},
        .excludes_features = feature_fused_on_disk,
        .option = option_rule::fuse_gate_up},
    architecture_entry{.name = "model.layers.{i}.mlp.gate_proj.weight",
                       .layout = make_split(0),
                       .shape = dims(config_dim::intermediate, config_dim::hidden),
                       .excludes_features = feature_fused_on_disk,
                       .option = option_rule::separate_gate_up},
    architecture_entry{.name = "model.layers.{i}.mlp.up_proj.weight",
                       .layout = make_split(0),
                       .shape = dims(config_dim::intermediate, config_dim::hidden),
                       .excludes_features = feature_fused_on_disk,
                       .option = option_rule::separate_gate_up},
    detail::decoder_layer_entry("model.layers.{i}.mlp.down_proj.weight", make_split(1),
                                dims(config_dim::hidden, config_dim::intermediate)),
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

// config.json's sizes, defaults applied and checked.
[[nodiscard]] inline decoder_dims resolve_dims(const model_config& c, bool tied_default) {
    auto need = [&](std::uint64_t v, const char* field) {
        if (v == 0)
            throw error(errc::invalid_config, "config.json of model_type '" + c.model_type +
                                                  "' lacks " + field + " (or it is 0)");
        return v;
    };
    decoder_dims d;
    d.layers = need(c.num_hidden_layers, "num_hidden_layers");
    d.hidden = need(c.hidden_size, "hidden_size");
    d.intermediate = need(c.intermediate_size, "intermediate_size");
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
    return d;
}

// The run-time schema of an architecture's table for config.json.
[[nodiscard]] inline schema schema_of(const architecture_table& t, const model_config& c,
                                      const schema_options& o) {
    const decoder_dims d = resolve_dims(c, t.tied_default);
    const std::vector<parameter_spec> specs = specs_of(t, d, layout_options_of(o));
    return expand(specs, d.layers, o);
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
