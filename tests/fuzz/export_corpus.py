"""Writes a per-rank export (the rank-00000, ... folders `safeshard export` writes) as one seed of
tests/fuzz/export_metadata_fuzz.cpp: for each shard file of each rank folder, its rank number,
the tensors its header stores ({"name": ["DTYPE", [extents]]}) and its "safeshard" document,
the files separated by a line "--".

Usage: export_corpus.py EXPORT_FOLDER OUT_FILE
"""

import json
import os
import struct
import sys


def header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def main(export, out):
    chunks = []
    for folder in sorted(os.listdir(export)):
        if not folder.startswith("rank-"):
            continue
        rank = int(folder[5:])
        for name in sorted(os.listdir(os.path.join(export, folder))):
            if not name.endswith(".safetensors"):
                continue
            h = header(os.path.join(export, folder, name))
            meta = h.pop("__metadata__", None) or {}
            stored = {k: [v["dtype"], v["shape"]] for k, v in h.items()}
            chunk = f"{rank}\n{json.dumps(stored, separators=(',', ':'))}"
            if "safeshard" in meta:
                chunk += "\n" + meta["safeshard"]
            chunks.append(chunk)
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n--\n".join(chunks))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
