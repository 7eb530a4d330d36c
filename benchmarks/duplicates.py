"""Near-duplicate benchmark: pair precision/recall on planted copies, and grouping at 1M vectors.

Two parts (either or both):

* `--planted N`: N distinct rendered shapes (clipsearch.tiny.synth) with planted copies of six
  types (`clipsearch.tiny.planted`: resized x0.5, JPEG q40, 90 % crop, ±10° rotation, burst of
  3, a frame grabbed from an indexed video), indexed with clipsearch-tiny through the product
  path (`Collection.add`), then `Collection.duplicates()` with `auto`; pair precision and
  recall, overall and per type, with and without the pixel check, and the time it took.
* `--vectors N`: N synthetic CLIP-like vectors (benchmarks/ann.py's generator, dim 512) of
  which 1 % get a planted near-copy (cos ≈ 0.99); the FAISS index is built by the product path
  (`AnnIndex.from_vectors`: IVF-PQ fast-scan + refine at this size, as a saved shard), then
  every vector's k nearest neighbours are searched, the auto threshold fitted and the pairs
  grouped (`clipsearch.duplicates`: the same functions `Collection.duplicates` runs, without the
  table read and the pixel check, which need files). Build and grouping are timed apart.

    .venv/bin/python -m benchmarks.duplicates --planted 2000 --per-type 40
    .venv/bin/python -m benchmarks.duplicates --vectors 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.ann import make_distribution, sample
from clipsearch.duplicates import NEIGHBOURS, auto_threshold, group_pairs, neighbour_pairs


def planted(distinct: int, per_type: int, seed: int, workdir: Path) -> dict:
    from clipsearch.collection import Collection
    from clipsearch.tiny.planted import make_planted

    t0 = time.perf_counter()
    world = make_planted(workdir / "files", distinct=distinct, per_type=per_type, seed=seed)
    gen_s = time.perf_counter() - t0
    col = Collection.create(workdir / "db", model="clipsearch-tiny", device="cpu")
    t0 = time.perf_counter()
    report = col.add([workdir / "files"], workers=2, ocr="off")  # duplicates, not OCR (benchmarks/words.py)
    index_s = time.perf_counter() - t0
    out: dict = {"distinct": distinct, "per_type": per_type, "files": report.indexed,
                 "generate_s": round(gen_s, 1), "index_s": round(index_s, 1)}
    for label, check in (("auto", True), ("auto_vectors_only", False)):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            dup = col.duplicates(pixel_check=check)
            times.append(time.perf_counter() - t0)
        score = world.score([[f.source for f in g.files] for g in dup.groups])
        out[label] = {"threshold": round(dup.threshold, 5), "pixel_cut": dup.pixel_cut, "how": dup.how,
                      "median_s": round(float(np.median(times)), 2), "groups": len(dup.groups),
                      **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in score.items()
                         if k != "by_type"},
                      "by_type": {t: {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}
                                  for t, d in score["by_type"].items()}}
    return out


def vectors(n: int, dim: int, seed: int, share: float = 0.01) -> dict:
    from clipsearch.ann import AnnIndex

    rng = np.random.default_rng(seed)
    d = make_distribution(dim, 4000, seed)
    t0 = time.perf_counter()
    base = sample(d, n - int(n * share), seed)
    src = rng.choice(len(base), size=n - len(base), replace=False)
    noise = rng.standard_normal((len(src), dim), dtype=np.float32)
    copies = base[src] + 0.0045 * noise  # a re-encode: cos ≈ 0.99 to its original
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    data = np.concatenate([base, copies.astype(np.float16).astype(np.float32)])
    truth = {frozenset((int(a), len(base) + b)) for b, a in enumerate(src)}
    gen_s = time.perf_counter() - t0
    ids = np.array([f"r{i}" for i in range(n)], dtype=object)
    t0 = time.perf_counter()
    ann = AnnIndex.from_vectors(data, ids, np.full(n, "image", dtype=object), ids, version=0)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    i, j, s, _ = neighbour_pairs(ann.search_arrays, data, ids.tolist(), "image", NEIGHBOURS)
    search_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    first = np.ones(len(i), bool)
    first[1:] = i[1:] != i[:-1]  # each item's nearest neighbour comes first
    t, how = auto_threshold(s[first])
    keep = s >= t
    groups = group_pairs(n, i[keep], j[keep])
    group_s = time.perf_counter() - t1
    pred = {frozenset((int(a), int(b))) for a, b in zip(i[keep], j[keep], strict=True)}
    right = len(pred & truth)
    return {"n": n, "dim": dim, "planted_pairs": len(truth), "generate_s": round(gen_s, 1),
            "index": ann.describe(), "build_s": round(build_s, 1), "search_s": round(search_s, 1),
            "threshold_and_groups_s": round(group_s, 1), "group_total_s": round(search_s + group_s, 1),
            "threshold": round(t, 5), "how": how, "groups": len(groups),
            "pair_precision": round(right / max(1, len(pred)), 4),
            "pair_recall": round(right / len(truth), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--planted", type=int, default=0, help="distinct images of the planted world")
    ap.add_argument("--per-type", type=int, default=40, help="planted copies of each type")
    ap.add_argument("--vectors", type=int, default=0, help="synthetic vectors to group")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the JSON here too")
    a = ap.parse_args()
    result: dict = {"load_before": os.getloadavg()}
    if a.planted:
        with tempfile.TemporaryDirectory(prefix="dups-bench-") as tmp:
            result["planted"] = planted(a.planted, a.per_type, a.seed, Path(tmp))
    if a.vectors:
        result["vectors"] = vectors(a.vectors, a.dim, a.seed)
    result["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
