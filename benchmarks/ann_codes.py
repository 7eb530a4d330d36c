"""Shortlist codes of the IVF index: recall@10 and single-query latency per PQ layout, nprobe,
refine factor and number of candidates asked for, at one size and dim.

Same CLIP-like data and queries as benchmarks/ann.py. Each layout is a FAISS factory string
with `{nlist}` for the product's list count at that size (`clipsearch.ann.ivf_params`); it is
trained and filled once, then searched with every combination of the other settings. Used to
choose the product defaults at small dims (benchmarks/RESULTS.md, "Incremental updates").

    .venv/bin/python -m benchmarks.ann_codes --n 1000000 --dim 128 \\
        --layouts 'IVF{nlist},PQ32x4fs,Refine(SQfp16)' 'IVF{nlist},PQ64x4fs,Refine(SQfp16)'
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np

from benchmarks.ann import make_distribution, make_queries, sample
from clipsearch.ann import ivf_params, probes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--layouts", nargs="+", default=["IVF{nlist},PQ32x4fs,Refine(SQfp16)",
                                                     "IVF{nlist},PQ64x4fs,Refine(SQfp16)"])
    ap.add_argument("--nprobe-factors", type=int, nargs="+", default=[4, 8],
                    help="nprobe = factor * sqrt(nlist)")
    ap.add_argument("--k-factors", type=int, nargs="+", default=[20, 50])
    ap.add_argument("--fetch", type=int, nargs="+", default=[10, 60],
                    help="candidates asked for (Searcher.search asks 60 at k = 10)")
    a = ap.parse_args()
    dist = make_distribution(a.dim, 3000, seed=0)
    data = sample(dist, a.n, seed=1)
    queries = make_queries(dist, data, a.queries, seed=3)
    exact = faiss.IndexFlatIP(a.dim)
    exact.add(data)
    _, truth = exact.search(queries, 10)
    del exact
    nlist, _ = ivf_params(a.n, a.dim)
    rows = []
    for layout in a.layouts:
        t = time.perf_counter()
        index = faiss.index_factory(a.dim, layout.format(nlist=nlist), faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        index.train(data[np.random.default_rng(0).choice(a.n, min(a.n, 64 * nlist), replace=False)])
        index.add(data)
        build_s = round(time.perf_counter() - t, 1)
        for factor in a.nprobe_factors:
            ivf.nprobe = min(nlist, int(factor * np.sqrt(nlist)))
            for kf in a.k_factors:
                index.k_factor = kf
                for fetch in a.fetch:
                    index.search(queries[:1], fetch)
                    t = time.perf_counter()
                    found = np.vstack([index.search(q[None], fetch)[1] for q in queries])
                    per_ms = 1e3 * (time.perf_counter() - t) / len(queries)
                    recall = float(np.mean([len(set(f[:10]) & set(g)) / 10
                                            for f, g in zip(found, truth, strict=True)]))
                    row = {"layout": layout, "build_s": build_s, "nlist": nlist, "nprobe": ivf.nprobe,
                           "k_factor": kf, "fetch": fetch, "recall@10": round(recall, 3),
                           "mean_ms": round(per_ms, 2)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print(json.dumps({"n": a.n, "dim": a.dim, "product_nprobe": probes(nlist, a.dim)}))


if __name__ == "__main__":
    main()
