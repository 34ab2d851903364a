"""Differential test of `safeshard export` / `safeshard merge` with numpy slicing as the oracle:
a llama checkpoint written by the reference safetensors library is exported for a world of 4
with vLLM's conventions (query heads contiguous, KV heads replicated when world > KV, the
vocabulary padded to a multiple of 64 and zero-filled); every rank's tensors, read back with
the reference library, must equal the slices numpy cuts from the original; every shard carries
{"format": "pt"} and the "safeshard" document (version 2: the rank's world and rank, one record
per tensor the shard stores, in the byte order of their names, whose FNV-1a hash it states), and
each rank's header bytes stay within 1.5 x the input's plus 1 KiB a shard; the merge must give
the original tensors bit for bit.

Usage: export_diff.py SAFESHARD_EXE
"""

import json
import os
import struct
import subprocess
import sys
import tempfile

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
from diff_common import check, exit_if_failed

EXE = sys.argv[1]


H, KV, D, HIDDEN, INTER, VOCAB, LAYERS, WORLD = 8, 2, 8, 64, 128, 100, 2, 4
rng = np.random.default_rng(5)


def weight(*shape):
    return rng.normal(0, 0.02, size=shape).astype(ml_dtypes.bfloat16)


tensors = {"model.embed_tokens.weight": weight(VOCAB, HIDDEN),
           "model.norm.weight": weight(HIDDEN), "lm_head.weight": weight(VOCAB, HIDDEN)}
for i in range(LAYERS):
    p = f"model.layers.{i}."
    tensors[p + "input_layernorm.weight"] = weight(HIDDEN)
    tensors[p + "post_attention_layernorm.weight"] = weight(HIDDEN)
    tensors[p + "self_attn.q_proj.weight"] = weight(H * D, HIDDEN)
    tensors[p + "self_attn.k_proj.weight"] = weight(KV * D, HIDDEN)
    tensors[p + "self_attn.v_proj.weight"] = weight(KV * D, HIDDEN)
    tensors[p + "self_attn.o_proj.weight"] = weight(HIDDEN, H * D)
    tensors[p + "mlp.gate_proj.weight"] = weight(INTER, HIDDEN)
    tensors[p + "mlp.up_proj.weight"] = weight(INTER, HIDDEN)
    tensors[p + "mlp.down_proj.weight"] = weight(HIDDEN, INTER)

config = {"model_type": "llama", "hidden_size": HIDDEN, "intermediate_size": INTER,
          "num_hidden_layers": LAYERS, "num_attention_heads": H, "num_key_value_heads": KV,
          "head_dim": D, "vocab_size": VOCAB, "tie_word_embeddings": False,
          "torch_dtype": "bfloat16"}


def expected(name, t, r):
    """The slice of rank r, as vLLM cuts it."""
    q_heads = range(r * H // WORLD, (r + 1) * H // WORLD)
    kv_heads = [r // (WORLD // KV)] if WORLD >= KV else range(r * KV // WORLD,
                                                               (r + 1) * KV // WORLD)
    rows = lambda heads: np.concatenate([np.arange(h * D, (h + 1) * D) for h in heads])
    if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
        padded = -(-VOCAB // 64) * 64
        per = padded // WORLD
        out = np.zeros((per, t.shape[1]), dtype=t.dtype)
        real = t[r * per:min((r + 1) * per, VOCAB)]
        out[:real.shape[0]] = real
        return out
    if name.endswith("q_proj.weight"):
        return t[rows(q_heads)]
    if name.endswith("k_proj.weight") or name.endswith("v_proj.weight"):
        return t[rows(kv_heads)]
    if name.endswith("o_proj.weight"):
        return t[:, rows(q_heads)]
    if name.endswith("gate_proj.weight") or name.endswith("up_proj.weight"):
        n = t.shape[0] // WORLD
        return t[r * n:(r + 1) * n]
    if name.endswith("down_proj.weight"):
        n = t.shape[1] // WORLD
        return t[:, r * n:(r + 1) * n]
    return t  # norms: replicated


def read_folder(folder):
    """Tensors, and per shard (its __metadata__, its tensor names)."""
    out, metas = {}, []
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(folder, f), "np") as h:
                metas.append((h.metadata(), list(h.keys())))
                for k in h.keys():
                    out[k] = h.get_tensor(k)
    return out, metas


def header_bytes(folder):
    """The header lengths of a folder's shards, summed, and the number of shards."""
    total = n = 0
    for f in os.listdir(folder):
        if f.endswith(".safetensors"):
            with open(os.path.join(folder, f), "rb") as h:
                total += struct.unpack("<Q", h.read(8))[0]
                n += 1
    return total, n


def names_hash(names):
    """FNV-1a 64 over the names in byte order, each followed by a NUL byte."""
    h = 0xCBF29CE484222325
    for name in sorted(n.encode() for n in names):
        for c in name + b"\0":
            h = ((h ^ c) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


with tempfile.TemporaryDirectory() as tmp:
    src = os.path.join(tmp, "in")
    os.makedirs(src)
    save_file(tensors, os.path.join(src, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(src, "config.json"), "w") as f:
        json.dump(config, f)
    ex = os.path.join(tmp, "ex")
    subprocess.run([EXE, "export", src, "--tp", str(WORLD), "--out", ex,
                    "--max-shard-size", "30KB"], check=True, stdout=subprocess.DEVNULL)
    check(sorted(os.listdir(ex)) == [f"rank-{r:05d}" for r in range(WORLD)], "rank folders")
    input_header, _ = header_bytes(src)
    for r in range(WORLD):
        got, metas = read_folder(os.path.join(ex, f"rank-{r:05d}"))
        check(len(metas) > 1, f"rank {r}: several shards")
        for md, names in metas:
            check(md.get("format") == "pt", f"rank {r}: format pt")
            doc = json.loads(md["safeshard"])
            check(doc["version"] == 2 and doc["world"] == WORLD and doc["rank"] == r
                  and doc["rank_tensors"] == len(tensors),
                  f"rank {r}: document {doc['version']}, {doc['world']}, {doc['rank']}")
            check(len(doc["tensors"]) == len(names) and doc["names_hash"] == names_hash(names),
                  f"rank {r}: one record per stored tensor, names hashed")
        rank_header, shards = header_bytes(os.path.join(ex, f"rank-{r:05d}"))
        check(rank_header <= input_header * 1.5 + 1024 * shards,
              f"rank {r}: {rank_header} header bytes in {shards} shards, input {input_header}")
        check(sorted(got) == sorted(tensors), f"rank {r}: names")
        for name, t in tensors.items():
            want = expected(name, t, r)
            g = got.get(name)
            check(g is not None and g.dtype == want.dtype and g.shape == want.shape
                  and g.tobytes() == want.tobytes(), f"rank {r}: {name}")
    merged = os.path.join(tmp, "merged")
    subprocess.run([EXE, "merge", ex, "--out", merged], check=True, stdout=subprocess.DEVNULL)
    got, _ = read_folder(merged)
    check(sorted(got) == sorted(tensors), "merged names")
    for name, t in tensors.items():
        check(name in got and got[name].tobytes() == t.tobytes(), f"merged: {name}")

exit_if_failed()
print(f"export/merge agree with numpy's slices: {WORLD} ranks x {len(tensors)} tensors")
