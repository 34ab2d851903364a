"""Differential test of checkpoints written dequantized (`safeshard convert --dtype`, and
`safeshard export --dtype` then `merge`) against numpy with ml_dtypes, bit for bit.

The input checkpoints are written here byte by byte (the safetensors layout: an 8-byte header
length, the JSON header, the data), so the test depends on no library's support for FP8 or FP4
dtypes. Each is a one-layer llama whose seven linears are quantized as its scheme's reference
code stores them:
  - FP8 blocks (DeepSeek-V3): weight F8_E4M3 [N, K], weight_scale_inv F32 [ceil(N/b), ceil(K/b)];
    w = f32(fp8) * scale_inv[i // b][j // b]  (vLLM's and transformers' block dequantization);
  - NVFP4, ModelOpt: weight U8 [N, K/2] (two E2M1 a byte, low nibble first), weight_scale
    F8_E4M3 [N, K/16], weight_scale_2 F32 []; w = f32(e2m1) * (f32(scale) * weight_scale_2);
  - NVFP4, compressed-tensors: weight_packed, weight_scale, weight_global_scale F32 [1];
    w = f32(e2m1) * (f32(scale) / weight_global_scale);
each product in F32, rounded once to the target by ml_dtypes / numpy (round to nearest even).
Codes include the E4M3 NaNs; a NaN result must be a NaN, any other bit for bit.

The integer schemes, with numpy transcriptions of their reference code, computed in the dtypes
that code computes in, and compared in the targets where that is one rounding:
  - GPTQ (qweight I32 [K/p, N], scales F16 [G, N], qzeros I32 [G, N/p], g_idx I32 [K]):
    GPTQModel's dequantize_weight, scales[g_idx] * (weight - zeros[g_idx]) in F16, the zeros
    plus one for checkpoint_format "gptq" (v1, AutoGPTQ's), as they are for "gptq_v2"; F16;
  - compressed-tensors pack-quantized (weight_packed I32 [N, K/p], weight_scale BF16 [N, G],
    weight_zero_point I32 [N/p, G], weight_g_idx I32 [K]): unpack_from_int32 (codes less
    2^(bits-1)) and _dequantize, (x_q - zero_point) * scale in BF16; BF16;
  - bitsandbytes 8-bit (weight I8 [N, K], SCB F32 [N]): int8_vectorwise_dequant,
    A * SCB * 7.874015718698502e-3 in F32, then to each target.

Checked: every output tensor (the weights under their values' names, the unquantized tensors
converted or kept), no scale tensor written, config.json without quantization_config; the
export's merge gives the same tensors as the convert.

Usage: dequantize_diff.py SAFESHARD_EXE
"""

import json
import os
import struct
import subprocess
import sys
import tempfile

import ml_dtypes
import numpy as np
from diff_common import check, exit_if_failed

EXE = sys.argv[1]


H, I, HEADS, KV, D, V = 64, 128, 4, 2, 16, 96
LINEARS = {
    "self_attn.q_proj": (HEADS * D, H),
    "self_attn.k_proj": (KV * D, H),
    "self_attn.v_proj": (KV * D, H),
    "self_attn.o_proj": (H, HEADS * D),
    "mlp.gate_proj": (I, H),
    "mlp.up_proj": (I, H),
    "mlp.down_proj": (H, I),
}
NP_OF = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32}
SIZE_OF = {"F8_E4M3": 1, "U8": 1, "F32": 4, "BF16": 2, "F16": 2}


def write_safetensors(path, tensors):
    """tensors: name -> (dtype name, shape, raw bytes), written in name order."""
    header, data, off = {}, [], 0
    for name in sorted(tensors):
        dt, shape, raw = tensors[name]
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        data.append(raw)
        off += len(raw)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(data))


def read_folder(folder):
    """name -> (dtype name, shape, raw bytes) of every .safetensors file in folder."""
    out = {}
    for fname in sorted(os.listdir(folder)):
        if not fname.endswith(".safetensors"):
            continue
        with open(os.path.join(folder, fname), "rb") as f:
            blob = f.read()
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8:8 + n])
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            out[name] = (info["dtype"], tuple(info["shape"]), blob[8 + n + a:8 + n + b])
    return out


