// config.json (transformers' model configuration) into core/model_config.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <simdjson.h>

#include "safeshard/core/dtype.hpp"
#include "safeshard/core/error.hpp"
#include "safeshard/core/model_config.hpp"
#include "safeshard/format/json_document.hpp"
#include "safeshard/format/json_text.hpp"

namespace safeshard {

// A torch dtype name as config.json spells it ("bfloat16", "torch.float16") → dtype.
[[nodiscard]] constexpr std::optional<dtype> dtype_from_torch_name(std::string_view s) noexcept {
    if (s.starts_with("torch.")) s.remove_prefix(6);
    struct row {
        std::string_view name;
        dtype type;
    };
    constexpr row rows[] = {
        {"bfloat16", dtype::bf16},
        {"float16", dtype::f16},
        {"half", dtype::f16},
        {"float32", dtype::f32},
        {"float", dtype::f32},
        {"float64", dtype::f64},
        {"double", dtype::f64},
        {"float8_e4m3fn", dtype::f8_e4m3},
        {"float8_e5m2", dtype::f8_e5m2},
        {"float8_e4m3fnuz", dtype::f8_e4m3fnuz},
        {"float8_e5m2fnuz", dtype::f8_e5m2fnuz},
        {"int8", dtype::i8},
        {"uint8", dtype::u8},
    };
    for (const auto& r : rows) {
        if (r.name == s) return r.type;
    }
    return std::nullopt;
}

// transformers' per-class default for tie_word_embeddings, for the architectures whose
// default is known here; nullopt for the others (the schema must decide).
[[nodiscard]] constexpr std::optional<bool> default_tie_word_embeddings(
    std::string_view model_type) noexcept {
    constexpr std::string_view untied[] = {"llama",     "mistral", "mixtral",   "qwen2",
                                           "qwen2_moe", "qwen3",   "qwen3_moe", "phi3"};
    constexpr std::string_view tied[] = {"gemma", "gemma2", "gemma3", "gemma3_text"};
    for (auto t : untied) {
        if (t == model_type) return false;
    }
    for (auto t : tied) {
        if (t == model_type) return true;
    }
    return std::nullopt;
}

// ModelOpt's description of a checkpoint's quantization, beside its config.json (older exports).
inline constexpr std::string_view hf_quant_config_file = "hf_quant_config.json";

// What of config.json is read: the model (its required fields checked), or only its
// quantization_config (a folder whose config.json need describe no model: a conversion's).
enum class config_fields : std::uint8_t { model, quantization_only };

// A parsed config.json: the model_config, and the whole document for anything else.
class config_file {
public:
    static constexpr std::uint64_t max_file_size = 64ull << 20;

    [[nodiscard]] static config_file parse(std::string_view json, std::string source = {},
                                           config_fields fields = config_fields::model) {
        return config_file(simdjson::padded_string(json), std::move(source), fields);
    }
    [[nodiscard]] static config_file load(const std::filesystem::path& p,
                                          config_fields fields = config_fields::model) {
        return config_file(detail::read_json_file(p, max_file_size, errc::invalid_config),
                           p.string(), fields);
    }

    [[nodiscard]] const model_config& config() const noexcept { return config_; }
    // The raw text, and the parsed document (valid as long as this object lives).
    [[nodiscard]] std::string_view raw_json() const noexcept {
        return {text_.data(), text_.size()};
    }
    [[nodiscard]] simdjson::dom::element document() const noexcept { return root_; }
    // The object the language model's fields came from: `text_config` when present, else
    // the top level.
    [[nodiscard]] simdjson::dom::element text_section() const noexcept { return text_section_; }
    [[nodiscard]] bool has_text_config() const noexcept { return has_text_config_; }
    // Top-level model_type (for multimodal configs: "llava", while config().model_type is
    // the text model's, "llama").
    [[nodiscard]] const std::string& outer_model_type() const noexcept { return outer_model_type_; }
    [[nodiscard]] const std::string& source() const noexcept { return source_; }

