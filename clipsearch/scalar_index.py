"""Scalar indexes on the table's lookup columns, so that a write naming a few files costs those
files, not the table.

A BTree on `id` (the key every merge_insert joins on) and a Bloom filter on `source_raw` (the
by-file filter of deletes, touches and moves: Lance takes no BTree on a binary column). Lance
keeps both through compaction; rows written since they were built sit in unindexed fragments,
which Lance scans, until `maintain` folds them in once there are `FOLD_ROWS` of them.

Lance keeps no checksum of an index, and a damaged one makes reads and writes fail (or worse,
miss rows). So the writer records every file of these indexes (size, CRC, stat) in `RECORD`
when it builds or folds them, and `verify` checks them before a run writes anything (by stat,
else by CRC): an index that is damaged, or that no record vouches for (a run stopped between
building it and recording it), is dropped and rebuilt by the next `maintain`. A write or a
read that fails on an index all the same is retried without it (`Store`).

Local collections only: on object storage the table has none (and every read scans).
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from pathlib import Path
from typing import Any

from clipsearch.fsutil import write_atomic
from clipsearch.testpoints import pause_at

log = logging.getLogger(__name__)

INDEXES = {"id_idx": ("id", "BTREE"), "source_raw_idx": ("source_raw", "BLOOMFILTER")}
RECORD = "scalar_indexes.json"
FOLD_ROWS = 20_000  # rows outside the indexes before `maintain` folds them in
MIN_ROWS = 1  # an empty table gets its indexes with its first rows


def local(store: Any) -> bool:
    """Whether these indexes are kept for this store (a local table)."""
    return "://" not in store.db_dir


def _table_dir(store: Any) -> Path:
    return Path(store.uri)


def ours(dataset: Any) -> dict[str, list[str]]:
    """Our indexes on `dataset`: name -> the uuids of its segments."""
    out: dict[str, list[str]] = {}
    for ix in dataset.describe_indices():
        if ix.name in INDEXES:
            out.setdefault(ix.name, []).extend(str(seg.uuid) for seg in ix.segments)
    return out


def _files(table_dir: Path, uuids: list[str]) -> list[Path]:
    paths: list[Path] = []
    for u in uuids:
        folder = table_dir / "_indices" / u
        paths.extend(sorted(p for p in folder.rglob("*") if p.is_file()))
    return paths


def _entry(path: Path, known: dict[str, Any] | None) -> dict[str, Any]:
    st = path.stat()
    stat = [st.st_size, st.st_mtime_ns, st.st_ino]
    if known is not None and known.get("stat") == stat:
        return known
    return {"size": st.st_size, "crc32": zlib.crc32(path.read_bytes()), "stat": stat}


def _read_record(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / RECORD).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def record(folder: str | os.PathLike[str], store: Any) -> None:
    """Record the indexes' files as they are now: after this writer's own upkeep rewrote them
    (a compaction remaps them into new files)."""
    if local(store):
        _write_record(Path(folder), store, store.dataset)


def _write_record(folder: Path, store: Any, dataset: Any) -> None:
    table_dir = _table_dir(store)
    old = _read_record(folder).get("files", {})
    files = {}
    for uuids in ours(dataset).values():
        for p in _files(table_dir, uuids):
            rel = str(p.relative_to(table_dir))
            files[rel] = _entry(p, old.get(rel))
    write_atomic(folder / RECORD, json.dumps({"names": sorted(ours(dataset)), "files": files}))


def missing(folder: str | os.PathLike[str]) -> bool:
    """Whether the record lacks one of our indexes (asked without opening the table)."""
    return set(_read_record(Path(folder)).get("names", [])) != set(INDEXES)


def problems(folder: str | os.PathLike[str], store: Any) -> dict[str, str]:
    """Our indexes that a write must not use: name -> why (damaged, or not recorded)."""
    folder = Path(folder)
    dataset = store.dataset
    recorded = _read_record(folder).get("files", {})
    table_dir = _table_dir(store)
    out: dict[str, str] = {}
    for name, uuids in ours(dataset).items():
        paths = _files(table_dir, uuids)
        if not paths:
            out[name] = "its files are missing"
            continue
        for p in paths:
            rel = str(p.relative_to(table_dir))
            want = recorded.get(rel)
            if want is None:
                out[name] = f"{rel} is not one this collection recorded"
                break
            try:
                got = _entry(p, want)
            except OSError as e:
                out[name] = f"{rel} is unreadable ({e.strerror or e})"
                break
            if got["size"] != want["size"] or got["crc32"] != want["crc32"]:
                out[name] = f"{rel} is damaged (its size or checksum changed)"
                break
    for name, uuids in ours(dataset).items():  # a segment whose folder is gone
        if name not in out and any(not (table_dir / "_indices" / u).is_dir() for u in uuids):
            out[name] = "a segment's folder is missing"
    return out


def drop(store: Any, names: list[str] | None = None) -> list[str]:
    """Drop our indexes (all, or `names`) from the table; returns those dropped."""
    dataset = store.dataset
    dropped = []
    for name in ours(dataset):
        if names is None or name in names:
            dataset.drop_index(name)
            dataset = store.dataset
            dropped.append(name)
    return dropped


def verify(folder: str | os.PathLike[str], store: Any) -> list[str]:
    """Before a run writes: drop every index of ours that is damaged or unrecorded (the next
    `maintain` rebuilds it). Returns a line per index dropped."""
    if not local(store):
        return []
    lines = []
    for name, why in problems(folder, store).items():
        log.warning("%s: the table's %s index is unusable (%s); dropping it, the run rebuilds it",
                    folder, name, why)
        drop(store, [name])
        lines.append(f"{name}: {why}")
    return lines


def maintain(folder: str | os.PathLike[str], store: Any, fold_rows: int = FOLD_ROWS) -> None:
    """After the run's writes (the writer's call): build missing indexes, fold new rows in once
    there are `fold_rows` of them, and record the indexes' files."""
    if not local(store):
        return
    folder = Path(folder)
    verify(folder, store)  # nothing unrecorded is kept: what our own upkeep made is recorded as made
    dataset = store.dataset
    if dataset.count_rows() < MIN_ROWS:
        return
    have = ours(dataset)
    changed = False
    for name, (column, kind) in INDEXES.items():
        if name not in have:
            dataset.create_scalar_index(column, kind, name=name)
            dataset = store.dataset
            changed = True
    if not changed:
        stale = [n for n in INDEXES
                 if int(dataset.stats.index_stats(n).get("num_unindexed_rows", 0)) >= fold_rows]
        if stale:
            dataset.optimize.optimize_indices(index_names=stale)
            dataset = store.dataset
            changed = True
    pause_at("scalar_index")  # built or folded, not recorded yet
    recorded = _read_record(folder).get("files", {})
    table_dir = _table_dir(store)
    current = {str(p.relative_to(table_dir)) for uuids in ours(dataset).values()
               for p in _files(table_dir, uuids)}
    if changed or current != set(recorded):  # compaction remaps indexes into new files
        _write_record(folder, store, dataset)
