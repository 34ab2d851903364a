// A quantization scheme, as far as a cut needs it: which config.json quantization_config it
// is, and the companion tensors each quantized weight may carry ("X.weight" ->
// "X.weight_scale_inv"), whose grid over the weight (shard/companion.hpp) the stored shapes
// say. Each scheme is one header of this folder and one line of `quantization_schemes`
// (schemes.hpp).
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "safeshard/core/model_config.hpp"

namespace safeshard {

struct quantization_scheme {
    std::string_view name{};  // as errors and README say it
    bool (*matches)(const quantization_config&) = nullptr;
    // Companion suffixes: weight "X.weight" carries "X.<suffix>" where the checkpoint has it.
    std::span<const std::string_view> companions{};
};

// "X.weight" -> "X.<suffix>"; empty for a name that does not end in ".weight".
[[nodiscard]] inline std::string companion_name(std::string_view weight, std::string_view suffix) {
    constexpr std::string_view w = "weight";
    if (!weight.ends_with("." + std::string(w))) return {};
    std::string out(weight.substr(0, weight.size() - w.size()));
    out += suffix;
    return out;
}

// The weight a companion name of scheme `s` belongs to ("X.weight_scale_inv" -> "X.weight"),
// or nullopt for a name of none of its suffixes.
[[nodiscard]] inline std::optional<std::string> companion_weight(const quantization_scheme& s,
                                                                 std::string_view n) {
    for (const std::string_view suffix : s.companions)
        if (n.size() > suffix.size() + 1 && n.ends_with(suffix) &&
            n[n.size() - suffix.size() - 1] == '.')
            return std::string(n.substr(0, n.size() - suffix.size())) + "weight";
    return std::nullopt;
}
}  // namespace safeshard
