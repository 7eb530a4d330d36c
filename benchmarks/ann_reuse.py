"""What an index run that adds a few photos costs in FAISS rebuilding, with and without shard reuse.

1. A synthetic video collection of --hours in the real table layout (benchmarks/moments_scale.py:
   frames, windows and video rows with 512-d vectors), all kinds indexed by the product's
   streaming build (`AnnIndex.build`), saved: the cost of a full rebuild.
2. --photos new image rows are added, as an index run of a photo folder would.
3. `AnnIndex.build(store, reuse=ann_dir)`, what the next refresh runs in a new process: kinds whose
   files are unchanged are loaded from disk, only the image shard is built; then the save, which
   hard-links the reused shard files instead of rewriting them.

    .venv/bin/python -m benchmarks.ann_reuse --hours 100
    .venv/bin/python -m benchmarks.ann_reuse --fingerprint-files 1000000   # fingerprint cost only
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.moments_scale import build
from clipsearch.ann import FINGERPRINT_COLUMNS, AnnIndex, kind_fingerprints
from clipsearch.records import Record
from clipsearch.store import SourceRows


def fingerprint_cost(files: int) -> dict:
    """Seconds of `kind_fingerprints` over `files` one-row photo files (the worst case: a group
    per row), on an in-memory table of the columns it reads."""
    t = pa.table({"kind": pa.array(["image"] * files),
                  "source": pa.array([f"/photos/{i:07d}.jpg" for i in range(files)]),
                  "content_hash": pa.array([f"{i:032x}" for i in range(files)])})
    start = time.perf_counter()
    kind_fingerprints(t.select(FINGERPRINT_COLUMNS))
    return {"files": files, "fingerprints_s": round(time.perf_counter() - start, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=100)
    ap.add_argument("--photos", type=int, default=20)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--fingerprint-files", type=int, default=0,
                    help="only time the per-kind fingerprint over this many photo files")
    a = ap.parse_args()
    if a.fingerprint_files:
        print(json.dumps(fingerprint_cost(a.fingerprint_files)))
        return
    base = Path(a.workdir or tempfile.mkdtemp(prefix="ann_reuse_"))
    store, _, info = build(base / "db", a.hours)
    ann_dir = base / "ann"
    t = time.perf_counter()
    full = AnnIndex.build(store)
    info["full_build_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    full.save(ann_dir)
    info["full_save_s"] = round(time.perf_counter() - t, 1)
    info["shards"] = {k: len(s) for k, s in full.shards.items()}
    del full
    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((a.photos, store.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store.replace_sources([SourceRows(f"/photos/p{i}.jpg".encode(), 1.0, 10, f"h{i}",
                                      [Record(kind="image", vector=v)]) for i, v in enumerate(vecs)])
    t = time.perf_counter()
    kind_fingerprints(store.snapshot().to_table(columns=FINGERPRINT_COLUMNS))
    info["fingerprints_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    again = AnnIndex.build(store, reuse=ann_dir)
    info["reuse_build_s"] = round(time.perf_counter() - t, 1)
    info["reused_from_disk"] = sorted(k for k, s in again.shards.items() if s.saved is not None)
    t = time.perf_counter()
    again.save(ann_dir)
    info["reuse_save_s"] = round(time.perf_counter() - t, 2)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
