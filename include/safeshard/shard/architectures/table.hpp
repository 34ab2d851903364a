// An architecture as a constexpr table: each entry names a parameter by a pattern ("{i}" for
// the layer, "{e}" for the expert), says how its layout and its global shape follow from
// config.json's sizes, and when it applies (the architecture's features, the schema options,
// which layers). The run-time schema is generated from the table (schema_of).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "safeshard/core/checked.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/core/model_config.hpp"
#include "safeshard/core/name_hash.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/shard/layout.hpp"
#include "safeshard/shard/parameter.hpp"
#include "safeshard/shard/schema.hpp"

namespace safeshard {

// config.json's sizes as plain numbers (defaults applied by resolve_dims), 0 where config.json
// does not give one.
struct decoder_dims {
    std::uint64_t layers = 0;
    std::uint64_t hidden = 0;
    std::uint64_t intermediate = 0;
    std::uint64_t heads = 0;
    std::uint64_t kv_heads = 0;
    std::uint64_t head_dim = 0;
    std::uint64_t vocab = 0;
    bool tied = false;
    // A mixture of experts.
    std::uint64_t experts = 0;
    std::uint64_t moe_intermediate = 0;     // an expert's intermediate size
    std::uint64_t shared_intermediate = 0;  // the shared expert's (all shared experts fused)
    // Multi-head latent attention.
    std::uint64_t q_lora_rank = 0;  // 0: q_proj, no q_a_proj / q_b_proj
    std::uint64_t kv_lora_rank = 0;
    std::uint64_t qk_nope_head_dim = 0;
    std::uint64_t qk_rope_head_dim = 0;
    std::uint64_t v_head_dim = 0;
    // quantization_config says mxfp4: the experts stored as gpt-oss's MXFP4 blocks and scales.
    bool mxfp4_experts = false;
};

// config.json's numbers as they are (no defaults): the shapes they imply are checked before a
// schema is built.
[[nodiscard]] inline decoder_dims sizes_of(const model_config& c) noexcept {
    decoder_dims d;
    d.layers = c.num_hidden_layers;
    d.hidden = c.hidden_size;
    d.intermediate = c.intermediate_size_mlp ? c.intermediate_size_mlp : c.intermediate_size;
    d.heads = c.num_attention_heads;
    d.kv_heads = c.num_key_value_heads;
    d.head_dim = c.head_dim;
    d.vocab = c.vocab_size;
    d.experts = c.num_experts;
    d.moe_intermediate = c.moe_intermediate_size ? c.moe_intermediate_size : c.intermediate_size;
    d.shared_intermediate = c.shared_expert_intermediate_size;
    if (d.shared_intermediate == 0 && c.n_shared_experts != 0 &&
        mul_overflows(c.n_shared_experts, d.moe_intermediate, d.shared_intermediate))
        d.shared_intermediate = 0;
    d.q_lora_rank = c.q_lora_rank.value_or(0);
    d.kv_lora_rank = c.kv_lora_rank;
    d.qk_nope_head_dim = c.qk_nope_head_dim;
    d.qk_rope_head_dim = c.qk_rope_head_dim;
    d.v_head_dim = c.v_head_dim;
    d.mxfp4_experts = c.quantization && c.quantization->quant_method == "mxfp4";
    return d;
}

// One dimension of a parameter's global shape, in config.json's terms.
enum class config_dim : std::uint8_t {
    hidden,                      // hidden_size
    vocab,                       // vocab_size
    intermediate,                // intermediate_size
    q_rows,                      // num_attention_heads × head_dim
    kv_rows,                     // num_key_value_heads × head_dim
    qkv_rows,                    // (num_attention_heads + 2 × num_key_value_heads) × head_dim
    gate_up_rows,                // 2 × intermediate_size
    experts,                     // the experts (a router's rows)
    attention_heads,             // num_attention_heads (a per-head vector: sinks)
    moe_intermediate,            // an expert's intermediate size
    moe_gate_up_rows,            // 2 × moe_intermediate_size (stacked experts' gate and up)
    shared_intermediate,         // the shared expert's
    one,                         // 1 (a gate of one output)
    q_lora,                      // q_lora_rank
    kv_lora,                     // kv_lora_rank
    kv_a_rows,                   // kv_lora_rank + qk_rope_head_dim
    mla_q_rows,                  // num_attention_heads × (qk_nope_head_dim + qk_rope_head_dim)
    mla_kv_b_rows,               // num_attention_heads × (qk_nope_head_dim + v_head_dim)
    mla_o_cols,                  // num_attention_heads × v_head_dim
    hidden_mx_blocks,            // hidden_size / 32: MXFP4 blocks along a row of hidden_size values
    moe_intermediate_mx_blocks,  // moe_intermediate_size / 32
    mx_block_bytes,              // 16: one MXFP4 block's 32 E2M1 values, two a byte
};

// MXFP4 (OCP microscaling FP4): 32 E2M1 values share one E8M0 scale, stored 16 bytes a block.
inline constexpr std::uint64_t mxfp4_block = 32;
inline constexpr std::uint64_t mxfp4_block_bytes = mxfp4_block / 2;

// The config.json fields a dimension follows from, as a message names them.
[[nodiscard]] constexpr std::string_view fields_of(config_dim d) noexcept {
    switch (d) {
        case config_dim::hidden: return "hidden_size";
        case config_dim::vocab: return "vocab_size";
        case config_dim::intermediate: return "intermediate_size";
        case config_dim::q_rows: return "num_attention_heads × head_dim";
        case config_dim::kv_rows: return "num_key_value_heads × head_dim";
        case config_dim::qkv_rows:
            return "(num_attention_heads + 2 × num_key_value_heads) × head_dim";
        case config_dim::gate_up_rows: return "2 × intermediate_size";
        case config_dim::experts: return "num_experts";
        case config_dim::attention_heads: return "num_attention_heads";
        case config_dim::moe_intermediate: return "moe_intermediate_size";
        case config_dim::moe_gate_up_rows: return "2 × moe_intermediate_size";
        case config_dim::shared_intermediate:
            return "shared_expert_intermediate_size (n_shared_experts × moe_intermediate_size)";
        case config_dim::one: return "1";
        case config_dim::q_lora: return "q_lora_rank";
        case config_dim::kv_lora: return "kv_lora_rank";
        case config_dim::kv_a_rows: return "kv_lora_rank + qk_rope_head_dim";
        case config_dim::mla_q_rows:
            return "num_attention_heads × (qk_nope_head_dim + qk_rope_head_dim)";
        case config_dim::mla_kv_b_rows:
            return "num_attention_heads × (qk_nope_head_dim + v_head_dim)";
        case config_dim::mla_o_cols: return "num_attention_heads × v_head_dim";
        case config_dim::hidden_mx_blocks: return "hidden_size / 32";
        case config_dim::moe_intermediate_mx_blocks: return "moe_intermediate_size / 32";
        case config_dim::mx_block_bytes: return "16 (an MXFP4 block's bytes)";
    }
    return "?";
}

// One dimension config.json implies: a size, or "overflows" (a product beyond 64 bits); 0 is
// a size config.json does not give (that dimension is not compared).
struct implied_dim {
    std::uint64_t size = 0;
    std::string_view fields;
    bool overflows = false;

