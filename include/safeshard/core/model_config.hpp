// What shard/ needs to know of a model: filled by format/ from config.json, read by shard/.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "safeshard/core/dtype.hpp"

namespace safeshard {

// A plain struct, no parsing here. Zero means "not given" for the sizes; format/ applies
// config.json's defaults (num_key_value_heads = num_attention_heads, head_dim =
// hidden_size / num_attention_heads) before handing it over.
struct model_config {
    std::string model_type;                  // "llama", "qwen2", ...
    std::vector<std::string> architectures;  // "LlamaForCausalLM", ...
    std::uint64_t hidden_size = 0;
    std::uint64_t intermediate_size = 0;
    std::uint64_t num_hidden_layers = 0;
    std::uint64_t num_attention_heads = 0;
    std::uint64_t num_key_value_heads = 0;
    std::uint64_t head_dim = 0;
    std::uint64_t vocab_size = 0;
    // Absent when config.json does not set it: the architecture decides the default.
    std::optional<bool> tie_word_embeddings;
    // From `torch_dtype` or `dtype`, when present and a known dtype.
    std::optional<dtype> checkpoint_dtype;

    friend bool operator==(const model_config&, const model_config&) = default;
};

}  // namespace safeshard
