"""Moment search at scale: synthetic 512-d frame and window vectors stored like real ones.

Builds a LanceDB `items` table with the real schema (clipsearch.store), rows laid out as the
video indexer lays them out (1 fps frames, {2,4,8,16,32} s windows at stride w/2, one window
per shot, one pooled `video` row), vectors clustered per video (video theme → shot → frame).
Planted query concepts give a correctness check. Then: the core's FAISS shard of the window
rows (`AnnIndex.build`, streaming from the table), scalar indexes on `id` and `source`, and
`find_moments` latency per query, both with the `VideoCatalog` a long-lived searcher holds and
with the per-query reads a one-shot CLI query makes.

    .venv/bin/python -m benchmarks.moments_scale --hours 100
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
from clipsearch.indexers.video import shot_spans, window_spans

from clipsearch.ann import AnnIndex
from clipsearch.moments import VideoCatalog, find_moments
from clipsearch.records import Record, display_path, item_id, path_bytes
from clipsearch.store import META_COLUMNS, Store, schema
from clipsearch.video_metrics import Span, recall_at_iou

WINDOW_ROWS_PER_S = sum(2.0 / w for w in (2, 4, 8, 16, 32))  # ≈ 1.94 windows per video-second


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def synth_video(rng: np.random.Generator, duration: int, dim: int,
                plants: list[tuple[np.ndarray, float, float]]):
    """Frame times, frame vectors and cuts of one video: theme → shots → frames (+ planted spans)."""
    times = np.arange(duration, dtype=np.float64)
    cuts = np.cumsum(rng.exponential(20.0, size=duration // 5 + 2))
    cuts = np.round(cuts[cuts < duration - 1][:], 0)
    cuts = np.unique(cuts[cuts > 0])
    theme = _unit(rng.standard_normal(dim, dtype=np.float32))
    shots = _unit(theme + 0.7 * _unit(rng.standard_normal((len(cuts) + 1, dim), dtype=np.float32)))
    shot_of = np.searchsorted(cuts, times, side="right")
    frames = _unit(shots[shot_of] + 0.35 * _unit(rng.standard_normal((duration, dim), dtype=np.float32)))
    for concept, a, b in plants:
        m = (times >= a) & (times < b)
        frames[m] = _unit(concept + 0.5 * _unit(rng.standard_normal((int(m.sum()), dim), dtype=np.float32)))
    return times, frames.astype(np.float32), cuts.tolist(), shot_of


def video_rows(path: str, times, frames, cuts, shot_of, duration: float) -> tuple[dict, np.ndarray]:
    """Column lists and vectors for all rows of one video, pooled with cumulative sums (fast)."""
    raw = path_bytes(path)
    cs = np.vstack([np.zeros((1, frames.shape[1]), np.float64), np.cumsum(frames, axis=0, dtype=np.float64)])
    spans = [*window_spans(duration), *[(a, b, "shot") for a, b in shot_spans(cuts, duration)]]
    seen, wins = set(), []
    for a, b, lab in spans:
        key = (round(a, 3), round(b, 3))
        if key not in seen:
            seen.add(key)
            wins.append((a, b, lab))
    i0 = np.searchsorted(times, [a for a, _, _ in wins], side="left")
    i1 = np.searchsorted(times, [b - 1e-6 for _, b, _ in wins], side="left")
    ok = i1 > i0
    wins = [w for w, k in zip(wins, ok, strict=True) if k]
    wvec = _unit((cs[i1[ok]] - cs[i0[ok]]).astype(np.float32))
    video_vec = _unit(frames.mean(axis=0, keepdims=True))
    kinds = ["video_frame"] * len(times) + ["video_window"] * len(wins) + ["video"]
    t0 = [*times.tolist(), *[a for a, _, _ in wins], 0.0]
    t1 = [*(times + 1.0).tolist(), *[b for _, b, _ in wins], duration]
    extra = ([json.dumps({"shot": int(s)}) for s in shot_of]
             + [json.dumps({"scale": lab}) for _, _, lab in wins]
             + [json.dumps({"cuts": cuts, "duration": duration, "fps": 1.0})])
    ids = [item_id(raw, Record(k, None, a, b).locator()) for k, a, b in zip(kinds, t0, t1, strict=True)]
    n = len(kinds)
    cols = {"id": ids, "source": [display_path(raw)] * n, "source_raw": [raw] * n, "kind": kinds,
            "t_start": t0, "t_end": t1, "page": [None] * n, "text": [None] * n, "thumb": [None] * n,
            "extra": extra, "mtime": [0.0] * n, "size": [0] * n, "content_hash": ["synthetic"] * n}
    return cols, np.vstack([frames, wvec, video_vec])


def _to_arrow(cols: dict, vecs: np.ndarray, dim: int) -> pa.Table:
    sch = schema(dim)
    arrays = [pa.array(cols[c], type=sch.field(c).type) for c in META_COLUMNS]
    arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(vecs.astype(np.float16).reshape(-1)), dim))
    return pa.Table.from_arrays(arrays, schema=sch)


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def build(db_dir: Path, hours: float, dim: int = 512, n_queries: int = 50, seed: int = 0,
          minutes: tuple[int, int] = (10, 60)) -> tuple[Store, list[tuple[np.ndarray, Span]], dict]:
    """Write the synthetic collection; returns the store, planted (query, truth) pairs and timings."""
    rng = np.random.default_rng(seed)
    target = int(hours * 3600)
    durations = []
    while sum(durations) < target:
        durations.append(int(rng.integers(minutes[0] * 60, minutes[1] * 60 + 1)))
    concepts = _unit(rng.standard_normal((n_queries, dim), dtype=np.float32))
    hosts = rng.choice(len(durations), size=n_queries, replace=len(durations) < n_queries)
    plants: dict[int, list] = {}
    truths = []
    for q, v in enumerate(hosts):
        length = float(rng.integers(5, 31))
        a = float(rng.integers(0, durations[v] - int(length)))
        ps = plants.setdefault(int(v), [])
        if any(a < pb + 5 and pa < a + length + 5 for _, pa, pb in ps):
            continue  # keep planted spans of one video apart
        ps.append((concepts[q], a, a + length))
        truths.append((concepts[q], Span(f"/synthetic/v{int(v):06d}.mp4", a, a + length)))
    store = Store(db_dir, dim)
    t_write = time.perf_counter()
    batch_cols: dict[str, list] = {c: [] for c in META_COLUMNS}
    batch_vecs: list[np.ndarray] = []
    rows = 0
    for v, dur in enumerate(durations):
        times, frames, cuts, shot_of = synth_video(rng, dur, dim, plants.get(v, []))
        cols, vecs = video_rows(f"/synthetic/v{v:06d}.mp4", times, frames, cuts, shot_of, float(dur))
        for c in META_COLUMNS:
            batch_cols[c].extend(cols[c])
        batch_vecs.append(vecs)
        if sum(len(x) for x in batch_vecs) >= 200_000 or v == len(durations) - 1:
            data = _to_arrow(batch_cols, np.vstack(batch_vecs), dim)
            store.table.add(data)
            rows += data.num_rows
            batch_cols = {c: [] for c in META_COLUMNS}
            batch_vecs = []
    t_write = time.perf_counter() - t_write
    t_idx = time.perf_counter()
    with warnings.catch_warnings():  # create_scalar_index is deprecated in name only
        warnings.simplefilter("ignore")
        store.table.create_scalar_index("id", index_type="BTREE")
        store.table.create_scalar_index("source", index_type="BTREE")
        store.table.create_scalar_index("kind", index_type="BITMAP")
    t_idx = time.perf_counter() - t_idx
    info = {"videos": len(durations), "video_hours": round(sum(durations) / 3600, 1), "rows": rows,
            "write_s": round(t_write, 1), "scalar_index_s": round(t_idx, 1)}
    return store, truths, info


def run(hours: float, dim: int = 512, n_queries: int = 50, workdir: str | None = None, seed: int = 0,
        all_kinds: bool = False) -> dict:
    """Build (or reuse, from `workdir`), index and query; returns sizes, timings, latency, recall.

    Each phase leaves a marker in `workdir`, so an interrupted run resumes: the collection
    (`data.json`), then the FAISS index (`ann/`), then the queries.
    """
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="moments_scale_"))
    db, ann_dir, saved = base / "db", base / "ann", base / "data.json"
    built = json.loads(saved.read_text()) if saved.is_file() else None
    if built and built["hours"] == hours and built["dim"] == dim and built["seed"] == seed:
        store = Store(db, dim)
        planted = np.load(base / "planted.npz")
        truths = [(c, Span(str(s), float(a), float(b)))
                  for c, s, a, b in zip(planted["c"], planted["s"], planted["a"], planted["b"], strict=True)]
        info = built["info"]
    else:
        for old in (db, ann_dir):  # only what this benchmark wrote there
            shutil.rmtree(old, ignore_errors=True)
        store, truths, info = build(db, hours, dim, n_queries, seed)
        np.savez(base / "planted.npz", c=np.stack([c for c, _ in truths]), s=[g.source for _, g in truths],
                 a=[g.t_start for _, g in truths], b=[g.t_end for _, g in truths])
        saved.write_text(json.dumps({"hours": hours, "dim": dim, "seed": seed, "info": info}))
    ann = AnnIndex.load(ann_dir)
    if ann is None or ann.version != store.version:
        # The product's streaming build (k-means on a sample, then batches from the table).
        # Moment search only asks the `video_window` shard; `--all-kinds` also builds the
        # frame and video shards, as `clipsearch index` does.
        t_ann = time.perf_counter()
        ann = AnnIndex.build(store, kinds=None if all_kinds else ["video_window"])
        info["faiss_build_s"] = round(time.perf_counter() - t_ann, 1)
        info["faiss_build_max_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        info["faiss_shards"] = {k: len(s) for k, s in ann.shards.items()}
        ann.save(ann_dir)
        saved.write_text(json.dumps({"hours": hours, "dim": dim, "seed": seed, "info": info}))
    index = ann.shards["video_window"].index
    # one query at a time: a single FAISS thread avoids OpenMP spin on a busy 2-core machine
    faiss.omp_set_num_threads(1)

    def ann_search(vec, n, kind):  # what Searcher.ann_search does: pick the kind's shard
        return ann.search(vec, n, kinds=(kind,))[0]

    t_cat = time.perf_counter()
    catalog = VideoCatalog.build(store.table)  # what a long-lived Searcher holds per table version
    t_cat = time.perf_counter() - t_cat
    cat_bytes = catalog.nbytes

    def timed(cat) -> tuple[list[float], list[list[Span]]]:
        lat, preds = [], []
        for i, (q, _) in enumerate(truths):
            t0 = time.perf_counter()
            ms = find_moments(q, store.table, k=10, ann_search=ann_search, catalog=cat)
            if i > 0:  # the first query warms caches
                lat.append(time.perf_counter() - t0)
            preds.append([Span(m.source, m.t_start, m.t_end) for m in ms])
        return lat, preds

    ann_lat = []
    for q, _ in truths:
        t0 = time.perf_counter()
        ann_search(q, 300, "video_window")
        ann_lat.append(time.perf_counter() - t0)
    lat, preds = timed(catalog)
    lat_lookup, preds_lookup = timed(None)
    gts = [g for _, g in truths]
    info.update({
        "dim": dim,
        "window_rows": len(ann.shards["video_window"]),
        "lancedb_bytes": dir_size(db),
        "faiss_bytes": dir_size(ann_dir),
        "faiss_type": type(index).__name__,
        "nlist_nprobe": (lambda ivf: [ivf.nlist, ivf.nprobe] if ivf is not None else None)(
            faiss.try_extract_index_ivf(index)),
        "catalog_build_s": round(t_cat, 1),
        "catalog_bytes": int(cat_bytes),
        "queries": len(lat) + 1,
        "p50_ms": round(1000 * float(np.percentile(lat, 50)), 1),
        "p90_ms": round(1000 * float(np.percentile(lat, 90)), 1),
        "ann_p50_ms": round(1000 * float(np.percentile(ann_lat, 50)), 1),
        "p50_ms_id_lookup": round(1000 * float(np.percentile(lat_lookup, 50)), 1),
        "R1@0.5_planted": recall_at_iou(preds, gts, 0.5),
        "R1@0.5_planted_id_lookup": recall_at_iou(preds_lookup, gts, 0.5),
        "max_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "load_avg_1m": round(os.getloadavg()[0], 1),
    })
    if not workdir:
        shutil.rmtree(base, ignore_errors=True)
    return info


def project(m: dict, hours: float) -> dict:
    """Linear projection of storage, memory and ANN time from a measured run to `hours` of video.

    Disk, FAISS memory (4-bit PQ codes + float16 refine copies, per window) and the catalog
    scale with rows. Past ~1M windows the core's IVF keeps 4096 lists and probes 256 of them, so
    each query scans ~n/16 PQ codes: ANN time grows ~linearly with n. The LanceDB lookups
    (scalar-indexed id and source) grow ~logarithmically and are taken as constant here.
    """
    f = hours / m["video_hours"]
    ann_ms = m["ann_p50_ms"] * f
    windows = m["window_rows"] * f
    return {
        "hours": hours,
        "rows": int(m["rows"] * f),
        "windows": int(windows),
        "lancedb_gib": round(m["lancedb_bytes"] * f / 2**30, 1),
        "faiss_windows_gib": round(m["faiss_bytes"] * f / 2**30, 1),
        "faiss_pq_codes_only_gib": round(windows * m["dim"] / 8 / 2**30, 1),
        "catalog_gib": round(m["catalog_bytes"] * f / 2**30, 2),
        "ann_ms": round(ann_ms, 1),
        "p50_ms": round(m["p50_ms"] - m["ann_p50_ms"] + ann_ms, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=100.0)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--workdir", default=None, help="keep the built collection here (and resume)")
    ap.add_argument("--all-kinds", action="store_true",
                    help="build the FAISS shards of every kind, not only video_window")
    args = ap.parse_args()
    t0 = time.perf_counter()
    m = run(args.hours, args.dim, args.queries, args.workdir, all_kinds=args.all_kinds)
    m["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(m, indent=2))
    for h in (1_000, 10_000, 100_000):
        print(json.dumps(project(m, h)))
    print(f"cpu cores: {os.cpu_count()}")


if __name__ == "__main__":
    main()
