"""What one `index` run costs when a little changed in a big collection.

1. A clipsearch-tiny collection of --rows rows: synthetic image rows at the model's dim, drawn
   from benchmarks/ann.py's CLIP-like clustered distribution, written in the table's own schema
   and ids (`store.schema`, `records.item_id`) by bulk appends, plus --files real tiny JPEGs
   indexed by `Collection.add`; the ANN index is saved (`Searcher.rebuild_ann(save=True)`,
   i.e. `ann.update_saved`).
2. The change: 100 new images, 100 deleted, 100 renamed, 1,000 touched (mtime only).
3. One `Collection.add` over the real files' folder, timed in total and by part: the encoder's
   calls (embedding), the ANN update, the full-text index, the transforms; "without
   embedding" is the total less the encoder's time.
4. A new reader process's view (`Collection.open(...).searcher.ann()`): its first query (lazy
   shard load), and recall@10 against exact search over every vector in the table (the index is
   asked for FETCH candidates, as `Searcher.search` asks at k = 10; the top 10 live ones count).

`--ann-only` times the ANN part alone at scale: the same synthetic table, the same change made
straight through `Store` (new rows, deletions, renames as delete + add with the same vectors,
touches as one update), then a reader's first query and recall before the update (saved index
+ delta) and after it, `ann.update_saved`, and, to compare, a full rebuild (`full=True`) and
its recall.

    .venv/bin/python -m benchmarks.incremental --rows 100000
    .venv/bin/python -m benchmarks.incremental --rows 1000000 --ann-only
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from benchmarks.ann import make_distribution, make_queries, sample
from clipsearch import Collection
from clipsearch.ann import AnnIndex, update_saved
from clipsearch.ann_live import LiveAnn
from clipsearch.records import Record, display_path, item_id
from clipsearch.store import SourceRows, Store, schema, sources_filter

APPEND_ROWS = 100_000
FETCH = 10 * 4 + 20  # candidates `Searcher.search` asks the ANN index for at k = 10
CLUSTERS = 3000  # as benchmarks/ann.py


def synthetic_rows(dim: int, start: int, vecs: np.ndarray) -> pa.Table:
    """Image rows as the store writes them (same schema, id and path encoding), for files that
    live outside the indexed folder."""
    raws = [f"/synthetic/{i // 1000:04d}/{i:08d}.jpg".encode() for i in range(start, start + len(vecs))]
    n = len(raws)
    sch = schema(dim)
    cols: dict[str, Any] = {
        "id": [item_id(r, "image") for r in raws], "source": [display_path(r) for r in raws],
        "source_raw": raws,
        "kind": ["image"] * n, "t_start": [None] * n, "t_end": [None] * n, "page": [None] * n,
        "text": [None] * n, "thumb": [None] * n, "extra": [None] * n, "mtime": [1.0] * n,
        "size": [1000] * n, "content_hash": [f"{start + i:032x}" for i in range(n)],
        # already described, as an indexed file is (date from the mtime); null would make every
        # run read the file columns of every synthetic row again
        "taken_at": pa.array([1_000_000] * n, pa.timestamp("us", tz="UTC")), "taken_at_source": ["mtime"] * n}
    arrays = [pa.array(cols[f.name], type=f.type) if f.name in cols else pa.nulls(n, f.type)
              for f in sch if f.name != "vector"]  # the other file columns (FILE_FIELDS): unknown
    flat = pa.array(vecs.astype(np.float16).reshape(-1))
    arrays.append(pa.FixedSizeListArray.from_arrays(flat, dim))
    return pa.Table.from_arrays(arrays, schema=sch)


def write_jpegs(folder: Path, names: list[str], rng: np.random.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        a = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(a).resize((48, 48), Image.BILINEAR).save(folder / name, quality=85)


class Timer:
    """Seconds spent inside wrapped callables, by label."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    def wrap(self, obj: Any, name: str, label: str) -> None:
        real = getattr(obj, name)

        @functools.wraps(real)
        def timed(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return real(*a, **kw)
            finally:
                self.spent[label] = self.spent.get(label, 0.0) + time.perf_counter() - t
        setattr(obj, name, timed)


def recall_at_10(col: Collection, queries: np.ndarray, profile: str | None = None) -> tuple[float, float]:
    """(recall@10 of a fresh reader's ANN view vs exact search, its first query's seconds);
    `profile`: a cProfile of that first query is written there."""
    import cProfile

    reader = Collection.open(col.path, device="cpu")
    meta, vecs = reader.store.vectors("kind = 'image'")
    ids = np.array(meta.column("id").to_pylist(), dtype=object)
    scores = queries @ vecs.T
    exact = [set(ids[np.argsort(-row, kind="stable")[:10]]) for row in scores]
    prof = cProfile.Profile() if profile else None
    t = time.perf_counter()
    if prof is not None:
        prof.enable()
    ann = reader.searcher.ann()
    first = ann.search(queries[0], FETCH, kinds=("image",))
    first_s = time.perf_counter() - t
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)
    got = [first[0]] + [ann.search(q, FETCH, kinds=("image",))[0] for q in queries[1:]]
    alive = set(reader.store.rows_by_id([i for row in got for i, _ in row]).column("id").to_pylist())
    live = [[i for i, _ in row if i in alive][:10] for row in got]
    return float(np.mean([len(e & set(g)) / 10 for e, g in zip(exact, live, strict=True)])), first_s


