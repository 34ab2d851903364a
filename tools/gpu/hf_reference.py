#!/usr/bin/env python3
"""Checkpoints written by transformers, and the tensors each tensor-parallel rank should get,
sliced by torch: the reference for safeshard's `cuda_gpu` and `hf_reference` tests
(SAFESHARD_HF_DIR=OUT).

For each architecture (llama; qwen2 with q/k/v biases; the mixtures of experts mixtral,
qwen2_moe, qwen3_moe, deepseek_v3, gpt_oss and llama4), small random models are built with
AutoModelForCausalLM.from_config, saved in BF16 with save_pretrained(OUT/<arch>, max_shard_size)
(two shards or more), and for world 1, 2 and 4 every rank's tensors are written to
OUT/refs/<arch>/ref-w<W>-r<R>.safetensors, cut the way safeshard's default schema cuts them
(vLLM / Megatron conventions):
  embed_tokens, lm_head      rows, vocabulary padded with zero rows to a multiple of 64, split
  q_proj (weight, bias)      the rank's query heads (contiguous)
  k_proj, v_proj             the rank's KV heads; KV head r // (W / KV) when W > KV
  o_proj                     columns of the rank's query heads
  gate_proj, up_proj         rows split evenly;  down_proj: columns split evenly
  norms (qwen3 q_norm, k_norm too)  whole
Mixtures of experts, also with expert parallelism: for every ep in {2, W} that divides W (ep > 1)
and both placements, OUT/refs/<arch>/ref-w<W>-ep<M>-<placement>-r<R>.safetensors (ep = 1 is the
plain ref-w<W>-r<R> file). Expert groups are W' = W / ep consecutive ranks: rank r is in group
g = r // W' at place p = r % W'.
  experts of E               linear: group g holds [g*base + min(g, rem), + base + (g < rem)),
                             base = E // ep, rem = E % ep;  round_robin: the e with e % ep == g.
                             A rank has its group's experts only; of each, gate/up (mixtral
                             w1/w3) rows and down (w2) columns split W' ways, part p
  routers                    mlp.gate.weight, block_sparse_moe.gate.weight, deepseek's
                             mlp.gate.e_score_correction_bias, qwen2_moe's
                             mlp.shared_expert_gate.weight: whole
  shared experts             qwen2_moe mlp.shared_expert.*, deepseek mlp.shared_experts.*: a
                             dense MLP over the world (rows / columns split W ways)
  deepseek latent attention  q_a_proj, kv_a_proj_with_mqa and their norms whole; q_b_proj
                             (q_proj without q_lora_rank) and kv_b_proj rows of the rank's heads
                             (qk_nope + qk_rope rows a head for q, qk_nope + v_head for kv_b);
                             o_proj columns of its heads (v_head each); layers from
                             num_hidden_layers on (multi-token prediction) left out
The dense layers of the mixtures (deepseek's first_k_dense_replace, qwen's mlp_only_layers)
are cut like llama's MLP.

transformers 5 keeps a layer's experts stacked in memory (mlp.experts.gate_up_proj [E, 2I, H],
mlp.experts.down_proj [E, H, I]) and save_pretrained writes them back one tensor per expert, in
the names of transformers 4. A checkpoint that holds stacked experts all the same (another
version, or --stacked: save_original_format=False) is rewritten here one tensor per expert, in
those names, and the output says so.

Each mixture of experts is also saved in the stacked form, from the same model in memory:
OUT/<arch>-stacked (save_pretrained(..., save_original_format=False); Mixtral's router under
mlp.gate.weight), with OUT/<arch>-stacked/ref_of.txt naming <arch>, whose references it shares:
a rank's gate_up_proj [E_local, 2I/W', H] stacks, for each expert it holds (ascending), the
reference's gate_proj (w1) rows then its up_proj (w3) rows; down_proj [E_local, H, I/W'] the
reference's down_proj (w2) slices. The stacked checkpoint must hold exactly the per-expert one's
tensors, stacked (same dtypes and bytes); a transformers without save_original_format, or one
whose stacked save differs, gets the stacked form written here from the per-expert tensors, and
the output says so.

gpt_oss and llama4 (text: Llama4ForCausalLM) store their experts stacked themselves; their
references are of the stacked tensors (no <arch>-stacked). Every parameter transformers
initialises to a constant (biases, norms) is filled at random first, so that a wrong slice of it
shows. A rank holds, of each stacked tensor, its group's experts (ascending) on dim 0:
  gpt_oss  mlp.experts.gate_up_proj [E, H, 2I] (gate, up interleaved: gate = even columns)
             columns [2pI/W', 2(p+1)I/W') (whole gate/up pairs), gate_up_proj_bias [E, 2I] the
             same; down_proj [E, I, H] rows [pI/W', (p+1)I/W'); down_proj_bias [E, H] whole
           mlp.router.weight / .bias whole; self_attn.sinks [nh] the rank's query heads;
           q/k/v biases as their weights' rows; o_proj.bias whole
  llama4   feed_forward.experts.gate_up_proj [E, H, 2I] (gate, up concatenated) gate columns
             [pI/W', (p+1)I/W') then up columns [I + pI/W', I + (p+1)I/W'); down_proj [E, I, H]
             rows [pI/W', (p+1)I/W'); feed_forward.router.weight whole; the shared expert
             (feed_forward.shared_expert.*) and the dense layers' feed_forward.* (of
             intermediate_size_mlp) a dense MLP over the world
Usage: hf_reference.py OUT [--stacked]
"""
import inspect
import json
import os
import re
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

