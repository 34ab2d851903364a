// What shard/ needs to know of a model: filled by format/ from config.json, read by shard/.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "safeshard/core/dtype.hpp"

namespace safeshard {

// config.json's quantization_config, as far as a cut needs it (the scheme's own loaders read
// the rest).
struct quantization_config {
    std::string quant_method;  // "fp8", "compressed-tensors", "modelopt", "gptq", ...
    std::string format;        // compressed-tensors: "float-quantized", "pack-quantized", ...
    std::string quant_algo;    // modelopt: "FP8", "NVFP4", "MIXED_PRECISION" (upper case)
    // modelopt's MIXED_PRECISION: the quant_algo of its quantized_layers, each once, sorted.
    std::vector<std::string> layer_algos;
    // fp8's weight_block_size [rows, columns] (DeepSeek-V3: [128, 128]); 0: none given.
    std::uint64_t block_rows = 0;
    std::uint64_t block_cols = 0;
    // Values sharing one scale along K (NVFP4: 16, MXFP4: 32, GPTQ/AWQ: 128); 0: none given.
    std::uint64_t group_size = 0;
    // Bits of a quantized integer weight (GPTQ/AWQ "bits", compressed-tensors' num_bits,
    // bitsandbytes' load_in_8bit / load_in_4bit); 0: none given.
    std::uint64_t bits = 0;
    // Act order: the groups numbered by a g_idx, not by place along K (GPTQ's desc_act,
    // compressed-tensors' actorder "group").
    bool act_order = false;
    // AWQ's "version" ("gemm", "gemv", ...); empty: none given.
    std::string version;
    // GPTQ's "checkpoint_format": "gptq" (v1: each zero point stored less one) or "gptq_v2"
    // (stored as it is); empty: none given (v1).
    std::string checkpoint_format;
    friend bool operator==(const quantization_config&, const quantization_config&) = default;
};

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
    // Absent for a checkpoint that is not quantized (or does not say).
    std::optional<quantization_config> quantization;

    // Mixtures of experts (0 and empty for a dense model).
    std::uint64_t num_experts = 0;            // num_local_experts, num_experts or n_routed_experts
    std::uint64_t moe_intermediate_size = 0;  // an expert's (0: intermediate_size)
    std::uint64_t shared_expert_intermediate_size = 0;  // qwen2_moe's shared expert
    std::uint64_t n_shared_experts = 0;                 // deepseek: shared experts, fused
    std::uint64_t first_k_dense_replace = 0;            // the first k layers are dense
    // qwen: layer l has experts when (l + 1) % step == 0 (llama4's interleave_moe_layer_step)
    std::uint64_t decoder_sparse_step = 1;
    std::uint64_t intermediate_size_mlp = 0;     // llama4: the dense layers' (intermediate_size
                                                 // is then the experts')
    std::uint64_t moe_layer_freq = 1;            // deepseek: ... when l % freq == 0
    std::vector<std::uint64_t> mlp_only_layers;  // dense whatever the rest says (llama4: the
                                                 // layers moe_layers does not list)
    std::uint64_t num_nextn_predict_layers = 0;  // multi-token prediction layers
    // Multi-head latent attention (deepseek_v2, deepseek_v3): absent q_lora_rank (null) means
    // q_proj instead of q_a_proj / q_b_proj.
    std::optional<std::uint64_t> q_lora_rank;
    std::uint64_t kv_lora_rank = 0;
    std::uint64_t qk_nope_head_dim = 0;
    std::uint64_t qk_rope_head_dim = 0;
    std::uint64_t v_head_dim = 0;

    friend bool operator==(const model_config&, const model_config&) = default;
};

}  // namespace safeshard