def ann_recall(store: Store, ann: LiveAnn, queries: np.ndarray) -> float:
    meta, vecs = store.vectors("kind = 'image'")
    ids = np.array(meta.column("id").to_pylist(), dtype=object)
    exact = [set(ids[np.argsort(-row, kind="stable")[:10]]) for row in queries @ vecs.T]
    got = [ann.search(q, FETCH, kinds=("image",))[0] for q in queries]
    alive = set(store.rows_by_id([i for row in got for i, _ in row]).column("id").to_pylist())
    live = [[i for i, _ in row if i in alive][:10] for row in got]
    return float(np.mean([len(e & set(g)) / 10 for e, g in zip(exact, live, strict=True)]))


def ann_only(base: Path, rows: int, dim: int, rng: np.random.Generator, info: dict[str, Any]) -> None:
    """The ANN update alone at `rows` rows of `dim` (see the module docstring)."""
    dist = make_distribution(dim, CLUSTERS, seed=0)
    data = sample(dist, rows, seed=1)
    store = Store(base / "db", dim)
    t = time.perf_counter()
    for start in range(0, rows, APPEND_ROWS):
        store.table.add(synthetic_rows(dim, start, data[start:start + APPEND_ROWS]))
    store.table.optimize()
    info["write_s"] = round(time.perf_counter() - t, 1)
    ann_dir = base / "ann"
    t = time.perf_counter()
    update_saved(store, ann_dir)
    info["first_build_s"] = round(time.perf_counter() - t, 1)
    raw = [f"/synthetic/{i // 1000:04d}/{i:08d}.jpg".encode() for i in range(1300)]
    new = sample(dist, 100, seed=2)
    store.replace_sources([SourceRows(f"/new/{i}.jpg".encode(), 2.0, 10, f"n{i}",
                                      [Record(kind="image", vector=v)]) for i, v in enumerate(new)])
    store.delete_sources(raw[:100])
    moved = store.scan(["source_raw", "content_hash", "vector"], sources_filter(raw[100:200]))
    store.delete_sources(raw[100:200])
    store.replace_sources([SourceRows(b"/moved" + r, 1.0, 1000, h,
                                      [Record(kind="image", vector=np.asarray(v))])
                           for r, h, v in zip(moved.column("source_raw").to_pylist(),
                                              moved.column("content_hash").to_pylist(),
                                              moved.column("vector").to_pylist(), strict=True)])
    store.table.update(where=sources_filter(raw[200:1200]), values={"mtime": 3.0})
    queries = make_queries(dist, data, 50, seed=3)
    t = time.perf_counter()
    reader = LiveAnn(store, AnnIndex.load(ann_dir), ann_dir)
    reader.search(queries[0], 10, kinds=("image",))
    info["reader_with_delta_first_query_s"] = round(time.perf_counter() - t, 2)
    info["recall_at_10_reader_before_update"] = ann_recall(store, reader, queries)
    t = time.perf_counter()
    update_saved(store, ann_dir)
    info["update_saved_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    reader = LiveAnn(store, AnnIndex.load(ann_dir), ann_dir)
    reader.search(queries[0], 10, kinds=("image",))
    info["reader_first_query_s"] = round(time.perf_counter() - t, 2)
    info["recall_at_10_after_update"] = ann_recall(store, reader, queries)
    info["rows_after"] = store.count()
    t = time.perf_counter()
    rebuilt = update_saved(store, base / "ann_full", full=True)
    info["full_rebuild_s"] = round(time.perf_counter() - t, 1)
    info["recall_at_10_full_rebuild"] = ann_recall(store, LiveAnn(store, rebuilt, base / "ann_full"), queries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--files", type=int, default=1300, help="real tiny JPEGs (>= deleted+renamed+touched)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--setup-cache", default=None,
                    help="folder keeping the setup (before the change): made once, then copied")
    ap.add_argument("--profile", default=None, help="write a cProfile of the timed run to this file "
                    "(and of the reader's first query to FILE.reader)")
    ap.add_argument("--dim", type=int, default=128, help="--ann-only: vector dim (clipsearch-tiny's)")
    ap.add_argument("--ann-only", action="store_true", help="time the ANN update alone (no files, no model)")
    a = ap.parse_args()
    base = Path(a.workdir or tempfile.mkdtemp(prefix="incremental_"))
    rng = np.random.default_rng(0)
    info: dict[str, Any] = {"rows": a.rows, "files": a.files, "cpus": os.cpu_count(),
                            "load_avg_start": [round(x, 1) for x in os.getloadavg()]}
    if a.ann_only:
        info.pop("files")
        info["dim"] = a.dim
        ann_only(base, a.rows, a.dim, rng, info)
        print(json.dumps(info, indent=2))
        if not a.keep and a.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
        return

    t0 = time.perf_counter()
    files = base / "files"
    cache = Path(a.setup_cache) if a.setup_cache else None
    synthetic = max(0, a.rows - a.files)
    if cache is not None and (cache / "ready").exists():
        made_in = ((cache / "ready").read_text().split("\n") + [""])[1]
        if made_in and made_in != str(base.resolve()):  # the rows name the files by absolute path
            raise SystemExit(f"--setup-cache {cache} was made with --workdir {made_in}; use that one")
        for part in ("db", "files"):
            shutil.rmtree(base / part, ignore_errors=True)
        for part in ("db", "files"):  # the untouched setup, copied (Lance data files are never edited)
            shutil.copytree(cache / part, base / part, symlinks=True)
        info["setup_from"] = str(cache)
        col = Collection.open(base / "db", device="cpu")
        dim = int(col.meta["dim"])
        for _ in range(a.files):  # the generator as the setup's JPEGs left it: new files are new
            rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    else:
        col = Collection.create(base / "db", model="clipsearch-tiny", device="cpu")
        dim = int(col.meta["dim"])
        data = sample(make_distribution(dim, CLUSTERS, seed=0), synthetic, seed=1)
        for start in range(0, synthetic, APPEND_ROWS):
            col.store.table.add(synthetic_rows(dim, start, data[start:start + APPEND_ROWS]))
        write_jpegs(files, [f"f{i:05d}.jpg" for i in range(a.files)], rng)
        col.add([files], workers=2, ocr="off")  # indexes the files, saves the ANN index over every row
        col.store.table.optimize()  # what the maintainer's compaction leaves: one fragment ...
        col.searcher.rebuild_ann(save=True)  # ... and the index re-tagged at that version
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)
            for part in ("db", "files"):
                shutil.copytree(base / part, cache / part, symlinks=True)
            (cache / "ready").write_text(f"{a.rows} rows, {a.files} files\n{base.resolve()}\n")
    # An unchanged run, untimed: the derived state as this code's previous run leaves it
    Collection.open(base / "db", device="cpu").add([files], workers=2, ocr="off")
    dist = make_distribution(dim, CLUSTERS, seed=0)
    data = sample(dist, synthetic, seed=1)
    info["setup_s"] = round(time.perf_counter() - t0, 1)
    info["table_rows_before"] = col.store.count()

    # the change
    names = sorted(os.listdir(files))
    write_jpegs(files, [f"new{i:03d}.jpg" for i in range(100)], rng)
    for n in names[:100]:
        os.unlink(files / n)
    for n in names[100:200]:
        os.rename(files / n, files / f"renamed_{n}")
    later = time.time() + 5
    for n in names[200:1200]:
        os.utime(files / n, (later, later))

    col = Collection.open(base / "db", device="cpu")
    timer = Timer()
    enc = col.encoder  # loaded before the timed run, as the model load is not the update's cost
    for name in ("encode_pixels", "encode_images", "encode_texts"):
        timer.wrap(enc, name, "embedding")
    steps = {"touch": (col.store, "touch_many"), "fts": (col.maintainer, "update_text_index"),
             "compact": (col.maintainer, "compact"), "thumbs": (col.maintainer, "sweep_thumbs"),
             "ann_update": (col.maintainer, "update_ann"),
             "transforms": (col.maintainer, "update_transforms"),
             "cleanup": (col.maintainer, "cleanup")}
    for label, (obj, name) in steps.items():
        timer.wrap(obj, name, label)
    import cProfile

    prof = cProfile.Profile() if a.profile else None
    t = time.perf_counter()
    if prof is not None:
        prof.enable()
    report = col.add([files], workers=2, ocr="off")  # the update machinery, not OCR (benchmarks/words.py)
    total = time.perf_counter() - t
    if prof is not None:
        prof.disable()
        prof.dump_stats(a.profile)
    info["summary"] = report.summary()
    info["index_run_s"] = round(total, 2)
    info["embedding_s"] = round(timer.spent.get("embedding", 0.0), 2)
    info["without_embedding_s"] = round(total - timer.spent.get("embedding", 0.0), 2)
    info["scan_and_change_check_s"] = round(report.scan_seconds, 2)
    for part in steps:
        info[f"{part}_s"] = round(timer.spent.get(part, 0.0), 2)
    info["table_rows_after"] = col.store.count()
    info["table_versions"] = len(col.store.table.list_versions())

    queries = make_queries(dist, data, 50, seed=3)
    info["recall_at_10"], first_s = recall_at_10(col, queries, a.profile and f"{a.profile}.reader")
    info["reader_first_query_s"] = round(first_s, 2)
    info["load_avg_end"] = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps(info, indent=2))
    if not a.keep and a.workdir is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