    // ModelOpt's hf_quant_config.json (text `json`, read from `file`), which older ModelOpt
    // exports write beside a config.json without quantization_config: its "quantization"
    // object ("quant_algo": "FP8" or "NVFP4", "group_size") is the quantization_config of
    // quant_method "modelopt". config.json's own quantization_config, when it has one, wins.
    void adopt_hf_quant_config(std::string_view json, const std::string& file) {
        if (config_.quantization) return;
        detail::json_document doc;
        if (const auto err = doc.parse(json, false, detail::json_reader::python); err)
            throw error(errc::invalid_config,
                        "hf_quant_config.json is not valid JSON: " + doc.message(err),
                        error_context{.file = file});
        const simdjson::dom::element root = doc.root();
        simdjson::dom::element q;
        if (!root.is_object())
            throw error(errc::invalid_config, "hf_quant_config.json is no JSON object",
                        error_context{.file = file});
        if (root.at_key("quantization").get(q) != simdjson::SUCCESS)
            throw error(errc::invalid_config, "hf_quant_config.json has no 'quantization' object",
                        error_context{.file = file});
        quantization_config out = quantization_of(q, "quantization", file);
        if (out.quant_algo.empty())
            throw error(errc::invalid_config,
                        "hf_quant_config.json's 'quantization' has no "
                        "'quant_algo'",
                        error_context{.file = file});
        out.quant_method = "modelopt";
        config_.quantization = std::move(out);
    }

private:
    config_file(simdjson::padded_string text, std::string source, config_fields fields)
        : text_(std::move(text)), source_(std::move(source)) {
        parse_fields(fields);
    }

    [[noreturn]] void fail(std::string_view msg) const {
        throw error(errc::invalid_config, msg, error_context{.file = source_});
    }

    // The value of `key` in the text section, else at the top level; nullopt when absent
    // or null (an explicit null means "use the default", as transformers reads it).
    [[nodiscard]] std::optional<simdjson::dom::element> find(std::string_view key) const {
        simdjson::dom::element e;
        if (has_text_config_ && text_section_.at_key(key).get(e) == simdjson::SUCCESS &&
            !e.is_null()) {
            return e;
        }
        if (root_.at_key(key).get(e) == simdjson::SUCCESS && !e.is_null()) return e;
        return std::nullopt;
    }

    [[nodiscard]] std::optional<std::uint64_t> get_size(std::string_view key) const {
        auto e = find(key);
        if (!e) return std::nullopt;
        std::uint64_t v = 0;
        if (!detail::json_to_uint64(*e, v)) {
            fail("'" + std::string(key) + "' must be a non-negative integer, found " +
                 std::string(detail::json_type_name(e->type())));
        }
        return v;
    }
    [[nodiscard]] std::uint64_t require_size(std::string_view key) const {
        auto v = get_size(key);
        if (!v) fail("missing required field '" + std::string(key) + "'");
        if (*v == 0) fail("'" + std::string(key) + "' must be positive");
        return *v;
    }
    [[nodiscard]] std::optional<std::string> get_string(std::string_view key,
                                                        bool text_first = true) const {
        simdjson::dom::element e;
        if (text_first) {
            auto f = find(key);
            if (!f) return std::nullopt;
            e = *f;
        } else if (root_.at_key(key).get(e) != simdjson::SUCCESS || e.is_null()) {
            return std::nullopt;
        }
        std::string_view s;
        if (e.get_string().get(s)) {
            fail("'" + std::string(key) + "' must be a string, found " +
                 std::string(detail::json_type_name(e.type())));
        }
        return std::string(s);
    }