    friend constexpr bool operator==(const implied_dim&, const implied_dim&) = default;
};

[[nodiscard]] constexpr implied_dim implied(config_dim d, const decoder_dims& c) noexcept {
    implied_dim r{0, fields_of(d), false};
    auto product = [&](std::uint64_t a, std::uint64_t b) {
        if (a && b) r.overflows = mul_overflows(a, b, r.size);
    };
    auto sum = [&](std::uint64_t a, std::uint64_t b) {
        if (a && b) r.overflows = add_overflows(a, b, r.size);
    };
    auto ceil_blocks = [](std::uint64_t n) {
        return n / mxfp4_block + (n % mxfp4_block != 0 ? 1 : 0);
    };
    auto heads_times_sum = [&](std::uint64_t a, std::uint64_t b) {
        std::uint64_t per = 0;
        if (c.heads && a && b)
            r.overflows = add_overflows(a, b, per) || mul_overflows(c.heads, per, r.size);
    };
    switch (d) {
        case config_dim::hidden: r.size = c.hidden; break;
        case config_dim::vocab: r.size = c.vocab; break;
        case config_dim::intermediate: r.size = c.intermediate; break;
        case config_dim::q_rows: product(c.heads, c.head_dim); break;
        case config_dim::kv_rows: product(c.kv_heads, c.head_dim); break;
        case config_dim::qkv_rows: {
            std::uint64_t kv2 = 0;
            if (c.heads && c.kv_heads && c.head_dim)
                r.overflows = mul_overflows(c.kv_heads, std::uint64_t{2}, kv2) ||
                              add_overflows(kv2, c.heads, kv2) ||
                              mul_overflows(kv2, c.head_dim, r.size);
            break;
        }
        case config_dim::gate_up_rows: product(c.intermediate, 2); break;
        case config_dim::experts: r.size = c.experts; break;
        case config_dim::attention_heads: r.size = c.heads; break;
        case config_dim::moe_intermediate: r.size = c.moe_intermediate; break;
        case config_dim::moe_gate_up_rows: product(c.moe_intermediate, 2); break;
        case config_dim::shared_intermediate: r.size = c.shared_intermediate; break;
        case config_dim::one: r.size = 1; break;
        case config_dim::q_lora: r.size = c.q_lora_rank; break;
        case config_dim::kv_lora: r.size = c.kv_lora_rank; break;
        case config_dim::kv_a_rows: sum(c.kv_lora_rank, c.qk_rope_head_dim); break;
        case config_dim::mla_q_rows: heads_times_sum(c.qk_nope_head_dim, c.qk_rope_head_dim); break;
        case config_dim::mla_kv_b_rows: heads_times_sum(c.qk_nope_head_dim, c.v_head_dim); break;
        case config_dim::mla_o_cols: product(c.heads, c.v_head_dim); break;
        case config_dim::hidden_mx_blocks: r.size = ceil_blocks(c.hidden); break;
        case config_dim::moe_intermediate_mx_blocks:
            r.size = ceil_blocks(c.moe_intermediate);
            break;
        case config_dim::mx_block_bytes: r.size = mxfp4_block_bytes; break;
    }
    return r;
}

// A parameter's global shape in config.json's terms; rank 0: config.json implies none.
struct config_shape {
    static constexpr std::size_t max_rank = 4;
    std::uint8_t rank = 0;
    config_dim dims[max_rank] = {};

