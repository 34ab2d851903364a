// The model factory: schemas by config.json's model_type; users register their own.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "safeshard/core/error.hpp"
#include "safeshard/core/model_config.hpp"
#include "safeshard/shard/architectures/gemma.hpp"
#include "safeshard/shard/architectures/llama.hpp"
#include "safeshard/shard/architectures/phi3.hpp"
#include "safeshard/shard/architectures/qwen.hpp"
#include "safeshard/shard/schema.hpp"

namespace safeshard {

using architecture_builder = std::function<schema(const model_config&, const schema_options&)>;

// A plain value (not synchronised); the process-wide one is reached through the locked
// free functions below.
class architecture_registry {
public:
    // llama, mistral, qwen2, qwen3, gemma, gemma2, phi3.
    [[nodiscard]] static architecture_registry with_builtins() {
        architecture_registry r;
        r.add("llama",
              [](const model_config& c, const schema_options& o) { return llama_schema(c, o); });
        r.add("mistral",
              [](const model_config& c, const schema_options& o) { return mistral_schema(c, o); });
        r.add("qwen2",
              [](const model_config& c, const schema_options& o) { return qwen2_schema(c, o); });
        r.add("qwen3",
              [](const model_config& c, const schema_options& o) { return qwen3_schema(c, o); });
        r.add("gemma",
              [](const model_config& c, const schema_options& o) { return gemma_schema(c, o); });
        r.add("gemma2",
              [](const model_config& c, const schema_options& o) { return gemma2_schema(c, o); });
        r.add("phi3",
              [](const model_config& c, const schema_options& o) { return phi3_schema(c, o); });
        return r;
    }

    // duplicate_name when model_type is taken, unless `replace`.
    void add(std::string model_type, architecture_builder builder, bool replace = false) {
        if (model_type.empty() || !builder)
            throw error(errc::invalid_argument, "an architecture needs a model_type and a builder");
        if (!replace && builders_.contains(model_type))
            throw error(errc::duplicate_name,
                        "model_type '" + model_type + "' is already registered");
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

private:
    std::map<std::string, architecture_builder, std::less<>> builders_{};
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

}  // namespace safeshard
