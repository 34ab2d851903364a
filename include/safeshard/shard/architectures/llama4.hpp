// llama4 (the text model of Llama-4 Scout and Maverick; config.json nests it in text_config,
// model_type llama4_text): llama's attention (its QK norm has no weights), and under
// feed_forward on the layers with experts (every interleave_moe_layer_step-th) a router, the
// experts stacked in one tensor per projection, gate and up concatenated on the last dim of
// gate_up_proj [E, H, 2I] (transformers' modeling_llama4.py: gate_up.chunk(2, dim=-1)), and
// one shared expert of intermediate_size; the other layers a dense MLP of
// intermediate_size_mlp (tests/data/moe/README.md, "llama4"). A multimodal checkpoint's
// names carry "language_model." (load and plan find it: resolved_options).
#pragma once

#include "safeshard/shard/architectures/decoder.hpp"

namespace safeshard {

inline constexpr architecture_table llama4_text_table =
    decoder_table("llama4_text", {.feed_forward = true});
inline constexpr architecture_table llama4_table = decoder_table("llama4", {.feed_forward = true});

}  // namespace safeshard