    friend constexpr bool operator==(const config_shape&, const config_shape&) = default;
};

template <class... Dims>
[[nodiscard]] constexpr config_shape dims(Dims... d) noexcept {
    static_assert(sizeof...(Dims) <= config_shape::max_rank);
    return config_shape{static_cast<std::uint8_t>(sizeof...(Dims)), {d...}};
}

// How an entry's layout follows from the sizes and the options; the entry's layout value is
// the template (its kind, dim, gqa part) the sizes complete.
enum class layout_rule : std::uint8_t {
    fixed,           // the entry's layout as it is (replicated, split<d>)
    vocab,           // padded_split<d> to the options' vocabulary multiple
    gqa_qkv,         // gqa_qkv of the entry's part: heads, KV heads, head_dim, KV convention
    gqa_o,           // o_proj's input dim over the same heads
    gate_up,         // fused<0> of two intermediate_size parts
    expert_gate_up,  // fused<d> of two moe_intermediate_size parts (an expert's gate, up)
    heads,           // split<d> in whole attention heads: a unit of extent(d) / num_attention_heads
};

// What of the architecture an entry requires or excludes (decoder_traits' flags).
enum feature : std::uint32_t {
    feature_qkv_bias = 1u << 0,
    feature_qk_norm = 1u << 1,
    feature_sandwich_norms = 1u << 2,
    feature_fused_on_disk = 1u << 3,
    feature_experts = 1u << 4,           // mlp.gate and mlp.experts.{e}.{gate,up,down}_proj
    feature_mixtral_experts = 1u << 5,   // block_sparse_moe.gate and .experts.{e}.w1/w3/w2
    feature_shared_expert = 1u << 6,     // qwen2_moe: mlp.shared_expert.*, shared_expert_gate
    feature_shared_experts = 1u << 7,    // deepseek: mlp.shared_experts.*
    feature_score_correction = 1u << 8,  // deepseek_v3: mlp.gate.e_score_correction_bias
    feature_latent_attention = 1u << 9,  // deepseek: MLA instead of q/k/v/o
    feature_q_lora = 1u << 10,           // config.json: q_lora_rank given (q_a_proj, q_b_proj)
    feature_multi_token_prediction = 1u << 11,  // deepseek: enorm, hnorm, eh_proj, shared_head
    feature_gpt_oss_experts = 1u << 12,         // gpt_oss: mlp.router, stacked experts with biases
    feature_feed_forward = 1u << 13,            // llama4: feed_forward.* (router, stacked experts,
                                                // shared_expert; dense layers' MLP)
    feature_attention_sinks = 1u << 14,         // gpt_oss: self_attn.sinks, o_proj.bias
    feature_mxfp4_experts = 1u << 15,  // config.json: quant_method mxfp4 (*_blocks, *_scales)
};

// The features config.json switches on beside the table's: feature_q_lora,
// feature_mxfp4_experts.
[[nodiscard]] constexpr std::uint32_t config_features(const decoder_dims& d) noexcept {
    return (d.q_lora_rank != 0 ? feature_q_lora : 0u) |
           (d.mxfp4_experts ? feature_mxfp4_experts : 0u);
}

// Which schema options an entry applies under.
enum class option_rule : std::uint8_t {
    always,
    fuse_qkv,            // schema_options::fuse_qkv
    separate_qkv,        // not fuse_qkv
    fuse_gate_up,        // schema_options::fuse_gate_up
    separate_gate_up,    // not fuse_gate_up
    experts_per_tensor,  // the checkpoint stores one tensor per expert
    experts_stacked,     // ... the layer's experts stacked in one tensor per projection
};

// Whether an entry of the experts' projections applies as the checkpoint stores them, as the
// engine's fused experts (schema_options::fuse_experts), or either way (a router).
enum class fusion_rule : std::uint8_t { any, as_stored, fused };

// The features whose experts would need a transpose to reach the fused experts' layout
// (gpt-oss's and Llama-4's gate_up_proj [E, H, 2I], down_proj [E, I, H]): fuse_experts refused.
inline constexpr std::uint32_t transposed_expert_features =
    feature_gpt_oss_experts | feature_feed_forward;

// One entry of an architecture's table.
struct architecture_entry {
    std::string_view name{};  // "model.layers.{i}.self_attn.q_proj.weight"
    layout_rule rule = layout_rule::fixed;
    safeshard::layout layout{};  // the template the rule completes
    config_shape shape{};        // rank 0: config.json implies no shape
    parameter_role role = parameter_role::other;
    std::string_view sources[max_sources] = {};  // none: the entry's own name
    std::string_view tied_to{};                  // when the model ties its embeddings
    std::uint32_t requires_features = 0;
    std::uint32_t excludes_features = 0;
    option_rule option = option_rule::always;
    layer_rule layers = layer_rule::every;
    bool stacked_experts = false;  // parameter_spec::stacked_experts
    fusion_rule fusion = fusion_rule::any;

