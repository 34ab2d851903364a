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
A stacked checkpoint OUT/<arch>-stacked (its ref_of.txt names <arch>) is checked against the
references of <arch>, stacked: a rank's mlp.experts.gate_up_proj [E_local, 2I/W', H] holds, for
each expert of the reference (its experts, ascending), its gate_proj (w1) rows then its up_proj
(w3) rows; mlp.experts.down_proj [E_local, H, I/W'] its down_proj (w2) slices; Mixtral's router
is mlp.gate.weight; every other tensor as the reference has it. A checkpoint that stacks its
experts in its own format (gpt_oss, llama4: `experts.gate_up_proj` among its names) has
references of its own, of the stacked tensors, compared as they are. Each export of a stacked
checkpoint (either kind) is also merged back (`safeshard merge`) and must equal the checkpoint:
same tensors, dtypes, shapes and bytes.
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
EXPERT = re.compile(r"^(model\.layers\.\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\."
                    r"(gate_proj|up_proj|down_proj|w1|w3|w2)\.weight$")
KIND = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}


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


def stacked(ref):
    """A reference {name: (dtype, shape, bytes or None)} with its experts stacked per layer, as
    a stacked checkpoint's rank holds them (the reference's experts, ascending)."""
    out, experts = {}, {}
    for n, v in ref.items():
        m = EXPERT.match(n)
        if m is None:
            out[n.replace(".block_sparse_moe.gate.", ".mlp.gate.")] = v
        else:
            experts.setdefault(m[1], {}).setdefault(int(m[2]), {})[KIND.get(m[3], m[3])] = v
    for layer, by_expert in experts.items():
        held = [by_expert[e] for e in sorted(by_expert)]
        gate, up, down = (held[0][k] for k in ("gate_proj", "up_proj", "down_proj"))
        join = (lambda parts: b"".join(parts)) if gate[2] is not None else (lambda parts: None)
        out[f"{layer}.mlp.experts.gate_up_proj"] = (
            gate[0], (len(held), gate[1][0] + up[1][0], *gate[1][1:]),
            join(x[k][2] for x in held for k in ("gate_proj", "up_proj")))
        out[f"{layer}.mlp.experts.down_proj"] = (
            down[0], (len(held), *down[1]), join(x["down_proj"][2] for x in held))
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


def check_plan(exe, model, ckpt_names, w, ep, placement, ranks, read_ref):
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
        want = {n: v[1] for n, v in read_ref(ref, data=False).items()}
        errors += diff(f"plan rank {r} vs torch", got, want)
    return errors


def check_export(exe, model, w, ep, placement, ranks, read_ref, merge):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "export")
        p = subprocess.run([exe, "export", model, *cut_args(w, ep, placement), "--out", out],
                           capture_output=True, text=True)
        if p.returncode != 0:
            return [f"export: exit {p.returncode}: {p.stderr.strip()}"]
        errors = []
        for r, ref in ranks.items():
            got = read_folder(os.path.join(out, f"rank-{r:05d}"))
            errors += diff(f"export rank {r} vs torch", got, read_ref(ref))
        if merge:
            merged = os.path.join(tmp, "merged")
            p = subprocess.run([exe, "merge", out, "--out", merged], capture_output=True,
                               text=True)
            if p.returncode != 0:
                return errors + [f"merge: exit {p.returncode}: {p.stderr.strip()}"]
            errors += diff("merge vs checkpoint", read_folder(merged), read_folder(model))
        return errors


def main():
    exe, hf = sys.argv[1], sys.argv[2]
    help_text = subprocess.run([exe, "export", "--help"], capture_output=True, text=True).stdout
    export_ep = "--ep" in help_text
    passed = failed = skipped = 0
    for arch in sorted(os.listdir(hf)):
        model = os.path.join(hf, arch)
        ref_of = os.path.join(model, "ref_of.txt")
        is_stacked = os.path.isfile(ref_of)
        refs = os.path.join(hf, "refs", open(ref_of).read().strip() if is_stacked else arch)
        if not os.path.isfile(os.path.join(model, "config.json")) or not os.path.isdir(refs):
            continue
        ckpt_names = read_folder(model, data=False)
        merge = is_stacked or any(n.endswith(".experts.gate_up_proj") for n in ckpt_names)

        def read_ref(path, data=True, is_stacked=is_stacked):
            ref = read_safetensors(path, data)
            return stacked(ref) if is_stacked else ref

        for (w, ep, placement), ranks in sorted(layouts(refs).items()):
            what = f"{arch} world {w}" + (f" ep {ep} {placement}" if ep > 1 else "")
            if sorted(ranks) != list(range(w)):
                print(f"FAIL {what}: references for ranks {sorted(ranks)}")
                failed += 1
                continue
            errors = check_plan(exe, model, ckpt_names, w, ep, placement, ranks, read_ref)
            exported = ep == 1 or export_ep
            if exported:
                errors += check_export(exe, model, w, ep, placement, ranks, read_ref, merge)
            if errors:
                failed += 1
                print(f"FAIL {what}:")
                for e in errors[:20]:
                    print(f"     {e}")
                if len(errors) > 20:
                    print(f"     ... {len(errors) - 20} more")
            elif exported:
                passed += 1
                merged = ", merged back bit-exact" if merge else ""
                print(f"ok   {what}: plan and export equal torch's slices, {w} ranks{merged}")
            else:
                skipped += 1
                print(f"ok   {what}: plan equals torch's shapes ({w} ranks); export skipped "
                      "(no --ep)")
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed or passed + skipped == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
