"""Differential test of safeshard's safetensors reader and writer against the reference
(safetensors 0.8.0, numpy backend).

usage: safetensors_diff.py ST_TOOL CORPUS_DIR

1. Files written by the reference in every dtype it writes are read by safeshard with the same
   names, dtypes, shapes and bytes, and safeshard writes byte-identical files for them.
2. Files written by safeshard in all 22 dtypes are read by the reference with the same dtypes,
   shapes and bytes.
3. Hand-made malformed files, the fuzz seed corpus and deterministic mutations of it get the
   same verdict (accepted or refused) from both readers, except for the documented cases where
   safeshard is deliberately stricter (see known_stricter).
4. Nesting depth and numbers (integers wider than 64 bits, -0, exponents beyond the f64 range,
   numbers at the edge of it, seeded random number tokens) in the fields a header ignores, in
   __metadata__ and in shape/data_offsets get exactly the reference's verdict; the same in
   index.json and config.json against Python's json module, which transformers reads them with.
"""
import json
import os
import random
import re
import struct
import subprocess
import sys
import tempfile

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save, save_file

TOOL = sys.argv[1]
CORPUS = sys.argv[2] if len(sys.argv) > 2 else None
failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg)


def tool(*args):
    r = subprocess.run([TOOL, *args], capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"st_tool {args[0]} failed: {r.stderr.decode()}")
    return r.stdout.decode()


def dump(path):
    return json.loads(tool("dump", path))


REF_DTYPES = {
    "BOOL": np.dtype(bool), "U8": np.dtype(np.uint8), "I8": np.dtype(np.int8),
    "I16": np.dtype(np.int16), "U16": np.dtype(np.uint16), "F16": np.dtype(np.float16),
    "I32": np.dtype(np.int32), "U32": np.dtype(np.uint32), "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64), "I64": np.dtype(np.int64), "U64": np.dtype(np.uint64),
    "C64": np.dtype(np.complex64), "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E4M3FNUZ": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "F8_E5M2FNUZ": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
}
BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8,
        "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16,
        "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64,
        "I64": 64, "U64": 64}

rng = np.random.default_rng(7)


def random_array(name, shape):
    dt = REF_DTYPES[name]
    n = int(np.prod(shape, dtype=np.int64))
    raw = rng.integers(0, 256, size=n * dt.itemsize, dtype=np.uint8)
    if name == "BOOL":
        raw = raw % 2
    return raw.view(dt).reshape(shape)


