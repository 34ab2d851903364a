"""Differential test of `safeshard export` / `safeshard merge` on mixtures of experts, with
numpy slicing as the oracle: for every architecture below and every world of 1 to 8 ranks, a
tiny random BF16 checkpoint written by the reference safetensors library is exported with each
expert-parallel size ep in {1, 2, world} that divides the world and is at most the number of
experts (both expert placements when ep > 1); every rank's tensors, read back with the
reference library, must be exactly the ones the rules below name (no tensor missing, none
extra), each equal to the slice numpy cuts from the original (dtype, shape and bytes); the
merge must give the original tensors bit for bit.
The first six architectures below are exported twice: with one tensor per expert, and with
each layer's experts stacked (below), the same weights in both; and each of those twice more
with --fuse-experts (the engine's fused experts, below). gpt_oss is exported in its own
stacked form, BF16 and as published (MXFP4, below), llama4 in its stacked form twice: as a text model, and nested in a
multimodal checkpoint; --fuse-experts is refused for both (their [E, H, 2I] would need a
transpose).

Architectures (model_type), with the names and config.json fields of the published
checkpoints (tests/data/moe/README.md, and each folder's config.json and tensors.txt there;
the modeling code: transformers' modeling_mixtral.py, modeling_qwen2_moe.py,
modeling_qwen3_moe.py, modeling_deepseek_v3.py, DeepSeek's modeling_deepseek.py for V2):
mixtral, qwen2_moe, qwen3_moe, deepseek_v2 (q_lora_rank null on odd worlds, as in
DeepSeek-V2-Lite), deepseek_v3 (with one multi-token prediction layer) and kimi_k2; gpt_oss
and llama4 (tests/data/moe/README.md, sections "gpt_oss" and "llama4", which quote
transformers' modeling_gpt_oss.py and modeling_llama4.py and vLLM's gpt_oss.py and llama4.py):
- gpt_oss: every layer with experts, stored stacked the other way round,
  mlp.experts.gate_up_proj [E, H, 2I] with gate and up interleaved on the last dim (gate =
  even columns: gate_up[..., ::2]), mlp.experts.gate_up_proj_bias [E, 2I] likewise,
  mlp.experts.down_proj [E, I, H], mlp.experts.down_proj_bias [E, H]; the router
  mlp.router.weight / .bias; q/k/v/o_proj biases; self_attn.sinks [nh]; head_dim with
  nh * head_dim != H; and as published (quant_method mxfp4): the experts output-major as
  MXFP4, gate_up_proj_blocks uint8 [E, 2I, H/32, 16] (gate and up interleaved on the rows),
  gate_up_proj_scales [E, 2I, H/32], down_proj_blocks [E, H, I/32, 16], down_proj_scales
  [E, H, I/32], the BF16 biases beside, cut as vLLM's gpt_oss.py _load_weights_mxfp4 cuts
  them (mxfp4_expected, its statements transcribed: cdiv(I/32, W) whole blocks a rank, the
  last ranks fewer, zero-padded, the same range for gate_up's rows and down's K blocks);
- llama4: config.json either llama4_text (the text model alone, names model.*, lm_head.*) or
  the published multimodal nesting (model_type llama4, Llama4ForConditionalGeneration, the
  text model's fields in text_config, a vision_config beside), where every text tensor is
  named under language_model. and a vision tower (vision_model.*) and
  multi_modal_projector.linear_1.weight sit beside it. With interleave_moe_layer_step 2,
  layers 1 and 3 have feed_forward.router.weight, feed_forward.experts.gate_up_proj
  [E, H, 2I] with gate and up concatenated on the last dim (gate = columns [0, I), up =
  [I, 2I): gate_up.chunk(2, dim=-1)), feed_forward.experts.down_proj [E, I, H] and a shared
  expert feed_forward.shared_expert.{gate,up,down}_proj of intermediate_size; layers 0 and 2
  a dense feed_forward.{gate,up,down}_proj of intermediate_size_mlp. No biases.

The rules, for rank r of a world of N ranks with ep expert groups of W = N / ep consecutive
ranks (group g = r // W, position p = r % W):
- experts: E experts spread over the groups; linear: base = E // ep, rem = E % ep, group g
  owns [g * base + min(g, rem), that + base + (1 if g < rem else 0)); round_robin: the
  experts e with e % ep == g. A rank holds its group's experts only; of each, gate and up
  (mixtral's w1, w3) split on dim 0 in W parts, down (w2) on dim 1, part p;
- stacked experts (the form transformers v5 saves its mixtures of experts in, its fused
  experts, save_pretrained with save_original_format=False; vLLM loads it since #36997): in
  every layer with experts (the multi-token prediction layer too),
  model.layers.L.mlp.experts.gate_up_proj [E, 2I, H] holds each expert's gate rows [I, H]
  then its up rows, and model.layers.L.mlp.experts.down_proj [E, H, I] each expert's down
  projection (no .weight suffix on either); Mixtral's router moves from
  block_sparse_moe.gate.weight to mlp.gate.weight, every other tensor keeps its name. A
  rank's gate_up_proj is [E_local, 2I / W, H]: for each of its group's experts in increasing
  order, gate rows [p I / W, (p + 1) I / W) then up rows of the same range; its down_proj
  [E_local, H, I / W] the same experts' columns [p I / W, (p + 1) I / W);
- fused experts (--fuse-experts; vLLM's FusedMoE w13_weight and w2_weight, fused_moe/layer.py
  loading gate as w1 into the first half of each expert's rows and up as w3 into the
  second): in every layer with experts, from either form, MODULE.w13_weight
  [E_local, 2I / W, H] holds for each of the group's experts in increasing order its gate
  rows [p I / W, (p + 1) I / W) then its up rows of the same range, and MODULE.w2_weight
  [E_local, H, I / W] its down columns [p I / W, (p + 1) I / W); MODULE is
  model.layers.L.block_sparse_moe.experts for Mixtral's per-expert checkpoints and
  model.layers.L.mlp.experts otherwise; the experts' own tensors are not in the rank; the
  merge gives back the form exported (per-expert or stacked) bit for bit;
- gpt_oss's and llama4's experts ([E, H, 2I] and [E, I, H]): a rank's gate_up_proj is
  [E_local, H, 2I / W], for each of its group's experts in increasing order: gpt_oss the
  columns [2 p I / W, 2 (p + 1) I / W) (whole gate/up pairs, as vLLM's
  weight[:, :, 2 * tp_rank_start : 2 * tp_rank_end]), its gate_up_proj_bias [E_local, 2I / W]
  the same columns; llama4 the gate columns [p I / W, (p + 1) I / W) then the up columns
  [I + p I / W, I + (p + 1) I / W); down_proj [E_local, I / W, H] the rows
  [p I / W, (p + 1) I / W); gpt_oss's down_proj_bias (row-parallel) [E_local, H], each held
  expert's row whole;
- routers (mlp.gate.weight, block_sparse_moe.gate.weight, gpt_oss's mlp.router.weight and
  .bias, llama4's feed_forward.router.weight), DeepSeek's mlp.gate.e_score_correction_bias
  and Qwen2-MoE's mlp.shared_expert_gate.weight whole;
- shared experts (qwen2_moe's mlp.shared_expert.*, DeepSeek's mlp.shared_experts.*, llama4's
  feed_forward.shared_expert.*) and the dense layers' MLPs (llama4's of
  intermediate_size_mlp) split over the N ranks: gate / up rows, down columns;
- attention as vLLM cuts it: q_proj rows (and bias) of the rank's query heads, contiguous;
  k_proj / v_proj rows (and biases) of its KV heads, KV head r // (N // KV) when N > KV
  (replicated); o_proj columns of its query heads, its bias (gpt_oss) whole; gpt_oss's
  self_attn.sinks the entries of the rank's query heads [r nh / N, (r + 1) nh / N);
- multi-head latent attention (DeepSeek, Kimi): q_a_proj, kv_a_proj_with_mqa and their
  layernorms whole; q_b_proj (q_proj without q_lora_rank) and kv_b_proj rows of the rank's
  heads (qk_nope_head_dim + qk_rope_head_dim, and qk_nope_head_dim + v_head_dim rows a head),
  o_proj columns of its heads (v_head_dim a head);
- every norm (q_norm / k_norm too) whole; the embeddings and heads (embed_tokens, lm_head,
  the prediction layer's embed_tokens and shared_head.head) split on rows, the vocabulary
  padded to a multiple of 64 with zero rows; the prediction layer's eh_proj whole;
- which layers hold experts: mixtral every layer; qwen2_moe / qwen3_moe the layers l not in
  mlp_only_layers with (l + 1) % decoder_sparse_step == 0; DeepSeek the layers
  l >= first_k_dense_replace with l % moe_layer_freq == 0; the others have a dense MLP;
- DeepSeek-V3's multi-token prediction layer (index num_hidden_layers, a layer with experts)
  is left out of the export unless --include-mtp is given;
- a multimodal llama4 checkpoint: every rank holds the text tensors cut by the rules above,
  under the names the loader gives them (the checkpoint's language_model. prefix dropped, as
  a load drops it), and the vision tower and projector whole under their own names; the merge
  gives back every tensor under its original name, the vision tower's included.

Usage: moe_diff.py SAFESHARD_EXE
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
from diff_common import check, exit_if_failed

EXE = sys.argv[1]


ARCHS = ["mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "kimi_k2", "gpt_oss",
         "llama4"]
WORLDS = range(1, 9)
EXPERTS = 10  # not a multiple of 4 or 8: linear placement leaves a remainder
GPT_OSS_EXPERTS = EXPERTS
LLAMA4_EXPERTS = 6  # fewer than 7 and 8: no export with ep above it
VOCAB_MULTIPLE = 64
BF16 = ml_dtypes.bfloat16
rng = np.random.default_rng(19)


def weight(*shape, dtype=BF16):
    return rng.normal(0, 0.02, size=shape).astype(dtype)


def build(arch, world):
    """A tiny checkpoint of `arch` whose sizes suit a world of `world` ranks: its config.json,
    its tensors, and the sizes the oracle cuts by."""
    mla = arch in ("deepseek_v2", "deepseek_v3", "kimi_k2")
    heads = world if arch == "kimi_k2" else 2 * world
    # Query heads 2 x world (Kimi: world); KV heads below the world (replicated), equal to
    # it, or above it.
    kv = {"mixtral": 2 if world % 2 == 0 else 1, "qwen2_moe": heads, "qwen3_moe": world}.get(
        arch, heads)
    hidden = 32 if arch == "qwen3_moe" else 16 * world
    head_dim = 8 if arch == "qwen3_moe" else hidden // heads
    vocab = VOCAB_MULTIPLE * world - 11  # padded to 64 x world: 11 zero rows on the last rank
    cfg = {"model_type": arch, "hidden_size": hidden, "intermediate_size": 8 * world,
           "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab,
           "hidden_act": "silu", "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
           "torch_dtype": "bfloat16"}
    layers, mtp = 2, 0
    if arch == "mixtral":
        cfg.update(architectures=["MixtralForCausalLM"], num_local_experts=EXPERTS,
                   num_experts_per_tok=2, intermediate_size=4 * world, sliding_window=None)
        sparse = lambda l: True
    elif arch in ("qwen2_moe", "qwen3_moe"):
        layers = 4
        cfg.update(num_experts=EXPERTS, num_experts_per_tok=4, moe_intermediate_size=4 * world,
                   norm_topk_prob=arch == "qwen3_moe")
        if arch == "qwen2_moe":
            cfg.update(architectures=["Qwen2MoeForCausalLM"], decoder_sparse_step=2,
                       shared_expert_intermediate_size=6 * world)
        else:
            cfg.update(architectures=["Qwen3MoeForCausalLM"], decoder_sparse_step=1,
                       mlp_only_layers=[2], head_dim=head_dim, attention_bias=False)
        step, only = cfg["decoder_sparse_step"], cfg.get("mlp_only_layers", [])
        sparse = lambda l: l not in only and (l + 1) % step == 0
    else:
        layers = {"deepseek_v2": 3, "deepseek_v3": 3, "kimi_k2": 2}[arch]
        mtp = 1 if arch == "deepseek_v3" else 0
        cfg.update(architectures=["DeepseekV2ForCausalLM" if arch == "deepseek_v2"
                                  else "DeepseekV3ForCausalLM"],
                   n_routed_experts=EXPERTS, n_shared_experts=2 if arch == "deepseek_v2" else 1,
                   num_experts_per_tok=4, moe_intermediate_size=4 * world, moe_layer_freq=1,
                   first_k_dense_replace=2 if arch == "deepseek_v3" else 1,
                   q_lora_rank=None if arch == "deepseek_v2" and world % 2 else 24,
                   kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8,
                   n_group=1, topk_group=1, attention_bias=False,
                   topk_method="greedy" if arch == "deepseek_v2" else "noaux_tc")
        if arch != "deepseek_v2":
            cfg.update(num_nextn_predict_layers=mtp, scoring_func="sigmoid")
        k, freq = cfg["first_k_dense_replace"], cfg["moe_layer_freq"]
        sparse = lambda l: l >= layers or (l >= k and l % freq == 0)
    cfg["num_hidden_layers"] = layers

    m = {"arch": arch, "mla": mla, "heads": heads, "kv": kv, "head_dim": head_dim,
         "layers": layers, "mtp": mtp, "experts": EXPERTS, "q_rows": 0, "kv_b_rows": 0,
         "o_cols": 0, "prefix": ""}
    if mla:
        m.update(q_rows=cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"],
                 kv_b_rows=cfg["qk_nope_head_dim"] + cfg["v_head_dim"], o_cols=cfg["v_head_dim"])

    t = {"model.embed_tokens.weight": weight(vocab, hidden)}
    for l in range(layers + mtp):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = weight(hidden)
        t[p + "post_attention_layernorm.weight"] = weight(hidden)
        a = p + "self_attn."
        if mla:
            q_lora, kv_lora = cfg["q_lora_rank"], cfg["kv_lora_rank"]
            if q_lora is None:
                t[a + "q_proj.weight"] = weight(heads * m["q_rows"], hidden)
            else:
                t[a + "q_a_proj.weight"] = weight(q_lora, hidden)
                t[a + "q_a_layernorm.weight"] = weight(q_lora)
                t[a + "q_b_proj.weight"] = weight(heads * m["q_rows"], q_lora)
            t[a + "kv_a_proj_with_mqa.weight"] = weight(kv_lora + cfg["qk_rope_head_dim"],
                                                        hidden)
            t[a + "kv_a_layernorm.weight"] = weight(kv_lora)
            t[a + "kv_b_proj.weight"] = weight(heads * m["kv_b_rows"], kv_lora)
            t[a + "o_proj.weight"] = weight(hidden, heads * m["o_cols"])
        else:
            t[a + "q_proj.weight"] = weight(heads * head_dim, hidden)
            t[a + "k_proj.weight"] = weight(kv * head_dim, hidden)
            t[a + "v_proj.weight"] = weight(kv * head_dim, hidden)
            t[a + "o_proj.weight"] = weight(hidden, heads * head_dim)
            if arch == "qwen2_moe":
                t[a + "q_proj.bias"] = weight(heads * head_dim)
                t[a + "k_proj.bias"] = weight(kv * head_dim)
                t[a + "v_proj.bias"] = weight(kv * head_dim)
            if arch == "qwen3_moe":
                t[a + "q_norm.weight"] = weight(head_dim)
                t[a + "k_norm.weight"] = weight(head_dim)
        if not sparse(l):
            inter = cfg["intermediate_size"]
            t[p + "mlp.gate_proj.weight"] = weight(inter, hidden)
            t[p + "mlp.up_proj.weight"] = weight(inter, hidden)
            t[p + "mlp.down_proj.weight"] = weight(hidden, inter)
        elif arch == "mixtral":
            inter = cfg["intermediate_size"]
            t[p + "block_sparse_moe.gate.weight"] = weight(EXPERTS, hidden)
            for e in range(EXPERTS):
                x = p + f"block_sparse_moe.experts.{e}."
                t[x + "w1.weight"] = weight(inter, hidden)
                t[x + "w2.weight"] = weight(hidden, inter)
                t[x + "w3.weight"] = weight(inter, hidden)
        else:
            inter = cfg["moe_intermediate_size"]
            t[p + "mlp.gate.weight"] = weight(EXPERTS, hidden)
            if arch in ("deepseek_v3", "kimi_k2"):  # float32 in the published checkpoints
                t[p + "mlp.gate.e_score_correction_bias"] = weight(EXPERTS, dtype=np.float32)
            for e in range(EXPERTS):
                x = p + f"mlp.experts.{e}."
                t[x + "gate_proj.weight"] = weight(inter, hidden)
                t[x + "up_proj.weight"] = weight(inter, hidden)
                t[x + "down_proj.weight"] = weight(hidden, inter)
            if arch == "qwen2_moe":
                shared = cfg["shared_expert_intermediate_size"]
            else:  # DeepSeek's n_shared_experts fused in one MLP; qwen3_moe has none
                shared = cfg.get("n_shared_experts", 0) * inter
            if shared:
                x = p + ("mlp.shared_expert." if arch == "qwen2_moe" else "mlp.shared_experts.")
                t[x + "gate_proj.weight"] = weight(shared, hidden)
                t[x + "up_proj.weight"] = weight(shared, hidden)
                t[x + "down_proj.weight"] = weight(hidden, shared)
            if arch == "qwen2_moe":
                t[p + "mlp.shared_expert_gate.weight"] = weight(1, hidden)
        if l >= layers:  # the multi-token prediction layer's own tensors
            t[p + "enorm.weight"] = weight(hidden)
            t[p + "hnorm.weight"] = weight(hidden)
            t[p + "eh_proj.weight"] = weight(hidden, 2 * hidden)
            t[p + "embed_tokens.weight"] = weight(vocab, hidden)
            t[p + "shared_head.norm.weight"] = weight(hidden)
            t[p + "shared_head.head.weight"] = weight(vocab, hidden)
    t["model.norm.weight"] = weight(hidden)
    t["lm_head.weight"] = weight(vocab, hidden)
    return cfg, t, m


def attention(t, a, hidden, heads, kv, head_dim, bias):
    """q/k/v/o projections under `a` (self_attn.), with biases when `bias`."""
    t[a + "q_proj.weight"] = weight(heads * head_dim, hidden)
    t[a + "k_proj.weight"] = weight(kv * head_dim, hidden)
    t[a + "v_proj.weight"] = weight(kv * head_dim, hidden)
    t[a + "o_proj.weight"] = weight(hidden, heads * head_dim)
    if bias:
        t[a + "q_proj.bias"] = weight(heads * head_dim)
        t[a + "k_proj.bias"] = weight(kv * head_dim)
        t[a + "v_proj.bias"] = weight(kv * head_dim)
        t[a + "o_proj.bias"] = weight(hidden)


def mxfp4_bytes(*shape):
    """Random uint8 codes of every value (E2M1 pairs, E8M0 exponents, 0 included)."""
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def build_gpt_oss(world, mxfp4=False):
    """A tiny gpt_oss checkpoint for `world` ranks, stacked: every layer with experts, gate and
    up interleaved in gate_up_proj [E, H, 2I], biases everywhere; or (mxfp4) as published,
    the experts as MXFP4 blocks and scales of an intermediate size of 5 blocks of 32."""
    heads, head_dim, hidden, inter = 2 * world, 8, 24, 4 * world  # nh * hd != H, as published
    if mxfp4:
        hidden, inter = 64, 5 * 32
    kv = 2 * world if world % 2 else world // 2  # above the world on odd worlds, below on even
    vocab, layers = VOCAB_MULTIPLE * world - 11, 2
    cfg = {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
           "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
           "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": head_dim,
           "num_local_experts": GPT_OSS_EXPERTS, "num_experts_per_tok": 4,
           "experts_per_token": 4, "vocab_size": vocab, "tie_word_embeddings": False,
           "attention_bias": True, "hidden_act": "silu", "rms_norm_eps": 1e-5,
           "sliding_window": 128, "swiglu_limit": 7.0,
           "layer_types": ["sliding_attention", "full_attention"] * (layers // 2),
           "torch_dtype": "bfloat16"}
    e = GPT_OSS_EXPERTS
    t = {"model.embed_tokens.weight": weight(vocab, hidden)}
    for l in range(layers):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = weight(hidden)
        t[p + "post_attention_layernorm.weight"] = weight(hidden)
        attention(t, p + "self_attn.", hidden, heads, kv, head_dim, bias=True)
        t[p + "self_attn.sinks"] = weight(heads)
        t[p + "mlp.router.weight"] = weight(e, hidden)
        t[p + "mlp.router.bias"] = weight(e)
        if mxfp4:  # output-major: [E, N, K/32, 16] and [E, N, K/32]
            t[p + "mlp.experts.gate_up_proj_blocks"] = mxfp4_bytes(e, 2 * inter, hidden // 32, 16)
            t[p + "mlp.experts.gate_up_proj_scales"] = mxfp4_bytes(e, 2 * inter, hidden // 32)
            t[p + "mlp.experts.down_proj_blocks"] = mxfp4_bytes(e, hidden, inter // 32, 16)
            t[p + "mlp.experts.down_proj_scales"] = mxfp4_bytes(e, hidden, inter // 32)
        else:
            t[p + "mlp.experts.gate_up_proj"] = weight(e, hidden, 2 * inter)
            t[p + "mlp.experts.down_proj"] = weight(e, inter, hidden)
        t[p + "mlp.experts.gate_up_proj_bias"] = weight(e, 2 * inter)
        t[p + "mlp.experts.down_proj_bias"] = weight(e, hidden)
    t["model.norm.weight"] = weight(hidden)
    t["lm_head.weight"] = weight(vocab, hidden)
    if mxfp4:
        cfg["quantization_config"] = {
            "quant_method": "mxfp4",
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                       "model.embed_tokens", "lm_head"]}
    m = {"arch": "gpt_oss", "mla": False, "heads": heads, "kv": kv, "head_dim": head_dim,
         "layers": layers, "mtp": 0, "experts": e, "prefix": "", "mxfp4": mxfp4,
         "inter": inter}
    return cfg, t, m


def build_llama4(world, multimodal):
    """A tiny llama4 checkpoint for `world` ranks: the text model alone (llama4_text), or
    nested as in the published multimodal checkpoints (text_config, its tensors under
    language_model., a vision tower and projector beside it). Layers 1 and 3 have experts
    (interleave_moe_layer_step 2), gate and up concatenated in gate_up_proj [E, H, 2I], and a
    shared expert; layers 0 and 2 a dense MLP of intermediate_size_mlp."""
    heads, head_dim, hidden = 2 * world, 8, 16 * world
    kv = 2 * world if world % 2 else 2  # above the world on odd worlds, at or below on even
    inter, inter_mlp = 4 * world, 6 * world
    vocab, layers, step, e = VOCAB_MULTIPLE * world - 11, 4, 2, LLAMA4_EXPERTS
    text = {"model_type": "llama4_text", "hidden_size": hidden, "intermediate_size": inter,
            "intermediate_size_mlp": inter_mlp, "interleave_moe_layer_step": step,
            "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "head_dim": head_dim, "num_local_experts": e,
            "num_experts_per_tok": 1, "vocab_size": vocab, "tie_word_embeddings": False,
            "attention_bias": False, "use_qk_norm": True, "hidden_act": "silu",
            "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16"}
    # The vision tower's sizes differ from the text model's: read from the wrong object,
    # they would not fit the text tensors.
    vh, vi, vout = 12, 20, 16
    if multimodal:
        cfg = {"architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4",
               "text_config": text,
               "vision_config": {"model_type": "llama4_vision_model", "hidden_size": vh,
                                 "intermediate_size": vi, "num_hidden_layers": 1,
                                 "num_attention_heads": 3, "patch_size": 4, "image_size": 16,
                                 "num_channels": 3, "vision_output_dim": vout,
                                 "projector_input_dim": vout, "projector_output_dim": vout},
               "torch_dtype": "bfloat16"}
    else:
        cfg = {"architectures": ["Llama4ForCausalLM"], **text}
    x = "language_model." if multimodal else ""
    t = {x + "model.embed_tokens.weight": weight(vocab, hidden)}
    for l in range(layers):
        p = f"{x}model.layers.{l}."
        t[p + "input_layernorm.weight"] = weight(hidden)
        t[p + "post_attention_layernorm.weight"] = weight(hidden)
        attention(t, p + "self_attn.", hidden, heads, kv, head_dim, bias=False)
        f = p + "feed_forward."
        if (l + 1) % step == 0:
            t[f + "router.weight"] = weight(e, hidden)
            t[f + "experts.gate_up_proj"] = weight(e, hidden, 2 * inter)
            t[f + "experts.down_proj"] = weight(e, inter, hidden)
            t[f + "shared_expert.gate_proj.weight"] = weight(inter, hidden)
            t[f + "shared_expert.up_proj.weight"] = weight(inter, hidden)
            t[f + "shared_expert.down_proj.weight"] = weight(hidden, inter)
        else:
            t[f + "gate_proj.weight"] = weight(inter_mlp, hidden)
            t[f + "up_proj.weight"] = weight(inter_mlp, hidden)
            t[f + "down_proj.weight"] = weight(hidden, inter_mlp)
    t[x + "model.norm.weight"] = weight(hidden)
    t[x + "lm_head.weight"] = weight(vocab, hidden)
    if multimodal:  # some of the vision tower's names look like the text model's
        v = "vision_model."
        t[v + "patch_embedding.linear.weight"] = weight(vh, 3 * 4 * 4)
        t[v + "class_embedding"] = weight(vh)
        t[v + "layernorm_pre.weight"] = weight(vh)
        t[v + "model.layers.0.self_attn.q_proj.weight"] = weight(vh, vh)
        t[v + "model.layers.0.self_attn.q_proj.bias"] = weight(vh)
        t[v + "model.layers.0.mlp.fc1.weight"] = weight(vi, vh)
        t["multi_modal_projector.linear_1.weight"] = weight(hidden, vout)
    m = {"arch": "llama4", "mla": False, "heads": heads, "kv": kv, "head_dim": head_dim,
         "layers": layers, "mtp": 0, "experts": e, "prefix": x}
    return cfg, t, m


def owns(group, e, ep, placement, experts):
    """Whether expert group `group` of `ep` owns expert e of `experts`."""
    if placement == "round_robin":
        return e % ep == group
    base, rem = divmod(experts, ep)
    start = group * base + min(group, rem)
    return start <= e < start + base + (1 if group < rem else 0)


def part(t, dim, parts, i):
    """Part i of `parts` equal parts of t along dim."""
    n = t.shape[dim] // parts
    return t[i * n:(i + 1) * n] if dim == 0 else t[:, i * n:(i + 1) * n]


def rows_of(heads, per_head):
    return np.concatenate([np.arange(h * per_head, (h + 1) * per_head) for h in heads])


EXPERT = re.compile(r"\.experts\.(\d+)\.(w1|w2|w3|gate_proj|up_proj|down_proj)\.weight$")
STACKED = re.compile(r"\.mlp\.experts\.(gate_up_proj|down_proj)$")
# gpt_oss and llama4: [E, H, 2I] and [E, I, H], the transpose of transformers v5's stacking.
FUSED = re.compile(r"\.(?:mlp|feed_forward)\.experts\."
                   r"(gate_up_proj|gate_up_proj_bias|down_proj|down_proj_bias)$")
MXFP4 = re.compile(r"\.mlp\.experts\.(gate_up_proj_blocks|gate_up_proj_scales|gate_up_proj_bias|"
                   r"down_proj_blocks|down_proj_scales|down_proj_bias)$")
PROJECTION = {"w1": "gate", "w3": "up", "w2": "down", "gate_proj": "gate", "up_proj": "up",
              "down_proj": "down"}


def stacked(tensors):
    """The checkpoint with each layer's experts stacked as transformers v5 saves them:
    mlp.experts.gate_up_proj [E, 2I, H] (each expert's gate rows, then its up rows) and
    mlp.experts.down_proj [E, H, I]; Mixtral's router under mlp.gate."""
    out, layers = {}, {}
    for n, t in tensors.items():
        x = EXPERT.search(n)
        if x is None:
            out[n.replace(".block_sparse_moe.gate.", ".mlp.gate.")] = t
            continue
        layer = n[:n.index(".", len("model.layers."))]
        layers.setdefault(layer, {})[int(x.group(1)), PROJECTION[x.group(2)]] = t
    for layer, ex in layers.items():
        experts = range(max(e for e, _ in ex) + 1)
        out[layer + ".mlp.experts.gate_up_proj"] = np.stack(
            [np.concatenate([ex[e, "gate"], ex[e, "up"]]) for e in experts])
        out[layer + ".mlp.experts.down_proj"] = np.stack([ex[e, "down"] for e in experts])
    return out


REPLICATED = ("norm.weight", ".mlp.gate.weight", "block_sparse_moe.gate.weight",
              ".e_score_correction_bias", "shared_expert_gate.weight", "q_a_proj.weight",
              "kv_a_proj_with_mqa.weight", "eh_proj.weight", ".router.weight", ".router.bias",
              "o_proj.bias")
VOCAB = ("embed_tokens.weight", "lm_head.weight", "shared_head.head.weight")


def padded(a, axis, size):
    """a with zeros appended along axis up to size."""
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, size - a.shape[axis])
    return np.pad(a, pad)


