"""ANN benchmark: recall@10 vs exact search, single-query latency, build time and memory.

Vectors are drawn from a CLIP-like distribution on the unit sphere, not uniform noise: a few
thousand anisotropic Gaussian clusters of uneven size inside a cone around a common mean
direction (CLIP embeddings share one), rounded through float16 as the LanceDB table stores
them. Queries are perturbed copies of random data points (near them, never on them).

The index is built by the product path, `clipsearch.ann.build_faiss`, with the product
defaults; for IVF indexes nprobe is then swept to show the recall/latency trade-off. Each
query is searched alone (batch of 1), as an interactive search does.

    .venv/bin/python -m benchmarks.ann --n 100000 1000000 --dim 512 --queries 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass

import faiss
import numpy as np

from clipsearch.ann import EXACT_THRESHOLD, build_faiss, ivf_params

CHUNK = 100_000


@dataclass
class Distribution:
    """Parameters of the synthetic CLIP-like embedding distribution (fixed by the seed)."""

    topics: np.ndarray  # (t, dim) unit topic centres, in a cone around one mean direction
    weights: np.ndarray  # (t,) topic probabilities (log-normal: uneven topic sizes)
    basis: np.ndarray  # (dim, dim) random rotation for the anisotropic noise
    scales: np.ndarray  # (dim,) unit-norm noise standard deviations before rotation (power law)
    topic_spread: float  # noise norm of a group centre around its topic
    point_spread: float  # noise norm of a point around its group centre
    group_size: float  # mean points per group (bursts, near-duplicate series, scenes)
    levels: int  # 2: topic → group → point; 1: topic → point (harder: no local structure)


def make_distribution(dim: int, topics: int, seed: int, levels: int = 2,
                      group_size: float = 8.0) -> Distribution:
    """Calibrated to CLIP image embeddings of photo collections: random pairs cos ≈ 0.4,
    nearest neighbour cos ≈ 0.85–0.9, 10th neighbour ≈ 0.8 at 100k (printed by the benchmark)."""
    rng = np.random.default_rng(seed)
    mean = _unit(rng.standard_normal(dim))
    centres = _unit(1.6 * mean + _unit(rng.standard_normal((topics, dim))))
    weights = np.exp(rng.normal(0.0, 1.0, topics))
    weights /= weights.sum()
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scales = np.arange(1, dim + 1) ** -0.5  # effective dimension of the noise ≈ 28
    scales /= np.sqrt((scales ** 2).sum())
    ts, ps = (0.7, 0.4) if levels == 2 else (0.85, 0.0)
    return Distribution(centres.astype(np.float32), weights, basis.astype(np.float32),
                        scales.astype(np.float32), ts, ps, group_size, levels)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _noise(rng: np.random.Generator, d: Distribution, m: int) -> np.ndarray:
    z = rng.standard_normal((m, len(d.scales)), dtype=np.float32) * d.scales
    return z @ d.basis


def sample(d: Distribution, n: int, seed: int) -> np.ndarray:
    """n unit vectors (float32, float16-rounded), generated in chunks to bound peak memory."""
    out = np.empty((n, d.topics.shape[1]), dtype=np.float32)
    rng = np.random.default_rng(seed)
    if d.levels == 2:  # groups: Gaussians around topics; points: Gaussians around groups
        g = max(1, int(n / d.group_size))
        lab = rng.choice(len(d.weights), size=g, p=d.weights)
        centres = np.empty((g, out.shape[1]), dtype=np.float32)
        for a in range(0, g, CHUNK):
            b = min(g, a + CHUNK)
            centres[a:b] = _unit(d.topics[lab[a:b]] + d.topic_spread * _noise(rng, d, b - a))
        spread = d.point_spread
    else:
        centres, spread = d.topics, d.topic_spread
    w = np.exp(rng.normal(0.0, 0.7, len(centres))) if d.levels == 2 else d.weights
    w = w / w.sum()
    for a in range(0, n, CHUNK):
        m = min(CHUNK, n - a)
        lab = rng.choice(len(centres), size=m, p=w)
        x = centres[lab] + spread * np.exp(rng.normal(0.0, 0.15, (m, 1))).astype(np.float32) \
            * _noise(rng, d, m)
        out[a:a + m] = _unit(x).astype(np.float16)
    return out


def make_queries(d: Distribution, data: np.ndarray, q: int, seed: int) -> np.ndarray:
    """Perturbed copies of random data points: cos(query, its source point) ≈ 0.9."""
    rng = np.random.default_rng(seed)
    src = data[rng.choice(len(data), size=q, replace=False)]
    return np.ascontiguousarray(_unit(src + 0.48 * _noise(rng, d, q)), dtype=np.float32)


# ---- measurements -------------------------------------------------------------------------------
def rss_bytes(field: str = "VmRSS") -> int:
    """Current (VmRSS) or peak (VmHWM) resident set size of this process, from /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def index_bytes(index: faiss.Index) -> int:
    """Serialized size of an index, counted without holding a second copy in memory."""
    total = 0

    def count(b: bytes) -> int:
        nonlocal total
        total += len(b)
        return len(b)

    faiss.write_index(index, faiss.PyCallbackIOWriter(count))
    return total


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean |found ∩ truth| / k over queries."""
    k = truth.shape[1]
    return float(np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(found, truth, strict=True)]))


def single_query_latency(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Search one query at a time; returns (ids (q, k), per-query seconds)."""
    ids = np.empty((len(queries), k), dtype=np.int64)
    secs = np.empty(len(queries))
    index.search(queries[:1], k)  # warm-up
    for i in range(len(queries)):
        q = queries[i:i + 1]
        t = time.perf_counter()
        _, ids[i] = index.search(q, k)
        secs[i] = time.perf_counter() - t
    return ids, secs


