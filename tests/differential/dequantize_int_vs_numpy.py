"""safeshard's integer dequantizing conversions against numpy, bit for bit.

Usage: dequantize_int_vs_numpy.py DEQUANTIZE_TABLE_EXE [best|portable|avx2]

For every dequantizing entry of integer codes in the library's conversion table (the helper's
--list-integer: U4 and U8 codes with F16, BF16 or F32 group scales, with and without zero
points, with and without a group index; I8 codes with F32 row scales): every code (16, or 256)
in every block, against zero points of every value of their bits, times every scale value class
of the scale's dtype (normal, subnormal, zero, -0, Inf, NaN, the largest and the smallest,
random), computed by numpy as the formats' reference code does: (code - zero) as float32
(exact), times the scale as float32, times a constant (bitsandbytes' 7.874015718698502e-3, 1
otherwise) in float32, then astype(target) once. Zero points are packed p = 32 / bits a word
along the rows, a group index gives each column's group (random), else column // block; the
helper converts a box of all rows and one block's columns at a time. Exits 0 when every bit
matches, 1 otherwise, 77 when the loop choice is unavailable.
"""
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np
from dequantize_vs_ml_dtypes import BITS, DT, float_classes

BNB = np.float32(7.874015718698502e-3)


def check(exe, isa, tmp, values, scales, zeros, index, to, rng):
    block = 32
    bits = 4 if values == "U4" else 8
    ncodes = 1 << bits
    cols = 8 * block  # 8 groups
    p = 32 // bits
    codes = np.arange(ncodes, dtype=np.int32) - (128 if values == "I8" else 0)
    sc = float_classes(scales, rng)
    rows = max(len(sc), ncodes)
    rows = -(-rows // p) * p
    vgrid = np.resize(np.resize(codes, cols), (rows, cols)).copy()
    for r in range(rows):  # each row its codes in another order: every code in every block
        vgrid[r] = np.roll(vgrid[r], r)
    sgrid = np.resize(sc, rows * (cols // block)).reshape(rows, cols // block)
    if values == "U4":
        u = vgrid.astype(np.uint8)
        raw = (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8).tobytes()
    else:
        raw = vgrid.astype(np.int8 if values == "I8" else np.uint8).tobytes()
    zfull = np.full((rows, cols // block), 0 if values == "I8" else 1 << (bits - 1), np.int32)
    zwords = np.zeros((rows // p, cols // block), np.uint32)
    if zeros != "none":
        zfull = rng.integers(0, ncodes, size=(rows, cols // block)).astype(np.int32)
        zfull[0, :] = 0
        zfull[1, :] = ncodes - 1
        for i in range(p):
            zwords |= zfull[i::p].astype(np.uint32) << np.uint32(bits * i)
    groups = (rng.integers(0, cols // block, size=cols).astype(np.int32) if index != "none"
              else np.arange(cols, dtype=np.int32) // block)
    post = BNB if values == "I8" else np.float32(1.0)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        s32 = sgrid.view(DT[scales]).astype(np.float32)[:, groups]
        d = (vgrid - zfull[:, groups]).astype(np.float32)
        expected = (d * s32 * post).astype(DT[to]).view(BITS[to])
    files = [os.path.join(tmp, n) for n in ("v", "s", "z", "g", "o")]
    with open(files[0], "wb") as f:
        f.write(raw)
    sgrid.tofile(files[1])
    zwords.tofile(files[2])
    groups.tofile(files[3])
    r = subprocess.run([exe, "integer", values, scales, zeros, index, to, str(rows), str(cols),
                        str(block), repr(float(post)), *files, isa],
                       capture_output=True, text=True)
    if r.returncode == 77:
        print(r.stderr.strip())
        sys.exit(77)
    label = f"({values} - {zeros} zeros) x {scales} by {index} -> {to}"
    if r.returncode != 0:
        print(f"{label}: helper failed: {r.stderr}")
        return 1
    got = np.fromfile(files[4], dtype=BITS[to]).reshape(rows, cols)
    bad = np.argwhere(got != expected)
    if len(bad):
        i, j = bad[0]
        print(f"{label}: {len(bad)} of {got.size} differ; first code {vgrid[i, j]} zero "
              f"{zfull[i, groups[j]]} scale 0x{int(sgrid[i, groups[j]]):x}: got "
              f"0x{int(got[i, j]):x}, numpy 0x{int(expected[i, j]):x}")
        return 1
    return 0


def main():
    exe = sys.argv[1]
    isa = sys.argv[2] if len(sys.argv) > 2 else "best"
    listed = subprocess.run([exe, "--list-integer"], capture_output=True, text=True, check=True)
    entries = [line.split() for line in listed.stdout.splitlines() if line.strip()]
    if not entries:
        print("no integer dequantizing conversions listed")
        return 1
    rng = np.random.default_rng(11)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for values, scales, zeros, index, to in entries:
            failures += check(exe, isa, tmp, values, scales, zeros, index, to, rng)
    print(f"{len(entries)} integer dequantizing conversions checked, {failures} with differences")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
