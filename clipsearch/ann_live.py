"""What a reader searches: the saved ANN index, plus the rows written since it was saved, exactly.

The writer saves the index tagged with a table version and that version's fragment watermark
(`ann.fragment_watermark`). Every row written later (new, replaced or touched) lies in a
fragment above the watermark, so a reader reads just those rows, with their vectors, and
scores them by brute force: it sees new rows at once, and it never builds or saves a shard.
A delta row replaces the saved row of the same id; rows deleted since the save are dropped by
the caller's hydration through the table, and each shard is asked for that many more hits, so
k hits still come when k exist. Without a usable saved index (none yet, damaged) the whole
table is the delta: exact search, logged once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.ann import AnnIndex, DamagedIndex, Shard, hit_ids, warn_once
from clipsearch.fsutil import folder_prefix
from clipsearch.store import Store, float32_vectors, sql_str

log = logging.getLogger(__name__)

Hits = list[list[tuple[str, float]]]


@dataclass
class DeltaRows:
    """Rows of one kind read from the table (the delta, or a whole kind), with their vectors."""

    ids: np.ndarray  # object (str)
    sources: np.ndarray  # object (str)
    vectors: np.ndarray  # float32 (n, dim)
    id_set: frozenset[str]

    def search(self, q: np.ndarray, k: int, under: str | None, only: np.ndarray | None = None) -> Hits:
        keep = np.arange(len(self.ids))
        if under:
            prefix = folder_prefix(under)
            keep = np.flatnonzero([s.startswith(prefix) for s in self.sources])
        if only is not None and len(keep):
            keep = keep[np.isin(self.ids[keep].astype("U"), only)]
        if not len(keep) or k <= 0:
            return [[] for _ in range(len(q))]
        scores = q @ self.vectors[keep].T
        top = min(k, len(keep))
        best = np.argpartition(-scores, top - 1, axis=1)[:, :top]
        out = []
        for row, cand in zip(scores, best, strict=True):
            cand = cand[np.argsort(-row[cand], kind="stable")]
            out.append([(str(self.ids[keep[c]]), float(row[c])) for c in cand])
        return out


class LiveAnn:
    """The ANN view of one table version: saved shards (read per kind, on first use) plus the
    exact delta. Same `search(queries, k, kinds, under)` shape as `AnnIndex`."""

    def __init__(self, store: Store, saved: AnnIndex | None, ann_dir: Path) -> None:
        self.store = store
        self.ann_dir = ann_dir
        self.snapshot = store.snapshot()
        self.version = int(self.snapshot.version)
        self._lock = threading.RLock()
        self._use(saved)

    def _use(self, saved: AnnIndex | None) -> None:
        self.saved = saved
        self._rows: dict[str, DeltaRows] = {}
        self._broken: set[str] = set()  # kinds whose saved shard is damaged: searched exactly
        self._all_kinds: list[str] | None = None
        fragments = self.snapshot.get_fragments()
        self._total = int(self.snapshot.count_rows())
        if saved is None:
            warn_once(self.ann_dir, f"no usable saved ANN index in {self.ann_dir}: searching the "
                                    "table exactly")
            self._fragments: list[Any] | None = None
            self._gone = self._newer = 0
            return
        self._fragments = [f for f in fragments if f.fragment_id > saved.watermark]
        newer = sum(int(f.count_rows()) for f in self._fragments)
        # saved rows no longer in the table (deleted, or replaced by a delta row): at most this
        # many hits of a shard can be dropped, so each shard is asked for that many more
        self._gone = max(0, len(saved) - (self._total - newer))
        self._newer = newer

    @property
    def shards(self) -> Any:
        """The saved index's shards by kind (a ShardMap; empty without a saved index)."""
        return self.saved.shards if self.saved is not None else {}

    def __len__(self) -> int:
        return self._total

    def describe(self) -> str:
        if self.saved is None:
            return "exact over the table (no saved index)"
        newer = f"; {self._newer} rows newer than it searched exactly" if self._newer else ""
        return self.saved.describe() + newer

    # ---- rows read from the table ------------------------------------------------------------
    def _delta(self, kind: str) -> DeltaRows:
        """The kind's rows newer than the saved index (all of them without a usable shard)."""
        with self._lock:
            rows = self._rows.get(kind)
            if rows is None:
                whole = self._fragments is None or kind in self._broken
                if not whole and not self._fragments:
                    t = None
                else:
                    t = self.snapshot.scanner(columns=["id", "source", "vector"],
                                              filter=f"kind = {sql_str(kind)}",
                                              fragments=None if whole else self._fragments).to_table()
                if t is None or not t.num_rows:
                    rows = DeltaRows(np.zeros(0, object), np.zeros(0, object),
                                     np.zeros((0, self.store.dim), np.float32), frozenset())
                else:
                    ids = np.array(t.column("id").to_pylist(), dtype=object)
                    rows = DeltaRows(ids, np.array(t.column("source").to_pylist(), dtype=object),
                                     float32_vectors(t.column("vector")), frozenset(ids.tolist()))
                self._rows[kind] = rows
            return rows

    def _kinds(self) -> list[str]:
        """Every kind a search over all kinds must look at: the saved shards' and the delta's."""
        with self._lock:
            if self._all_kinds is None:
                kinds = set(self.shards)
                if self._fragments is None or self._fragments:
                    t = self.snapshot.scanner(columns=["kind"], fragments=self._fragments).to_table()
                    kinds |= set(t.column("kind").unique().to_pylist())
                self._all_kinds = sorted(kinds)
            return self._all_kinds

    def _shard(self, kind: str) -> Shard | None:
        """The kind's saved shard, or None (none saved, or damaged: then its rows are read whole)."""
        if self.saved is None or kind in self._broken or kind not in self.saved.shards:
            return None
        try:
            return self.saved.shards[kind]
        except FileNotFoundError:
            raise
        except (DamagedIndex, OSError, KeyError, TypeError, ValueError, RuntimeError) as e:
            warn_once(self.ann_dir, AnnIndex.damage_line(self.ann_dir, e))
            with self._lock:
                self._broken.add(kind)
                self._rows.pop(kind, None)
            return None

    # ---- search ------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, kinds: tuple[str, ...] | None = None,
               under: str | None = None, only: np.ndarray | None = None,
               nprobe: int | None = None) -> Hits:
        """Top (id, cosine) per query row over `kinds` within folder `under` (and, with `only`,
        among those ids): k hits, plus as many as saved rows may have gone since the save (the
        caller's hydration drops those). `nprobe` as in `Shard.search`."""
        try:
            return self._search(queries, k, kinds, under, only, nprobe)
        except FileNotFoundError:  # a writer saved a new version and removed this one's files
            with self._lock:
                self._use(AnnIndex.load(self.ann_dir))
            return self._search(queries, k, kinds, under, only, nprobe)

    def search_arrays(self, queries: np.ndarray, k: int, kind: str,
                      nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`AnnIndex.search_arrays` over this version: (scores, ids) arrays of the top hits
        of one kind, best first (None ids pad short rows; as with `search`, saved rows gone
        since may be among them). Straight from the saved shard when no row of the kind was
        written since it; otherwise the merged `search`, as arrays."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        try:
            shard = self._shard(kind)
            if shard is not None and shard.live and not self._delta(kind).id_set and k > 0:
                scores, idx = shard.search(q, k + self._gone, None, None, nprobe)
                return scores, hit_ids(shard.ids, idx)
        except FileNotFoundError:  # a writer saved a new version: the merged path reloads
            pass
        hits = self.search(q, k, (kind,), nprobe=nprobe)
        width = max((len(h) for h in hits), default=0)
        scores = np.full((len(q), width), -np.inf, np.float32)
        ids = np.full((len(q), width), None, object)
        for row, found in enumerate(hits):
            for col, (rid, s) in enumerate(found):
                ids[row, col], scores[row, col] = rid, s
        return scores, ids

    def _search(self, queries: np.ndarray, k: int, kinds: tuple[str, ...] | None,
                under: str | None, only: np.ndarray | None = None, nprobe: int | None = None) -> Hits:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        hits: Hits = [[] for _ in range(len(q))]
        if k <= 0:
            return hits
        want = k + self._gone
        for kind in (kinds or self._kinds()):
            shard = self._shard(kind)
            delta = self._delta(kind)
            if shard is not None and shard.live:
                scores, idx = shard.search(q, want, under, only, nprobe)
                for row, (srow, irow) in enumerate(zip(scores, idx, strict=True)):
                    hits[row].extend((shard.ids[i], float(s)) for s, i in zip(srow, irow, strict=True)
                                     if i >= 0 and shard.ids[i] not in delta.id_set)
            for row, found in enumerate(delta.search(q, k, under, only)):
                hits[row].extend(found)
        return [sorted(h, key=lambda t: -t[1])[:want] for h in hits]