def lancedb_exact_latency(data: np.ndarray, queries: np.ndarray, k: int, nq: int) -> dict:
    """LanceDB brute-force (no vector index) search latency over a float16 vector column."""
    import lancedb
    import pyarrow as pa

    tmp = tempfile.mkdtemp(prefix="clipsearch-ann-lance-")
    try:
        db = lancedb.connect(tmp)
        dim = data.shape[1]
        flat = pa.array(data.astype(np.float16).reshape(-1))
        tbl = db.create_table("items", pa.table({
            "id": pa.array(np.arange(len(data)).astype(str)),
            "vector": pa.FixedSizeListArray.from_arrays(flat, dim)}))
        found, secs = [], []
        for q in queries[:nq]:
            t = time.perf_counter()
            res = tbl.search(q).distance_type("dot").limit(k).select(["id", "_distance"]).to_arrow()
            secs.append(time.perf_counter() - t)
            found.append(np.array(res.column("id").to_pylist(), dtype=np.int64))
        return {"queries": nq, "p50_ms": 1e3 * float(np.median(secs)),
                "p99_ms": 1e3 * float(np.percentile(secs, 99)), "found": found}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ms(secs: np.ndarray, p: float) -> float:
    return round(1e3 * float(np.percentile(secs, p)), 3)


