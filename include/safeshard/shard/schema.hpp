// A schema: the table of a model's parameters, built at compile time or at run time.
#pragma once

#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "safeshard/core/checked.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/core/name_hash.hpp"
#include "safeshard/shard/layout.hpp"
#include "safeshard/shard/parameter.hpp"

namespace safeshard {

// Glob with '*' for any run of characters (no other metacharacters).
[[nodiscard]] constexpr bool glob_match(std::string_view pattern, std::string_view s) noexcept {
    std::size_t p = 0, i = 0, star = std::string_view::npos, mark = 0;
    while (i < s.size()) {
        if (p < pattern.size() && pattern[p] == '*') {
            star = p++;
            mark = i;
        } else if (p < pattern.size() && pattern[p] == s[i]) {
            ++p;
            ++i;
        } else if (star != std::string_view::npos) {
            p = star + 1;
            i = ++mark;
        } else {
            return false;
        }
    }
    while (p < pattern.size() && pattern[p] == '*') ++p;
    return p == pattern.size();
}

// Checkpoint names vs the schema's names: a checkpoint may carry a prefix the schema does
// not ("language_model." in a multimodal checkpoint), or the schema one the checkpoint
// does not.
struct name_map {
    std::string checkpoint_prefix{};  // on checkpoint names only
    std::string schema_prefix{};      // on schema names only

    [[nodiscard]] std::string to_checkpoint(std::string_view schema_name) const {
        if (schema_name.starts_with(schema_prefix)) schema_name.remove_prefix(schema_prefix.size());
        return checkpoint_prefix + std::string(schema_name);
    }
    // nullopt for a checkpoint name without the checkpoint prefix (not this model's).
    [[nodiscard]] std::optional<std::string> from_checkpoint(std::string_view ckpt) const {
        if (!ckpt.starts_with(checkpoint_prefix)) return std::nullopt;
        ckpt.remove_prefix(checkpoint_prefix.size());
        return schema_prefix + std::string(ckpt);
    }
    friend bool operator==(const name_map&, const name_map&) = default;
};

// A checkpoint tensor that is accepted and not loaded, and the note the report gives.
struct ignore_rule {
    std::string pattern;  // glob over checkpoint names
    std::string note;
    // Left out on request (the multi-token prediction layers unless asked for): an export
    // leaves these out too, where it passes other ignored tensors through.
    bool left_out = false;
};

struct schema_options {
    bool fuse_qkv = false;      // q/k/v -> one `qkv_proj` parameter ([q_r; k_r; v_r])
    bool fuse_gate_up = false;  // gate/up -> one `gate_up_proj` parameter ([gate_r; up_r])
    kv_convention kv = kv_contiguous;
    std::uint64_t kv_multiplier = 0;  // interleaved only; 0 = max(1, world / KV)
    std::uint64_t vocab_multiple = default_vocab_multiple;
    name_map names{};
    // A pipeline stage: layers [layer_begin, layer_end) (end: all), and the flags.
    std::uint64_t layer_begin = 0;
    std::optional<std::uint64_t> layer_end{};
    bool embeddings = true;
    bool final_norm = true;
    bool lm_head = true;
    // Checkpoint names to ignore, besides the legacy "*rotary_emb.inv_freq" buffers.
    std::vector<std::string> ignore{};
    // The multi-token prediction layers after num_hidden_layers (DeepSeek-V3's layer 61): loaded
    // when set (by the last pipeline stage), else ignored with a note.
    bool multi_token_prediction = false;
    // How the checkpoint stores a layer's experts: one tensor per expert
    // (mlp.experts.{e}.gate_proj.weight, ...), or stacked on dim 0 in one tensor per projection
    // (transformers v5's mlp.experts.gate_up_proj [E, 2I, H] and mlp.experts.down_proj
    // [E, H, I]). `detect`: stacked when the checkpoint holds such a tensor (load and plan look;
    // a schema made from config.json alone takes one tensor per expert).
    enum class expert_storage : std::uint8_t { detect, per_expert, stacked };
    expert_storage experts_stored = expert_storage::detect;
    // The engine's fused experts (vLLM's FusedMoE): per layer with experts, one
    // `<experts>.w13_weight` [E, 2I, H] (each expert's gate rows, then its up rows) and one
    // `<experts>.w2_weight` [E, H, I], filled from the per-expert or stacked tensors by the
    // copy. An architecture that would need a transpose for it (gpt-oss, Llama-4) refuses it.
    bool fuse_experts = false;
};

class schema {
public:
    schema() = default;

