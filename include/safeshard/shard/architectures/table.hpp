// An architecture as a constexpr table: each entry names a parameter by a pattern ("{i}" for
// the layer, "{e}" for the expert), says how its layout and its global shape follow from
// config.json's sizes, and when it applies (the architecture's features, the schema options,
// which layers). The run-time schema is generated from the table (schema_of).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "safeshard/core/checked.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/core/model_config.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/shard/layout.hpp"
#include "safeshard/shard/parameter.hpp"
#include "safeshard/shard/schema.hpp"

namespace safeshard {

// config.json's sizes as plain numbers, 0 where config.json does not give one.
struct config_sizes {
    std::uint64_t hidden = 0;
    std::uint64_t intermediate = 0;
    std::uint64_t heads = 0;
    std::uint64_t kv_heads = 0;
    std::uint64_t head_dim = 0;
    std::uint64_t vocab = 0;
};

[[nodiscard]] inline config_sizes sizes_of(const model_config& c) noexcept {
    return {c.hidden_size,         c.intermediate_size, c.num_attention_heads,
            c.num_key_value_heads, c.head_dim,          c.vocab_size};
}

// One dimension of a parameter's global shape, in config.json's terms.
enum class config_dim : std::uint8_t {
    hidden,        // hidden_size
    vocab,         // vocab_size
    intermediate,  // intermediate_size
    q_rows,        // num_attention_heads × head_dim
    kv_rows,       // num_key_value_heads × head_dim
    qkv_rows,      // (num_attention_heads + 2 × num_key_value_heads) × head_dim
    gate_up_rows,  // 2 × intermediate_size
};

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

[[nodiscard]] constexpr implied_dim implied(config_dim d, const config_sizes& c) noexcept {
    implied_dim r{0, fields_of(d), false};
    auto product = [&](std::uint64_t a, std::uint64_t b) {
        if (a && b) r.overflows = mul_overflows(a, b, r.size);
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
    }
    return r;
}

// A parameter's global shape in config.json's terms; rank 0: config.json implies none.
struct config_shape {
    static constexpr std::size_t max_rank = 3;
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
    fixed,    // the entry's layout as it is (replicated, split<d>)
    vocab,    // padded_split<d> to the options' vocabulary multiple
    gqa_qkv,  // gqa_qkv of the entry's part: heads, KV heads, head_dim, KV convention
    gqa_o,    // o_proj's input dim over the same heads
    gate_up,  // fused<0> of two intermediate_size parts
};

// What of the architecture an entry requires or excludes (decoder_traits' flags).
enum feature : std::uint32_t {
    feature_qkv_bias = 1u << 0,
    feature_qk_norm = 1u << 1,
    feature_sandwich_norms = 1u << 2,
    feature_fused_on_disk = 1u << 3,
};

// Which schema options an entry applies under.
enum class option_rule : std::uint8_t {
    always,
    fuse_qkv,          // schema_options::fuse_qkv
    separate_qkv,      // not fuse_qkv
    fuse_gate_up,      // schema_options::fuse_gate_up
    separate_gate_up,  // not fuse_gate_up
};

// Which layers a per-layer entry ("{i}") applies to.
enum class layer_rule : std::uint8_t {
    every,     // every decoder layer
    dense,     // the layers with a dense MLP (see layer_plan::sparse)
    sparse,    // the layers with experts
    trailing,  // extra layers after num_hidden_layers (multi-token prediction modules)
};

// config.json's layer structure: which layers are dense, which have experts, how many extra
// layers follow the decoder's.
struct layer_plan {
    std::uint64_t layers = 0;                          // num_hidden_layers
    std::uint64_t experts = 0;                         // 0: a dense model
    std::uint64_t first_k_dense_replace = 0;           // the first k layers are dense
    std::uint64_t decoder_sparse_step = 1;             // every step-th layer has experts
    std::span<const std::uint64_t> mlp_only_layers{};  // dense whatever the rest says
    std::uint64_t trailing_layers = 0;                 // after num_hidden_layers

