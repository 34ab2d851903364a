// The decoder-only transformer all built-in architectures are variants of.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "safeshard/core/error.hpp"
#include "safeshard/core/model_config.hpp"
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
};

// config.json's sizes, defaults applied and checked.
struct decoder_dims {
    std::uint64_t layers = 0;
    std::uint64_t hidden = 0;
    std::uint64_t intermediate = 0;
    std::uint64_t heads = 0;
    std::uint64_t kv_heads = 0;
    std::uint64_t head_dim = 0;
    std::uint64_t vocab = 0;
    bool tied = false;
};

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

// The parameter table of a decoder under the options (names as Hugging Face writes them).
[[nodiscard]] inline std::vector<parameter_spec> decoder_specs(const decoder_dims& d,
                                                               const decoder_traits& t,
                                                               const schema_options& o) {
    std::vector<parameter_spec> v;
    auto add = [&](std::string_view name, layout l, parameter_role role = parameter_role::other,
                   std::initializer_list<std::string_view> sources = {}) {
        parameter_spec p;
        p.name = name;
        p.layout = l;
        p.role = role;
        std::size_t i = 0;
        for (auto s : sources) p.sources[i++] = s;
        v.push_back(p);
        return &v.back();
    };
    auto gqa = [&](gqa_part part) {
        return make_gqa_qkv(o.kv, d.heads, d.kv_heads, d.head_dim, part, o.kv_multiplier);
    };
    const layout rep = make_replicated();
    const std::uint64_t gate_up[] = {d.intermediate, d.intermediate};

    add("model.embed_tokens.weight", make_padded_split(0, o.vocab_multiple),
        parameter_role::embedding);
    add("model.layers.{i}.input_layernorm.weight", rep);
    if (t.fused_on_disk) {
        add("model.layers.{i}.self_attn.qkv_proj.weight", gqa(gqa_part::qkv));
    } else if (o.fuse_qkv) {
        add("model.layers.{i}.self_attn.qkv_proj.weight", gqa(gqa_part::qkv), parameter_role::layer,
            {"model.layers.{i}.self_attn.q_proj.weight", "model.layers.{i}.self_attn.k_proj.weight",
             "model.layers.{i}.self_attn.v_proj.weight"});
        if (t.qkv_bias)
            add("model.layers.{i}.self_attn.qkv_proj.bias", gqa(gqa_part::qkv),
                parameter_role::layer,
                {"model.layers.{i}.self_attn.q_proj.bias", "model.layers.{i}.self_attn.k_proj.bias",
                 "model.layers.{i}.self_attn.v_proj.bias"});
    } else {
        add("model.layers.{i}.self_attn.q_proj.weight", gqa(gqa_part::q));
        add("model.layers.{i}.self_attn.k_proj.weight", gqa(gqa_part::k));
        add("model.layers.{i}.self_attn.v_proj.weight", gqa(gqa_part::v));
        if (t.qkv_bias) {
            add("model.layers.{i}.self_attn.q_proj.bias", gqa(gqa_part::q));
            add("model.layers.{i}.self_attn.k_proj.bias", gqa(gqa_part::k));
            add("model.layers.{i}.self_attn.v_proj.bias", gqa(gqa_part::v));
        }
    }
    add("model.layers.{i}.self_attn.o_proj.weight",
        make_gqa_o(o.kv, d.heads, d.kv_heads, d.head_dim, o.kv_multiplier));
    if (t.qk_norm) {
        add("model.layers.{i}.self_attn.q_norm.weight", rep);
        add("model.layers.{i}.self_attn.k_norm.weight", rep);
    }
    add("model.layers.{i}.post_attention_layernorm.weight", rep);
    if (t.sandwich_norms) {
        add("model.layers.{i}.pre_feedforward_layernorm.weight", rep);
        add("model.layers.{i}.post_feedforward_layernorm.weight", rep);
    }
    if (t.fused_on_disk) {
        add("model.layers.{i}.mlp.gate_up_proj.weight", make_fused(0, gate_up, 2));
    } else if (o.fuse_gate_up) {
        add("model.layers.{i}.mlp.gate_up_proj.weight", make_fused(0, gate_up, 2),
            parameter_role::layer,
            {"model.layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.up_proj.weight"});
    } else {
        add("model.layers.{i}.mlp.gate_proj.weight", make_split(0));
        add("model.layers.{i}.mlp.up_proj.weight", make_split(0));
    }
    add("model.layers.{i}.mlp.down_proj.weight", make_split(1));
    add("model.norm.weight", rep, parameter_role::final_norm);
    parameter_spec* head =
        add("lm_head.weight", make_padded_split(0, o.vocab_multiple), parameter_role::lm_head);
    if (d.tied) head->tied_to = "model.embed_tokens.weight";
    return v;
}

[[nodiscard]] inline schema build_decoder(const model_config& c, const schema_options& o,
                                          const decoder_traits& t) {
    const decoder_dims d = resolve_dims(c, t.tied_default);
    const std::vector<parameter_spec> specs = decoder_specs(d, t, o);
    return expand(specs, d.layers, o);
}

}  // namespace safeshard