    // Adds a parameter; duplicate_name when one of that name exists.
    void add(parameter_meta p) {
        if (p.layout_source_count() > max_sources)
            throw error(errc::invalid_argument,
                        "parameter '" + p.name + "' has " +
                            std::to_string(p.layout_source_count()) + " sources" +
                            (p.gathers_experts() ? " per expert" : "") + "; at most " +
                            std::to_string(max_sources),
                        error_context{.file = {}, .tensor = p.name});
        make_room(params_.size() + 1, sources_.size() + p.sources.size());
        const auto at = static_cast<std::uint32_t>(params_.size());
        if (index_.insert(p.name, at, param_name()))  // the position of the one already there
            throw error(errc::duplicate_name, "the schema already has a parameter '" + p.name + "'",
                        error_context{.file = {}, .tensor = p.name});
        params_.push_back(std::move(p));
        for (std::uint32_t k = 0; k < params_.back().sources.size(); ++k) {
            sources_.push_back({at, k});
            // The first parameter to name a source keeps it.
            (void)by_source_.insert(params_.back().sources[k],
                                    static_cast<std::uint32_t>(sources_.size() - 1), source_name());
        }
    }

    // Room for n parameters (and as many sources) without rebuilding the indexes.
    void reserve(std::size_t n) {
        params_.reserve(n);
        sources_.reserve(n);
        make_room(n, n);
    }

    void ignore(std::string pattern, std::string note, bool left_out = false) {
        ignore_.push_back(ignore_rule{std::move(pattern), std::move(note), left_out});
    }

    // Checkpoint names that belong to parameters outside this pipeline stage.
    void skip(std::string checkpoint_name) { skipped_.insert(std::move(checkpoint_name)); }
    [[nodiscard]] const auto& skipped() const noexcept { return skipped_; }

    void note(std::string text) { notes_.push_back(std::move(text)); }

    [[nodiscard]] std::span<const parameter_meta> parameters() const noexcept { return params_; }
    [[nodiscard]] std::size_t size() const noexcept { return params_.size(); }
    [[nodiscard]] bool empty() const noexcept { return params_.empty(); }

    [[nodiscard]] const parameter_meta* find(std::string_view name) const {
        const auto at = index_.find(name, param_name());
        return at ? &params_[*at] : nullptr;
    }
    // tensor_not_found when absent.
    [[nodiscard]] const parameter_meta& at(std::string_view name) const {
        if (const auto* p = find(name)) return *p;
        throw error(errc::tensor_not_found,
                    "the schema has no parameter '" + std::string(name) + "'",
                    error_context{.file = {}, .tensor = std::string(name)});
    }
    // The parameter that reads this checkpoint tensor, if any.
    [[nodiscard]] const parameter_meta* find_by_source(std::string_view checkpoint_name) const {
        const auto at = by_source_.find(checkpoint_name, source_name());
        return at ? &params_[sources_[*at].param] : nullptr;
    }

    // Why a checkpoint tensor that no parameter reads is fine, and whether it is left out on
    // request (ignore_rule::left_out), or nullopt (unexpected).
    struct ignore_reason {
        std::string_view note;
        bool left_out = false;
    };
    [[nodiscard]] std::optional<ignore_reason> ignore_reason_of(
        std::string_view checkpoint_name) const {
        if (skipped_.contains(checkpoint_name)) return ignore_reason{"outside this pipeline stage"};
        for (const auto& r : ignore_)
            if (glob_match(r.pattern, checkpoint_name)) return ignore_reason{r.note, r.left_out};
        return std::nullopt;
    }
    [[nodiscard]] std::optional<std::string_view> ignored(std::string_view checkpoint_name) const {
        const auto r = ignore_reason_of(checkpoint_name);
        return r ? std::optional(r->note) : std::nullopt;
    }
    [[nodiscard]] std::span<const ignore_rule> ignore_rules() const noexcept { return ignore_; }
    [[nodiscard]] std::span<const std::string> notes() const noexcept { return notes_; }

    // replicate_all: checkpoint tensors no parameter names become replicated parameters.
    [[nodiscard]] const std::optional<safeshard::layout>& fallback() const noexcept {
        return fallback_;
    }
    void set_fallback(std::optional<safeshard::layout> l) { fallback_ = l; }