VOCAB_MULTIPLE = 64
EXPERT = re.compile(r"\.experts\.(\d+)\.(gate_proj|up_proj|down_proj|w1|w3|w2)\.weight$")
STACKED = re.compile(r"^(model\.layers\.\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")
# the experts of a checkpoint stacked in its own format (gpt_oss, llama4)
NATIVE = re.compile(r"\.experts\.(gate_up_proj|gate_up_proj_bias|down_proj|down_proj_bias)$")
NATIVE_STACKED = ("gpt_oss", "llama4")


def configs():
    """{arch: (config, max_shard_size)}; an architecture this transformers lacks: (None, None)"""
    def make(cls, **kw):
        c = getattr(transformers, cls, None)
        return c(**kw) if c is not None else None

    common = dict(vocab_size=4000, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=False)
    # 6 experts: linear placement over 4 groups has a remainder; layer 0 dense where the
    # architecture has dense layers.
    moe = dict(vocab_size=1000, hidden_size=256, num_hidden_layers=3, num_attention_heads=8,
               num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
               num_experts_per_tok=2)
    qwen_moe = dict(moe, intermediate_size=512, moe_intermediate_size=128, num_experts=6,
                    mlp_only_layers=[0])
    # gpt-oss: its YaRN factor 32 over 4096 positions
    gpt_oss = dict(moe, max_position_embeddings=131072, intermediate_size=128, head_dim=32,
                   num_local_experts=6)
    # Llama-4 as Maverick: layers 1 and 3 MoE (top 1), 0 and 2 dense
    llama4 = dict(moe, num_hidden_layers=4, num_experts_per_tok=1, intermediate_size=128,
                  intermediate_size_mlp=512, head_dim=32, num_local_experts=6,
                  interleave_moe_layer_step=2)
    deepseek = dict(moe, num_key_value_heads=8, intermediate_size=512, moe_intermediate_size=128,
                    n_routed_experts=6, n_shared_experts=2, n_group=2, topk_group=1,
                    first_k_dense_replace=1, q_lora_rank=64, kv_lora_rank=32,
                    qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16)
    return {
        "llama": (make("LlamaConfig", **common), "20MB"),
        "qwen2": (make("Qwen2Config", **common), "20MB"),
        "mixtral": (make("MixtralConfig", **moe, intermediate_size=128, num_local_experts=6), "2MB"),
        "qwen2_moe": (make("Qwen2MoeConfig", **qwen_moe, shared_expert_intermediate_size=256),
                      "2MB"),
        "qwen3_moe": (make("Qwen3MoeConfig", **qwen_moe, head_dim=32), "2MB"),
        "deepseek_v3": (make("DeepseekV3Config", **deepseek), "2MB"),
        "gpt_oss": (make("GptOssConfig", **gpt_oss), "2MB"),
        "llama4": (make("Llama4TextConfig", **llama4), "2MB"),
    }