def reference_to_safeshard(tmp):
    shapes = [(2, 3), (), (0, 4), (5,)]
    tensors = {}
    for dname in REF_DTYPES:
        for i, shp in enumerate(shapes):
            tensors[f"{dname.lower()}.{i}"] = random_array(dname, shp)
    tensors['odd "name" \\ \x01 caf\u00e9'] = random_array("F32", (3,))
    for metadata in (None, {"format": "pt"}):
        path = os.path.join(tmp, "ref.safetensors")
        save_file(tensors, path, metadata=metadata)
        got = dump(path)
        if not got["ok"]:
            fail(f"safeshard refused a reference file: {got}")
            continue
        if got["metadata"] != metadata:
            fail(f"metadata differs: {got['metadata']} vs {metadata}")
        by_name = {t["name"]: t for t in got["tensors"]}
        if set(by_name) != set(tensors):
            fail("tensor names differ")
        for name, arr in tensors.items():
            t = by_name.get(name)
            if t is None:
                continue
            want_dtype = [k for k, v in REF_DTYPES.items() if v == arr.dtype][0]
            if t["dtype"] != want_dtype or tuple(t["shape"]) != arr.shape:
                fail(f"{name}: {t['dtype']} {t['shape']} vs {want_dtype} {arr.shape}")
            if bytes.fromhex(t["hex"]) != arr.tobytes():
                fail(f"{name}: bytes differ")
        # safeshard writes the same tensors byte for byte (metadata: one key, as the reference
        # orders several keys in hash order).
        spec = {"metadata": metadata, "tensors": [
            {"name": t["name"], "dtype": t["dtype"], "shape": t["shape"], "hex": t["hex"]}
            for t in got["tensors"]]}
        spec_path = os.path.join(tmp, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        ours = os.path.join(tmp, "ours.safetensors")
        tool("write", spec_path, ours)
        if open(ours, "rb").read() != open(path, "rb").read():
            fail(f"safeshard's file differs from the reference's (metadata={metadata})")
    print(f"reference -> safeshard: {len(tensors)} tensors in {len(REF_DTYPES)} dtypes checked")


def safeshard_to_reference(tmp):
    tensors = []
    for dname, bits in BITS.items():
        for i, shp in enumerate([(2, 4), (), (3, 0), (4,)]):
            if bits % 8 and shp == ():
                shp = (4,)
            n = int(np.prod(shp, dtype=np.int64))
            nbytes = n * bits // 8
            data = rng.integers(0, 256, size=nbytes, dtype=np.uint8)
            if dname == "BOOL":
                data = data % 2
            tensors.append({"name": f"{dname}.{i}", "dtype": dname, "shape": list(shp),
                            "hex": data.tobytes().hex()})
    spec_path = os.path.join(tmp, "spec2.json")
    with open(spec_path, "w") as f:
        json.dump({"metadata": {"k": "v"}, "tensors": tensors}, f)
    ours = os.path.join(tmp, "ours2.safetensors")
    tool("write", spec_path, ours)
    checked = 0
    with safe_open(ours, framework="numpy") as f:
        if f.metadata() != {"k": "v"}:
            fail(f"reference read metadata {f.metadata()}")
        if set(f.keys()) != {t["name"] for t in tensors}:
            fail("reference sees other tensor names")
        for t in tensors:
            sl = f.get_slice(t["name"])
            if sl.get_dtype() != t["dtype"] or list(sl.get_shape()) != t["shape"]:
                fail(f"{t['name']}: reference sees {sl.get_dtype()} {sl.get_shape()}")
            if t["dtype"] in REF_DTYPES:
                try:
                    arr = f.get_tensor(t["name"])
                except AttributeError:
                    continue  # the reference's numpy reader lacks F8_* (np.float8_e5m2...)
                if arr.tobytes() != bytes.fromhex(t["hex"]):
                    fail(f"{t['name']}: reference reads other bytes")
                checked += 1
    # F4/F6 (and F8 in the reference's numpy reader) have no numpy type: all bytes are also
    # compared through the file itself.
    raw = open(ours, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    for t in tensors:
        b, e = header[t["name"]]["data_offsets"]
        if raw[8 + n + b:8 + n + e] != bytes.fromhex(t["hex"]):
            fail(f"{t['name']}: bytes in the file differ")
    print(f"safeshard -> reference: {len(tensors)} tensors in 22 dtypes, "
          f"{checked} compared through numpy")


def ref_verdict(path):
    try:
        with safe_open(path, framework="numpy") as f:
            for k in f.keys():
                f.get_slice(k)
        return "ok", ""
    except Exception as e:  # the reference raises SafetensorError and others
        return "refused", str(e)


def duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate")
    return dict(pairs)


def known_stricter(raw):
    """Why safeshard may refuse what the reference accepts (documented differences)."""
    try:
        n = struct.unpack("<Q", raw[:8])[0]
        header = raw[8:8 + n].decode()
        try:
            json.loads(header, object_pairs_hook=duplicate_keys)
        except ValueError:
            return "duplicate key"
        h = json.loads(header)
        for k, v in h.items():
            if k == "__metadata__":
                continue
            if isinstance(v, list):
                return "tensor written as an array"
            if isinstance(v, dict) and len(v.get("shape", [])) > 8:
                return "rank above 8"
    except Exception:
        pass
    return None


def mutations(seed_files, count):
    r = random.Random(1234)
    out = []
    for i in range(count):
        b = bytearray(r.choice(seed_files))
        kind = r.randrange(6)
        if kind == 0 and b:
            b[r.randrange(len(b))] = r.randrange(256)
        elif kind == 1 and b:
            del b[r.randrange(len(b)):]
        elif kind == 2:
            b += bytes(r.randrange(256) for _ in range(r.randrange(1, 9)))
        elif kind == 3 and len(b) > 8:
            # Retarget a digit of the header.
            n = min(struct.unpack("<Q", b[:8])[0], len(b) - 8)
            digits = [j for j in range(8, 8 + n) if chr(b[j]).isdigit()]
            if digits:
                b[r.choice(digits)] = ord(str(r.randrange(10)))
        elif kind == 4 and len(b) > 8:
            n = min(struct.unpack("<Q", b[:8])[0], len(b) - 8)
            j = r.randrange(8, 8 + n) if n else 8
            b[j:j] = r.choice([b" ", b",", b"\"", b"{", b"}", b"-", b"0", b"\\u0000", b"\xc3"])
            b[:8] = struct.pack("<Q", struct.unpack("<Q", b[:8])[0] + 0)
        else:
            # Fix up the length prefix to the new header end guess.
            if len(b) >= 8:
                b[:8] = struct.pack("<Q", r.randrange(0, len(b)))
        out.append(bytes(b))
    return out


def verdicts(tmp):
    def mk(h, d=b""):
        return struct.pack("<Q", len(h)) + h + d

    t = b'{"dtype":"U8","shape":[4],"data_offsets":[0,4]}'
    cases = [
        b"", b"\x00" * 7, mk(b"{}"), mk(b" {} "), mk(b"\xef\xbb\xbf{}"), mk(b"[]"),
        mk(b'{"a":' + t + b"}", b"abcd"), mk(b'{"a":' + t + b"}", b"abcde"),
        mk(b'{"a":' + t + b"}", b"abc"), struct.pack("<Q", 2**64 - 1) + b"{}",
        struct.pack("<Q", 100_000_001) + b"{}", struct.pack("<Q", 100) + b"{}",
        mk(b'{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}', b"ab"),
        mk(b'{"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}}'),
        mk(b'{"a":{"dtype":"U8","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}}'),
        mk(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', b"abcd"),
        mk(b'{"a":{"dtype":"U8","shape":[4],"data_offsets":[1,5]}}', b"abcde"),
        mk(b'{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4],"x":[1,{}]}}', b"abcd"),
        mk(b'{"__metadata__":null}'), mk(b'{"__metadata__":{"k":1}}'),
        mk(b'{"__metadata__":' + t + b"}"), mk(b'{"\\ud800":' + t + b"}", b"abcd"),
        mk(b'{"a\x01":' + t + b"}", b"abcd"), mk(b'{"a\xff":' + t + b"}", b"abcd"),
        mk(b'{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4.0]}}', b"abcd"),
        mk(b'{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4,4]}}', b"abcd"),
        mk(b'{"a":{"dtype":"u8","shape":[4],"data_offsets":[0,4]}}', b"abcd"),
        mk(b'{"a":{"dtype":"U8","shape":[4],"data_offsets":[-0,4]}}', b"abcd"),
        mk(b'{"a-0":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}', b"abcd"),
        mk(b'{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4],"x":' + b"[" * 125 + b"]" * 125
           + b"}}", b"abcd"),
        mk(b'{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4],"x":' + b"[" * 126 + b"]" * 126
           + b"}}", b"abcd"),
    ]
    files = list(cases)
    if CORPUS:
        for root, _, names in os.walk(CORPUS):
            for name in sorted(names):
                with open(os.path.join(root, name), "rb") as f:
                    files.append(f.read())
    seeds = [f for f in files if len(f) < 4096] or [mk(b"{}")]
    files += mutations(seeds, 1500)
    paths = []
    for i, b in enumerate(files):
        p = os.path.join(tmp, f"v{i}.safetensors")
        with open(p, "wb") as f:
            f.write(b)
        paths.append(p)
    ours = []
    for start in range(0, len(paths), 200):
        ours += tool("verdict", *paths[start:start + 200]).split()
    same = stricter = 0
    for p, b, o in zip(paths, files, ours):
        ref, why = ref_verdict(p)
        if (o == "ok") == (ref == "ok"):
            same += 1
            continue
        reason = known_stricter(b) if o != "ok" else None
        if reason:
            stricter += 1
            continue
        fail(f"verdicts differ on {p}: safeshard {o}, reference {ref} {why[:120]} "
             f"(first bytes {b[:96]!r})")
    print(f"verdicts: {len(files)} files, {same} same, {stricter} refused only by safeshard "
          f"(documented stricter rules)")


def number_tokens(count):
    """Number tokens around the places where readers disagree: 64-bit integer limits, the f64
    range (serde_json's arithmetic is not correctly rounded there), i32 exponents."""
    r = random.Random(99)
    fixed = ["0", "-0", "-0.0", "-0e0", "18446744073709551615", "18446744073709551616",
             "-9223372036854775808", "-9223372036854775809", "-18446744073709551616",
             "123456789012345678901234567890", "-123456789012345678901234567890",
             "9" * 300, "9" * 308, "9" * 309, "1" * 309, "1" * 400, "17976931348623157" + "0" * 292,
             "17976931348623159" + "0" * 292, "1e308", "1e309", "-1e400", "1e-400", "4.9e-324",
             "1.7976931348623157e308", "1.7976931348623158e308", "1.79769313486231581e308",
             "1.7976931348623159e308", "-1.7976931348623158e308", "1e2147483647",
             "1e2147483648", "0e2147483648", "1e-2147483649", "1e99999999999999999999",
             "0e99999999999999999999", "1e-99999999999999999999", "0." + "0" * 400 + "1e400",
             "123456789012345678901234567890e-10", "18446744073709551615.5",
             "184467440737095516150.5e290"]
    out = list(fixed)
    while len(out) < count:
        kind = r.randrange(4)
        sign = "-" if r.random() < 0.3 else ""
        if kind == 0:
            n = r.choice([19, 20, 21, 300, 308, 309, 310, r.randrange(1, 400)])
            t = str(r.randrange(1, 10)) + "".join(r.choice("0123456789") for _ in range(n - 1))
        elif kind == 1:
            m = r.choice(["17976931348623157", "17976931348623158", "179769313486231581",
                          "1797693134862315807", "17976931348623159", "1", "9"])
            t = m[0] + "." + m[1:] + "e" + str(308 + r.choice([0, 0, 1, -1])) if len(m) > 1 \
                else m + "e" + str(r.randrange(300, 312))
        elif kind == 2:
            t = str(r.randrange(0, 10 ** r.randrange(1, 25))) + "e" + str(r.randrange(250, 330))
        else:
            t = (str(r.randrange(1, 10 ** r.randrange(1, 30))) + "." +
                 str(r.randrange(0, 10 ** r.randrange(1, 30))) + "e" + r.choice(["", "+", "-"]) +
                 str(r.randrange(0, 400)))
        out.append(sign + t)
    return out


def nest(levels, open_, inner, close):
    return open_ * levels + inner + close * levels


def json_parity(tmp):
    def mk(h, d=b"abcd"):
        return struct.pack("<Q", len(h)) + h + d

    def tensor(x=None, shape=b"4", offsets=b"0,4"):
        extra = b',"x":' + x if x is not None else b""
        return (b'{"a":{"dtype":"U8","shape":[' + shape + b'],"data_offsets":[' + offsets +
                b"]" + extra + b"}}")

    headers = []
    # Depth: the top level and the tensor are two levels; `n` more in an ignored field.
    for n in range(122, 130):
        for inner in (b"", b"1", b'"s"', b"-0", b"{}"):
            headers.append(tensor(nest(n, b"[", inner, b"]")))
        headers.append(tensor(nest(n, b'{"k":', b"1", b"}")))
        headers.append(tensor(nest(n, b"[1,", b"2", b"]")))
        headers.append(b'{"__metadata__":{"k":' + nest(n, b"[", b"", b"]") + b"},"
                       + tensor()[1:])
    headers.append(tensor(nest(5000, b"[", b"", b"]")))
    headers.append(tensor(b"[" * 100000))
    for t in number_tokens(700):
        tok = t.encode()
        headers.append(tensor(tok))
        headers.append(tensor(b'[1,{"y":[' + tok + b"]}]"))
    for t in number_tokens(60)[:60]:
        tok = t.encode()
        headers.append(tensor(shape=tok))
        headers.append(tensor(offsets=b"0," + tok))
        headers.append(b'{"__metadata__":{"k":' + tok + b"}," + tensor()[1:])
    paths = []
    for i, h in enumerate(headers):
        p = os.path.join(tmp, f"j{i}.safetensors")
        with open(p, "wb") as f:
            f.write(mk(h))
        paths.append(p)
    ours = []
    for start in range(0, len(paths), 200):
        ours += tool("verdict", *paths[start:start + 200]).split()
    same = 0
    for p, h, o in zip(paths, headers, ours):
        ref, why = ref_verdict(p)
        if (o == "ok") == (ref == "ok"):
            same += 1
        else:
            fail(f"header verdicts differ: safeshard {o}, reference {ref} {why[:100]} "
                 f"(header {h[:120]!r}...)")
    print(f"json parity, headers: {len(headers)} files, {same} same verdicts")

    # index.json and config.json: accepted exactly when Python's json module reads them. Depth
    # is compared away from Python's recursion limit, which moves with the caller's stack
    # (about 995 levels from a script's top, fewer from deep inside transformers): safeshard
    # takes up to 1000, never refusing what Python takes.
    def py_verdict(text):
        try:
            json.loads(text)
            return "ok"
        except (ValueError, RecursionError):
            return "refused"

    base_config = ('{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, '
                   '"num_attention_heads": 4, "x": %s}')
    base_index = '{"weight_map": {"a": "m.safetensors"}, "metadata": {"x": %s}}'
    values = number_tokens(300)
    for n in (1, 126, 127, 128, 500, 900, 1002, 1003, 3000):
        values += [nest(n - 2, "[", "1", "]"), nest(n - 2, '{"k":', "1", "}")]
    for kind, base in (("index", base_index), ("config", base_config)):
        texts = [base % v for v in values]
        paths = []
        for i, t in enumerate(texts):
            p = os.path.join(tmp, f"{kind}{i}.json")
            with open(p, "w") as f:
                f.write(t)
            paths.append(p)
        ours = []
        for start in range(0, len(paths), 200):
            ours += tool(kind, *paths[start:start + 200]).split()
        same = 0
        for t, o in zip(texts, ours):
            ref = py_verdict(t)
            if (o == "ok") == (ref == "ok"):
                same += 1
            else:
                fail(f"{kind} verdicts differ: safeshard {o}, json.loads {ref} ({t[:120]}...)")
        print(f"json parity, {kind}: {len(texts)} files, {same} same verdicts")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        reference_to_safeshard(tmp)
        safeshard_to_reference(tmp)
        verdicts(tmp)
        json_parity(tmp)
    if failures:
        print(f"{len(failures)} failure(s)")
        sys.exit(1)
    print("all differential checks passed")


main()