    [[nodiscard]] const name_map& names() const noexcept { return names_; }
    void set_names(name_map m) { names_ = std::move(m); }

    // The experts of each layer that has them (0: a dense model); parameters with `expert`
    // set name one of [0, experts()).
    [[nodiscard]] std::uint64_t experts() const noexcept { return experts_; }
    void set_experts(std::uint64_t n) noexcept { experts_ = n; }

    // Every checkpoint tensor is a replicated parameter of its own name.
    [[nodiscard]] static schema replicate_all(name_map names = {}) {
        schema s;
        s.set_fallback(make_replicated());
        s.set_names(std::move(names));
        return s;
    }

    // Consistency: tied_to names a loaded parameter; loaded parameters have sources; an
    // expert's parameter names one of the schema's experts.
    void validate() const {
        for (const auto& p : params_) {
            const error_context ctx{.file = {}, .tensor = p.name};
            if (p.tied()) {
                const auto* t = find(p.tied_to);
                if (!t)
                    throw error(errc::invalid_argument,
                                "parameter '" + p.name + "' is tied to '" + p.tied_to +
                                    "', which the schema does not have",
                                ctx);
                if (t->tied())
                    throw error(errc::invalid_argument,
                                "parameter '" + p.name + "' is tied to '" + p.tied_to +
                                    "', itself tied (chains are not allowed)",
                                ctx);
            } else if (!p.created() && p.sources.empty()) {
                throw error(errc::invalid_argument,
                            "parameter '" + p.name + "' is neither loaded, tied nor created", ctx);
            }
            if (p.gathers_experts()) check_gathered(p);
            if (p.expert && *p.expert >= experts_)
                throw error(errc::invalid_argument,
                            "parameter '" + p.name + "' belongs to expert " +
                                std::to_string(*p.expert) + " of a schema of " +
                                std::to_string(experts_) + " experts",
                            ctx);
        }
    }

private:
    // Gathered experts: stacked, and `sources` is each of the schema's experts' expert_sources
    // in expert order.
    void check_gathered(const parameter_meta& p) const {
        const error_context ctx{.file = {}, .tensor = p.name};
        if (!p.stacked_experts || p.expert)
            throw error(errc::invalid_argument,
                        "parameter '" + p.name +
                            "' gathers one tensor per expert but does not stack the experts",
                        ctx);
        const std::size_t k = p.expert_sources.size();
        bool ok = experts_ != 0 && p.sources.size() / k == experts_ && p.sources.size() % k == 0;
        for (std::uint64_t e = 0; ok && e < experts_; ++e)
            for (std::size_t i = 0; ok && i < k; ++i)
                ok = p.sources[e * k + i] == expert_source_name(p.expert_sources[i], e);
        if (!ok)
            throw error(errc::invalid_argument,
                        "parameter '" + p.name + "' gathers one tensor per expert, but its " +
                            std::to_string(p.sources.size()) + " sources are not its " +
                            std::to_string(k) + " per expert for each of the schema's " +
                            std::to_string(experts_) + " experts in order",
                        ctx);
    }

    // A source name: parameter params_[param]'s sources[k].
    struct source_ref {
        std::uint32_t param;
        std::uint32_t k;
    };
    // The names at positions of each index.
    struct param_names {
        const schema* s;
        std::string_view operator()(std::uint32_t i) const { return s->params_[i].name; }
    };
    struct source_names {
        const schema* s;
        std::string_view operator()(std::uint32_t i) const {
            return s->params_[s->sources_[i].param].sources[s->sources_[i].k];
        }
    };
    [[nodiscard]] param_names param_name() const noexcept { return {this}; }
    [[nodiscard]] source_names source_name() const noexcept { return {this}; }
    // Rebuilds an index at twice its size when it would hold more names than it has room for.
    void make_room(std::size_t params, std::size_t sources) {
        if (params > params_room_) {
            params_room_ = std::max(params, 2 * params_room_);
            index_.reset(params_room_);
            for (std::uint32_t i = 0; i < params_.size(); ++i)
                (void)index_.insert(params_[i].name, i, param_name());
        }
        if (sources > sources_room_) {
            sources_room_ = std::max(sources, 2 * sources_room_);
            by_source_.reset(sources_room_);
            for (std::uint32_t i = 0; i < sources_.size(); ++i)
                (void)by_source_.insert(source_name()(i), i, source_name());
        }
    }

