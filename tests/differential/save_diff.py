"""Differential test of `safeshard convert` against huggingface_hub 2.4's state-dict splitter (split_state_dict_into_shards_factory, as
its torch helper calls it):
for the same tensors in the same order and the same max_shard_size (given as the same string),
the shard assignment, the file names and the weight_map must equal huggingface_hub's; the
index must be byte-identical to what transformers writes (json.dumps(indent=2,
sort_keys=True) + newline); every shard carries {"format": "pt"}; tensors re-read bit-exact,
or equal to ml_dtypes' / numpy's conversion with --dtype.

Usage: save_diff.py SAFESHARD_EXE
"""

import json
import os
import random
import subprocess
import sys
import tempfile

import ml_dtypes
import numpy as np
from huggingface_hub import split_state_dict_into_shards_factory
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from diff_common import check, exit_if_failed

EXE = sys.argv[1]


DTYPES = [np.float32, ml_dtypes.bfloat16, np.float16, np.int64, np.uint8, np.float64]


def make_input(folder, tensors):
    """One file per tensor, named so the checkpoint's order (files by name) is the dict's."""
    os.makedirs(folder)
    weight_map = {}
    total = 0
    for i, (name, arr) in enumerate(tensors.items()):
        fname = f"part-{i:05d}.safetensors"
        save_file({name: arr}, os.path.join(folder, fname))
        weight_map[name] = fname
        total += arr.nbytes
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)


def convert(src, out, *args):
    r = subprocess.run([EXE, "convert", src, "--out", out, *args], capture_output=True, text=True)
    return r


def read_output(out):
    """file name -> set of tensor names, and the weight_map (None for one file)."""
    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    content = {}
    for f in files:
        with safe_open(os.path.join(out, f), "np") as h:
            content[f] = set(h.keys())
            check(h.metadata() == {"format": "pt"}, f"{out}/{f}: metadata {h.metadata()}")
    index_path = os.path.join(out, "model.safetensors.index.json")
    index = None
    if os.path.exists(index_path):
        with open(index_path) as fh:
            index = fh.read()
    return content, index


def random_tensors(rng, n):
    tensors = {}
    for i in range(n):
        dt = rng.choice(DTYPES)
        shape = [rng.randint(0, 40) for _ in range(rng.randint(1, 2))]
        if rng.random() < 0.1:
            shape = [rng.randint(200, 400), 8]  # a big one, often over the limit
        name = rng.choice(["model.layers.", "lm_head.", "z.", "a."]) + str(i) + "." + rng.choice(
            ["weight", "bias", "\u00e9t\u00e9"])
        if dt in (np.int64, np.uint8):
            arr = np.arange(int(np.prod(shape)), dtype=dt).reshape(shape)
        else:
            arr = np.asarray(np.random.default_rng(i).standard_normal(shape), dtype=np.float32).astype(dt)
        tensors[name] = arr
    # A random order, not the sorted one.
    keys = list(tensors)
    rng.shuffle(keys)
    return {k: tensors[k] for k in keys}


def same_split(tensors, size_arg, out):
    # What huggingface_hub's torch/numpy helpers pass: the byte size, the default file pattern.
    hub = split_state_dict_into_shards_factory(tensors, get_storage_size=lambda a: a.nbytes,
                                               filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=size_arg)
    content, index = read_output(out)
    want = {f: set(names) for f, names in hub.filename_to_tensors.items()}
    if not tensors:
        want = {"model.safetensors": set()}  # huggingface_hub lists no file; we write one
    check(content == want, f"{out}: shards {sorted(content)} vs huggingface_hub {sorted(want)}")
    if hub.is_sharded:
        expected = json.dumps({"metadata": hub.metadata, "weight_map": hub.tensor_to_filename},
                              indent=2, sort_keys=True) + "\n"
        check(index == expected, f"{out}: index differs from transformers' layout:\n{index}\n{expected}")
        # huggingface_hub's own writer keeps insertion order; the parsed maps are equal.
        check(json.loads(index)["weight_map"] == hub.tensor_to_filename, f"{out}: weight_map")
    else:
        check(index is None, f"{out}: an index for one shard")


def main():
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        # The example: [a(1), B(10), c(1)] with max 5 -> [B], [a, c].
        t = {"a": np.zeros(1, np.uint8), "B": np.zeros(10, np.uint8), "c": np.zeros(1, np.uint8)}
        make_input(f"{tmp}/ex", t)
        r = convert(f"{tmp}/ex", f"{tmp}/ex-out", "--max-shard-size", "5")
        check(r.returncode == 0, f"example: {r.stderr}")
        same_split(t, 5, f"{tmp}/ex-out")
        content, _ = read_output(f"{tmp}/ex-out")
        check(content.get("model-00001-of-00002.safetensors") == {"B"}, f"example: {content}")

        sizes = ["1KB", "2kb", "0.5KB", "1.5KB", "3.3KB", "0.1KB", "10KB", "1000", "5GB", "0.7 KB",
                 "0"]
        cases = 0
        for case in range(40):
            tensors = random_tensors(rng, rng.randint(1, 14))  # an empty index is refused on read
            size = rng.choice(sizes)
            src, out = f"{tmp}/in{case}", f"{tmp}/out{case}"
            make_input(src, tensors)
            r = convert(src, out, "--max-shard-size", size)
            check(r.returncode == 0, f"case {case}: convert failed: {r.stderr}")
            if r.returncode != 0:
                continue
            hub_size = int(size) if size.isdigit() else size
            same_split(tensors, hub_size, out)
            got = {}
            for f in os.listdir(out):
                if f.endswith(".safetensors"):
                    got.update(load_file(os.path.join(out, f)))
            for name, arr in tensors.items():
                check(name in got and got[name].dtype == arr.dtype and got[name].shape == arr.shape
                      and got[name].tobytes() == arr.tobytes(), f"case {case}: {name} not bit-exact")
            cases += 1

            # With --dtype: floating tensors converted as ml_dtypes/numpy convert them.
            dt = rng.choice(["f16", "bf16", "f32"])
            npdt = {"f16": np.float16, "bf16": ml_dtypes.bfloat16, "f32": np.float32}[dt]
            r = convert(src, out + "-d", "--dtype", dt, "--max-shard-size", size)
            check(r.returncode == 0, f"case {case}: convert --dtype failed: {r.stderr}")
            if r.returncode != 0:
                continue
            got = {}
            for f in os.listdir(out + "-d"):
                if f.endswith(".safetensors"):
                    got.update(load_file(os.path.join(out + "-d", f)))
            converted = {}
            for name, arr in tensors.items():
                floating = arr.dtype in (np.float16, np.float32, np.dtype(ml_dtypes.bfloat16))
                # F64 converts only to F32 (no double rounding through F32); else kept.
                floating = floating or (arr.dtype == np.float64 and dt == "f32")
                want = arr.astype(npdt) if floating else arr
                converted[name] = want
                check(got[name].dtype == want.dtype and got[name].tobytes() == want.tobytes(),
                      f"case {case}: {name} {arr.dtype}->{dt} differs from the reference")
            same_split(converted, hub_size, out + "-d")

    print(f"{cases} random cases compared with huggingface_hub's split")
    exit_if_failed()
    print("ok")


main()
