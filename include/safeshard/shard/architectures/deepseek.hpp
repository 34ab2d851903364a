// deepseek_v2, deepseek_v3 and kimi_k2 (DeepSeek-V3's layout): multi-head latent attention,
// the first first_k_dense_replace layers dense (intermediate_size), the rest mixtures of
// n_routed_experts experts (moe_intermediate_size) with n_shared_experts shared ones fused in
// mlp.shared_experts; deepseek_v3 adds the router's e_score_correction_bias and the
// num_nextn_predict_layers multi-token prediction layers after num_hidden_layers (loaded with
// schema_options::multi_token_prediction). Names as in transformers' modeling_deepseek_v3.py
// and vLLM's deepseek_v2.py / deepseek_mtp.py.
#pragma once

#include "safeshard/shard/architectures/decoder.hpp"

namespace safeshard {

inline constexpr decoder_traits deepseek_v2_traits{
    .experts = true, .shared_experts = true, .latent_attention = true};
inline constexpr decoder_traits deepseek_v3_traits{.experts = true,
                                                   .shared_experts = true,
                                                   .score_correction = true,
                                                   .latent_attention = true,
                                                   .multi_token_prediction = true};

inline constexpr architecture_table deepseek_v2_table =
    decoder_table("deepseek_v2", deepseek_v2_traits);
inline constexpr architecture_table deepseek_v3_table =
    decoder_table("deepseek_v3", deepseek_v3_traits);
inline constexpr architecture_table kimi_k2_table = decoder_table("kimi_k2", deepseek_v3_traits);

}  // namespace safeshard