def run_one(n: int, dim: int, nq: int, k: int, dist: Distribution, seed: int, nprobes: list[int],
            flat_queries: int, lance_queries: int) -> dict:
    t = time.perf_counter()
    data = sample(dist, n, seed + n)
    queries = make_queries(dist, data, nq, seed + 1)
    gen_s = time.perf_counter() - t

    t = time.perf_counter()
    exact = faiss.IndexFlatIP(dim)
    exact.add(data)
    dists, truth = exact.search(queries, k)
    truth_s = time.perf_counter() - t
    sims = queries[:200] @ data[np.random.default_rng(seed).choice(n, 2000, replace=False)].T
    shape = {"random_pair_cos_mean": round(float(sims.mean()), 3),
             "query_top1_cos_mean": round(float(dists[:, 0].mean()), 3),
             "query_top10_cos_mean": round(float(dists[:, k - 1].mean()), 3)}

    out: dict = {"n": n, "dim": dim, "queries": nq, "k": k, "generate_s": round(gen_s, 1),
                 "ground_truth_s": round(truth_s, 1), "distribution": shape}
    # exact single-query latency (the product path below EXACT_THRESHOLD), a subset at large n
    fq = queries[:min(nq, flat_queries)]
    _, fsecs = single_query_latency(exact, fq, k)
    out["flat"] = {"queries": len(fq), "p50_ms": ms(fsecs, 50), "p99_ms": ms(fsecs, 99),
                   "index_bytes": index_bytes(exact)}
    del exact

    rss_before = rss_bytes()
    resettable = reset_peak_rss()
    t = time.perf_counter()
    index = build_faiss(data)
    build_s = time.perf_counter() - t
    peak = rss_bytes("VmHWM")
    out["product"] = {"type": type(index).__name__, "build_s": round(build_s, 1),
                      "index_bytes": index_bytes(index),
                      "rss_before_build_bytes": rss_before,
                      "peak_rss_bytes" + ("" if resettable else "_process"): peak,
                      "exact_threshold": EXACT_THRESHOLD}
    sweep = []
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        nlist, default_nprobe = ivf.nlist, ivf.nprobe
        out["product"].update(nlist=nlist, nprobe=default_nprobe, ivf_params=ivf_params(n, dim),
                              k_factor=getattr(index, "k_factor", None))
        for p in sorted(set(nprobes) | {default_nprobe}):
            if p > nlist:
                continue
            ivf.nprobe = p
            ids, secs = single_query_latency(index, queries, k)
            row = {"nprobe": p, "recall@10": round(recall_at(ids, truth), 4), "p50_ms": ms(secs, 50),
                   "p99_ms": ms(secs, 99), "default": p == default_nprobe}
            sweep.append(row)
            print(f"  n={n:>9,} nprobe={p:>4}  recall@10={row['recall@10']:.4f}  "
                  f"p50={row['p50_ms']:.2f} ms  p99={row['p99_ms']:.2f} ms"
                  + ("  (default)" if row["default"] else ""), flush=True)
        ivf.nprobe = default_nprobe
    else:
        ids, secs = single_query_latency(index, queries, k)
        sweep.append({"nprobe": None, "recall@10": round(recall_at(ids, truth), 4),
                      "p50_ms": ms(secs, 50), "p99_ms": ms(secs, 99), "default": True})
    out["sweep"] = sweep
    del index
    if lance_queries:
        lr = lancedb_exact_latency(data, queries, k, lance_queries)
        lr["recall@10"] = round(recall_at(np.array(lr.pop("found")), truth[:lance_queries]), 4)
        out["lancedb_exact"] = {key: (round(v, 3) if isinstance(v, float) else v) for key, v in lr.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--clusters", type=int, default=3000, help="Gaussians in the mixture")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512, 1024],
                    help="nprobe values to sweep (IVF); the product default is always added")
    ap.add_argument("--flat-queries", type=int, default=100,
                    help="queries for the exact (flat) single-query latency")
    ap.add_argument("--lancedb-queries", type=int, default=50,
                    help="LanceDB exact-search queries, at n ≤ 100k only (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args()

    env = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
           "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
           "machine": platform.processor() or platform.machine(),
           "load_avg_start": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(env), flush=True)
    dist = make_distribution(a.dim, a.clusters, a.seed)
    results = []
    for n in a.n:
        r = run_one(n, a.dim, a.queries, a.k, dist, a.seed, a.nprobe, a.flat_queries,
                    a.lancedb_queries if n <= 100_000 else 0)
        r["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(r), flush=True)
        results.append(r)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"env": env, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
