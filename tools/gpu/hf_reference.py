#!/usr/bin/env python3
"""Checkpoints written by transformers, and the tensors each tensor-parallel rank should get,
sliced by torch: the reference for safeshard's `cuda_gpu` test (SAFESHARD_HF_DIR=OUT).

For each architecture (llama, qwen2 with q/k/v biases), small random models are built with
AutoModelForCausalLM.from_config, saved in BF16 with save_pretrained(OUT/<arch>,
max_shard_size="20MB") (two shards or more), and for world 1, 2 and 4 every rank's tensors are
written to OUT/refs/<arch>/ref-w<W>-r<R>.safetensors, cut the way safeshard's default schema cuts them
(vLLM / Megatron conventions):
  embed_tokens, lm_head      rows, vocabulary padded with zero rows to a multiple of 64, split
  q_proj (weight, bias)      the rank's query heads (contiguous)
  k_proj, v_proj             the rank's KV heads; KV head r // (W / KV) when W > KV
  o_proj                     columns of the rank's query heads
  gate_proj, up_proj         rows split evenly;  down_proj: columns split evenly
  norms                      whole
Usage: hf_reference.py OUT
"""
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

VOCAB_MULTIPLE = 64


def configs():
    common = dict(vocab_size=4000, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=False)
    return {"llama": LlamaConfig(**common), "qwen2": Qwen2Config(**common)}


def rows(t, idx):
    return t.index_select(0, torch.tensor(idx, dtype=torch.long))


def head_rows(heads, d):
    return [h * d + i for h in heads for i in range(d)]


def cut(name, t, cfg, w, r):
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    d = cfg.hidden_size // H
    q_heads = list(range(r * H // w, (r + 1) * H // w))
    kv_heads = [r // (w // KV)] if w >= KV else list(range(r * KV // w, (r + 1) * KV // w))
    if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
        n = t.shape[0]
        padded = (n + VOCAB_MULTIPLE - 1) // VOCAB_MULTIPLE * VOCAB_MULTIPLE
        full = torch.zeros((padded,) + tuple(t.shape[1:]), dtype=t.dtype)
        full[:n] = t
        per = padded // w
        return full[r * per:(r + 1) * per]
    if ".q_proj." in name:
        return rows(t, head_rows(q_heads, d))
    if ".k_proj." in name or ".v_proj." in name:
        return rows(t, head_rows(kv_heads, d))
    if ".o_proj." in name:
        return t[:, head_rows(q_heads, d)]
    if ".gate_proj." in name or ".up_proj." in name:
        n = t.shape[0]
        return t[r * n // w:(r + 1) * n // w]
    if ".down_proj." in name:
        n = t.shape[1]
        return t[:, r * n // w:(r + 1) * n // w]
    return t


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    for arch, cfg in configs().items():
        folder = os.path.join(out, arch)
        os.makedirs(folder, exist_ok=True)
        model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
        model.save_pretrained(folder, max_shard_size="20MB", safe_serialization=True)
        shards = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
        tensors = {}
        for f in shards:
            tensors.update(load_file(os.path.join(folder, f)))
        refs = os.path.join(out, "refs", arch)
        os.makedirs(refs, exist_ok=True)
        for w in (1, 2, 4):
            for r in range(w):
                ref = {n: cut(n, t, cfg, w, r).contiguous() for n, t in tensors.items()}
                save_file(ref, os.path.join(refs, f"ref-w{w}-r{r}.safetensors"))
        print(f"{arch}: {len(shards)} shards, {len(tensors)} tensors, references for world 1, 2, 4")


if __name__ == "__main__":
    main()
