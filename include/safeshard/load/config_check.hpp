// config.json's sizes against the checkpoint's tensors, checked before a schema is expanded
// from them: a number in config.json never sizes memory or a loop by itself, only as far as
// the tensors confirm it. load_plan::build, export and `safeshard verify` share this check.
#pragma once

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "safeshard/core/checked.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/core/model_config.hpp"
#include "safeshard/core/shape.hpp"
#include "safeshard/format/checkpoint.hpp"
#include "safeshard/format/export_metadata_reader.hpp"
#include "safeshard/shard/architectures/registry.hpp"
#include "safeshard/shard/architectures/table.hpp"
#include "safeshard/shard/quantization/schemes.hpp"
#include "safeshard/shard/schema.hpp"

namespace safeshard {

// How much of config.json a check can compare: the fields every decoder shares (layer count,
// hidden size and vocabulary against the embeddings), or also the decoder's own tensors
// (norms, attention projections against the head counts, MLP against intermediate_size).
enum class config_scope : std::uint8_t { generic, architecture };

// The numbered layers a checkpoint holds: the container (checkpoint spelling, "model.layers")
// with the most distinct indices, and those indices' count and range.
struct layer_census {
    std::string container{};
    std::uint64_t count = 0;
    std::uint64_t lowest = 0;
    std::uint64_t highest = 0;

    // "2 layers (model.layers.0 ... model.layers.1)"
    [[nodiscard]] std::string to_string() const {
        if (count == 0) return "no numbered layers (no tensor named like model.layers.0.*)";
        const std::string p = container.empty() ? "" : container + ".";
        return std::to_string(count) + (count == 1 ? " layer (" : " layers (") + p +
               std::to_string(lowest) + (count == 1 ? "" : " ... " + p + std::to_string(highest)) +
               ")";
    }
};

// One field of config.json that the tensors contradict.
struct config_mismatch {
    std::string field;    // "hidden_size", "num_hidden_layers", "num_key_value_heads × head_dim"
    std::string message;  // what config.json says and what the checkpoint holds
    std::string tensor{};
    errc code = errc::invalid_config;
    std::uint64_t more = 0;  // further tensors that contradict the same field
};

struct config_check {
    std::string model_type{};
    std::vector<config_mismatch> mismatches{};
    // Said, not wrong: layers beyond num_hidden_layers, fields left unchecked.
    std::vector<std::string> notes{};
    layer_census layers{};
    // The architecture's own tensors were compared too, not only the generic fields.
    bool architecture_checked = false;
    std::string file{};  // config.json, for the error's context

    [[nodiscard]] bool ok() const noexcept { return mismatches.empty(); }

    // Every mismatch, one clause each.
    [[nodiscard]] std::string summary() const {
        std::string s;
        for (const auto& m : mismatches) {
            s += s.empty() ? "" : "; ";
            s += m.field.empty() ? m.message : m.field + ": " + m.message;
            if (m.more)
                s += " (and " + std::to_string(m.more) + " more tensor" + (m.more == 1 ? "" : "s") +
                     ")";
        }
        return s;
    }

    // The first mismatch's code, every mismatch in the message.
    void throw_if_mismatch() const {
        if (ok()) return;
        throw error(mismatches.front().code,
                    "config.json (model_type '" + model_type +
                        "') disagrees with the checkpoint's tensors: " + summary(),
                    error_context{.file = file, .tensor = mismatches.front().tensor});
    }

