// A model's layer structure, from config.json: how many decoder layers, which of them hold
// experts (a mixture of experts), and how many extra layers follow (multi-token prediction
// modules, stored as layers num_hidden_layers, num_hidden_layers + 1, ...). Schema entries say
// which layers they apply to with a layer_rule.
#pragma once

#include <cstdint>
#include <span>

namespace safeshard {

// Which layers a per-layer entry ("{i}") applies to.
enum class layer_rule : std::uint8_t {
    every,     // every layer (the extra trailing layers too: they are decoder layers)
    dense,     // the layers with a dense MLP
    sparse,    // the layers with experts
    trailing,  // the extra layers after num_hidden_layers only (their own input projections)
};

struct layer_plan {
    std::uint64_t layers = 0;                          // num_hidden_layers
    std::uint64_t experts = 0;                         // 0: a dense model
    std::uint64_t first_k_dense_replace = 0;           // the first k layers are dense
    std::uint64_t decoder_sparse_step = 1;             // qwen: experts where (l + 1) % step == 0
    std::uint64_t moe_layer_freq = 1;                  // deepseek: experts where l % freq == 0
    std::span<const std::uint64_t> mlp_only_layers{};  // dense whatever the rest says
    std::uint64_t trailing_layers = 0;                 // after num_hidden_layers

    // Decoder layers and trailing ones.
    [[nodiscard]] constexpr std::uint64_t total() const noexcept {
        return layers + trailing_layers;
    }
    [[nodiscard]] constexpr bool trailing(std::uint64_t layer) const noexcept {
        return layer >= layers && layer < total();
    }
    // Whether a layer holds experts (a trailing layer of a mixture does).
    [[nodiscard]] constexpr bool sparse(std::uint64_t layer) const noexcept {
        if (experts == 0 || layer >= total()) return false;
        if (layer >= layers) return true;
        if (layer < first_k_dense_replace) return false;
        for (const std::uint64_t l : mlp_only_layers)
            if (l == layer) return false;
        if (moe_layer_freq > 1 && layer % moe_layer_freq != 0) return false;
        return decoder_sparse_step <= 1 || (layer + 1) % decoder_sparse_step == 0;
    }
    [[nodiscard]] constexpr bool applies(layer_rule r, std::uint64_t layer) const noexcept {
        switch (r) {
            case layer_rule::every: return layer < total();
            case layer_rule::dense: return layer < total() && !sparse(layer);
            case layer_rule::sparse: return sparse(layer);
            case layer_rule::trailing: return trailing(layer);
        }
        return false;
    }
};

}  // namespace safeshard