    void parse_fields(config_fields fields) {
        // Python's json module (transformers reads config.json with it) decides what is valid.
        if (auto err = doc_.parse(std::string_view(text_.data(), text_.size()), true,
                                  detail::json_reader::python, true);
            err) {
            fail("not valid JSON: " + doc_.message(err));
        }
        root_ = doc_.root();
        if (!root_.is_object()) {
            fail("expected a JSON object at the top level, found " +
                 std::string(detail::json_type_name(root_.type())));
        }
        text_section_ = root_;
        simdjson::dom::element tc;
        if (root_.at_key("text_config").get(tc) == simdjson::SUCCESS && !tc.is_null()) {
            if (!tc.is_object()) {
                fail("'text_config' must be an object, found " +
                     std::string(detail::json_type_name(tc.type())));
            }
            text_section_ = tc;
            has_text_config_ = true;
        }
        if (fields == config_fields::quantization_only) {
            parse_quantization();
            return;
        }

        model_config& c = config_;
        outer_model_type_ = get_string("model_type", false).value_or("");
        c.model_type = get_string("model_type").value_or("");
        if (c.model_type.empty()) fail("missing required field 'model_type'");

        simdjson::dom::element arch;
        if (root_.at_key("architectures").get(arch) == simdjson::SUCCESS && !arch.is_null()) {
            simdjson::dom::array a;
            if (arch.get_array().get(a)) {
                fail("'architectures' must be an array of strings, found " +
                     std::string(detail::json_type_name(arch.type())));
            }
            for (auto item : a) {
                std::string_view s;
                if (item.get_string().get(s)) {
                    fail("'architectures' must be an array of strings, found an item that is " +
                         std::string(detail::json_type_name(item.type())));
                }
                c.architectures.emplace_back(s);
            }
        }

        c.hidden_size = require_size("hidden_size");
        c.num_hidden_layers = require_size("num_hidden_layers");
        c.num_attention_heads = require_size("num_attention_heads");
        c.intermediate_size = get_size("intermediate_size").value_or(0);
        c.vocab_size = get_size("vocab_size").value_or(0);

        c.num_key_value_heads = get_size("num_key_value_heads").value_or(c.num_attention_heads);
        if (c.num_key_value_heads == 0) fail("'num_key_value_heads' must be positive");
        if (c.num_attention_heads % c.num_key_value_heads != 0) {
            fail("num_attention_heads (" + std::to_string(c.num_attention_heads) +
                 ") is not a multiple of num_key_value_heads (" +
                 std::to_string(c.num_key_value_heads) + ")");
        }
        if (auto hd = get_size("head_dim")) {
            if (*hd == 0) fail("'head_dim' must be positive");
            c.head_dim = *hd;  // Mistral-family configs: head_dim != hidden / heads
        } else {
            if (c.hidden_size % c.num_attention_heads != 0) {
                fail("no head_dim, and hidden_size (" + std::to_string(c.hidden_size) +
                     ") is not a multiple of num_attention_heads (" +
                     std::to_string(c.num_attention_heads) + ")");
            }
            c.head_dim = c.hidden_size / c.num_attention_heads;
        }

        if (auto e = find("tie_word_embeddings")) {
            bool b = false;
            if (e->get_bool().get(b)) {
                fail("'tie_word_embeddings' must be a boolean, found " +
                     std::string(detail::json_type_name(e->type())));
            }
            c.tie_word_embeddings = b;
        }
        parse_experts();
        parse_latent_attention();
        parse_quantization();
        // Newer transformers write `dtype`, older `torch_dtype`; an unknown name is no error.
        for (std::string_view key : {"dtype", "torch_dtype"}) {
            auto e = find(key);
            if (!e) continue;
            std::string_view s;
            if (e->get_string().get(s)) {
                fail("'" + std::string(key) + "' must be a string, found " +
                     std::string(detail::json_type_name(e->type())));
            }
            if (!c.checkpoint_dtype) c.checkpoint_dtype = dtype_from_torch_name(s);
        }
    }

    // A mixture of experts' fields, under each family's names.
    void parse_experts() {
        model_config& c = config_;
        for (std::string_view key : {"num_local_experts", "num_experts", "n_routed_experts"})
            if (auto v = get_size(key)) {
                c.num_experts = *v;
                break;
            }
        c.moe_intermediate_size = get_size("moe_intermediate_size").value_or(0);
        c.shared_expert_intermediate_size = get_size("shared_expert_intermediate_size").value_or(0);
        c.n_shared_experts = get_size("n_shared_experts").value_or(0);
        c.first_k_dense_replace = get_size("first_k_dense_replace").value_or(0);
        c.decoder_sparse_step = get_size("decoder_sparse_step").value_or(1);
        if (c.decoder_sparse_step == 0) fail("'decoder_sparse_step' must be positive");
        if (const auto step = get_size("interleave_moe_layer_step")) {  // llama4
            if (*step == 0) fail("'interleave_moe_layer_step' must be positive");
            c.decoder_sparse_step = *step;
        }
        c.intermediate_size_mlp = get_size("intermediate_size_mlp").value_or(0);
        c.moe_layer_freq = get_size("moe_layer_freq").value_or(1);
        if (c.moe_layer_freq == 0) fail("'moe_layer_freq' must be positive");
        c.num_nextn_predict_layers = get_size("num_nextn_predict_layers").value_or(0);
        if (auto e = find("mlp_only_layers"))
            c.mlp_only_layers = layer_indices("mlp_only_layers", *e);
        parse_moe_layers();
    }