    [[nodiscard]] constexpr bool sparse(std::uint64_t layer) const noexcept {
        if (experts == 0 || layer < first_k_dense_replace || layer >= layers) return false;
        for (const std::uint64_t l : mlp_only_layers)
            if (l == layer) return false;
        return decoder_sparse_step <= 1 || (layer + 1) % decoder_sparse_step == 0;
    }
    [[nodiscard]] constexpr bool applies(layer_rule r, std::uint64_t layer) const noexcept {
        switch (r) {
            case layer_rule::every: return layer < layers;
            case layer_rule::dense: return layer < layers && !sparse(layer);
            case layer_rule::sparse: return sparse(layer);
            case layer_rule::trailing: return layer >= layers && layer - layers < trailing_layers;
        }
        return false;
    }
};

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
};

[[nodiscard]] inline layout_options layout_options_of(const schema_options& o) noexcept {
    return {o.kv, o.kv_multiplier, o.vocab_multiple, o.fuse_qkv, o.fuse_gate_up};
}

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

[[nodiscard]] constexpr config_sizes sizes_of(const decoder_dims& d) noexcept {
    return {d.hidden, d.intermediate, d.heads, d.kv_heads, d.head_dim, d.vocab};
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
    }
    return e.layout;
}

// The entry's global shape for these sizes (dimensions config.json does not give are 0);
// nullopt when it implies none or a product overflows.
[[nodiscard]] constexpr std::optional<shape> global_shape(const architecture_entry& e,
                                                          const config_sizes& c) noexcept {
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

    // Whether an entry is one of this architecture's parameters under the options.
    [[nodiscard]] constexpr bool selects(const architecture_entry& e,
                                         const layout_options& o) const noexcept {
        if ((e.requires_features & features) != e.requires_features) return false;
        if ((e.excludes_features & features) != 0) return false;
        switch (e.option) {
            case option_rule::always: return true;
            case option_rule::fuse_qkv: return o.fuse_qkv;
            case option_rule::separate_qkv: return !o.fuse_qkv;
            case option_rule::fuse_gate_up: return o.fuse_gate_up;
            case option_rule::separate_gate_up: return !o.fuse_gate_up;
        }
        return false;
    }

    // The shape config.json implies for a checkpoint tensor (name without the checkpoint
    // prefix): the first entry of the table whose pattern matches, whatever the features and
    // options (a tensor of any variant of the family is checked); empty where it implies none.
    // `generic`: the embeddings and lm_head only.
    [[nodiscard]] std::vector<implied_dim> implied_shape(std::string_view name,
                                                         const config_sizes& c,
                                                         bool generic = false) const {
        for (const auto& e : entries) {
            if (generic && e.role != parameter_role::embedding && e.role != parameter_role::lm_head)
                continue;
            if (!matches(e.name, name)) continue;
            std::vector<implied_dim> v;
            for (std::size_t k = 0; k < e.shape.rank; ++k) v.push_back(implied(e.shape.dims[k], c));
            return v;
        }
        return {};
    }
};

// The parameter table of an architecture for these sizes and options (names are views of the
// table's literals). Layer-dependent and per-expert entries wait for the issues that expand
// them: an architecture using one is refused here.
[[nodiscard]] inline std::vector<parameter_spec> specs_of(const architecture_table& t,
                                                          const decoder_dims& d,
                                                          const layout_options& o) {
    std::vector<parameter_spec> v;
    for (const architecture_entry& e : t.entries) {
        if (!t.selects(e, o)) continue;
        if (e.layers != layer_rule::every || e.per_expert())
            throw error(errc::invalid_argument,
                        "architecture '" + std::string(t.model_type) + "': parameter '" +
                            std::string(e.name) +
                            "' applies to some layers or experts only, which no schema expands "
                            "yet");
        parameter_spec p;
        p.name = e.name;
        p.layout = layout_of(e, d, o);
        p.role = e.role;
        for (std::size_t i = 0; i < max_sources; ++i) p.sources[i] = e.sources[i];
        if (d.tied) p.tied_to = e.tied_to;
        v.push_back(p);
    }
    return v;
}

}  // namespace safeshard
