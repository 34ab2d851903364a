// gpt_oss (OpenAI's gpt-oss-20b, gpt-oss-120b): llama's attention with q/k/v and o_proj
// biases and one attention-sink logit per query head (self_attn.sinks, split with the query
// heads); on every layer a router with a bias (mlp.router) and the experts stacked in one
// tensor per projection, gate and up interleaved on the last dim of gate_up_proj
// [E, H, 2I] (gate = even columns; transformers' modeling_gpt_oss.py GptOssExperts), each
// with a bias. A rank takes a contiguous range of whole (gate, up) pairs (vLLM's gpt_oss.py:
// weight[:, :, 2·start : 2·end]). The published checkpoints store the experts in MXFP4
// (quant_method mxfp4: gate_up_proj_blocks / _scales, down_proj_blocks / _scales, output-major),
// which the table names instead when config.json says so, cut in whole blocks as vLLM cuts
// them (decoder.hpp, "gpt-oss as published"; tests/data/moe/README.md, "gpt_oss").
#pragma once

#include "safeshard/shard/architectures/decoder.hpp"

namespace safeshard {

inline constexpr architecture_table gpt_oss_table =
    decoder_table("gpt_oss", {.qkv_bias = true, .gpt_oss_experts = true, .attention_sinks = true});

}  // namespace safeshard
