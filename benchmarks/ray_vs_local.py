"""Indexing throughput: the local engine vs the Ray engine on one machine.

Each engine indexes two sizes of the same synthetic image set (clipsearch.tiny.synth shapes) into a
fresh collection. A line through the two timings, t(N) = fixed + N / rate, separates the fixed
cost of a run (Ray: actor start and model load; both: plan, commits, ANN rebuild) from the
marginal rate in files/s, which is what grows with workers on a cluster.

    python -m benchmarks.ray_vs_local --sizes 200 600 --workers 1 2 --json out.json

Ray runs on a local runtime with `--num-cpus` CPUs (default: all cores), started once; its
start-up time is reported separately.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def make_images(root: Path, n: int, size: int, seed: int = 0) -> None:
    from clipsearch.tiny.synth import random_spec, render_shape

    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / f"d{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        render_shape(random_spec(rng), rng, size=size).save(d / f"im{i:05d}.jpg", quality=90)


def subset(src: Path, dst: Path, n: int) -> Path:
    files = sorted(src.rglob("*.jpg"))[:n]
    for f in files:
        (dst / f.parent.name).mkdir(parents=True, exist_ok=True)
        os.link(f, dst / f.parent.name / f.name)
    return dst


def run_local(model: str, files: Path, work: Path, batch_size: int) -> dict:
    from clipsearch.collection import Collection

    col = Collection.create(work / "db", model=model, device="cpu")
    t0 = time.perf_counter()
    report = col.add([files], batch_size=batch_size, fit_transforms=False)
    wall = time.perf_counter() - t0
    return {"files": report.indexed, "wall_s": wall, "pipeline_s": report.seconds}


def run_ray(model: str, files: Path, work: Path, batch_size: int, workers: int) -> dict:
    from clipsearch.collection import Collection
    from clipsearch.engines.ray_engine import index_with_ray

    col = Collection.create(work / "db", model=model, device="cpu")
    t0 = time.perf_counter()
    # Actors share what the decode tasks leave (one CPU is kept for decoding).
    cpus = max(1.0, (os.cpu_count() or 2) - 1)
    report = index_with_ray(col, [files], workers=workers, batch_size=batch_size, fit_transforms=False,
                            cpus_per_worker=min(1.0, cpus / workers))
    wall = time.perf_counter() - t0
    return {"files": report.indexed, "wall_s": wall, "pipeline_s": report.seconds}


def commit_rate(work: Path, dim: int = 512, per_commit: int = 1024, commits: int = 5) -> float:
    """Rows/s the driver commits with `Store.replace_sources` (one image = one row): the
    ceiling on any number of workers, since every row passes through the driver."""
    from clipsearch.records import Record
    from clipsearch.store import SourceRows, Store

    store = Store(work / "commit-bench", dim)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for c in range(commits):
        vecs = rng.standard_normal((per_commit, dim)).astype(np.float32)
        store.replace_sources([SourceRows(f"/photos/{c}/{i:06d}.jpg".encode(), 1.0, 1000, "h",
                                          [Record(kind="image", vector=v)]) for i, v in enumerate(vecs)])
    return per_commit * commits / (time.perf_counter() - t0)


def fit(points: list[tuple[int, float]]) -> dict:
    """t = fixed + n / rate through the smallest and largest run."""
    (n1, t1), (n2, t2) = points[0], points[-1]
    slope = (t2 - t1) / (n2 - n1)
    return {"fixed_s": round(t1 - slope * n1, 2),
            "marginal_files_per_s": round(1 / slope, 1) if slope > 0 else None,
            "end_to_end_files_per_s": round(n2 / t2, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="clipsearch-tiny")
    ap.add_argument("--sizes", type=int, nargs=2, default=[200, 600])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count())
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import ray

    tmp = Path(tempfile.mkdtemp(prefix="ray_vs_local-"))
    try:
        make_images(tmp / "all", max(args.sizes), args.image_size)
        sets = {n: subset(tmp / "all", tmp / f"n{n}", n) for n in args.sizes}
        out: dict = {"model": args.model, "cpus": os.cpu_count(), "sizes": args.sizes,
                     "image_size": args.image_size, "batch_size": args.batch_size,
                     "load_avg_start": os.getloadavg()[0], "runs": {}}

        def record(name: str, fn) -> None:
            pts = []
            for n in args.sizes:
                work = tmp / f"{name}-{n}"
                r = fn(sets[n], work)
                shutil.rmtree(work, ignore_errors=True)
                rate = r["files"] / r["wall_s"]
                print(f"{name:>10} n={n:5d}  wall {r['wall_s']:7.2f} s  ({rate:6.1f} files/s)", flush=True)
                pts.append((n, r["wall_s"]))
            out["runs"][name] = {"points": pts, **fit(pts)}

        out["driver_commit_rows_per_s_dim512"] = round(commit_rate(tmp), 0)
        print(f"driver commits: {out['driver_commit_rows_per_s_dim512']:.0f} rows/s (dim 512)", flush=True)
        record("local", lambda f, w: run_local(args.model, f, w, args.batch_size))
        t0 = time.perf_counter()
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        out["ray_init_s"] = round(time.perf_counter() - t0, 2)
        for wk in args.workers:
            record(f"ray-w{wk}", lambda f, w, wk=wk: run_ray(args.model, f, w, args.batch_size, wk))
        ray.shutdown()
        out["load_avg_end"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n| engine | fixed cost (s) | marginal files/s | end-to-end files/s at n={args.sizes[-1]} |")
    print("|---|---:|---:|---:|")
    for name, r in out["runs"].items():
        print(f"| {name} | {r['fixed_s']} | {r['marginal_files_per_s']} | {r['end_to_end_files_per_s']} |")
    print(f"\nray.init: {out['ray_init_s']} s; "
          f"load average {out['load_avg_start']:.1f} → {out['load_avg_end']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