def mxfp4_expected(kind, held, inter, w, pos):
    """gpt-oss's MXFP4 experts as vLLM's _load_weights_mxfp4 cuts them for TP rank pos of w
    (gpt_oss.py; its parameters are allocated zeroed at the padded size and the narrowed
    weight copied to their start)."""
    if kind == "down_proj_bias":
        return held  # row-parallel: whole
    per = -(-(inter // 32) // w) * 32  # per_rank_intermediate_size = cdiv(I // 32, tp) * 32
    start, end = pos * per, min((pos + 1) * per, inter)
    e = held.shape[0]
    if kind == "gate_up_proj_blocks":
        cut = held.reshape(e, 2 * inter, -1)[:, 2 * start:2 * end, ...]
        return padded(cut, 1, 2 * per).reshape(e, 2 * per, *held.shape[2:])
    if kind in ("gate_up_proj_scales", "gate_up_proj_bias"):
        return padded(held[:, 2 * start:2 * end, ...], 1, 2 * per)
    if kind == "down_proj_blocks":
        cut = held.reshape(e, -1, inter // 2)[..., start // 2:end // 2]
        return padded(cut, 2, per // 2).reshape(e, held.shape[1], per // 32, 16)
    return padded(held[..., start // 32:end // 32], 2, per // 32)  # down_proj_scales


def expected(name, t, m, world, ep, placement, r):
    """The slice of rank r, or None where the rank does not hold the tensor."""
    w = world // ep
    group, pos = divmod(r, w)
    if m["prefix"] and not name.startswith(m["prefix"]):
        return t  # outside the text model (llama4's vision tower and projector): whole
    x = MXFP4.search(name) if m.get("mxfp4") else None
    if x:
        held = t[[e for e in range(t.shape[0]) if owns(group, e, ep, placement, m["experts"])]]
        return mxfp4_expected(x.group(1), held, m["inter"], w, pos)
    f = FUSED.search(name) if m["arch"] in ("gpt_oss", "llama4") else None
    if f:  # [E, H, 2I], [E, 2I], [E, I, H] or [E, H]: the group's experts, each cut to part pos
        held = t[[e for e in range(t.shape[0]) if owns(group, e, ep, placement, m["experts"])]]
        if f.group(1) == "down_proj_bias":
            return held  # row-parallel: whole
        if f.group(1) == "down_proj":
            n = t.shape[1] // w
            return held[:, pos * n:(pos + 1) * n]
        inter = t.shape[-1] // 2
        n = inter // w
        if m["arch"] == "gpt_oss":  # gate and up interleaved: n whole (gate, up) pairs
            return held[..., 2 * pos * n:2 * (pos + 1) * n]
        return np.concatenate([held[..., pos * n:(pos + 1) * n],  # concatenated: gate, then up
                               held[..., inter + pos * n:inter + (pos + 1) * n]], axis=-1)
    s = STACKED.search(name)
    if s:  # [E, 2I, H] or [E, H, I]: the group's experts, each cut to part pos
        held = [e for e in range(t.shape[0]) if owns(group, e, ep, placement, m["experts"])]
        if s.group(1) == "down_proj":
            n = t.shape[2] // w
            return t[held][:, :, pos * n:(pos + 1) * n]
        inter = t.shape[1] // 2
        n = inter // w
        return np.concatenate([t[held][:, pos * n:(pos + 1) * n],
                               t[held][:, inter + pos * n:inter + (pos + 1) * n]], axis=1)
    x = EXPERT.search(name)
    if x:
        if not owns(group, int(x.group(1)), ep, placement, m["experts"]):
            return None
        return part(t, 1 if x.group(2) in ("w2", "down_proj") else 0, w, pos)
    if name.endswith(VOCAB):
        padded = -(-t.shape[0] // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
        per = padded // world
        out = np.zeros((per,) + t.shape[1:], dtype=t.dtype)
        real = t[r * per:min((r + 1) * per, t.shape[0])]
        out[:real.shape[0]] = real
        return out
    if name.endswith(REPLICATED):
        return t
    if name.endswith(("gate_proj.weight", "up_proj.weight")):  # dense and shared MLPs
        return part(t, 0, world, r)
    if name.endswith("down_proj.weight"):
        return part(t, 1, world, r)
    heads = range(r * m["heads"] // world, (r + 1) * m["heads"] // world)
    if m["mla"]:
        if name.endswith(("q_proj.weight", "q_b_proj.weight")):
            return t[rows_of(heads, m["q_rows"])]
        if name.endswith("kv_b_proj.weight"):
            return t[rows_of(heads, m["kv_b_rows"])]
        if name.endswith("o_proj.weight"):
            return t[:, rows_of(heads, m["o_cols"])]
        raise ValueError(f"no rule for {name}")
    if name.endswith("self_attn.sinks"):  # gpt_oss: one logit per query head
        return t[list(heads)]
    kv, d = m["kv"], m["head_dim"]
    kv_heads = [r // (world // kv)] if world >= kv else range(r * kv // world,
                                                              (r + 1) * kv // world)
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        return t[rows_of(heads, d)]
    if name.endswith(("k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias")):
        return t[rows_of(kv_heads, d)]
    if name.endswith("o_proj.weight"):
        return t[:, rows_of(heads, d)]
    raise ValueError(f"no rule for {name}")


def experts_of(tensors):
    """(layer, module) -> {(e, "gate" | "up" | "down"): array} of every layer with experts,
    from one tensor per expert or the stacked form (an expert's gate_up_proj slab is its gate
    rows, then its up rows)."""
    out = {}
    for n, t in tensors.items():
        x, s = EXPERT.search(n), STACKED.search(n)
        if x is None and s is None:
            continue
        layer = n[:n.index(".", len("model.layers."))]
        module = ".block_sparse_moe.experts." if ".block_sparse_moe." in n else ".mlp.experts."
        ex = out.setdefault((layer, module), {})
        if x is not None:
            ex[int(x.group(1)), PROJECTION[x.group(2)]] = t
        elif s.group(1) == "down_proj":
            for e in range(t.shape[0]):
                ex[e, "down"] = t[e]
        else:
            inter = t.shape[1] // 2
            for e in range(t.shape[0]):
                ex[e, "gate"], ex[e, "up"] = t[e, :inter], t[e, inter:]
    return out


def fused_expected(tensors, m, world, ep, placement, r):
    """Rank r's fused experts: name -> array."""
    w = world // ep
    group, pos = divmod(r, w)
    out = {}
    for (layer, module), ex in experts_of(tensors).items():
        held = [e for e in range(m["experts"]) if owns(group, e, ep, placement, m["experts"])]
        out[layer + module + "w13_weight"] = np.stack(
            [np.concatenate([part(ex[e, "gate"], 0, w, pos), part(ex[e, "up"], 0, w, pos)])
             for e in held])
        out[layer + module + "w2_weight"] = np.stack([part(ex[e, "down"], 1, w, pos)
                                                      for e in held])
    return out


def read_folder(folder):
    """Tensors, and each shard's __metadata__."""
    out, metas = {}, []
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(folder, f), "np") as h:
                metas.append(h.metadata())
                for k in h.keys():
                    out[k] = h.get_tensor(k)
    return out, metas


def safeshard(label, args):
    """Runs the tool; False (and a failure) where it fails."""
    p = subprocess.run([EXE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True)
    check(p.returncode == 0, f"{label}: safeshard {args[0]} exited {p.returncode}: "
                             + " | ".join(p.stderr.split("\n")).strip(" |")[:300])
    return p.returncode == 0


def describe(a):
    return "absent" if a is None else f"{a.dtype} {list(a.shape)}"


def export_and_merge(src, tmp, m, tensors, world, ep, placement, mtp, form, fuse=False):
    """One export of the checkpoint at src against the oracle, and its merge."""
    label = f"{m['arch']} {form} tp={world} ep={ep}" + (f" {placement}" if ep > 1 else "") + (
        " --include-mtp" if mtp else "") + (" --fuse-experts" if fuse else "")
    ex, merged = os.path.join(tmp, "ex"), os.path.join(tmp, "merged")
    args = ["export", src, "--tp", str(world), "--out", ex, "--max-shard-size", "30KB"]
    if ep > 1:
        args += ["--ep", str(ep), "--expert-placement", placement]
    if mtp:
        args.append("--include-mtp")
    if fuse:
        args.append("--fuse-experts")
    if not safeshard(label, args):
        return 0
    # The multi-token prediction layer only with --include-mtp.
    trailing = f"model.layers.{m['layers']}."
    kept = {n: t for n, t in tensors.items() if mtp or not n.startswith(trailing)}
    check(sorted(os.listdir(ex)) == [f"rank-{r:05d}" for r in range(world)],
          f"{label}: rank folders {sorted(os.listdir(ex))}")
    compared = 0
    for r in range(world):
        folder = os.path.join(ex, f"rank-{r:05d}")
        if not os.path.isdir(folder):
            continue
        got, metas = read_folder(folder)
        for md in metas:
            doc = json.loads(md["safeshard"])
            check(md.get("format") == "pt" and doc["world"] == world and doc["rank"] == r,
                  f"{label} rank {r}: metadata {md.get('format')}, world {doc['world']}, "
                  f"rank {doc['rank']}")
        want = fused_expected(kept, m, world, ep, placement, r) if fuse else {}
        for n, t in kept.items():
            if fuse and (EXPERT.search(n) or STACKED.search(n)):
                continue  # in the fused tensors
            e = expected(n, t, m, world, ep, placement, r)
            if e is not None:
                # A rank holds the loader's tensors under the loader's names: the text model's
                # without the checkpoint's prefix ("language_model."), the rest (a vision
                # tower, passed through whole) under their own.
                want[n.removeprefix(m["prefix"]) if m["prefix"] else n] = e
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        check(not missing and not extra, f"{label} rank {r}: {len(missing)} missing "
                                         f"{missing[:4]}, {len(extra)} extra {extra[:4]}")
        if m["mtp"] and not mtp:
            check(not any(n.startswith(trailing) for n in got),
                  f"{label} rank {r}: holds the multi-token prediction layer")
        for n, w in want.items():
            g = got.get(n)
            if g is None:
                continue  # reported as missing
            same = g.dtype == w.dtype and g.shape == w.shape
            check(same and g.tobytes() == w.tobytes(),
                  f"{label} rank {r}: {n}: expected {describe(w)}, got {describe(g)}"
                  + (", other bytes" if same else ""))
            compared += 1
    if safeshard(label, ["merge", ex, "--out", merged]):
        got, _ = read_folder(merged)
        missing, extra = sorted(set(kept) - set(got)), sorted(set(got) - set(kept))
        check(not missing and not extra, f"{label} merged: {len(missing)} missing "
                                         f"{missing[:4]}, {len(extra)} extra {extra[:4]}")
        for n, t in kept.items():
            g = got.get(n)
            check(g is None or (g.dtype == t.dtype and g.shape == t.shape
                                and g.tobytes() == t.tobytes()), f"{label} merged: {n}")
    shutil.rmtree(ex, ignore_errors=True)
    shutil.rmtree(merged, ignore_errors=True)
    return compared


def forms(arch, world):
    """The checkpoints of `arch` for `world` ranks: form -> (config, tensors, oracle sizes)."""
    if arch == "gpt_oss":
        return {"stacked": build_gpt_oss(world), "mxfp4": build_gpt_oss(world, True)}
    if arch == "llama4":
        return {"stacked": build_llama4(world, False), "multimodal": build_llama4(world, True)}
    cfg, per_expert, m = build(arch, world)
    return {"per-expert": (cfg, per_expert, m), "stacked": (cfg, stacked(per_expert), m)}


def refuses_fusing(src, arch, why):
    """gpt_oss and llama4: --fuse-experts is a usage error (exit 2) that says why."""
    p = subprocess.run([EXE, "plan", src, "--tp", "2", "--fuse-experts"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    check(p.returncode == 2 and why in p.stdout,
          f"{arch}: plan --fuse-experts exited {p.returncode}: {p.stdout.strip()[:300]}")


started = time.monotonic()
runs = {"per-expert": 0, "stacked": 0, "mxfp4": 0, "multimodal": 0, "per-expert fused": 0, "stacked fused": 0}
compared = 0
with tempfile.TemporaryDirectory() as tmp:
    for arch in ARCHS:
        for world in WORLDS:
            for form, (cfg, tensors, m) in forms(arch, world).items():
                src = os.path.join(tmp, "in")
                os.makedirs(src)
                save_file(tensors, os.path.join(src, "model.safetensors"),
                          metadata={"format": "pt"})
                with open(os.path.join(src, "config.json"), "w") as f:
                    json.dump(cfg, f, indent=2)
                fusable = arch not in ("gpt_oss", "llama4")
                if not fusable and world == 2:
                    refuses_fusing(src, arch, "stacked in the engine's order already"
                                   if m.get("mxfp4") else "transpose")
                for ep in sorted({e for e in (1, 2, world)
                                  if world % e == 0 and e <= m["experts"]}):
                    for placement in ["linear"] if ep == 1 else ["linear", "round_robin"]:
                        for mtp in [False, True] if m["mtp"] else [False]:
                            for fuse in [False, True] if fusable and not mtp else [False]:
                                compared += export_and_merge(src, tmp, m, tensors, world, ep,
                                                             placement, mtp, form, fuse)
                                runs[form + (" fused" if fuse else "")] += 1
                shutil.rmtree(src)

seconds = time.monotonic() - started
exports = ", ".join(f"{n} {form}" for form, n in runs.items())
exit_if_failed(f" ({exports} exports, {seconds:.1f} s)")
print(f"export/merge of mixtures of experts agree with numpy's slices: {len(ARCHS)} "
      f"architectures, worlds {WORLDS[0]}-{WORLDS[-1]}, {exports} exports, {compared} rank "
      f"tensors, {seconds:.1f} s")
