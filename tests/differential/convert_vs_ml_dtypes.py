"""safeshard's dtype conversions against ml_dtypes / numpy, bit for bit.

Usage: convert_vs_ml_dtypes.py CONVERT_TABLE_EXE [best|portable|avx2] [--exhaustive-f32]

For every pair of the library's conversion table (the helper's --list), writes the inputs to
a file, has the C++ helper convert them, and compares the result with numpy's astype (ml_dtypes supplies bfloat16 and the float8 types):
all 65,536 patterns of F16/BF16, all 256 of each F8, and a large sample of F32 and F64 bit
patterns (every exponent, rounding edges, subnormal boundaries, NaN payloads, random).
--exhaustive-f32 (minutes; not run by meson) also checks F32 -> F16 and F32 -> BF16 on all
2^32 patterns, in chunks. Exits 0 when every bit matches, 1 otherwise, 77 (skip) when the loop choice is unavailable.
"""
import os
import subprocess
import sys
import tempfile
import warnings

import ml_dtypes
import numpy as np

TYPES = {
    "F16": (np.float16, np.uint16),
    "BF16": (ml_dtypes.bfloat16, np.uint16),
    "F32": (np.float32, np.uint32),
    "F64": (np.float64, np.uint64),
    "F8_E4M3": (ml_dtypes.float8_e4m3fn, np.uint8),
    "F8_E5M2": (ml_dtypes.float8_e5m2, np.uint8),
}



def f32_sample(rng):
    """Every sign and exponent with mantissas at every rounding position, plus random."""
    mans = [0, 1, 2, 0x7FFFFF, 0x7FFFFE, 0x400000, 0x3FFFFF, 0x400001]
    for k in range(23):
        half = 1 << k
        for low in (half, half - 1, half + 1):
            mans += [low & 0x7FFFFF, (low | half << 1) & 0x7FFFFF, (low | 0x400000) & 0x7FFFFF]
    mans = np.array(sorted(set(mans)), dtype=np.uint32)
    se = (np.arange(512, dtype=np.uint32) << 23)  # sign and exponent together
    edges = (se[:, None] | mans[None, :]).ravel()
    per_exp = (se[:, None] | rng.integers(0, 1 << 23, size=(512, 256), dtype=np.uint32)).ravel()
    rand = rng.integers(0, 1 << 32, size=4_000_000, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([edges, per_exp, rand])


def f64_sample(rng):
    m52 = (1 << 52) - 1
    half = 1 << 28  # half an f32 unit for normal results
    mans = [0, 1, m52, half, half - 1, half + 1, half | half << 1, (half - 1) | half << 1, 1 << 51]
    for k in range(52):
        b = 1 << k
        mans += [b, b - 1, b + 1, (b | b << 1) & m52]
    mans = np.array(sorted(set(mans)), dtype=np.uint64)
    se = np.arange(4096, dtype=np.uint64) << np.uint64(52)
    edges = (se[:, None] | mans[None, :]).ravel()
    per_exp = (se[:, None] | (rng.integers(0, 1 << 52, size=(4096, 32), dtype=np.uint64))).ravel()
    rand = rng.integers(0, np.iinfo(np.uint64).max, size=1_000_000, dtype=np.uint64, endpoint=True)
    return np.concatenate([edges, per_exp, rand])


def inputs_for(name, rng):
    bits = TYPES[name][1]
    if name in ("F16", "BF16"):
        return np.arange(1 << 16, dtype=np.uint32).astype(bits)
    if name.startswith("F8"):
        return np.arange(256, dtype=np.uint16).astype(bits)
    if name == "F32":
        return f32_sample(rng)
    return f64_sample(rng)


def describe(x):
    return "0x%0*x" % (x.dtype.itemsize * 2, int(x))


def exhaustive_f32(exe, isa, tmp):
    """All 2^32 F32 patterns to F16 and BF16, 2^26 at a time; returns the number of bad pairs."""
    failures = 0
    chunk = 1 << 26
    for dst_name in ("F16", "BF16"):
        dst_t, dst_bits = TYPES[dst_name]
        bad_total = 0
        shown = 0
        for start in range(0, 1 << 32, chunk):
            bits = np.arange(start, start + chunk, dtype=np.uint64).astype(np.uint32)
            src_path = os.path.join(tmp, "in.bin")
            dst_path = os.path.join(tmp, "out.bin")
            bits.tofile(src_path)
            subprocess.run([exe, "F32", dst_name, src_path, dst_path, isa], check=True)
            got = np.fromfile(dst_path, dtype=dst_bits)
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                want = bits.view(np.float32).astype(dst_t).view(dst_bits)
            bad = np.nonzero(got != want)[0]
            bad_total += bad.size
            for i in bad[: max(0, 8 - shown)]:
                print(f"    {describe(bits[i])}: got {describe(got[i])}, ml_dtypes/numpy {describe(want[i])}")
                shown += 1
        status = "ok" if bad_total == 0 else f"{bad_total} MISMATCHES"
        print(f"     F32 -> {dst_name:<5} all 2^32 patterns: {status}")
        failures += int(bad_total != 0)
    return failures


def main():
    exe = sys.argv[1]
    isa = sys.argv[2] if len(sys.argv) > 2 and not sys.argv[2].startswith("--") else "best"
    rng = np.random.default_rng(20261123)
    failures = 0
    # Every element-wise entry of the library's conversion table, as the helper lists it.
    listed = subprocess.run([exe, "--list"], capture_output=True, text=True, check=True)
    pairs = [tuple(line.split()) for line in listed.stdout.splitlines() if line.strip()]
    unknown = [p for p in pairs if p[0] not in TYPES or p[1] not in TYPES]
    if not pairs or unknown:
        print(f"conversion table: no pairs, or dtypes without a reference type: {unknown}")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        if "--exhaustive-f32" in sys.argv:
            failures += exhaustive_f32(exe, isa, tmp)
        for src_name, dst_name in pairs:
            src_t, src_bits = TYPES[src_name]
            dst_t, dst_bits = TYPES[dst_name]
            bits = inputs_for(src_name, rng)
            src_path = os.path.join(tmp, "in.bin")
            dst_path = os.path.join(tmp, "out.bin")
            bits.astype(src_bits).tofile(src_path)
            proc = subprocess.run([exe, src_name, dst_name, src_path, dst_path, isa],
                                  capture_output=True, text=True)
            if proc.returncode == 77:
                print("skip:", proc.stderr.strip())
                return 77
            if proc.returncode != 0:
                print(f"{src_name} -> {dst_name}: helper failed: {proc.stderr.strip()}")
                failures += 1
                continue
            got = np.fromfile(dst_path, dtype=dst_bits)
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                want = bits.astype(src_bits).view(src_t).astype(dst_t).view(dst_bits)
            bad = np.nonzero(got != want)[0]
            status = "ok" if bad.size == 0 else f"{bad.size} MISMATCHES"
            print(f"{src_name:>8} -> {dst_name:<5} {bits.size:>9} patterns: {status}")
            for i in bad[:8]:
                print(f"    {describe(bits.astype(src_bits)[i])}: got {describe(got[i])}, "
                      f"ml_dtypes/numpy {describe(want[i])}")
            failures += int(bad.size != 0)
    print("all bit-exact" if failures == 0 else f"{failures} pair(s) differ")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