    // Adds a mismatch, or counts it under the first one of the same field.
    void add(config_mismatch m) {
        for (auto& have : mismatches)
            if (have.field == m.field && !m.field.empty()) {
                ++have.more;
                return;
            }
        mismatches.push_back(std::move(m));
    }
};

namespace detail {

// A checkpoint name's first all-digit component: "model.layers.3.mlp.experts.5.w" ->
// {"model.layers", 3}; nullopt for a name without one (or an index beyond 64 bits).
struct layer_ref {
    std::string_view container;
    std::uint64_t index = 0;
};
[[nodiscard]] inline std::optional<layer_ref> layer_of(std::string_view name) noexcept {
    std::size_t begin = 0;
    while (begin <= name.size()) {
        std::size_t end = name.find('.', begin);
        if (end == std::string_view::npos) end = name.size();
        const std::string_view part = name.substr(begin, end - begin);
        if (!part.empty() &&
            std::all_of(part.begin(), part.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
            std::uint64_t v = 0;
            const auto [ptr, ec] = std::from_chars(part.data(), part.data() + part.size(), v);
            if (ec != std::errc() || ptr != part.data() + part.size()) return std::nullopt;
            return layer_ref{name.substr(0, begin == 0 ? 0 : begin - 1), v};
        }
        begin = end + 1;
    }
    return std::nullopt;
}

// The layers under the name map's checkpoint prefix. Memory and time follow the tensors.
[[nodiscard]] inline layer_census count_layers(const checkpoint& ckpt, const name_map& names) {
    std::vector<layer_ref> refs;
    for (const auto& f : ckpt.files())
        for (const tensor_view t : f.view) {
            const std::string_view n = t.name();
            if (!n.starts_with(names.checkpoint_prefix)) continue;
            if (const auto r = layer_of(n)) refs.push_back(*r);
        }
    auto key = [](const layer_ref& r) { return std::pair(r.container, r.index); };
    std::sort(refs.begin(), refs.end(),
              [&](const layer_ref& a, const layer_ref& b) { return key(a) < key(b); });
    refs.erase(
        std::unique(refs.begin(), refs.end(),
                    [&](const layer_ref& a, const layer_ref& b) { return key(a) == key(b); }),
        refs.end());
    layer_census best;
    for (std::size_t i = 0; i < refs.size();) {
        std::size_t j = i;
        while (j < refs.size() && refs[j].container == refs[i].container) ++j;
        if (j - i > best.count) {
            best.container = std::string(refs[i].container);
            best.count = j - i;
            best.lowest = refs[i].index;
            best.highest = refs[j - 1].index;
        }
        i = j;
    }
    return best;
}

// The expert index of a per-expert tensor name ("...experts.5.w1.weight" -> 5).
[[nodiscard]] inline std::optional<std::uint64_t> expert_of(std::string_view name) noexcept {
    constexpr std::string_view key = ".experts.";
    const std::size_t at = name.find(key);
    if (at == std::string_view::npos) return std::nullopt;
    const std::string_view rest = name.substr(at + key.size());
    std::uint64_t v = 0;
    const auto [ptr, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), v);
    if (ec != std::errc() || ptr == rest.data() || ptr == rest.data() + rest.size() || *ptr != '.')
        return std::nullopt;
    return v;
}

// config.json's expert count against the experts the tensors name (those stored one tensor
// per expert): the highest index must be the count less one.
inline void check_expert_count(config_check& r, const checkpoint& ckpt, const model_config& c,
                               const name_map& names) {
    std::optional<std::uint64_t> highest;
    std::string_view at;
    for (const auto& f : ckpt.files())
        for (const tensor_view t : f.view) {
            if (!t.name().starts_with(names.checkpoint_prefix)) continue;
            const auto e = expert_of(t.name());
            if (e && (!highest || *e > *highest)) {
                highest = e;
                at = t.name();
            }
        }
    if (!highest || *highest + 1 == c.num_experts) return;
    r.add({"num_experts",
           "config.json says " + std::to_string(c.num_experts) +
               " experts (num_local_experts, num_experts or n_routed_experts), but the "
               "checkpoint holds expert " +
               std::to_string(*highest) + " (" + std::string(at) + ")",
           std::string(at), errc::invalid_config});
}

// The value of each field in "a × b" form, for a message: "hidden_size 96".
[[nodiscard]] inline std::string field_values(std::string_view fields, const model_config& c) {
    const std::pair<std::string_view, std::uint64_t> known[] = {
        {"hidden_size", c.hidden_size},
        {"vocab_size", c.vocab_size},
        {"intermediate_size", c.intermediate_size},
        {"num_attention_heads", c.num_attention_heads},
        {"num_key_value_heads", c.num_key_value_heads},
        {"head_dim", c.head_dim},
        {"num_experts", c.num_experts},
        // An expert's intermediate size, intermediate_size where config.json gives no other
        // (as sizes_of reads it).
        {"moe_intermediate_size",
         c.moe_intermediate_size ? c.moe_intermediate_size : c.intermediate_size},
        {"shared_expert_intermediate_size", c.shared_expert_intermediate_size},
        {"n_shared_experts", c.n_shared_experts},
        {"q_lora_rank", c.q_lora_rank.value_or(0)},
        {"kv_lora_rank", c.kv_lora_rank},
        {"qk_nope_head_dim", c.qk_nope_head_dim},
        {"qk_rope_head_dim", c.qk_rope_head_dim},
        {"v_head_dim", c.v_head_dim},
    };
    // Whole words only: "intermediate_size" is not a part of "moe_intermediate_size".
    auto names_field = [&](std::string_view name) {
        for (std::size_t at = fields.find(name); at != std::string_view::npos;
             at = fields.find(name, at + 1)) {
            const bool starts =
                at == 0 || !(std::isalnum(static_cast<unsigned char>(fields[at - 1])) ||
                             fields[at - 1] == '_');
            const std::size_t end = at + name.size();
            const bool ends =
                end == fields.size() ||
                !(std::isalnum(static_cast<unsigned char>(fields[end])) || fields[end] == '_');
            if (starts && ends) return true;
        }
        return false;
    };
    std::string s;
    for (const auto& [name, value] : known)
        if (names_field(name))
            s += (s.empty() ? "" : ", ") + std::string(name) + " " + std::to_string(value);
    return s;
}

// A tensor (name without the checkpoint prefix) against the shape the architecture says
// config.json implies for it.
inline void check_tensor_shape(config_check& r, std::string_view ckpt_name, std::string_view name,
                               const shape& held, const model_config& c,
                               const implied_shape_index& shapes) {
    const std::vector<implied_dim>* found = shapes.find(name);
    if (found == nullptr || found->empty()) return;
    const std::vector<implied_dim>& want = *found;
    for (const auto& w : want)
        if (w.overflows) {
            r.add({std::string(w.fields),
                   "(" + field_values(w.fields, c) + ") overflows 64 bits, the size of " +
                       std::string(ckpt_name) + " " + held.to_string(),
                   std::string(ckpt_name), errc::invalid_config});
            return;
        }
    // Grouped under the first field that disagrees; the message gives every one's value.
    std::string first, fields;
    for (std::size_t k = 0; k < want.size(); ++k) {
        const bool off =
            held.rank() != want.size() || (want[k].size != 0 && held[k] != want[k].size);
        if (!off) continue;
        if (first.empty()) first = std::string(want[k].fields);
        fields += (fields.empty() ? "" : ", ") + std::string(want[k].fields);
    }
    if (first.empty()) return;
    shape implied;
    for (const auto& w : want) implied.push_back(w.size);
    std::string implied_text = implied.to_string();
    if (std::any_of(want.begin(), want.end(), [](const implied_dim& w) { return w.size == 0; }))
        implied_text += " (0: not given)";
    r.add({first,
           std::string(ckpt_name) + ": the checkpoint holds " + held.to_string() +
               " but config.json implies " + implied_text + " (" + field_values(fields, c) + ")",
           std::string(ckpt_name), errc::shape_mismatch});
}

}  // namespace detail

// config.json's fields against the tensors, before anything is expanded from them:
// - num_hidden_layers against the layers present (a config claiming more is a mismatch;
//   layers beyond it are a note: they are the schema's, expected or unexpected names);
// - vocab_size and hidden_size against the embeddings and lm_head;
// - scope architecture: the shapes the architecture's table implies (architecture_shapes: for
//   the decoders, the norms, attention projections against head counts × head_dim and MLP
//   against intermediate_size, by their Hugging Face names).
// Time and memory follow the checkpoint's tensor count, whatever the numbers in config.json.
[[nodiscard]] inline config_check check_config(const checkpoint& ckpt, const model_config& c,
                                               const name_map& names = {},
                                               config_scope scope = config_scope::architecture) {
    config_check r;
    r.model_type = c.model_type;
    r.architecture_checked = scope == config_scope::architecture;
    r.file = ckpt.config_path().value_or(ckpt.root() / "config.json").string();
    r.layers = detail::count_layers(ckpt, names);
    const std::uint64_t claimed = c.num_hidden_layers;
    if (claimed > r.layers.count) {
        r.add({"num_hidden_layers",
               "config.json says " + std::to_string(claimed) + ", but the checkpoint holds " +
                   r.layers.to_string(),
               {},
               errc::invalid_config});
    } else if (claimed && claimed < r.layers.count) {
        r.notes.push_back("config.json's num_hidden_layers is " + std::to_string(claimed) +
                          " and the checkpoint holds " + r.layers.to_string() +
                          ": the schema decides on the layers beyond (an extra module, or "
                          "unexpected names)");
    }
    if (scope == config_scope::architecture && c.num_experts != 0)
        detail::check_expert_count(r, ckpt, c, names);
    const implied_shape_index shapes(architecture_shapes(c.model_type), sizes_of(c),
                                     scope == config_scope::generic);
    const quantization_scheme* scheme =
        c.quantization ? find_quantization_scheme(*c.quantization) : nullptr;
    if (scheme && !packs_whole(*scheme, *c.quantization)) {
        r.add({"quantization_config",
               "its " + std::to_string(c.quantization->bits) + "-bit values do not fill the " +
                   std::string(name(scheme->packed_dtype)) + " elements the " +
                   std::string(scheme->name) + " scheme packs them in",
               {},
               errc::quantized_checkpoint});
        scheme = nullptr;
    }
    for (const auto& f : ckpt.files())
        for (const tensor_view t : f.view) {
            std::string_view n = t.name();
            if (!n.starts_with(names.checkpoint_prefix)) continue;
            n.remove_prefix(names.checkpoint_prefix.size());
            // A flattened weight (bitsandbytes 4-bit) has no [N, K] to compare.
            if (scheme && is_flattened_weight(*scheme, n, t.dtype())) continue;
            const auto as_weight =
                scheme ? weight_values(*scheme, *c.quantization, n, t.dtype(), t.shape())
                       : std::nullopt;
            if (as_weight)
                detail::check_tensor_shape(r, t.name(), as_weight->first, as_weight->second, c,
                                           shapes);
            else
                detail::check_tensor_shape(r, t.name(), n, t.shape(), c, shapes);
        }
    return r;
}

// What the checkpoint decides of the options they leave open, from its names in one pass:
//  - the name prefix, when they give none: "language_model." for a multimodal checkpoint that
//    stores its text model there (Llama-4, Kimi-K2.5, LLaVA) while no name starts with
//    "model.";
//  - schema_options::experts_stored when `detect`: stacked when a tensor is a layer's stacked
//    experts ("….experts.gate_up_proj" or "….experts.down_proj"), else one tensor per expert.
[[nodiscard]] inline schema_options resolved_options(const checkpoint& ckpt, schema_options o) {
    using storage = schema_options::expert_storage;
    bool text_model = false, nested = false, stacked = false;
    for (const auto& f : ckpt.files())
        for (const tensor_view t : f.view) {
            const std::string_view n = t.name();
            text_model = text_model || n.starts_with("model.");
            nested = nested || n.starts_with("language_model.model.");
            stacked = stacked || n.ends_with(".experts.gate_up_proj") ||
                      n.ends_with(".experts.down_proj");
        }
    if (o.names.checkpoint_prefix.empty() && o.names.schema_prefix.empty() && nested && !text_model)
        o.names.checkpoint_prefix = "language_model.";
    if (o.experts_stored == storage::detect)
        o.experts_stored = stacked ? storage::stacked : storage::per_expert;
    return o;
}

// The schema of config.json's architecture (c.model_type), once check_config finds the
// checkpoint agrees with it: the layer count it expands is one the tensors hold. A rank of a
// per-rank export is refused (invalid_export): its config.json describes the whole model.
[[nodiscard]] inline schema checked_schema(const checkpoint& ckpt, const model_config& c,
                                           const schema_options& o = {}) {
    if (read_export_metadata(ckpt))
        throw error(errc::invalid_export,
                    "the checkpoint is a rank of an export: its config.json describes the whole "
                    "model, not the rank's tensors (merge the export first: safeshard merge)",
                    error_context{.file = ckpt.root().string()});
    const config_scope scope =
        architecture_registered(c.model_type) ? config_scope::architecture : config_scope::generic;
    const schema_options r = resolved_options(ckpt, o);
    check_config(ckpt, c, r.names, scope).throw_if_mismatch();
    return make_schema(c, r);
}

// config.json's model_config (its model_type replaced by `architecture` when given) and the
// checked schema of that architecture.
struct configured_schema {
    model_config config;
    safeshard::schema schema;
};

// The "config.json -> schema" sequence of a load and an export: the checkpoint's config.json
// (invalid_config without one; `verb` says what the caller does: "load", "export"), then
// checked_schema.
[[nodiscard]] inline configured_schema schema_from_config(const checkpoint& ckpt,
                                                          std::string_view architecture,
                                                          const schema_options& o,
                                                          std::string_view verb) {
    const auto cfg = ckpt.load_config();
    if (!cfg)
        throw error(errc::invalid_config,
                    "no config.json beside the checkpoint: name an architecture's schema, or " +
                        std::string(verb) + " with schema::replicate_all()",
                    error_context{.file = ckpt.root().string()});
    model_config c = cfg->config();
    if (!architecture.empty()) c.model_type = architecture;
    schema s = checked_schema(ckpt, c, o);
    return {std::move(c), std::move(s)};
}

}  // namespace safeshard
