// The model factory: schemas by config.json's model_type; users register their own.
#pragma once

#include <array>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "safeshard/core/error.hpp"
#include "safeshard/core/model_config.hpp"
#include "safeshard/shard/architectures/deepseek.hpp"
#include "safeshard/shard/architectures/gemma.hpp"
#include "safeshard/shard/architectures/gpt_oss.hpp"
#include "safeshard/shard/architectures/llama.hpp"
#include "safeshard/shard/architectures/llama4.hpp"
#include "safeshard/shard/architectures/mixtral.hpp"
#include "safeshard/shard/architectures/phi3.hpp"
#include "safeshard/shard/architectures/qwen.hpp"
#include "safeshard/shard/schema.hpp"

namespace safeshard {

using architecture_builder = std::function<schema(const model_config&, const schema_options&)>;

// The built-in architectures' tables.
inline constexpr std::array builtin_architectures = {
    llama_table,     mistral_table,   qwen2_table,       qwen3_table,
    gemma_table,     gemma2_table,    phi3_table,        mixtral_table,
    qwen2_moe_table, qwen3_moe_table, deepseek_v2_table, deepseek_v3_table,
    kimi_k2_table,   gpt_oss_table,   llama4_text_table, llama4_table,
};

// A plain value (not synchronised); the process-wide one is reached through the locked
// free functions below.
class architecture_registry {
public:
    // builtin_architectures: the dense decoders (llama, mistral, qwen2, qwen3, gemma, gemma2,
    // phi3) and the mixtures of experts (mixtral, qwen2_moe, qwen3_moe, deepseek_v2,
    // deepseek_v3, kimi_k2).
    [[nodiscard]] static architecture_registry with_builtins() {
        architecture_registry r;
        for (const architecture_table& t : builtin_architectures) r.add(t);
        return r;
    }

    // A table: its schema is generated from it, and it says the shapes config.json implies.
    // The table must outlive the registry (a constexpr one does).
    void add(const architecture_table& t, bool replace = false) {
        add(
            std::string(t.model_type),
            [&t](const model_config& c, const schema_options& o) { return schema_of(t, c, o); },
            replace);
        tables_[std::string(t.model_type)] = &t;
    }

    // duplicate_name when model_type is taken, unless `replace`.
    void add(std::string model_type, architecture_builder builder, bool replace = false) {
        if (model_type.empty() || !builder)
            throw error(errc::invalid_argument, "an architecture needs a model_type and a builder");
        if (!replace && builders_.contains(model_type))
            throw error(errc::duplicate_name,
                        "model_type '" + model_type + "' is already registered");
        tables_.erase(model_type);
        builders_[std::move(model_type)] = std::move(builder);
    }

    [[nodiscard]] bool contains(std::string_view model_type) const {
        return builders_.find(model_type) != builders_.end();
    }

    // Sorted.
    [[nodiscard]] std::vector<std::string> known() const {
        std::vector<std::string> v;
        for (const auto& [k, b] : builders_) v.push_back(k);
        return v;
    }

    // The builder of a registered model_type (invalid_config otherwise).
    [[nodiscard]] const architecture_builder& builder(std::string_view model_type) const {
        const auto it = builders_.find(model_type);
        if (it == builders_.end())
            throw error(errc::invalid_config,
                        "unknown model_type '" + std::string(model_type) + "'");
        return it->second;
    }

    // The schema of config.json's model_type; invalid_config listing the known ones.
    [[nodiscard]] schema build(const model_config& c, const schema_options& o = {}) const {
        const auto it = builders_.find(c.model_type);
        if (it == builders_.end()) {
            std::string list;
            for (const auto& [k, b] : builders_) list += (list.empty() ? "" : ", ") + k;
            throw error(errc::invalid_config,
                        "unknown model_type '" + c.model_type + "' (known: " + list +
                            "); register one, or load with a replicate_all schema");
        }
        return it->second(c, o);
    }

    // The table of a model_type registered as one (nullptr otherwise).
    [[nodiscard]] const architecture_table* table(std::string_view model_type) const {
        const auto it = tables_.find(model_type);
        return it == tables_.end() ? nullptr : it->second;
    }

private:
    std::map<std::string, architecture_builder, std::less<>> builders_{};
    std::map<std::string, const architecture_table*, std::less<>> tables_{};
};

namespace detail {
inline std::mutex& registry_mutex() {
    static std::mutex m;
    return m;
}
inline architecture_registry& registry_instance() {
    static architecture_registry r = architecture_registry::with_builtins();
    return r;
}
}  // namespace detail

// The process-wide registry, thread-safe.
inline void register_architecture(std::string model_type, architecture_builder builder,
                                  bool replace = false) {
    const std::lock_guard lock(detail::registry_mutex());
    detail::registry_instance().add(std::move(model_type), std::move(builder), replace);
}

[[nodiscard]] inline std::vector<std::string> known_architectures() {
    const std::lock_guard lock(detail::registry_mutex());
    return detail::registry_instance().known();
}

[[nodiscard]] inline bool architecture_registered(std::string_view model_type) {
    const std::lock_guard lock(detail::registry_mutex());
    return detail::registry_instance().contains(model_type);
}

// The schema for a config.json, from the process-wide registry. It expands
// num_hidden_layers as given: check the config against the checkpoint first (check_config,
// load/config_check.hpp), as load_plan::build does.
[[nodiscard]] inline schema make_schema(const model_config& c, const schema_options& o = {}) {
    architecture_registry one;  // the builder alone, called outside the lock
    {
        const std::lock_guard lock(detail::registry_mutex());
        const auto& r = detail::registry_instance();
        if (!r.contains(c.model_type)) return r.build(c, o);  // throws, listing the known
        one.add(c.model_type, r.builder(c.model_type));
    }
    return one.build(c, o);
}

// The table that says which shapes config.json implies for model_type's tensors: its own when
// registered as a table, otherwise the Hugging Face decoder naming (llama's table).
[[nodiscard]] inline const architecture_table& architecture_shapes(std::string_view model_type) {
    const std::lock_guard lock(detail::registry_mutex());
    const auto* t = detail::registry_instance().table(model_type);
    return t ? *t : llama_table;
}

}  // namespace safeshard