    [[nodiscard]] constexpr bool per_layer() const noexcept {
        return name.find("{i}") != std::string_view::npos;
    }
    [[nodiscard]] constexpr bool per_expert() const noexcept {
        return name.find("{e}") != std::string_view::npos;
    }
};

// The options a layout depends on (schema_options' numbers).
struct layout_options {
    kv_convention kv = kv_contiguous;
    std::uint64_t kv_multiplier = 0;
    std::uint64_t vocab_multiple = default_vocab_multiple;
    bool fuse_qkv = false;
    bool fuse_gate_up = false;
    bool stacked_experts = false;
    bool fuse_experts = false;
};

[[nodiscard]] inline layout_options layout_options_of(const schema_options& o) noexcept {
    return {
        o.kv,          o.kv_multiplier, o.vocab_multiple,
        o.fuse_qkv,    o.fuse_gate_up,  o.experts_stored == schema_options::expert_storage::stacked,
        o.fuse_experts};
}

// The entry's layout for these sizes and options.
[[nodiscard]] constexpr layout layout_of(const architecture_entry& e, const decoder_dims& d,
                                         const layout_options& o) noexcept {
    switch (e.rule) {
        case layout_rule::fixed: return e.layout;
        case layout_rule::vocab: return make_padded_split(e.layout.dim, o.vocab_multiple);
        case layout_rule::gqa_qkv:
            return make_gqa_qkv(o.kv, d.heads, d.kv_heads, d.head_dim, e.layout.part,
                                o.kv_multiplier);
        case layout_rule::gqa_o:
            return make_gqa_o(o.kv, d.heads, d.kv_heads, d.head_dim, o.kv_multiplier);
        case layout_rule::gate_up: {
            const std::uint64_t parts[] = {d.intermediate, d.intermediate};
            return make_fused(0, parts, 2);
        }
        case layout_rule::expert_gate_up: {
            const std::uint64_t parts[] = {d.moe_intermediate, d.moe_intermediate};
            return make_fused(e.layout.dim, parts, 2);
        }
        case layout_rule::heads: {
            const std::uint64_t extent =
                e.layout.dim < e.shape.rank ? implied(e.shape.dims[e.layout.dim], d).size : 0;
            return make_split(e.layout.dim,
                              d.heads && extent % d.heads == 0 ? extent / d.heads : 0);
        }
    }
    return e.layout;
}

// The entry's global shape for these sizes (dimensions config.json does not give are 0);
// nullopt when it implies none or a product overflows.
[[nodiscard]] constexpr std::optional<shape> global_shape(const architecture_entry& e,
                                                          const decoder_dims& c) noexcept {
    if (e.shape.rank == 0) return std::nullopt;
    shape s;
    for (std::size_t k = 0; k < e.shape.rank; ++k) {
        const implied_dim d = implied(e.shape.dims[k], c);
        if (d.overflows || !s.try_push_back(d.size)) return std::nullopt;
    }
    return s;
}

// A name against an entry's pattern: "{i}" and "{e}" each stand for a run of digits.
[[nodiscard]] constexpr bool matches(std::string_view pattern, std::string_view name) noexcept {
    while (!pattern.empty()) {
        if (pattern.starts_with("{i}") || pattern.starts_with("{e}")) {
            std::size_t n = 0;
            while (n < name.size() && name[n] >= '0' && name[n] <= '9') ++n;
            if (n == 0) return false;
            pattern.remove_prefix(3);
            name.remove_prefix(n);
        } else {
            if (name.empty() || name.front() != pattern.front()) return false;
            pattern.remove_prefix(1);
            name.remove_prefix(1);
        }
    }
    return name.empty();
}

// A model family: its table and what its members switch on.
struct architecture_table {
    std::string_view model_type{};
    std::span<const architecture_entry> entries{};
    std::uint32_t features = 0;
    bool tied_default = false;  // tie_word_embeddings when config.json does not say