    std::vector<parameter_meta> params_{};
    std::vector<source_ref> sources_{};
    // Keyed open addressing (names come from files): lookups allocate nothing.
    detail::name_index index_{};
    detail::name_index by_source_{};
    std::size_t params_room_ = 0;
    std::size_t sources_room_ = 0;
    std::vector<ignore_rule> ignore_{};
    std::unordered_set<std::string, detail::name_hash, std::equal_to<>> skipped_{};
    std::vector<std::string> notes_{};
    std::optional<safeshard::layout> fallback_{};
    name_map names_{};
    std::uint64_t experts_ = 0;
};

// What identity_schema reads of each tensor: its name, the tensor it is tied to (empty when
// it is not tied), and the expert it belongs to (none for a tensor of no expert).
template <class T>
concept identity_tensor = requires(const T& t) {
    { t.name } -> std::convertible_to<std::string_view>;
    { t.tied_to } -> std::convertible_to<std::string_view>;
    { t.expert } -> std::convertible_to<std::optional<std::uint64_t>>;
};

// The schema of tensors that are already cut (a rank folder of an export loads through it):
// each replicated under its own name (an identity cut), tied tensors aliased again, experts'
// tensors naming their expert of `experts`.
template <std::ranges::sized_range Tensors>
requires identity_tensor<std::ranges::range_value_t<Tensors>>
[[nodiscard]] schema identity_schema(const Tensors& tensors, std::uint64_t experts = 0) {
    schema s;
    s.reserve(std::ranges::size(tensors));
    s.set_experts(experts);
    for (const auto& t : tensors) {
        parameter_meta p;
        p.name = std::string(std::string_view(t.name));
        p.expert = t.expert;
        const std::string_view tied = t.tied_to;
        if (!tied.empty())
            p.tied_to = std::string(tied);
        else
            p.sources = {p.name};
        s.add(std::move(p));
    }
    s.validate();
    return s;
}

// ---- compile-time tables ----

// A fully static schema: a constant expression, looked up in constant expressions.
template <std::size_t N>
struct static_schema {
    std::array<parameter_spec, N> parameters{};
    std::uint64_t layers = 0;

