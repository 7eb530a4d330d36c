"""Watch mode: how long a new file takes to become searchable, what a burst costs, and what an
idle watcher costs, with clipsearch-tiny on generated shape images.

    python benchmarks/watch_latency.py --files 1000 --burst 100 --idle 20

Reports, for a collection of --files images watched with the default batching (quiet 1.5 s,
max wait 10 s): the time from writing one new file to its row being readable (which includes
the quiet period, the run's scan of every file under the root and its derived-state refresh),
the same for a burst of --burst files written back to back (and how many runs it took), and the
process CPU time an idle watcher spends over --idle seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from clipsearch.collection import Collection
from clipsearch.watch import Watcher


def write_images(folder: Path, n: int, seed: int, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = np.clip(rng.integers(0, 256, 3) + rng.integers(-8, 9, (64, 64, 3)), 0, 255).astype(np.uint8)
        p = folder / f"{prefix}{i:05d}.jpg"
        Image.fromarray(a).save(p, quality=90)
        out.append(p)
    return out


def wait_indexed(col: Collection, paths: list[Path], timeout: float = 600) -> float:
    """Seconds until every path has a row (polled every 20 ms)."""
    want = {os.fsencode(os.path.realpath(p)) for p in paths}
    t0 = time.perf_counter()
    while not want <= set(col.store.file_states()):
        if time.perf_counter() - t0 > timeout:
            raise SystemExit("timed out")
        time.sleep(0.02)
    return time.perf_counter() - t0


def settled(w: Watcher, runs: int, t0: float) -> float:
    """Seconds from t0 until the watcher has finished `runs` runs."""
    while w.status.runs < runs:
        time.sleep(0.02)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--burst", type=int, default=100)
    ap.add_argument("--idle", type=float, default=20.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, db = Path(tmp) / "photos", Path(tmp) / "db"
        write_images(root, args.files, seed=0)
        t0 = time.perf_counter()
        col = Collection.create(db, model="clipsearch-tiny", device="cpu")
        col.add([root], workers=2)
        print(f"collection: {args.files} images indexed in {time.perf_counter() - t0:.1f} s")
        reader = Collection.open(db, device="cpu")
        runs: list[str] = []
        w = Watcher(col, on_run=lambda r: runs.append(r.summary()))
        w.start()
        while w.status.runs < 1:
            time.sleep(0.05)
        print(f"catch-up run: {runs[-1]}")

        cpu0, t_idle = time.process_time(), time.perf_counter()
        threading.Event().wait(args.idle)
        idle_cpu = time.process_time() - cpu0
        print(f"idle: {idle_cpu:.2f} s CPU over {time.perf_counter() - t_idle:.1f} s wall")

        n = len(runs)
        one = write_images(root / "new", 1, seed=1, prefix="one")
        t0 = time.perf_counter()
        readable = wait_indexed(reader, one)
        done = settled(w, n + 1, t0)
        print(f"one new file: its row readable after {readable:.2f} s, the run done after {done:.2f} s "
              f"({runs[-1]})")

        n = len(runs)
        t0 = time.perf_counter()
        burst = write_images(root / "burst", args.burst, seed=2, prefix="b")
        written = time.perf_counter() - t0
        t0 = time.perf_counter()
        readable = wait_indexed(reader, burst)
        done = settled(w, n + 1, t0)
        print(f"burst of {args.burst} (written in {written:.2f} s): all rows readable {readable:.2f} s after "
              f"the last was written, runs done after {done:.2f} s, {w.status.runs - n} run(s); "
              f"last: {runs[-1]}")
        w.stop(timeout=120)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
