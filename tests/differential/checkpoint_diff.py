"""Differential test of `safeshard inspect --json` and `safeshard verify` on checkpoints
sharded by the reference tooling: huggingface_hub's state-dict splitter (the factory behind
its numpy/torch helpers) and safetensors.numpy.save_file, the way transformers writes them.

Usage: checkpoint_diff.py SAFESHARD_EXE
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import ml_dtypes
import numpy as np
from huggingface_hub import split_state_dict_into_shards_factory
from safetensors import safe_open
from safetensors.numpy import save_file
from diff_common import check, exit_if_failed

EXE = sys.argv[1]


def run(*args):
    p = subprocess.run([EXE, *args], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def save_sharded(folder, sd, max_shard_size, metadata=None):
    split = split_state_dict_into_shards_factory(
        sd, get_storage_size=lambda t: t.nbytes,
        filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size)
    for fn, names in split.filename_to_tensors.items():
        save_file({n: sd[n] for n in names}, os.path.join(folder, fn), metadata=metadata)
    if split.is_sharded:
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": split.metadata, "weight_map": split.tensor_to_filename}, f,
                      indent=2)
    return split


def expected_inspect(folder, files):
    """What inspect --json must print, computed from the files with the reference."""
    out = {"files": [], "tensors": [], "total_bytes": 0}
    for fn in sorted(files):
        path = os.path.join(folder, fn)
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        meta = header.pop("__metadata__", None) or {}
        out["files"].append({"path": fn, "header_bytes": n, "metadata": meta,
                             "tensors": len(header)})
        with safe_open(path, framework="numpy") as st:
            keys = set(st.keys())
        assert keys == set(header), "reference disagrees with the raw header"
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            b, e = info["data_offsets"]
            out["tensors"].append({"name": name, "dtype": info["dtype"], "shape": info["shape"],
                                   "file": fn, "offset": 8 + n + b, "nbytes": e - b})
            out["total_bytes"] += e - b
    return out


def state_dict(rng, layers):
    sd = {"model.embed_tokens.weight": rng.standard_normal((64, 16)).astype(ml_dtypes.bfloat16)}
    for i in range(layers):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = rng.standard_normal((16, 16)).astype(np.float16)
        sd[p + "mlp.up_proj.weight"] = rng.standard_normal((32, 16)).astype(np.float32)
        sd[p + "input_layernorm.weight"] = np.ones((16,), dtype=ml_dtypes.bfloat16)
    sd["model.norm.weight"] = np.ones((16,), dtype=np.float32)
    sd["lm_head.bias"] = np.zeros((0,), dtype=np.float32)
    sd["scalar"] = np.array(3, dtype=np.int64)
    sd["mask"] = np.array([True, False, True], dtype=np.bool_)
    sd["q"] = np.arange(6, dtype=np.int8).reshape(2, 3)
    return sd


def check_good(folder, files, label):
    rc, out, err = run("inspect", "--json", folder)
    check(rc == 0, f"{label}: inspect rc {rc} ({err.strip()})")
    if rc == 0:
        got = json.loads(out)
        want = expected_inspect(folder, files)
        check(got == want, f"{label}: inspect --json differs from the reference")
        if got != want:
            print(json.dumps(got)[:2000], "\n", json.dumps(want)[:2000])
    rc, out, err = run("verify", folder)
    check(rc == 0 and out.startswith("ok\n"), f"{label}: verify rc {rc} ({err.strip()})")
    # Every tensor the reference loads through the index is found and sized the same.
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            wm = json.load(f)["weight_map"]
        total = 0
        for name, fn in wm.items():
            with safe_open(os.path.join(folder, fn), framework="numpy") as st:
                total += st.get_tensor(name).nbytes
        with open(index) as f:
            check(json.load(f)["metadata"]["total_size"] == total,
                  f"{label}: the reference's own total_size")


def main():
    rng = np.random.default_rng(7)
    root = tempfile.mkdtemp(prefix="safeshard-ckpt-diff-")
    try:
        for layers, max_size in [(2, 10_000_000), (6, 3000), (24, 1500)]:
            folder = os.path.join(root, f"m{layers}")
            os.makedirs(folder)
            split = save_sharded(folder, state_dict(rng, layers), max_size, {"format": "pt"})
            check_good(folder, list(split.filename_to_tensors), f"{layers} layers")
            print(f"ok: {layers} layers, {len(split.filename_to_tensors)} files")

        sharded = os.path.join(root, "m24")
        files = sorted(f for f in os.listdir(sharded) if f.endswith(".safetensors"))
        with open(os.path.join(sharded, "model.safetensors.index.json")) as f:
            index = json.load(f)

        def variant(name, mutate_index=None, mutate_folder=None):
            folder = os.path.join(root, name)
            shutil.copytree(sharded, folder)
            if mutate_index is not None:
                ix = json.loads(json.dumps(index))
                mutate_index(ix)
                with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
                    json.dump(ix, f)
            if mutate_folder is not None:
                mutate_folder(folder)
            return folder

        def expect_fail(folder, errc, label):
            for cmd in ("verify", "inspect"):
                rc, out, err = run(cmd, folder)
                check(rc == 1, f"{label}: {cmd} rc {rc}, expected 1")
                check(errc in err, f"{label}: {cmd} says '{err.strip()}', expected {errc}")

        expect_fail(variant("missing", mutate_folder=lambda d: os.remove(os.path.join(d, files[1]))),
                    "invalid_index", "missing shard")
        first = next(iter(index["weight_map"]))

        def traversal(ix):
            ix["weight_map"][first] = "../" + ix["weight_map"][first]
        expect_fail(variant("traversal", traversal), "invalid_index", "traversal")

        def wrong_total(ix):
            ix["metadata"]["total_size"] += 1
        expect_fail(variant("total", wrong_total), "invalid_index", "wrong total_size")

        def dropped(ix):
            del ix["weight_map"][first]
        expect_fail(variant("unindexed", dropped), "invalid_index", "unindexed tensor")
        rc, _, err = run("verify", "--lenient", os.path.join(root, "unindexed"))
        check(rc == 0 and "warning" in err, f"unindexed --lenient: rc {rc}")

        def moved(ix):
            ix["weight_map"][first] = files[-1] if ix["weight_map"][first] != files[-1] else files[0]
        expect_fail(variant("moved", moved), "invalid_index", "tensor missing from its shard")

        def truncate(d):
            p = os.path.join(d, files[0])
            with open(p, "r+b") as f:
                f.truncate(os.path.getsize(p) - 1)
        expect_fail(variant("truncated", mutate_folder=truncate), "metadata_incomplete_buffer",
                    "truncated shard")
        # The reference refuses the truncated shard too.
        try:
            with safe_open(os.path.join(root, "truncated", files[0]), framework="numpy"):
                pass
            check(False, "reference accepted a truncated shard")
        except Exception:
            pass
    finally:
        shutil.rmtree(root, ignore_errors=True)
    exit_if_failed()
    print("all ok")


if __name__ == "__main__":
    main()
