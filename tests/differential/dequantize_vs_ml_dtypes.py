"""safeshard's dequantizing conversions against numpy with ml_dtypes, bit for bit.

Usage: dequantize_vs_ml_dtypes.py DEQUANTIZE_TABLE_EXE [best|portable|avx2]

For every dequantizing entry of the library's conversion table (the helper's --list): every
value code (all 256 of F8_E4M3, all 16 of F4 E2M1) times every scale value class (all 256
codes of an E8M0 or E4M3 scale, including E8M0's 2^-127 and 2^127 extremes and its NaN; for
F32, BF16 and F16 scales: normal, subnormal, zero, -0, Inf, NaN, the largest and the smallest,
random), times, for a two-level scale, each global scale class (normal, subnormal, zero, Inf,
NaN, large), computed by numpy as the formats' reference code does: values and scales as
float32 (ml_dtypes' float8_e4m3fn, float4_e2m1fn, float8_e8m0fnu, bfloat16), the block scale
times or divided by the global scale in float32, the value times the scale in float32, then
astype(target) once (where a NaN block scale meets a NaN global scale the NaN's sign is IEEE
754's free choice and is not compared). Exits 0 when every bit matches, 1 otherwise, 77 when the loop choice is
unavailable.
"""
import os
import subprocess
import sys
import tempfile
import warnings

import ml_dtypes
import numpy as np

DT = {
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E8M0": ml_dtypes.float8_e8m0fnu,
    "F4": ml_dtypes.float4_e2m1fn,
    "BF16": ml_dtypes.bfloat16,
    "F16": np.float16,
    "F32": np.float32,
}
BITS = {"BF16": np.uint16, "F16": np.uint16, "F32": np.uint32}


def float_classes(name, rng):
    """Scale values of a float dtype: every class, as float32 values representable in it."""
    f = [1.0, 0.5, 2.0, 3.0, 448.0, 1.0 / 448.0, 6.0, 1e-3, 7.5e-8, 1e-30, 1e30, 3e38,
         0.0, -0.0, np.inf, -np.inf, np.nan, -1.0, -0.25]
    if name == "F32":
        f += [1e-40, 1.4e-45, 3.4028235e38, 1.1754944e-38]
    elif name == "BF16":
        f += [9.2e-41, 3.38e38]
    else:
        f += [6e-8, 6.1e-5, 65504.0]
    f += list(rng.standard_normal(64) * 10.0 ** rng.integers(-8, 8, 64))
    with np.errstate(all="ignore"):  # the large ones overflow F16 and BF16: Inf, a class too
        a = np.array(f, dtype=np.float32).astype(DT[name])  # representable in the scale's dtype
    return a.view(BITS[name])


def scale_codes(name, rng):
    if name in ("F8_E8M0", "F8_E4M3"):
        return np.arange(256, dtype=np.uint8)
    return float_classes(name, rng)


GLOBALS = np.array([1.0, 0.5, 2688.0, 1.0 / 2688.0, 3e-4, 1e-40, 0.0, np.inf, np.nan, 1e30, -2.0],
                   dtype=np.float32)


def as_f32(codes, name):
    return codes.view(DT[name]).astype(np.float32) if name != "F32" else codes.view(np.float32)


def check(exe, isa, tmp, values, scales, glob, to, rng):
    block = 16 if values == "F4" else 32
    vcodes = np.arange(16 if values == "F4" else 256, dtype=np.uint8)
    cols = max(len(vcodes), 2 * block)
    row_values = np.resize(vcodes, cols)  # every code, in every block
    sc = scale_codes(scales, rng)
    per_row = cols // block
    rows = -(-len(sc) // per_row)
    sgrid = np.resize(sc, rows * per_row).reshape(rows, per_row)
    vgrid = np.tile(row_values, (rows, 1))
    if values == "F4":
        packed = (vgrid[:, 0::2] | (vgrid[:, 1::2] << 4)).astype(np.uint8)
    else:
        packed = vgrid
    v32 = as_f32(vgrid.astype(np.uint8), values)
    s32 = np.repeat(as_f32(sgrid, scales), block, axis=1)
    failures = 0
    for g in (GLOBALS if glob != "none" else [np.float32(1.0)]):
        g = np.float32(g)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            s = s32 if glob == "none" else (s32 * g if glob == "times" else s32 / g)
            expected = (v32 * s).astype(DT[to]).view(BITS[to])
        files = [os.path.join(tmp, n) for n in ("v", "s", "g", "o")]
        packed.tofile(files[0])
        sgrid.tofile(files[1])
        np.array([g], dtype=np.float32).tofile(files[2])
        r = subprocess.run([exe, values, scales, glob, to, str(rows), str(cols), str(block),
                            *files, isa], capture_output=True, text=True)
        if r.returncode == 77:
            print(r.stderr.strip())
            sys.exit(77)
        if r.returncode != 0:
            print(f"{values} x {scales} {glob} -> {to}: helper failed: {r.stderr}")
            return 1
        got = np.fromfile(files[3], dtype=BITS[to]).reshape(rows, cols)
        differ = got != expected
        if glob == "times" and np.isnan(g):
            # A NaN block scale times a NaN global scale: IEEE 754 makes the product one of the
            # operands' NaNs without saying which (numpy's loop and ours pick differently), so
            # the sign is left free there; every other NaN is compared bit for bit.
            both = np.isnan(np.repeat(as_f32(sgrid, scales), block, axis=1))
            sign = np.array(1 << (8 * np.dtype(BITS[to]).itemsize - 1), dtype=BITS[to])
            differ &= ~(both & ((got ^ expected) == sign))
        bad = np.argwhere(differ)
        if len(bad):
            failures += 1
            i, j = bad[0]
            print(f"{values} x {scales} {glob} {g} -> {to}: {len(bad)} of {got.size} differ; "
                  f"first value 0x{vgrid[i, j]:02x} scale 0x{int(sgrid[i, j // block]):x}: "
                  f"got 0x{int(got[i, j]):x}, numpy 0x{int(expected[i, j]):x}")
    return failures


def main():
    exe = sys.argv[1]
    isa = sys.argv[2] if len(sys.argv) > 2 else "best"
    listed = subprocess.run([exe, "--list"], capture_output=True, text=True, check=True)
    entries = [line.split() for line in listed.stdout.splitlines() if line.strip()]
    if not entries:
        print("no dequantizing conversions listed")
        return 1
    rng = np.random.default_rng(7)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for values, scales, glob, to in entries:
            failures += check(exe, isa, tmp, values, scales, glob, to, rng)
    print(f"{len(entries)} dequantizing conversions checked, {failures} with differences")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