    [[nodiscard]] constexpr const architecture_entry* find(
        std::string_view pattern) const noexcept {
        for (const auto& e : entries)
            if (e.name == pattern) return &e;
        return nullptr;
    }

    // Whether an entry is one of this architecture's parameters under the options, with the
    // features config.json switches on (`more`: feature_q_lora) beside the table's own.
    [[nodiscard]] constexpr bool selects(const architecture_entry& e, const layout_options& o,
                                         std::uint32_t more = 0) const noexcept {
        const std::uint32_t have = features | more;
        if ((e.requires_features & have) != e.requires_features) return false;
        if ((e.excludes_features & have) != 0) return false;
        if (e.fusion != fusion_rule::any && (e.fusion == fusion_rule::fused) != o.fuse_experts)
            return false;
        switch (e.option) {
            case option_rule::always: return true;
            case option_rule::fuse_qkv: return o.fuse_qkv;
            case option_rule::separate_qkv: return !o.fuse_qkv;
            case option_rule::fuse_gate_up: return o.fuse_gate_up;
            case option_rule::separate_gate_up: return !o.fuse_gate_up;
            case option_rule::experts_per_tensor: return !o.stacked_experts;
            case option_rule::experts_stacked: return o.stacked_experts;
        }
        return false;
    }

    // The shape config.json implies for a checkpoint tensor (name without the checkpoint
    // prefix): the first entry whose pattern matches among those the table's features (and
    // config.json's, see config_features) select, else among all (a tensor of any variant of
    // the family is checked); empty where it implies none. `generic`: the embeddings and
    // lm_head only.
    [[nodiscard]] std::vector<implied_dim> implied_shape(std::string_view name,
                                                         const decoder_dims& c,
                                                         bool generic = false) const {
        const std::uint32_t have = features | config_features(c);
        const architecture_entry* found = nullptr;
        for (const auto& e : entries) {
            if (generic && e.role != parameter_role::embedding && e.role != parameter_role::lm_head)
                continue;
            if (!matches(e.name, name)) continue;
            const bool own = (e.requires_features & have) == e.requires_features &&
                             (e.excludes_features & have) == 0;
            if (own) {
                found = &e;
                break;
            }
            if (found == nullptr) found = &e;
        }
        if (found == nullptr) return {};
        std::vector<implied_dim> v;
        for (std::size_t k = 0; k < found->shape.rank; ++k)
            v.push_back(implied(found->shape.dims[k], c));
        return v;
    }
};

// The shapes config.json implies, found by name in one look-up: a name's whole dot-separated
// digit runs read as one placeholder, as the entries' "{i}" and "{e}" do. Chooses the entry
// implied_shape chooses (the table's own variant first); check_config asks it once per tensor.
class implied_shape_index {
public:
    implied_shape_index(const architecture_table& t, const decoder_dims& c, bool generic = false) {
        const std::uint32_t have = t.features | config_features(c);
        std::unordered_map<std::string, bool> own_of;
        for (const auto& e : t.entries) {
            if (generic && e.role != parameter_role::embedding && e.role != parameter_role::lm_head)
                continue;
            const bool own = (e.requires_features & have) == e.requires_features &&
                             (e.excludes_features & have) == 0;
            const std::string key = normalized(e.name, true);
            const auto [it, fresh] = own_of.try_emplace(key, own);
            if (!fresh && (it->second || !own)) continue;  // an earlier entry wins
            it->second = own;
            std::vector<implied_dim> v;
            for (std::size_t k = 0; k < e.shape.rank; ++k) v.push_back(implied(e.shape.dims[k], c));
            by_pattern_[key] = std::move(v);
        }
    }