def experts_of(cfg):
    for key in ("num_local_experts", "num_experts", "n_routed_experts"):
        n = getattr(cfg, key, None)
        if n:
            return n
    return 0


def group_experts(g, n, ep, placement):
    if placement == "round_robin":
        return [e for e in range(n) if e % ep == g]
    base, rem = n // ep, n % ep
    first = g * base + min(g, rem)
    return list(range(first, first + base + (1 if g < rem else 0)))


def rows(t, idx):
    return t.index_select(0, torch.tensor(idx, dtype=torch.long))


def head_rows(heads, d):
    return [h * d + i for h in heads for i in range(d)]


def part(t, dim, ways, p):
    n = t.shape[dim]
    return t.narrow(dim, p * n // ways, n // ways)


def cut_stacked(kind, t, cfg, held, ways, p):
    """A rank's slice of a natively stacked expert tensor: the `held` experts, each cut in
    part p of `ways` (gpt_oss: gate/up interleaved; llama4: gate/up concatenated)."""
    t = rows(t, held)
    if kind == "down_proj":
        return part(t, 1, ways, p)
    if kind == "down_proj_bias":
        return t
    if cfg.model_type == "gpt_oss":  # gate_up_proj [E, H, 2I], gate_up_proj_bias [E, 2I]
        return part(t, t.dim() - 1, ways, p)
    i = t.shape[-1] // 2  # llama4 gate_up_proj [E, H, 2I]: gate columns, then up columns
    return torch.cat([part(t.narrow(-1, 0, i), -1, ways, p),
                      part(t.narrow(-1, i, i), -1, ways, p)], dim=-1)


def cut(name, t, cfg, w, r, ep=1, placement="linear"):
    """Rank r's slice of tensor `name` (None: not the rank's)."""
    H = cfg.num_attention_heads
    KV = getattr(cfg, "num_key_value_heads", None) or H
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    q_heads = list(range(r * H // w, (r + 1) * H // w))
    kv_heads = [r // (w // KV)] if w >= KV else list(range(r * KV // w, (r + 1) * KV // w))
    m = NATIVE.search(name)
    if m:
        ways = w // ep
        held = group_experts(r // ways, experts_of(cfg), ep, placement)
        return cut_stacked(m.group(1), t, cfg, held, ways, r % ways)
    m = EXPERT.search(name)
    if m:
        ways = w // ep
        if int(m.group(1)) not in group_experts(r // ways, experts_of(cfg), ep, placement):
            return None
        return part(t, 1 if m.group(2) in ("down_proj", "w2") else 0, ways, r % ways)
    if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
        n = t.shape[0]
        padded = (n + VOCAB_MULTIPLE - 1) // VOCAB_MULTIPLE * VOCAB_MULTIPLE
        full = torch.zeros((padded,) + tuple(t.shape[1:]), dtype=t.dtype)
        full[:n] = t
        per = padded // w
        return full[r * per:(r + 1) * per]
    if getattr(cfg, "kv_lora_rank", None):  # latent attention
        nope, rope, v = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        if ".q_b_proj." in name or ".q_proj." in name:
            return rows(t, head_rows(q_heads, nope + rope))
        if ".kv_b_proj." in name:
            return rows(t, head_rows(q_heads, nope + v))
        if ".o_proj." in name:
            return t[:, head_rows(q_heads, v)]
        if ".q_a_" in name or ".kv_a_" in name:
            return t
    if name.endswith(".self_attn.sinks"):
        return rows(t, q_heads)
    if name.endswith(".o_proj.bias"):
        return t
    if ".q_proj." in name:
        return rows(t, head_rows(q_heads, d))
    if ".k_proj." in name or ".v_proj." in name:
        return rows(t, head_rows(kv_heads, d))
    if ".o_proj." in name:
        return t[:, head_rows(q_heads, d)]
    if ".gate_proj." in name or ".up_proj." in name:  # dense MLPs and shared experts
        return part(t, 0, w, r)
    if ".down_proj." in name:
        return part(t, 1, w, r)
    return t  # norms, routers, score correction bias, shared expert gate


def load_folder(folder):
    tensors = {}
    for f in sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")):
        tensors.update(load_file(os.path.join(folder, f)))
    return tensors


def per_expert(arch, tensors):
    """Stacked experts as one tensor per expert, in transformers 4's names (0: none stacked)."""
    out, stacked = {}, 0
    prefix = "block_sparse_moe" if arch == "mixtral" else "mlp"
    names = ("w1", "w3", "w2") if arch == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    for n, t in tensors.items():
        m = STACKED.match(n)
        if m is None:
            if arch == "mixtral" and re.search(r"\.mlp\.gate\.weight$", n):
                n = n.replace(".mlp.gate.", ".block_sparse_moe.gate.")
            out[n] = t
            continue
        stacked += 1
        layer = m.group(1)
        for e in range(t.shape[0]):
            base = f"{layer}.{prefix}.experts.{e}."
            if m.group(2) == "down_proj":
                out[base + names[2] + ".weight"] = t[e].contiguous()
            else:
                half = t.shape[1] // 2
                out[base + names[0] + ".weight"] = t[e, :half].contiguous()
                out[base + names[1] + ".weight"] = t[e, half:].contiguous()
    return out, stacked


def stacked_form(arch, tensors):
    """The per-expert tensors stacked as transformers 5 saves them with
    save_original_format=False: per layer mlp.experts.gate_up_proj [E, 2I, H] (each expert's
    gate rows then its up rows) and mlp.experts.down_proj [E, H, I]; Mixtral's router under
    mlp.gate.weight; every other tensor as it is."""
    out, experts = {}, {}
    for n, t in tensors.items():
        m = EXPERT.search(n)
        if m is None:
            if arch == "mixtral":
                n = n.replace(".block_sparse_moe.gate.", ".mlp.gate.")
            out[n] = t
            continue
        layer = re.match(r"^(model\.layers\.\d+)\.", n).group(1)
        kind = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}.get(m.group(2), m.group(2))
        experts.setdefault(layer, {}).setdefault(int(m.group(1)), {})[kind] = t
    for layer, by_expert in experts.items():
        es = [by_expert[e] for e in sorted(by_expert)]
        out[f"{layer}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([x["gate_proj"], x["up_proj"]]) for x in es]).contiguous()
        out[f"{layer}.mlp.experts.down_proj"] = torch.stack(
            [x["down_proj"] for x in es]).contiguous()
    return out


def differences(got, want):
    """The tensors missing, unexpected or unequal (dtype, shape or bytes)."""
    def raw(t):
        return t.reshape(-1).view(torch.uint8)
    out = sorted(set(got) ^ set(want))
    for n in sorted(set(got) & set(want)):
        a, b = got[n], want[n]
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(raw(a), raw(b)):
            out.append(f"{n} ({a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)})")
    return out


def save_stacked(arch, model, folder, shard_size, per_expert_tensors):
    """OUT/<arch>-stacked: the model saved with its experts stacked; a note for the output."""
    os.makedirs(folder, exist_ok=True)
    want = stacked_form(arch, per_expert_tensors)
    note = "save_original_format=False"
    if "save_original_format" in inspect.signature(model.save_pretrained).parameters:
        model.save_pretrained(folder, max_shard_size=shard_size, safe_serialization=True,
                              save_original_format=False)
        bad = differences(load_folder(folder), want)
        if bad:
            note = (f"save_original_format=False differs from the per-expert save in {len(bad)} "
                    f"tensors (e.g. {bad[0]}): stacked form written here from the per-expert "
                    "tensors")
    else:
        model.config.save_pretrained(folder)
        bad = ["no save_original_format"]
        note = (f"transformers {transformers.__version__} has no save_original_format: stacked "
                "form written here from the per-expert tensors")
    if bad:
        rewrite(folder, want, int(shard_size.rstrip("MB")) * 1000 * 1000)
    with open(os.path.join(folder, "ref_of.txt"), "w") as fh:
        fh.write(arch + "\n")
    stacked = sum(1 for n in want if STACKED.match(n))
    shards = sum(1 for f in os.listdir(folder) if f.endswith(".safetensors"))
    return f"{shards} shards, {len(want)} tensors ({stacked} stacked), {note}"


def rewrite(folder, tensors, max_bytes):
    """The checkpoint in `folder` replaced by `tensors`, in shards of about max_bytes."""
    for f in os.listdir(folder):
        if f.endswith(".safetensors") or f.endswith(".safetensors.index.json"):
            os.remove(os.path.join(folder, f))
    shards, size = [[]], 0
    for n in sorted(tensors):
        b = tensors[n].numel() * tensors[n].element_size()
        if shards[-1] and size + b > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(n)
        size += b
    weight_map = {}
    for i, names in enumerate(shards):
        f = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensors[n] for n in names}, os.path.join(folder, f), {"format": "pt"})
        weight_map.update({n: f for n in names})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)


def layouts(cfg):
    """(world, ep, placement, file prefix) of every reference set for the model."""
    for w in (1, 2, 4):
        yield w, 1, "linear", f"ref-w{w}"
        if not experts_of(cfg):
            continue
        for ep in sorted({2, w}):
            if 1 < ep <= w and w % ep == 0:
                for placement in ("linear", "round_robin"):
                    yield w, ep, placement, f"ref-w{w}-ep{ep}-{placement}"


def main():
    out = sys.argv[1]
    stacked_save = "--stacked" in sys.argv[2:]
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    torch.manual_seed(0)
    for arch, (cfg, shard_size) in configs().items():
        if cfg is None:
            print(f"{arch}: not in transformers {transformers.__version__}, left out")
            continue
        folder = os.path.join(out, arch)
        os.makedirs(folder, exist_ok=True)
        model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
        native = arch in NATIVE_STACKED
        if native:
            with torch.no_grad():
                for p in model.parameters():
                    if p.numel() > 1 and bool((p == p.reshape(-1)[0]).all()):
                        p.normal_(std=0.02)
        kwargs = dict(max_shard_size=shard_size, safe_serialization=True)
        if stacked_save:
            kwargs["save_original_format"] = False
        model.save_pretrained(folder, **kwargs)
        tensors = load_folder(folder)
        tensors, stacked = per_expert(arch, tensors) if not native else (tensors, 0)
        note = ""
        if native:
            note = f", {sum(1 for n in tensors if NATIVE.search(n))} stacked expert tensors"
        if stacked:
            rewrite(folder, tensors, int(shard_size.rstrip("MB")) * 1000 * 1000)
            note = f", {stacked} stacked expert tensors rewritten one tensor per expert"
        shards = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
        refs = os.path.join(out, "refs", arch)
        os.makedirs(refs, exist_ok=True)
        sets = []
        for w, ep, placement, prefix in layouts(cfg):
            for r in range(w):
                ref = {}
                for n, t in tensors.items():
                    s = cut(n, t, cfg, w, r, ep, placement)
                    if s is not None:
                        ref[n] = s.contiguous()
                save_file(ref, os.path.join(refs, f"{prefix}-r{r}.safetensors"))
            sets.append(f"w{w}" + (f" ep{ep} {placement}" if ep > 1 else ""))
        print(f"{arch} ({type(model).__name__}): {len(shards)} shards, {len(tensors)} tensors"
              f"{note}; references for {', '.join(sets)}")
        if experts_of(cfg) and not native:
            what = save_stacked(arch, model, folder + "-stacked", shard_size, tensors)
            print(f"{arch}-stacked: {what}; the references of {arch}")


if __name__ == "__main__":
    main()