def fp8_codes(rng, shape):
    codes = rng.integers(0, 256, size=shape, dtype=np.uint8)
    codes.flat[:: 97] = 0x7F  # some NaNs, of both signs
    codes.flat[1:: 101] = 0xFF
    return codes


def as_f32(codes, dt):
    return codes.view(dt).astype(np.float32)


# The 16 E2M1 codes' values, as ml_dtypes decodes them (one code a byte, in its low bits).
E2M1 = np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float32)


def unpack_fp4(packed):
    """[N, K/2] bytes, low nibble first -> [N, K] F32 values."""
    lo, hi = packed & 0x0F, packed >> 4
    return E2M1[np.stack([lo, hi], axis=-1).reshape(packed.shape[0], -1)]


def fp8_blocks(rng, b=16):
    """The FP8-blocks tensors, and each weight's dequantized F32 values."""
    tensors, values = {}, {}
    for n, (rows, cols) in LINEARS.items():
        p = f"model.layers.0.{n}."
        codes = fp8_codes(rng, (rows, cols))
        grid = (-(-rows // b), -(-cols // b))
        scale = rng.uniform(1e-4, 1e-2, size=grid).astype(np.float32)
        scale.flat[0] = 2.0**-140  # subnormal F32
        tensors[p + "weight"] = ("F8_E4M3", (rows, cols), codes.tobytes())
        tensors[p + "weight_scale_inv"] = ("F32", grid, scale.tobytes())
        tensors[p + "input_scale"] = ("F32", (), np.float32(0.5).tobytes())
        full = np.repeat(np.repeat(scale, b, axis=0), b, axis=1)[:rows, :cols]
        values[p + "weight"] = as_f32(codes, ml_dtypes.float8_e4m3fn) * full
    quant = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
             "weight_block_size": [b, b]}
    return tensors, values, quant


def nvfp4(rng, ct):
    tensors, values = {}, {}
    names = (("weight_packed", "weight_scale", "weight_global_scale") if ct
             else ("weight", "weight_scale", "weight_scale_2"))
    for n, (rows, cols) in LINEARS.items():
        p = f"model.layers.0.{n}."
        packed = rng.integers(0, 256, size=(rows, cols // 2), dtype=np.uint8)
        scale = rng.integers(0x08, 0x50, size=(rows, cols // 16), dtype=np.uint8)  # E4M3 > 0
        scale.flat[:: 53] = 0x7F  # NaN scales
        scale.flat[1:: 59] = 0x01  # subnormal scales
        g = np.float32(rng.uniform(100.0, 3000.0) if ct else rng.uniform(1e-4, 1e-2))
        tensors[p + names[0]] = ("U8", (rows, cols // 2), packed.tobytes())
        tensors[p + names[1]] = ("F8_E4M3", (rows, cols // 16), scale.tobytes())
        tensors[p + names[2]] = ("F32", (1,) if ct else (), g.tobytes())
        s = as_f32(scale, ml_dtypes.float8_e4m3fn)
        s = (s / g) if ct else (s * g)
        values[p + "weight"] = unpack_fp4(packed) * np.repeat(s, 16, axis=1)
    quant = ({"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
              "config_groups": {}} if ct
             else {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16})
    return tensors, values, quant


def random_words(rng, shape):
    return rng.integers(0, 2**32, size=shape, dtype=np.uint64).astype(np.uint32)


def half_scales(rng, shape, dt):
    """Finite scales of both signs, some zero, some subnormal, in dt (F16 or BF16)."""
    s = rng.uniform(-0.05, 0.05, size=shape).astype(np.float32)
    s.flat[:: 37] = 0.0
    s.flat[1:: 41] = 3e-6 if dt == np.float16 else 1e-39  # subnormal in dt
    return s.astype(dt)


def unpack_words(words, bits, axis):
    """I32 words of 32 / bits codes (low bits first) unpacked along `axis` (0 or 1)."""
    shifts = np.arange(0, 32, bits, dtype=np.uint32)
    mask = np.uint32((1 << bits) - 1)
    if axis == 1:  # [R, C/p] -> [R, C]
        return ((words[:, :, None] >> shifts[None, None, :]) & mask).reshape(words.shape[0], -1)
    return ((words[:, None, :] >> shifts[None, :, None]) & mask).reshape(-1, words.shape[1])


def gptq(rng, bits, v2, act_order, g=16):
    """GPTQModel's dequantize_weight: scales[g_idx] * (weight - zeros[g_idx]), F16."""
    tensors, values = {}, {}
    p = 32 // bits
    for n, (rows, cols) in LINEARS.items():
        pre = f"model.layers.0.{n}."
        qweight = random_words(rng, (cols // p, rows))
        scales = half_scales(rng, (cols // g, rows), np.float16)
        qzeros = random_words(rng, (cols // g, rows // p))
        g_idx = (rng.integers(0, cols // g, size=cols) if act_order
                 else np.arange(cols) // g).astype(np.int32)
        tensors[pre + "qweight"] = ("I32", qweight.shape, qweight.tobytes())
        tensors[pre + "scales"] = ("F16", scales.shape, scales.tobytes())
        tensors[pre + "qzeros"] = ("I32", qzeros.shape, qzeros.tobytes())
        tensors[pre + "g_idx"] = ("I32", g_idx.shape, g_idx.tobytes())
        weight = unpack_words(qweight, bits, 0).astype(np.int32)  # [K, N]
        zeros = unpack_words(qzeros, bits, 1).astype(np.int32) + (0 if v2 else 1)  # [G, N]
        w = scales[g_idx] * (weight - zeros[g_idx]).astype(np.float16)  # F16 arithmetic
        values[pre + "weight"] = w.T
    quant = {"quant_method": "gptq", "bits": bits, "group_size": g, "desc_act": act_order,
             "sym": False, "checkpoint_format": "gptq_v2" if v2 else "gptq"}
    return tensors, values, quant


def pack_quantized(rng, bits, symmetric, act_order, g=16):
    """compressed-tensors' unpack_from_int32 and _dequantize: (x_q - zp) * scale, BF16."""
    tensors, values = {}, {}
    p, offset = 32 // bits, 1 << (bits - 1)
    bf16 = ml_dtypes.bfloat16
    for n, (rows, cols) in LINEARS.items():
        pre = f"model.layers.0.{n}."
        packed = random_words(rng, (rows, cols // p))
        scale = half_scales(rng, (rows, cols // g), bf16)
        tensors[pre + "weight_packed"] = ("I32", packed.shape, packed.tobytes())
        tensors[pre + "weight_scale"] = ("BF16", scale.shape, scale.tobytes())
        tensors[pre + "weight_shape"] = ("I64", (2,), np.array([rows, cols], np.int64).tobytes())
        x_q = unpack_words(packed, bits, 1).astype(np.int32) - offset
        zp = np.zeros((rows, cols // g), np.int32)
        if not symmetric:
            zw = random_words(rng, (rows // p, cols // g))
            tensors[pre + "weight_zero_point"] = ("I32", zw.shape, zw.tobytes())
            zp = unpack_words(zw, bits, 0).astype(np.int32) - offset
        groups = np.arange(cols) // g
        if act_order:
            groups = rng.integers(0, cols // g, size=cols).astype(np.int32)
            tensors[pre + "weight_g_idx"] = ("I32", groups.shape, groups.tobytes())
        w = (x_q.astype(bf16) - zp[:, groups].astype(bf16)) * scale[:, groups]
        values[pre + "weight"] = w
    weights = {"num_bits": bits, "group_size": g, "strategy": "group", "type": "int",
               "symmetric": symmetric, "actorder": "group" if act_order else None}
    quant = {"quant_method": "compressed-tensors", "format": "pack-quantized",
             "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}}}
    return tensors, values, quant


def bnb_int8(rng):
    """bitsandbytes' int8_vectorwise_dequant: A * SCB * 7.874015718698502e-3, F32."""
    tensors, values = {}, {}
    for n, (rows, cols) in LINEARS.items():
        pre = f"model.layers.0.{n}."
        a = rng.integers(-128, 128, size=(rows, cols), dtype=np.int8)
        scb = rng.uniform(0.0, 4.0, size=rows).astype(np.float32)
        tensors[pre + "weight"] = ("I8", a.shape, a.tobytes())
        tensors[pre + "SCB"] = ("F32", scb.shape, scb.tobytes())
        tensors[pre + "weight_format"] = ("U8", (), bytes([0]))
        values[pre + "weight"] = a.astype(np.float32) * scb[:, None] * np.float32(
            7.874015718698502e-3)
    return tensors, values, {"quant_method": "bitsandbytes", "load_in_8bit": True}


def write_model(folder, quant_tensors, quant, rng):
    os.makedirs(folder)
    tensors = dict(quant_tensors)
    plain = {}
    for name, shape in (("model.embed_tokens.weight", (V, H)), ("lm_head.weight", (V, H)),
                        ("model.norm.weight", (H,)),
                        ("model.layers.0.input_layernorm.weight", (H,)),
                        ("model.layers.0.post_attention_layernorm.weight", (H,))):
        x = rng.normal(0, 0.02, size=shape).astype(ml_dtypes.bfloat16)
        tensors[name] = ("BF16", shape, x.tobytes())
        plain[name] = x.astype(np.float32)  # exact: BF16 widens exactly
    write_safetensors(os.path.join(folder, "model.safetensors"), tensors)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": H,
              "intermediate_size": I, "num_hidden_layers": 1, "num_attention_heads": HEADS,
              "num_key_value_heads": KV, "vocab_size": V, "tie_word_embeddings": False,
              "torch_dtype": "bfloat16", "quantization_config": quant}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return plain


def same_bits(got_raw, want, to):
    dt = NP_OF[to]
    got = np.frombuffer(got_raw, dtype=dt)
    want = want.reshape(-1)
    gnan, wnan = np.isnan(got.astype(np.float32)), np.isnan(want.astype(np.float32))
    bits = np.uint16 if dt != np.float32 else np.uint32
    same = (gnan & wnan) | (~gnan & ~wnan & (got.view(bits) == want.view(bits)))
    return bool(same.all()), int((~same).sum())


def check_written(label, folder, values, plain, to):
    got = read_folder(folder)
    expected = {**{n: v for n, v in values.items()}, **plain}
    check(sorted(got) == sorted(expected), f"{label}: names {sorted(set(got) ^ set(expected))}")
    for name, v in expected.items():
        if name not in got:
            continue
        dt, shape, raw = got[name]
        check(dt == to and shape == v.shape, f"{label}: {name} is {dt} {shape}")
        want = v.astype(NP_OF[to])  # one rounding from F32, to nearest even
        ok, bad = same_bits(raw, want, to)
        check(ok, f"{label}: {name}: {bad} values differ")
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    check("quantization_config" not in config, f"{label}: config.json keeps quantization_config")


def main():
    rng = np.random.default_rng(2026)
    every = ("BF16", "F16", "F32")
    cases = (("fp8_blocks", fp8_blocks(rng), every),
             ("nvfp4_modelopt", nvfp4(rng, False), every),
             ("nvfp4_ct", nvfp4(rng, True), every),
             ("gptq_v1_act_order", gptq(rng, 4, False, True), ("F16",)),
             ("gptq_v2_8bit", gptq(rng, 8, True, False), ("F16",)),
             ("pack_quantized_asym_act_order", pack_quantized(rng, 4, False, True), ("BF16",)),
             ("pack_quantized_8bit_sym", pack_quantized(rng, 8, True, False), ("BF16",)),
             ("bitsandbytes_8bit", bnb_int8(rng), every))
    with tempfile.TemporaryDirectory() as tmp:
        for label, (tensors, values, quant), targets in cases:
            src = os.path.join(tmp, label)
            plain = write_model(src, tensors, quant, rng)
            for to in targets:
                out = os.path.join(tmp, f"{label}-{to}")
                r = subprocess.run([EXE, "convert", src, "--out", out, "--dtype", to],
                                   capture_output=True, text=True)
                check(r.returncode == 0, f"{label} convert {to}: {r.stderr}")
                if r.returncode == 0:
                    check_written(f"{label} convert {to}", out, values, plain, to)
            ex, merged = os.path.join(tmp, f"{label}-ex"), os.path.join(tmp, f"{label}-merged")
            r = subprocess.run([EXE, "export", src, "--tp", "2", "--out", ex, "--dtype",
                                targets[0]], capture_output=True, text=True)
            check(r.returncode == 0, f"{label} export: {r.stderr}")
            if r.returncode == 0:
                subprocess.run([EXE, "merge", ex, "--out", merged], check=True,
                               stdout=subprocess.DEVNULL)
                check_written(f"{label} export + merge", merged, values, plain, targets[0])
    exit_if_failed()
    print("dequantized checkpoints equal numpy/ml_dtypes' dequantization bit for bit")


main()
