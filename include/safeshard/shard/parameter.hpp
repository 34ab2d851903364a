// parameter_meta: what one parameter is made of and how it is cut (optimum's ParameterMeta).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "safeshard/core/dtype.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/shard/init.hpp"
#include "safeshard/shard/layer_plan.hpp"
#include "safeshard/shard/layout.hpp"
#include "safeshard/shard/slice.hpp"

namespace safeshard {

// Where a parameter sits in the model, for pipeline stages (which load layers [a, b) and,
// by flags, the embeddings, the final norm and lm_head).
enum class parameter_role : std::uint8_t { layer, embedding, final_norm, lm_head, other };

[[nodiscard]] constexpr std::string_view to_string(parameter_role r) noexcept {
    switch (r) {
        case parameter_role::layer: return "layer";
        case parameter_role::embedding: return "embedding";
        case parameter_role::final_norm: return "final_norm";
        case parameter_role::lm_head: return "lm_head";
        case parameter_role::other: return "other";
    }
    return "?";
}

// The compile-time form, an entry of a schema table: names are views of literals, and
// "{i}" in a name (and in its sources) stands for the layer index. A table of these is a
// constant expression.
struct parameter_spec {
    std::string_view name{};
    safeshard::layout layout{};
    std::string_view sources[max_sources] = {};  // none given: the parameter's own name
    std::string_view tied_to{};                  // a parameter whose tensor this one shares
    init_spec init{};                            // created instead of loaded
    std::optional<dtype> dtype_override{};
    parameter_role role = parameter_role::other;  // "{i}" in the name makes it a layer
    layer_rule layers = layer_rule::every;        // which layers a "{i}" entry applies to
    // The layer's experts stacked on dim 0 of every source (transformers v5's
    // mlp.experts.gate_up_proj [E, 2I, H]): `layout` cuts each expert's slab (the source
    // without dim 0), and the rank's tensor stacks its experts' slabs in expert order.
    bool stacked_experts = false;

    // Sources named (0 means "its own name").
    [[nodiscard]] constexpr std::size_t source_count() const noexcept {
        std::size_t n = 0;
        while (n < max_sources && !sources[n].empty()) ++n;
        return n;
    }
    [[nodiscard]] constexpr bool per_layer() const noexcept {
        return name.find("{i}") != std::string_view::npos;
    }
    // "{e}" in the name (and its sources): one parameter per expert of the layer.
    [[nodiscard]] constexpr bool per_expert() const noexcept {
        return name.find("{e}") != std::string_view::npos;
    }
    // "{e}" in the sources only: stacked experts gathered from one tensor per expert (the
    // engine's fused experts, mlp.experts.w13_weight from mlp.experts.{e}.gate_proj.weight and
    // .up_proj.weight).
    [[nodiscard]] constexpr bool gathers_experts() const noexcept {
        if (per_expert()) return false;
        for (std::size_t i = 0; i < source_count(); ++i)
            if (sources[i].find("{e}") != std::string_view::npos) return true;
        return false;
    }
};

// The name of expert e's tensor from a name with "{e}" for the expert.
[[nodiscard]] inline std::string expert_source_name(std::string_view templ, std::uint64_t e) {
    std::string s(templ);
    const std::string idx = std::to_string(e);
    for (std::size_t pos = s.find("{e}"); pos != std::string::npos; pos = s.find("{e}", pos))
        s.replace(pos, 3, idx);
    return s;
}

// The run-time form: one per parameter of a built schema, names expanded and mapped.
struct parameter_meta {
    std::string name;  // the parameter's (Hugging Face) name
    safeshard::layout layout{};
    std::vector<std::string> sources{};  // checkpoint names, in the layout's source order
    std::string tied_to{};               // non-empty: shares that parameter's tensor
    init_spec init{};                    // kind != none: created, not loaded
    std::optional<dtype> dtype_override{};
    parameter_role role = parameter_role::other;
    std::optional<std::uint64_t> layer{};
    std::optional<std::uint64_t> expert{};  // an expert's parameter: which expert of its layer
    bool stacked_experts = false;           // parameter_spec::stacked_experts
    // Stacked experts gathered from one tensor per expert: the sources' names with "{e}" for
    // the expert (the layout's sources); `sources` holds them for each expert, expert-major.
    std::vector<std::string> expert_sources{};

    [[nodiscard]] bool gathers_experts() const noexcept { return !expert_sources.empty(); }
    // The sources the layout cuts: an expert's when gathered, else all of them.
    [[nodiscard]] std::size_t layout_source_count() const noexcept {
        return gathers_experts() ? expert_sources.size() : sources.size();
    }
    [[nodiscard]] bool tied() const noexcept { return !tied_to.empty(); }
    [[nodiscard]] bool created() const noexcept { return init.kind != init_kind::none; }
    [[nodiscard]] bool loaded() const noexcept { return !tied() && !created(); }

    friend bool operator==(const parameter_meta&, const parameter_meta&) = default;
};

// "model.layers.0.self_attn.q_proj.weight: gqa_qkv<kv_contiguous> H=32 KV=8 d=128 part=q
// <- [model.layers.0.self_attn.q_proj.weight]"
[[nodiscard]] inline std::string to_string(const parameter_meta& p) {
    std::string s =
        p.name + ": " + (p.stacked_experts ? "stacked experts, each " : "") + to_string(p.layout);
    if (p.tied()) s += " tied to " + p.tied_to;
    if (p.created()) s += " init " + std::string(to_string(p.init.kind));
    const std::vector<std::string>& named = p.gathers_experts() ? p.expert_sources : p.sources;
    if (!named.empty()) {
        s += " <- [";
        for (std::size_t i = 0; i < named.size(); ++i) s += (i ? ", " : "") + named[i];
        s += "]";
    }
    if (p.dtype_override) s += " as " + std::string(name(*p.dtype_override));
    return s;
}

inline std::ostream& operator<<(std::ostream& os, const parameter_meta& p) {
    return os << to_string(p);
}

// The host boundary for one parameter: its sources' shapes (in the order of `sources`; for
// a created parameter, its global shape) -> local shape and slice map, or an error naming it.
[[nodiscard]] inline slice_result slice_parameter(const parameter_meta& p,
                                                  std::span<const shape> source_shapes,
                                                  std::uint32_t world, std::uint32_t rank) {
    if (!p.sources.empty() && source_shapes.size() != p.layout_source_count())
        throw error(errc::shape_mismatch,
                    "parameter '" + p.name + "' has " + std::to_string(p.layout_source_count()) +
                        " sources but " + std::to_string(source_shapes.size()) +
                        " shapes were given",
                    error_context{.file = {}, .tensor = p.name});
    return slice_or_throw(p.name, p.layout, source_shapes, world, rank);
}

}  // namespace safeshard