    [[nodiscard]] constexpr const parameter_spec* find(std::string_view name) const noexcept {
        for (const auto& p : parameters)
            if (p.name == name) return &p;
        return nullptr;
    }
    // Parameters once layer templates are expanded.
    [[nodiscard]] constexpr std::size_t expanded_size() const noexcept {
        std::size_t n = 0;
        for (const auto& p : parameters) n += p.per_layer() ? layers : 1;
        return n;
    }
};

template <class... Specs>
[[nodiscard]] constexpr auto make_static_schema(std::uint64_t layers, Specs... specs) {
    return static_schema<sizeof...(Specs)>{{specs...}, layers};
}

namespace detail {
// The name with "{i}" replaced by the layer and "{e}" by the expert (when given).
inline std::string expand_name(std::string_view templ, std::optional<std::uint64_t> layer,
                               std::optional<std::uint64_t> expert = std::nullopt) {
    std::string s(templ);
    auto put = [&](std::string_view key, std::uint64_t v) {
        const std::string idx = std::to_string(v);
        for (std::size_t pos = s.find(key); pos != std::string::npos; pos = s.find(key, pos))
            s.replace(pos, key.size(), idx);
    };
    if (layer) put("{i}", *layer);
    if (expert) put("{e}", *expert);
    return s;
}
inline std::string expand_layer(std::string_view templ, std::uint64_t layer) {
    return expand_name(templ, layer);
}

inline bool stage_keeps(const parameter_spec& p, const schema_options& o) {
    const parameter_role role = p.per_layer() ? parameter_role::layer : p.role;
    switch (role) {
        case parameter_role::embedding: return o.embeddings;
        case parameter_role::final_norm: return o.final_norm;
        case parameter_role::lm_head: return o.lm_head;
        case parameter_role::layer:
        case parameter_role::other: return true;
    }
    return true;
}

// How many parameters a table expands to (overflow: validation_overflow). Layers are counted
// one by one up to a million; beyond, every per-layer entry counts every layer (a bound).
inline std::size_t expanded_count(std::span<const parameter_spec> specs, const layer_plan& plan) {
    constexpr std::uint64_t counted = std::uint64_t{1} << 20;
    auto layers_of = [&](layer_rule r) {
        if (plan.total() > counted) return plan.total();
        std::uint64_t n = 0;
        for (std::uint64_t l = 0; l < plan.total(); ++l) n += plan.applies(r, l) ? 1 : 0;
        return n;
    };
    std::uint64_t n = 0;
    for (const auto& p : specs) {
        std::uint64_t each = p.per_layer() ? layers_of(p.layers) : 1;
        if ((p.per_expert() && mul_overflows(each, plan.experts, each)) ||
            add_overflows(n, each, n) || n > std::numeric_limits<std::size_t>::max())
            throw error(errc::validation_overflow,
                        std::to_string(plan.layers) + " layers of " + std::to_string(specs.size()) +
                            " parameter templates overflow the size of a schema");
    }
    return static_cast<std::size_t>(n);
}
}  // namespace detail

// Expands a table for a model's layers under the options: layer templates repeated for the
// stage's layers in order (embeddings first, then the layers, then what follows them in the
// table), each entry on the layers its layer_rule names, expert templates ("{e}") once per
// expert, sources mapped to checkpoint names, ignore rules added. A tied parameter whose
// target is outside the stage reads the target's sources instead (vLLM's last stage loads
// the embedding into lm_head). The trailing layers (multi-token prediction) belong to the last
// stage, and only with schema_options::multi_token_prediction; otherwise their tensors are
// ignored with a note.
[[nodiscard]] inline schema expand(std::span<const parameter_spec> specs, const layer_plan& plan,
                                   const schema_options& o = {}) {
    const std::uint64_t layers = plan.layers;
    const std::uint64_t end = o.layer_end.value_or(layers);
    if (o.layer_begin > end || end > layers)
        throw error(errc::invalid_argument,
                    "layer range [" + std::to_string(o.layer_begin) + ", " + std::to_string(end) +
                        ") is not within the model's " + std::to_string(layers) + " layers");
    schema s;
    s.reserve(detail::expanded_count(specs, plan));
    s.set_experts(plan.experts);
    s.set_names(o.names);
    s.ignore("*rotary_emb.inv_freq", "a legacy rotary buffer, not a parameter");
    for (const auto& pattern : o.ignore) s.ignore(pattern, "ignored by request");

    auto spec_of = [&](std::string_view name) -> const parameter_spec* {
        for (const auto& p : specs)
            if (p.name == name) return &p;
        return nullptr;
    };
    using index = std::optional<std::uint64_t>;
    auto sources_of = [&](const parameter_spec& p, index layer, index expert) {
        std::vector<std::string> out;
        const std::size_t n = p.source_count();
        if (n == 0)
            out.push_back(o.names.to_checkpoint(detail::expand_name(p.name, layer, expert)));
        for (std::size_t i = 0; i < n; ++i)
            out.push_back(o.names.to_checkpoint(detail::expand_name(p.sources[i], layer, expert)));
        return out;
    };
    // What a spec reads: its sources, and for gathered experts each expert's in expert order.
    auto read_names_of = [&](const parameter_spec& p, index layer, index expert) {
        std::vector<std::string> named = sources_of(p, layer, expert);
        if (!p.gathers_experts()) return named;
        std::vector<std::string> out;
        out.reserve(named.size() * plan.experts);
        for (std::uint64_t e = 0; e < plan.experts; ++e)
            for (const auto& n : named) out.push_back(expert_source_name(n, e));
        return out;
    };
    auto emit = [&](const parameter_spec& p, index layer, index expert) {
        parameter_meta m;
        m.name = detail::expand_name(p.name, layer, expert);
        const bool own_source =
            p.tied_to.empty() && p.init.kind == init_kind::none && p.source_count() == 0;
        m.layout = p.layout;
        m.init = p.init;
        m.dtype_override = p.dtype_override;
        m.role = layer ? parameter_role::layer : p.role;
        m.layer = layer;
        m.expert = expert;
        m.stacked_experts = p.stacked_experts;
        if (!p.tied_to.empty()) {
            const parameter_spec* target = spec_of(p.tied_to);
            if (target && detail::stage_keeps(*target, o)) {
                m.tied_to = std::string(p.tied_to);
            } else if (target) {  // the target is not in this stage: read its tensor here
                m.sources = sources_of(*target, std::nullopt, std::nullopt);
                s.note(m.name + " is tied to " + std::string(p.tied_to) +
                       ", which this stage does not load: it reads " + m.sources.front());
                s.ignore(o.names.to_checkpoint(m.name), "tied to " + std::string(p.tied_to) +
                                                            " (read from " + m.sources.front() +
                                                            "): the stored copy is ignored");
            } else {
                m.tied_to = std::string(p.tied_to);  // validate() reports it
            }
            if (!m.tied_to.empty())
                s.ignore(o.names.to_checkpoint(m.name),
                         "tied to " + m.tied_to + ": the stored copy is ignored");
        } else if (own_source) {  // its own name: expanded once
            m.sources.push_back(o.names.to_checkpoint(m.name));
        } else if (p.init.kind == init_kind::none) {
            m.sources = read_names_of(p, layer, expert);
            if (p.gathers_experts()) m.expert_sources = sources_of(p, layer, expert);
        }
        s.add(std::move(m));
    };
    auto skip = [&](const parameter_spec& p, index layer, index expert) {
        if (!p.tied_to.empty())  // a stored copy of a tied tensor is no error either
            s.skip(o.names.to_checkpoint(detail::expand_name(p.name, layer, expert)));
        else if (p.init.kind == init_kind::none)
            for (auto& name : read_names_of(p, layer, expert)) s.skip(std::move(name));
    };
    // Each expert of a per-expert spec, or the spec once.
    auto each_expert = [&](const parameter_spec& p, index layer, auto&& f) {
        if (!p.per_expert()) return f(p, layer, std::nullopt);
        for (std::uint64_t e = 0; e < plan.experts; ++e) f(p, layer, e);
    };
    auto whole = [&](const parameter_spec& p) {
        detail::stage_keeps(p, o) ? emit(p, std::nullopt, std::nullopt)
                                  : skip(p, std::nullopt, std::nullopt);
    };

    std::size_t first_layer = specs.size(), last_layer = 0;
    for (std::size_t i = 0; i < specs.size(); ++i)
        if (specs[i].per_layer()) {
            first_layer = std::min(first_layer, i);
            last_layer = i;
        }
    for (std::size_t i = 0; i < specs.size() && i < first_layer; ++i) whole(specs[i]);
    if (first_layer == specs.size()) {
        s.validate();
        return s;
    }
    const bool last_stage = end == layers;
    for (std::uint64_t layer = 0; layer < plan.total(); ++layer) {
        const bool trailing = plan.trailing(layer);
        if (trailing && !o.multi_token_prediction) continue;  // ignored below
        const bool in_stage = trailing ? last_stage : layer >= o.layer_begin && layer < end;
        for (std::size_t i = first_layer; i <= last_layer; ++i) {
            const parameter_spec& p = specs[i];
            if (!p.per_layer() || !plan.applies(p.layers, layer)) continue;
            if (in_stage)
                each_expert(p, layer, emit);
            else
                each_expert(p, layer, skip);
        }
    }
    if (plan.trailing_layers != 0 && !o.multi_token_prediction) {
        const std::string_view first = specs[first_layer].name;
        const std::string container(first.substr(0, first.find("{i}")));
        for (std::uint64_t layer = layers; layer < plan.total(); ++layer)
            s.ignore(o.names.to_checkpoint(container + std::to_string(layer) + ".*"),
                     "a multi-token prediction layer (after num_hidden_layers): loaded with "
                     "schema_options::multi_token_prediction",
                     /*left_out=*/true);
    }
    for (std::size_t i = first_layer; i <= last_layer; ++i)
        if (!specs[i].per_layer()) whole(specs[i]);
    for (std::size_t i = last_layer + 1; i < specs.size(); ++i) whole(specs[i]);
    s.validate();
    return s;
}

// A table without layer rules or experts, for `layers` layers.
[[nodiscard]] inline schema expand(std::span<const parameter_spec> specs, std::uint64_t layers,
                                   const schema_options& o = {}) {
    return expand(specs, layer_plan{.layers = layers}, o);
}

template <std::size_t N>
[[nodiscard]] schema expand(const static_schema<N>& t, const schema_options& o = {}) {
    return expand(std::span<const parameter_spec>(t.parameters), t.layers, o);
}

}  // namespace safeshard
