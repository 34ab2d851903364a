#!/usr/bin/env python3
"""The reference slices of tools/gpu/hf_reference.py checked on the host, without a GPU.

For every model OUT/<arch> and every layout its references OUT/refs/<arch>/ hold
(ref-w<W>-r<R>.safetensors: world W, ep 1; ref-w<W>-ep<M>-<placement>-r<R>.safetensors):
  plan    `safeshard plan CKPT --tp W [--ep M --expert-placement P] --json` names exactly the
          checkpoint's tensors (none missing, none unexpected), and gives each rank exactly the
          reference's tensors, in its shapes
  export  `safeshard export CKPT --tp W [--ep M --expert-placement P] --out DIR`: each rank's
          folder holds exactly the reference's tensors, with the same dtype, shape and bytes
          (layouts with ep > 1 only where `export --help` offers --ep; skipped otherwise)
Needs only python3 (the safetensors files are read here).
Usage: compare_refs.py SAFESHARD_EXE OUT
Exits 1 on any difference; the last line counts the layouts: 'N passed, N failed, N skipped'.
"""
import json
import os
import re
import struct
import subprocess
import sys
import tempfile

REF = re.compile(r"^ref-w(\d+)(?:-ep(\d+)-(linear|round_robin))?-r(\d+)\.safetensors$")


def read_safetensors(path, data=True):
    """{name: (dtype, shape, bytes or None)}"""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        body = f.read() if data else b""
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        b, e = v["data_offsets"]
        out[name] = (v["dtype"], tuple(v["shape"]), body[b:e] if data else None)
    return out


def read_folder(folder, data=True):
    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            out.update(read_safetensors(os.path.join(folder, f), data))
    return out


def layouts(refs):
    """{(world, ep, placement): {rank: path}}"""
    found = {}
    for f in sorted(os.listdir(refs)):
        m = REF.match(f)
        if m:
            w, ep, placement, r = int(m[1]), int(m[2] or 1), m[3] or "linear", int(m[4])
            found.setdefault((w, ep, placement), {})[r] = os.path.join(refs, f)
    return found


def cut_args(w, ep, placement):
    args = ["--tp", str(w)]
    if ep > 1:
        args += ["--ep", str(ep), "--expert-placement", placement]
    return args


def diff(what, got, want):
    """Lines for every name missing, unexpected or different between two {name: value}."""
    lines = [f"{what}: missing {n}" for n in sorted(set(want) - set(got))]
    lines += [f"{what}: unexpected {n}" for n in sorted(set(got) - set(want))]
    for n in sorted(set(got) & set(want)):
        if got[n] != want[n]:
            g, w = got[n], want[n]
            if isinstance(g, tuple) and len(g) == 3:  # (dtype, shape, bytes)
                g, w = (g[0], g[1], "bytes" if g[2] == w[2] else "other bytes"), w[:2]
            lines.append(f"{what}: {n}: {g} != {w}")
    return lines


def check_plan(exe, model, ckpt_names, w, ep, placement, ranks):
    p = subprocess.run([exe, "plan", model, *cut_args(w, ep, placement), "--json"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return [f"plan: exit {p.returncode}: {p.stderr.strip()}"]
    params = json.loads(p.stdout)["parameters"]
    errors = diff("plan vs checkpoint", {x["name"]: None for x in params},
                  {n: None for n in ckpt_names})
    for r, ref in ranks.items():
        got = {x["name"]: tuple(rk["shape"]) for x in params for rk in x["ranks"]
               if rk["rank"] == r}
        want = {n: v[1] for n, v in read_safetensors(ref, data=False).items()}
        errors += diff(f"plan rank {r} vs torch", got, want)
    return errors


def check_export(exe, model, w, ep, placement, ranks):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "export")
        p = subprocess.run([exe, "export", model, *cut_args(w, ep, placement), "--out", out],
                           capture_output=True, text=True)
        if p.returncode != 0:
            return [f"export: exit {p.returncode}: {p.stderr.strip()}"]
        errors = []
        for r, ref in ranks.items():
            got = read_folder(os.path.join(out, f"rank-{r:05d}"))
            errors += diff(f"export rank {r} vs torch", got, read_safetensors(ref))
        return errors


def main():
    exe, hf = sys.argv[1], sys.argv[2]
    help_text = subprocess.run([exe, "export", "--help"], capture_output=True, text=True).stdout
    export_ep = "--ep" in help_text
    passed = failed = skipped = 0
    for arch in sorted(os.listdir(hf)):
        model = os.path.join(hf, arch)
        refs = os.path.join(hf, "refs", arch)
        if not os.path.isfile(os.path.join(model, "config.json")) or not os.path.isdir(refs):
            continue
        ckpt_names = read_folder(model, data=False)
        for (w, ep, placement), ranks in sorted(layouts(refs).items()):
            what = f"{arch} world {w}" + (f" ep {ep} {placement}" if ep > 1 else "")
            if sorted(ranks) != list(range(w)):
                print(f"FAIL {what}: references for ranks {sorted(ranks)}")
                failed += 1
                continue
            errors = check_plan(exe, model, ckpt_names, w, ep, placement, ranks)
            exported = ep == 1 or export_ep
            if exported:
                errors += check_export(exe, model, w, ep, placement, ranks)
            if errors:
                failed += 1
                print(f"FAIL {what}:")
                for e in errors[:20]:
                    print(f"     {e}")
                if len(errors) > 20:
                    print(f"     ... {len(errors) - 20} more")
            elif exported:
                passed += 1
                print(f"ok   {what}: plan and export equal torch's slices, {w} ranks")
            else:
                skipped += 1
                print(f"ok   {what}: plan equals torch's shapes ({w} ranks); export skipped "
                      "(no --ep)")
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed or passed + skipped == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
