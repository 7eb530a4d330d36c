"""LanceDB's own IVF-PQ index as the ANN for collections too large for an in-memory FAISS copy.

The FAISS accelerator (`clipsearch.ann`) loads every vector into the searching process: fine
to a few million rows, the wrong tool at 100M (float32 alone is 200 GB at dim 512). Above
`LANCE_INDEX_MIN_ROWS` a collection gets a Lance IVF-PQ index instead, built by LanceDB where the
table lives, and queries go through `table.search(...)`: only the index partitions a query
probes are read, so a laptop can search a billion-row collection on S3.

`LanceAnn` has the same `search(queries, k, kinds, under)` shape as `AnnIndex`, so the rest of
the searcher (grouping, moments, documents) is unchanged.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

from clipsearch.fsutil import folder_prefix
from clipsearch.search import Searcher
from clipsearch.store import Store, sql_in, sql_str

log = logging.getLogger(__name__)

LANCE_INDEX_MIN_ROWS = int(os.environ.get("CLIPSEARCH_LANCE_INDEX_MIN_ROWS", 1_000_000))


def ivf_pq_params(n: int, dim: int) -> tuple[int, int]:
    """(num_partitions, num_sub_vectors): ~sqrt(n) partitions and dim/8-byte PQ codes.

    dim/8 sub-vectors of 8 bits give codes of dim/8 bytes (64 B at dim 512); the searcher's
    `refine_factor` then re-ranks the candidates with the stored float16 vectors.
    """
    parts = int(min(max(math.sqrt(max(n, 1)), 16), 65536))
    sub = max(1, dim // 8)
    while dim % sub:
        sub -= 1
    return parts, sub


def has_vector_index(store: Store) -> bool:
    try:
        return any("vector" in list(ix["fields"]) for ix in store.dataset.list_indices())
    except Exception:  # an older LanceDB without list_indices: treat as absent
        return False


def build_vector_index(store: Store, num_partitions: int | None = None,
                       num_sub_vectors: int | None = None) -> None:
    """(Re)build the IVF-PQ index over `vector` with the dot metric (vectors are normalised)."""
    from lancedb.index import IvfPq

    n = store.count()
    parts, sub = ivf_pq_params(n, store.dim)
    cfg = IvfPq(distance_type="dot", num_partitions=num_partitions or parts,
                num_sub_vectors=num_sub_vectors or sub)
    store.table.create_index("vector", config=cfg, replace=True)


class LanceAnn:
    """ANN through LanceDB: filters are pushed down as a prefilter, scores are cosines."""

    def __init__(self, store: Store, nprobes: int = 32, refine_factor: int = 4) -> None:
        self.store = store
        self.version = store.version
        self.nprobes = nprobes
        self.refine_factor = refine_factor

    def __len__(self) -> int:
        return self.store.count()

    def search(self, queries: np.ndarray, k: int, kinds: tuple[str, ...] | None = None,
               under: str | None = None) -> list[list[tuple[str, float]]]:
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        where = []
        if kinds:
            where.append(sql_in("kind", kinds))
        if under:
            where.append(f"starts_with(source, {sql_str(folder_prefix(under))})")
        out = []
        for row in q:
            s = (self.store.table.search(row, vector_column_name="vector").distance_type("dot")
                 .limit(k).nprobes(self.nprobes).refine_factor(self.refine_factor)
                 .select(["id", "_distance"]))
            if where:
                s = s.where(" AND ".join(where), prefilter=True)
            t = s.to_arrow()
            # LanceDB's dot "distance" is 1 - <q, v>.
            out.append([(i, 1.0 - float(d)) for i, d in zip(t.column("id").to_pylist(),
                                                             t.column("_distance").to_pylist(),
                                                             strict=True)])
        return out


class RemoteSearcher(Searcher):
    """Searcher of a remote collection: FAISS cached locally when small, Lance IVF-PQ when large."""

    _indexed_at: int | None = None  # table version `_indexed` was checked at
    _indexed = False

    def _lance_indexed(self, store: Store) -> bool:
        """Whether the table has a Lance vector index; asked once per table version, not per
        query (on object storage listing indices is a round trip)."""
        version = store.version
        if self._indexed_at != version:
            self._indexed, self._indexed_at = has_vector_index(store), version
        return self._indexed

    def rebuild_ann(self, save: bool = False, full: bool = False):
        with self._lock:
            store = self.col.store
            indexed = self._lance_indexed(store)
            if indexed or store.count() >= LANCE_INDEX_MIN_ROWS:
                if indexed:  # fold new rows into the existing partitions; no retraining every run
                    store.table.optimize()
                else:
                    build_vector_index(store)
                self._indexed_at = None  # both make a new table version
                self._ann = LanceAnn(store)  # type: ignore[assignment]  # answers AnnIndex's queries
                self._transformed.clear()
                return self._ann
        return super().rebuild_ann(save=save, full=full)

    def ann_problem(self, restat: bool = False) -> str | None:
        """A Lance vector index lives in the table itself: nothing local to check."""
        if self._lance_indexed(self.col.store):
            return None
        return super().ann_problem(restat)

    def ann(self):
        with self._lock:
            store = self.col.store
            if self._lance_indexed(store):
                if not isinstance(self._ann, LanceAnn) or self._ann.version != store.version:
                    self._ann = LanceAnn(store)  # type: ignore[assignment]  # answers AnnIndex's queries
                return self._ann
        return super().ann()

    def ann_description(self) -> dict:
        if not self._lance_indexed(self.col.store):
            return super().ann_description()  # the saved FAISS index's manifest, when current
        ann = self.ann()
        return {"type": "lance IVF_PQ", "rows": len(ann), "version": ann.version}
