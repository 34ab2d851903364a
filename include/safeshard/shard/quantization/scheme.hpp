// A quantization scheme, as far as a cut needs it: which config.json quantization_config it
// is, the companion tensors each quantized weight may carry ("X.weight" ->
// "X.weight_scale_inv"), whose grid over the weight (shard/companion.hpp) the stored shapes
// and the scheme's block say, and how its weights are stored (packed values, their name). Each
// scheme is one header of this folder and one line of `quantization_schemes` (schemes.hpp).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "safeshard/core/dtype.hpp"
#include "safeshard/core/model_config.hpp"
#include "safeshard/core/shape.hpp"

namespace safeshard {

// A scale grid's block over its weight, in the weight's values (not its stored elements);
// 0: none declared (the grid is then per tensor or per channel, read from the shapes).
struct scale_block {
    std::uint64_t rows = 0;
    std::uint64_t cols = 0;
};

struct quantization_scheme {
    std::string_view name{};  // as errors and README say it
    bool (*matches)(const quantization_config&) = nullptr;
    // Companion suffixes: weight "X.weight" carries "X.<suffix>" where the checkpoint has it.
    std::span<const std::string_view> companions{};
    // The block of its scales' grid; nullptr: config.json's weight_block_size.
    scale_block (*block)(const quantization_config&) = nullptr;
    // Packed weights: a weight stored in `packed_dtype` holds `packed_values` values a stored
    // element along K (dim 1), low values first; 1: not packed.
    dtype packed_dtype = dtype::u8;
    std::uint64_t packed_values = 1;
    // The weight's own suffix in the checkpoint where it is not "weight" (compressed-tensors'
    // packed forms: "X.weight_packed"); the plan names it so too.
    std::string_view stored_weight = "weight";
};

// The block of s's scale grid for a checkpoint of quantization_config q.
[[nodiscard]] inline scale_block scale_block_of(const quantization_scheme& s,
                                                const quantization_config& q) {
    return s.block ? s.block(q) : scale_block{q.block_rows, q.block_cols};
}

// The values a stored element of dtype t holds along K (1 unless s packs them in t).
[[nodiscard]] inline std::uint64_t packed_values_of(const quantization_scheme& s,
                                                    dtype t) noexcept {
    return s.packed_values > 1 && t == s.packed_dtype ? s.packed_values : 1;
}

// A checkpoint tensor of scheme s as its weight's values, for the shapes config.json implies:
// a weight stored under the scheme's own suffix ("X.weight_packed") named "X.weight", a packed
// one's K in values ([N, K / p] -> [N, K]); any other tensor as it is.
[[nodiscard]] inline std::pair<std::string, shape> weight_values(const quantization_scheme& s,
                                                                 std::string_view name, dtype t,
                                                                 shape stored) {
    std::string n(name);
    const std::string own = "." + std::string(s.stored_weight);
    if (s.stored_weight != "weight" && n.ends_with(own))
        n = n.substr(0, n.size() - own.size()) + ".weight";
    const std::uint64_t per = packed_values_of(s, t);
    if (per > 1 && n.ends_with(".weight") && stored.rank() == 2 && stored[1] <= ~0ull / per)
        stored[1] *= per;
    return {std::move(n), stored};
}

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