    // The implied dimensions (empty: none implied), or nullptr for a name no entry matches.
    [[nodiscard]] const std::vector<implied_dim>* find(std::string_view name) const {
        key_ = normalized(name, false);
        const auto it = by_pattern_.find(key_);
        return it == by_pattern_.end() ? nullptr : &it->second;
    }

private:
    // Each dot-separated part that is all digits (a name) or "{i}" / "{e}" (a pattern) as "{}".
    static std::string normalized(std::string_view s, bool pattern) {
        std::string out;
        out.reserve(s.size());
        while (true) {
            const std::size_t dot = s.find('.');
            const std::string_view part = s.substr(0, dot);
            const bool index = pattern ? (part == "{i}" || part == "{e}")
                                       : !part.empty() && part.find_first_not_of("0123456789") ==
                                                              std::string_view::npos;
            out += index ? std::string_view("{}") : part;
            if (dot == std::string_view::npos) break;
            out += '.';
            s.remove_prefix(dot + 1);
        }
        return out;
    }

    std::unordered_map<std::string, std::vector<implied_dim>, detail::name_hash, std::equal_to<>>
        by_pattern_{};
    mutable std::string key_{};
};

// The parameter table of an architecture for these sizes and options (names are views of the
// table's literals; "{i}" and "{e}" left for the schema's expansion).
[[nodiscard]] inline std::vector<parameter_spec> specs_of(const architecture_table& t,
                                                          const decoder_dims& d,
                                                          const layout_options& o) {
    std::vector<parameter_spec> v;
    for (const architecture_entry& e : t.entries) {
        if (!t.selects(e, o, config_features(d))) continue;
        parameter_spec p;
        p.name = e.name;
        p.layout = layout_of(e, d, o);
        p.role = e.role;
        p.layers = e.layers;
        p.stacked_experts = e.stacked_experts;
        for (std::size_t i = 0; i < max_sources; ++i) p.sources[i] = e.sources[i];
        if (d.tied) p.tied_to = e.tied_to;
        v.push_back(p);
    }
    return v;
}

}  // namespace safeshard
