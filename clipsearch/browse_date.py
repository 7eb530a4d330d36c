"""Browsing without a query by date: one entry per file (photo, video, document), newest first,
each with the month it belongs to, so a UI can group a page under month headings.

Only a few metadata columns are read (no vectors); the order is computed once per table
version, kinds and folder, and kept, so paging through it is a slice.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from clipsearch.store import Store

COLUMNS = ["id", "source", "page", "t_start", "taken_at", "mtime"]
_CACHE_SIZE = 8  # (version, kinds, folder) orders kept; a UI pages through one or two


@dataclass(frozen=True)
class DateOrder:
    """Row ids newest first (one per file) and each one's time in UTC microseconds; `dated`
    says whether the time is when it was taken (else the file's modification time)."""

    ids: list[str]
    times_us: np.ndarray
    dated: np.ndarray

    def page(self, k: int, offset: int) -> list[tuple[str, int, bool]]:
        """(id, time, dated) of the k entries from `offset` on."""
        stop = min(offset + k, len(self.ids))
        return [(self.ids[i], int(self.times_us[i]), bool(self.dated[i])) for i in range(offset, stop)]


_lock = threading.Lock()
_cache: dict[tuple[str, int, tuple[str, ...], str | None], DateOrder] = {}


def newest_first(store: Store, kinds: tuple[str, ...], where: str | None = None) -> DateOrder:
    """The files of `kinds` (rows matching `where`) newest first, cached per table version.

    A file's time is when it was taken (`taken_at`), else its modification time; a video or
    document is represented by its first frame or page."""
    key = (store.db_dir, store.version, kinds, where)
    with _lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    clause = "kind IN (" + ",".join(f"'{k}'" for k in kinds) + ")"
    if where:
        clause = f"({clause}) AND ({where})"
    t = store.scan(COLUMNS, clause)
    order = _order(t)
    with _lock:
        if len(_cache) >= _CACHE_SIZE:
            _cache.pop(next(iter(_cache)))
        _cache[key] = order
    return order


def _order(t) -> DateOrder:
    import pyarrow as pa
    import pyarrow.compute as pc

    if t.num_rows == 0:
        return DateOrder([], np.zeros(0, np.int64), np.zeros(0, bool))
    # one row per file: its first frame or page
    t = t.sort_by([("source", "ascending"), ("t_start", "ascending"), ("page", "ascending")])
    src = t.column("source").combine_chunks()
    first = np.ones(t.num_rows, bool)
    if t.num_rows > 1:
        first[1:] = np.asarray(pc.not_equal(src.slice(1), src.slice(0, t.num_rows - 1)).to_numpy(
            zero_copy_only=False))
    t = t.filter(pa.array(first))
    taken = t.column("taken_at").combine_chunks()
    dated = np.asarray(taken.is_valid().to_numpy(zero_copy_only=False), bool)
    taken_us = pc.cast(taken, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    mtime = t.column("mtime").combine_chunks().fill_null(0).to_numpy(zero_copy_only=False)
    times = np.where(dated, taken_us, (np.asarray(mtime, np.float64) * 1e6).astype(np.int64))
    rank = np.argsort(-times, kind="stable")
    ids = t.column("id").to_pylist()
    return DateOrder([ids[i] for i in rank], times[rank], dated[rank])


def month_of(time_us: int) -> str:
    """'2024-05' for a time in UTC microseconds."""
    return datetime.fromtimestamp(time_us / 1e6, UTC).strftime("%Y-%m")


def iso_of(time_us: int) -> str:
    """The ISO time in UTC of a time in UTC microseconds."""
    return datetime.fromtimestamp(time_us / 1e6, UTC).isoformat()


def month_label(month: str) -> str:
    """'May 2024' for '2024-05'."""
    return datetime.strptime(month, "%Y-%m").strftime("%B %Y")


def months_of(hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The months of a page of date-browsed hits (JSON), in order: month, label, count."""
    out: list[dict[str, Any]] = []
    for h in hits:
        month = h.get("month")
        if month is None:
            continue
        if out and out[-1]["month"] == month:
            out[-1]["count"] += 1
        else:
            out.append({"month": month, "label": month_label(month), "count": 1})
    return out
