"""Browsing without a query at scale: how long `browse --by date` and `--by topics` take to
answer over --rows synthetic image rows (clustered vectors, stored as real rows are, each with
its own date), first (nothing cached) and then cached.

The collection is a clipsearch-tiny one (its text tower labels the topics) whose rows are
appended straight to the table (`benchmarks.incremental.synthetic_rows`, with the dates spread
over ten years). Each figure is the median of --runs runs; "first" clears the process caches
(and, for topics, the persisted file) before each run. The text encoder is loaded before any
timing: a server holds it already.

    python -m benchmarks.browse --rows 100000 --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from benchmarks.ann import make_distribution, sample
from benchmarks.incremental import APPEND_ROWS, CLUSTERS, synthetic_rows
from clipsearch import Collection, browse_date, browse_topics

PAGE = 24  # the UI's page
TEN_YEARS_US = 10 * 365 * 86_400 * 1_000_000


def dated_rows(dim: int, start: int, vecs: np.ndarray, rng: np.random.Generator) -> pa.Table:
    """`synthetic_rows` with each row taken at its own time in the last ten years."""
    t = synthetic_rows(dim, start, vecs)
    now = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp() * 1e6)
    taken = pa.array(now - rng.integers(0, TEN_YEARS_US, len(vecs)), pa.timestamp("us", tz="UTC"))
    return t.set_column(t.schema.get_field_index("taken_at"), "taken_at", taken).set_column(
        t.schema.get_field_index("taken_at_source"), "taken_at_source", pa.array(["exif"] * len(vecs)))


def build(db: Path, rows: int) -> Collection:
    col = Collection.create(db, model="clipsearch-tiny", device="cpu")
    dim = int(col.meta["dim"])
    data = sample(make_distribution(dim, CLUSTERS, seed=0), rows, seed=1)
    rng = np.random.default_rng(2)
    for start in range(0, rows, APPEND_ROWS):
        col.store.table.add(dated_rows(dim, start, data[start:start + APPEND_ROWS], rng))
    col.store.table.optimize()
    return col


def timed(fn, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def median_ms(xs: list[float]) -> float:
    return round(1000 * statistics.median(xs), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workdir", default=None, help="keep the collection here (built once, reused)")
    a = ap.parse_args()
    base = Path(a.workdir or tempfile.mkdtemp(prefix="browse_"))
    info: dict[str, Any] = {"rows": a.rows, "runs": a.runs, "cpus": os.cpu_count(),
                            "utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
                            "load_avg_start": [round(x, 1) for x in os.getloadavg()]}
    db = base / "db"
    if not db.exists():
        t, _ = timed(lambda: build(db, a.rows))
        info["setup_s"] = round(t, 1)
    col = Collection.open(db, device="cpu")
    col.encoder.encode_texts(["warm up"])  # the model load is not browsing's cost
    info["table_rows"] = col.store.count()
    runs: dict[str, list[float]] = {k: [] for k in (
        "date_first", "date_cached_next_page", "topics_first", "topics_first_vocabulary_kept",
        "topics_persisted", "topics_cached", "topic_page_cached")}
    for _ in range(a.runs):
        browse_date._cache.clear()
        fresh = Collection.open(db, device="cpu")
        fresh.share_encoder(col)
        runs["date_first"].append(timed(fresh.browse_by_date, k=PAGE)[0])
        runs["date_cached_next_page"].append(timed(fresh.browse_by_date, k=PAGE, offset=PAGE)[0])
        for f in db.glob("topics.*.npz"):
            f.unlink()
        browse_topics._cache.clear()
        runs["topics_first"].append(timed(fresh.browse_topics)[0])
        next(db.glob("topics.image+*.npz")).unlink()  # the vocabulary's vectors stay
        browse_topics._cache.clear()
        t, topics = timed(fresh.browse_topics)
        runs["topics_first_vocabulary_kept"].append(t)
        browse_topics._cache.clear()  # a new process: the topics file is read
        runs["topics_persisted"].append(timed(fresh.browse_topics)[0])
        runs["topics_cached"].append(timed(fresh.browse_topics)[0])
        runs["topic_page_cached"].append(timed(fresh.browse_topic, 0, 1, k=PAGE)[0])
    info["median_ms"] = {k: median_ms(v) for k, v in runs.items()}
    info["all_ms"] = {k: [round(1000 * x, 1) for x in v] for k, v in runs.items()}
    info["topics"] = len(topics)
    info["largest_topics"] = [(t.label, t.size) for t in topics[:5]]
    info["load_avg_end"] = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps(info, indent=2))
    if a.workdir is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
