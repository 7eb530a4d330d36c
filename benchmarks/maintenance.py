"""What the maintainer's steps cost after a small change to a big table, against a rebuild.

Builds a store of N synthetic rows (dim 512, float16 like real ones, a path per row and a
text chunk on every 10th), with its full-text indexes, then adds 100 rows and reports:
the full-text update in place (`ensure_fts_index`) against a rebuild (`rebuild=True`), 1,000
touched files in one `touch_many` against the table versions it makes, compaction when it is
due and version cleanup, and the transforms fit on a bounded sample (`Maintainer`'s
`TRANSFORM_SAMPLE_ROWS`) with its peak traced memory.

    .venv/bin/python benchmarks/maintenance.py --rows 200000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import tracemalloc
from datetime import timedelta
from pathlib import Path

import numpy as np

from clipsearch.docsearch import ensure_fts_index
from clipsearch.maintainer import TRANSFORM_SAMPLE_ROWS, table_stats
from clipsearch.records import Record
from clipsearch.search import IMAGE_LIKE
from clipsearch.store import SourceRows, Store
from clipsearch.transforms import TransformSet

DIM = 512


def rows(start: int, n: int, rng: np.random.Generator) -> list[SourceRows]:
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    out = []
    for i in range(n):
        j = start + i
        kind, text = ("doc_text", f"notes on item {j} and topic {j % 97}") if j % 10 == 0 else ("image", None)
        raw = f"/photos/{j // 1000:04d}/img_{j:08d}.jpg".encode()
        rec = Record(kind=kind, vector=vecs[i], text=text)
        out.append(SourceRows(raw, float(j), 1000 + j, f"h{j}", [rec]))
    return out


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="maint-bench-"))
    try:
        store = Store(tmp, DIM)
        for start in range(0, args.rows, 20_000):
            store.replace_sources(rows(start, min(20_000, args.rows - start), rng))
        t_build, _ = timed(lambda: ensure_fts_index(store.table, rebuild=True))
        print(f"table: {args.rows} rows; full-text indexes built in {t_build:.2f} s")

        store.replace_sources(rows(args.rows, 100, rng))
        t_inc, _ = timed(lambda: ensure_fts_index(store.table))
        t_full, _ = timed(lambda: ensure_fts_index(store.table, rebuild=True))
        print(f"full-text after +100 rows: in place {t_inc:.2f} s, rebuild {t_full:.2f} s")

        touched = [(f"/photos/{j // 1000:04d}/img_{j:08d}.jpg".encode(), 1e9 + j) for j in range(1000)]
        v0 = store.version
        t_touch, _ = timed(lambda: store.touch_many(touched))
        print(f"1000 touched files: {t_touch:.2f} s, {store.version - v0} new table versions")

        before = table_stats(store.snapshot(), str(tmp / "items.lance"))
        t_compact, _ = timed(store.compact)
        t_clean, n = timed(lambda: store.cleanup_versions(timedelta(0)))
        after = table_stats(store.snapshot(), str(tmp / "items.lance"))
        print(f"compaction {t_compact:.2f} s, cleanup {t_clean:.2f} s ({n} versions): versions "
              f"{before.versions} -> {after.versions}, fragments {before.fragments} -> {after.fragments}, "
              f"{before.bytes / 1e6:.0f} MB -> {after.bytes / 1e6:.0f} MB")

        tracemalloc.start()
        t_sample, (vecs, total) = timed(lambda: store.sample_vectors(IMAGE_LIKE, TRANSFORM_SAMPLE_ROWS))
        t_fit, _ = timed(lambda: TransformSet.fit(vecs, model_id="bench", dim=DIM))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"transforms: sample of {len(vecs)} of {total} rows read in {t_sample:.2f} s, fitted in "
              f"{t_fit:.2f} s, peak traced memory {peak / 1e6:.0f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