    // llama4's explicit moe_layers (transformers' Llama4TextDecoderLayer: a layer has experts
    // when its index is listed; absent or null, every interleave_moe_layer_step-th has): every
    // other layer is dense.
    void parse_moe_layers() {
        model_config& c = config_;
        const auto e = find("moe_layers");
        if (!e) return;
        const std::vector<std::uint64_t> listed = layer_indices("moe_layers", *e);
        constexpr std::uint64_t most = std::uint64_t{1} << 20;
        if (c.num_hidden_layers > most)
            fail("'moe_layers' with " + std::to_string(c.num_hidden_layers) + " layers: at most " +
                 std::to_string(most) + " are planned layer by layer");
        std::vector<bool> sparse(static_cast<std::size_t>(c.num_hidden_layers), false);
        for (const std::uint64_t l : listed) {
            if (l >= c.num_hidden_layers)
                fail("'moe_layers' names layer " + std::to_string(l) + " of " +
                     std::to_string(c.num_hidden_layers) + " (num_hidden_layers)");
            sparse[static_cast<std::size_t>(l)] = true;
        }
        c.decoder_sparse_step = 1;
        for (std::uint64_t l = 0; l < c.num_hidden_layers; ++l)
            if (!sparse[static_cast<std::size_t>(l)]) c.mlp_only_layers.push_back(l);
    }

    std::vector<std::uint64_t> layer_indices(std::string_view key, simdjson::dom::element e) {
        simdjson::dom::array a;
        if (e.get_array().get(a))
            fail("'" + std::string(key) + "' must be an array of layer indices, found " +
                 std::string(detail::json_type_name(e.type())));
        std::vector<std::uint64_t> v;
        for (auto item : a) {
            std::uint64_t x = 0;
            if (!detail::json_to_uint64(item, x))
                fail("'" + std::string(key) +
                     "' must be an array of layer indices, found an item that is " +
                     std::string(detail::json_type_name(item.type())));
            v.push_back(x);
        }
        return v;
    }

    // quantization_config (at the top level, beside text_config; else inside text_config, as
    // moonshotai/Kimi-K2.5 writes it): the method, and what of it decides a cut.
    void parse_quantization() {
        simdjson::dom::element q;
        std::string where = "quantization_config";
        if (root_.at_key(where).get(q) != simdjson::SUCCESS || q.is_null()) {
            if (!has_text_config_ || text_section_.at_key(where).get(q) != simdjson::SUCCESS ||
                q.is_null())
                return;
            where = "text_config.quantization_config";
        }
        config_.quantization = quantization_of(q, where, source_);
        if (config_.quantization->quant_method.empty())
            fail("'" + where + "' has no 'quant_method'");
    }

    // compressed-tensors' config_groups: each group's "weights" (num_bits, group_size,
    // actorder); the groups must agree (a checkpoint of several weight formats is not cut yet).
    static void config_groups_into(quantization_config& out, simdjson::dom::element groups,
                                   const std::string& where, const std::string& file) {
        auto fail = [&](const std::string& msg) {
            throw error(errc::invalid_config, msg, error_context{.file = file});
        };
        simdjson::dom::object o;
        if (groups.get_object().get(o) != simdjson::SUCCESS)
            fail("'" + where + "' must be an object");
        struct weights {
            std::uint64_t bits = 0, group = 0;
            bool act_order = false;
            bool operator==(const weights&) const = default;
        };
        std::optional<weights> seen;
        for (const auto g : o) {
            const std::string at = where + "." + std::string(g.key) + ".weights";
            simdjson::dom::element w;
            if (g.value.at_key("weights").get(w) != simdjson::SUCCESS || w.is_null()) continue;
            if (!w.is_object()) fail("'" + at + "' must be an object");
            weights v;
            simdjson::dom::element e;
            if (w.at_key("num_bits").get(e) == simdjson::SUCCESS && !e.is_null() &&
                (!detail::json_to_uint64(e, v.bits) || v.bits == 0 || v.bits > 64))
                fail("'" + at + ".num_bits' must be an integer from 1 to 64");
            if (w.at_key("group_size").get(e) == simdjson::SUCCESS && !e.is_null() &&
                (!detail::json_to_uint64(e, v.group) || v.group == 0))
                fail("'" + at + ".group_size' must be a positive integer or null");
            if (w.at_key("actorder").get(e) == simdjson::SUCCESS && !e.is_null())
                v.act_order = act_order_of(e, at + ".actorder", fail);
            if (seen && *seen != v)
                fail("'" + where + "' has groups of different num_bits, group_size or actorder (" +
                     std::to_string(seen->bits) + "/" + std::to_string(seen->group) + " and " +
                     std::to_string(v.bits) + "/" + std::to_string(v.group) +
                     "), which no plan cuts yet");
            seen = v;
        }
        if (!seen) return;
        if (out.bits == 0) out.bits = seen->bits;
        if (out.group_size == 0) out.group_size = seen->group;
        out.act_order = out.act_order || seen->act_order;
    }

