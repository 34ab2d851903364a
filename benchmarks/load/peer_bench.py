#!/usr/bin/env python3
"""The reference `safetensors` package on the files load_bench writes, in the same cache state.

    build/benchmarks/load/load_bench --dir=/tmp/ssb --benchmark_filter=NONE   # writes the files
    .venv/bin/python benchmarks/load/peer_bench.py --dir /tmp/ssb \
        --load-bench build/benchmarks/load/load_bench

Measures, files in the page cache (read once before), medians of --repetitions runs:
  full:  safe_open(p1/model.safetensors, framework="numpy"), get_tensor of each of the 8 BF16
         tensors (1 GiB), against load_bench's BM_p1_load/default (world 1, same file);
  split: safe_open(p2/model.safetensors, "numpy"), get_slice(name)[:, 3*1792:4*1792] of each of
         the 4 BF16 4096x14336 tensors (rank 3 of world 8, split on dim 1), against
         BM_p2_split1/automatic (the same rank of the same file).
With --load-bench, runs those two benchmarks (1..N threads; also with the huge_pages option)
right after and prints the ratios
(peer time / safeshard time: > 1 means safeshard is faster). Goals: >= 1 full, >= 2 split.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import ml_dtypes  # noqa: F401 -- registers bfloat16 with numpy, which safetensors needs for BF16
from safetensors import safe_open


def warm(path):
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def full_load(path):
    with safe_open(path, framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def column_split(path, rank, world):
    out = {}
    with safe_open(path, framework="numpy") as f:
        for k in f.keys():
            s = f.get_slice(k)
            cols = s.get_shape()[1] // world
            out[k] = s[:, rank * cols:(rank + 1) * cols]
    return out


def timed(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        r = fn()
        nbytes = sum(a.nbytes for a in r.values())
        del r  # freed inside the timing, as load_bench's tensors are at the end of an iteration
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), nbytes


def ours(binary, directory, reps):
    """Medians (ms) of load_bench's P1 default load and P2 automatic split, by thread count."""
    cmd = [binary, f"--dir={directory}",
           "--benchmark_filter=^BM_p1_load/(default|huge_pages)/|"
           "^BM_p2_split1/(automatic|huge_pages)/",
           f"--benchmark_repetitions={reps}", "--benchmark_report_aggregates_only=true",
           "--benchmark_format=json", "--benchmark_min_time=0.05"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    res = {}
    for b in json.loads(out)["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        name = b["run_name"]  # e.g. BM_p1_load/default/2/process_time/real_time
        parts = name.split("/")
        res[(parts[0], parts[1], int(parts[2]))] = b["real_time"]  # ms (the benchmarks' unit)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="the folder load_bench --dir=DIR wrote")
    ap.add_argument("--load-bench", help="load_bench binary: run it too and print ratios")
    ap.add_argument("--repetitions", type=int, default=7)
    a = ap.parse_args()
    p1 = os.path.join(a.dir, "p1", "model.safetensors")
    p2 = os.path.join(a.dir, "p2", "model.safetensors")
    for p in (p1, p2):
        if not os.path.exists(p):
            sys.exit(f"{p} is missing: run load_bench --dir={a.dir} first")
        warm(p)
    import safetensors
    import numpy
    print(f"safetensors {safetensors.__version__}, numpy {numpy.__version__}, "
          f"python {sys.version.split()[0]}")
    full_med, full_min, full_bytes = timed(lambda: full_load(p1), a.repetitions)
    split_med, split_min, split_bytes = timed(lambda: column_split(p2, 3, 8), a.repetitions)
    print(f"safetensors full load   (p1, {full_bytes >> 20} MiB): median {full_med * 1e3:.1f} ms, "
          f"best {full_min * 1e3:.1f} ms, {full_bytes / full_med / 1e9:.2f} GB/s")
    print(f"safetensors column split (p2 rank 3/8, {split_bytes >> 20} MiB): median "
          f"{split_med * 1e3:.1f} ms, best {split_min * 1e3:.1f} ms, "
          f"{split_bytes / split_med / 1e9:.2f} GB/s")
    if not a.load_bench:
        return
    res = ours(a.load_bench, a.dir, a.repetitions)
    print("| what | threads | safetensors median | safeshard median | safetensors ÷ safeshard |")
    print("|---|---:|---:|---:|---:|")
    for (bench, mode, threads), ms in sorted(res.items()):
        peer = full_med if bench == "BM_p1_load" else split_med
        what = "full load (P1 file)" if bench == "BM_p1_load" else "column split (P2, rank 3 of 8)"
        print(f"| {what}, safeshard {mode} | {threads} | {peer * 1e3:.1f} ms | {ms:.1f} ms | "
              f"**{peer * 1e3 / ms:.2f}** |")


if __name__ == "__main__":
    main()
