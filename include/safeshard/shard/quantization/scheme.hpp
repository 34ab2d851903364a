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

// A companion a quantized weight "X.weight" may carry: "X.<suffix>", its grid over the
// weight's values read from the stored shapes against `block` (nullptr: the scheme's), or,
// `whole`, a tensor of any shape every rank holds as stored (compressed-tensors'
// weight_shape).
struct companion_spec {
    std::string_view suffix{};
    scale_block (*block)(const quantization_config&) = nullptr;
    bool whole = false;
};

struct quantization_scheme {
    std::string_view name{};  // as errors and README say it
    bool (*matches)(const quantization_config&) = nullptr;
    // The companions its weights carry where the checkpoint has them.
    std::span<const companion_spec> companions{};
    // The block of its scales' grid; nullptr: config.json's weight_block_size.
    scale_block (*block)(const quantization_config&) = nullptr;
    // Packed weights: a weight stored in `packed_dtype` holds packed_values(q) values a stored
    // element along K (dim 1), low values first; nullptr: not packed.
    dtype packed_dtype = dtype::u8;
    std::uint64_t (*packed_values)(const quantization_config&) = nullptr;
    // The weight's own suffix in the checkpoint where it is not "weight" (compressed-tensors'
    // packed forms: "X.weight_packed"); the plan names it so too.
    std::string_view stored_weight = "weight";
};

// The block of companion c's grid (of scheme s) for a checkpoint of quantization_config q.
[[nodiscard]] inline scale_block scale_block_of(const quantization_scheme& s,
                                                const companion_spec& c,
                                                const quantization_config& q) {
    if (c.block) return c.block(q);
    return s.block ? s.block(q) : scale_block{q.block_rows, q.block_cols};
}

// The values a stored element of dtype t holds along K (1 unless s packs them in t; 0 for a
// config whose values do not fill the element: check_config refuses it first).
[[nodiscard]] inline std::uint64_t packed_values_of(const quantization_scheme& s,
                                                    const quantization_config& q,
                                                    dtype t) noexcept {
    return s.packed_values && t == s.packed_dtype ? s.packed_values(q) : 1;
}

// Whether q's values fill s's packed elements (num_bits divides the element's bits).
[[nodiscard]] inline bool packs_whole(const quantization_scheme& s,
                                      const quantization_config& q) noexcept {
    return !s.packed_values || s.packed_values(q) != 0;
}

// A checkpoint tensor of scheme s as its weight's values, for the shapes config.json implies:
// a weight stored under the scheme's own suffix ("X.weight_packed") named "X.weight", a packed
// one's K in values ([N, K / p] -> [N, K]); nullopt for a tensor that is as it is.
[[nodiscard]] inline std::optional<std::pair<std::string, shape>> weight_values(
    const quantization_scheme& s, const quantization_config& q, std::string_view name, dtype t,
    const shape& stored) {
    const std::uint64_t per = packed_values_of(s, q, t);
    const bool renamed = s.stored_weight != "weight" && name.size() > s.stored_weight.size() &&
                         name.ends_with(s.stored_weight) &&
                         name[name.size() - s.stored_weight.size() - 1] == '.';
    if (per == 1 && !renamed) return std::nullopt;
    std::string n(renamed ? name.substr(0, name.size() - s.stored_weight.size()) : name);
    if (renamed) n += "weight";
    shape values = stored;
    if (per > 1 && n.ends_with(".weight") && values.rank() == 2 && values[1] <= ~0ull / per)
        values[1] *= per;
    return std::pair{std::move(n), values};
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
// the weight itself where s stores it under another suffix ("X.weight_packed" -> "X.weight"),
// or nullopt for a name of none of its suffixes.
[[nodiscard]] inline std::optional<std::string> companion_weight(const quantization_scheme& s,
                                                                 std::string_view n) {
    if (const std::string_view own = s.stored_weight;
        own != "weight" && n.size() > own.size() + 1 && n.ends_with(own) &&
        n[n.size() - own.size() - 1] == '.')  // the weight itself, stored under its own suffix
        return std::string(n.substr(0, n.size() - own.size())) + "weight";
    for (const companion_spec& c : s.companions)
        if (const std::string_view suffix = c.suffix; n.size() > suffix.size() + 1 &&
                                                      n.ends_with(suffix) &&
                                                      n[n.size() - suffix.size() - 1] == '.')
            return std::string(n.substr(0, n.size() - suffix.size())) + "weight";
    return std::nullopt;
}
}  // namespace safeshard