    // ModelOpt's MIXED_PRECISION "quantized_layers" ({"model.layers.0.mlp.experts":
    // {"quant_algo": "NVFP4", "group_size": 16}, ...}): each layer's quant_algo, kept once each
    // (upper case), and the NVFP4 layers' group size where the config gives none (one for all).
    static void quantized_layers_into(quantization_config& out, simdjson::dom::element layers,
                                      const std::string& where, const std::string& file) {
        auto fail = [&](const std::string& msg) {
            throw error(errc::invalid_config, msg, error_context{.file = file});
        };
        simdjson::dom::object o;
        if (layers.get_object().get(o) != simdjson::SUCCESS)
            fail("'" + where + "' must be an object");
        std::uint64_t nvfp4_group = 0;
        for (const auto l : o) {
            const std::string at = where + "." + std::string(l.key);
            simdjson::dom::element e;
            std::string_view algo;
            if (!l.value.is_object() || l.value.at_key("quant_algo").get(e) != simdjson::SUCCESS ||
                e.get_string().get(algo) != simdjson::SUCCESS)
                fail("'" + at + "' must be an object with a string 'quant_algo'");
            std::string a = upper_case(algo);
            std::uint64_t group = 0;
            if (l.value.at_key("group_size").get(e) == simdjson::SUCCESS && !e.is_null() &&
                (!detail::json_to_uint64(e, group) || group == 0))
                fail("'" + at + ".group_size' must be a positive integer or null");
            if (group && a.ends_with("NVFP4")) {
                if (nvfp4_group && nvfp4_group != group)
                    fail("'" + where + "' has NVFP4 layers of group sizes " +
                         std::to_string(nvfp4_group) + " and " + std::to_string(group) +
                         ", which no plan cuts yet");
                nvfp4_group = group;
            }
            if (std::find(out.layer_algos.begin(), out.layer_algos.end(), a) ==
                out.layer_algos.end())
                out.layer_algos.push_back(std::move(a));
        }
        std::sort(out.layer_algos.begin(), out.layer_algos.end());
        if (out.group_size == 0) out.group_size = nvfp4_group;
    }

    [[nodiscard]] static std::string upper_case(std::string_view s) {
        std::string out(s);
        for (char& c : out) c = detail::ascii_upper(c);
        return out;
    }

    // compressed-tensors' "actorder": "group" (or its alias "dynamic", or the older true): the
    // groups are numbered by weight_g_idx; "weight" ("static", false): the weights were put
    // back in order, no g_idx. Anything else is refused.
    template <class Fail>
    static bool act_order_of(simdjson::dom::element e, const std::string& at, Fail&& fail) {
        bool b = false;
        if (e.get_bool().get(b) == simdjson::SUCCESS) return b;
        std::string_view s;
        if (e.get_string().get(s) == simdjson::SUCCESS) {
            if (s == "group" || s == "dynamic") return true;
            if (s == "weight" || s == "static") return false;
        }
        fail("'" + at +
             "' must be \"group\", \"weight\", \"dynamic\", \"static\", a boolean or null");
        return false;
    }

    // The fields of a quantization object `q` (`where` names it in errors, `file` the file).
    [[nodiscard]] static quantization_config quantization_of(simdjson::dom::element q,
                                                             const std::string& where,
                                                             const std::string& file) {
        auto fail = [&](const std::string& msg) {
            throw error(errc::invalid_config, msg, error_context{.file = file});
        };
        if (!q.is_object())
            fail("'" + where + "' must be an object, found " +
                 std::string(detail::json_type_name(q.type())));
        quantization_config out;
        auto text = [&](std::string_view key) -> std::string {
            simdjson::dom::element e;
            if (q.at_key(key).get(e) != simdjson::SUCCESS || e.is_null()) return {};
            std::string_view s;
            if (e.get_string().get(s))
                fail("'" + where + "." + std::string(key) + "' must be a string, found " +
                     std::string(detail::json_type_name(e.type())));
            return std::string(s);
        };
        auto flag = [&](std::string_view key) {
            simdjson::dom::element e;
            bool v = false;
            if (q.at_key(key).get(e) != simdjson::SUCCESS || e.is_null()) return false;
            if (e.get_bool().get(v) != simdjson::SUCCESS)
                fail("'" + where + "." + std::string(key) + "' must be true or false, found " +
                     std::string(detail::json_type_name(e.type())));
            return v;
        };
        out.quant_method = text("quant_method");
        out.format = text("format");
        out.quant_algo = upper_case(text("quant_algo"));  // ModelOpt may write it lower case
        out.version = text("version");
        out.checkpoint_format = text("checkpoint_format");
        out.act_order = flag("desc_act");
        simdjson::dom::element g;
        if (q.at_key("group_size").get(g) == simdjson::SUCCESS && !g.is_null()) {
            std::int64_t v = 0;  // GPTQ writes -1 for per channel
            if (g.get_int64().get(v) != simdjson::SUCCESS || v == 0 || v < -1)
                fail("'" + where + ".group_size' must be a positive integer or -1");
            out.group_size = v < 0 ? 0 : static_cast<std::uint64_t>(v);
        }
        simdjson::dom::element bits;
        if (q.at_key("bits").get(bits) == simdjson::SUCCESS && !bits.is_null() &&
            (!detail::json_to_uint64(bits, out.bits) || out.bits == 0 || out.bits > 64))
            fail("'" + where + ".bits' must be an integer from 1 to 64");
        if (out.quant_method == "bitsandbytes") {  // 8: LLM.int8(); 4: NF4 / FP4
            const bool eight = flag("load_in_8bit"), four = flag("load_in_4bit");
            if (eight && four) fail("'" + where + "' says both load_in_8bit and load_in_4bit");
            out.bits = eight ? 8 : four ? 4 : 0;
        }
        // compressed-tensors' scheme is its config_groups; ModelOpt's newer config.json mirrors
        // its quant_algo (and quantized_layers) there, one group an algorithm: not read.
        simdjson::dom::element groups;
        if (out.quant_method == "compressed-tensors" &&
            q.at_key("config_groups").get(groups) == simdjson::SUCCESS && !groups.is_null())
            config_groups_into(out, groups, where + ".config_groups", file);
        simdjson::dom::element layers;
        if (q.at_key("quantized_layers").get(layers) == simdjson::SUCCESS && !layers.is_null())
            quantized_layers_into(out, layers, where + ".quantized_layers", file);
        if (out.quant_algo == "MIXED_PRECISION" && out.layer_algos.empty())
            fail("'" + where +
                 "' says quant_algo MIXED_PRECISION without a non-empty 'quantized_layers'");
        simdjson::dom::element b;
        if (q.at_key("weight_block_size").get(b) == simdjson::SUCCESS && !b.is_null()) {
            simdjson::dom::array a;
            std::uint64_t v[2] = {0, 0};
            std::size_t n = 0;
            bool ok = b.get_array().get(a) == simdjson::SUCCESS;
            if (ok)
                for (auto item : a) ok = ok && n < 2 && detail::json_to_uint64(item, v[n++]);
            if (!ok || n != 2 || v[0] == 0 || v[1] == 0)
                fail("'" + where + ".weight_block_size' must be two positive integers");
            out.block_rows = v[0];
            out.block_cols = v[1];
        }
        return out;
    }

    // Multi-head latent attention's ranks and head sizes (deepseek_v2, deepseek_v3).
    void parse_latent_attention() {
        model_config& c = config_;
        c.q_lora_rank = get_size("q_lora_rank");
        if (c.q_lora_rank && *c.q_lora_rank == 0) fail("'q_lora_rank' must be positive or null");
        c.kv_lora_rank = get_size("kv_lora_rank").value_or(0);
        c.qk_nope_head_dim = get_size("qk_nope_head_dim").value_or(0);
        c.qk_rope_head_dim = get_size("qk_rope_head_dim").value_or(0);
        c.v_head_dim = get_size("v_head_dim").value_or(0);
    }

    simdjson::padded_string text_;
    detail::json_document doc_;  // owns the document's tape
    simdjson::dom::element root_;
    simdjson::dom::element text_section_;
    bool has_text_config_ = false;
    std::string outer_model_type_;
    std::string source_;
    model_config config_;
};

// Parses config.json into a model_config (errc::invalid_config for a wrong file).
[[nodiscard]] inline model_config load_model_config(const std::filesystem::path& p) {
    return config_file::load(p).config();
}
[[nodiscard]] inline model_config parse_model_config(std::string_view json) {
    return config_file::parse(json).config();
}

}  // namespace safeshard
