"""The LanceDB table that is the collection's system of record.

One row per retrievable item. A write replaces *all* rows of a set of source files in one
merge_insert, i.e. one atomic commit: a crash leaves either the old rows or the new ones.
A file too big for one commit goes in by parts whose rows carry `size = PARTIAL_SIZE` until
`mark_complete` records its real state; change detection never takes such a file as indexed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from clipsearch.records import Record, display_path, item_id

TABLE = "items"
PARTIAL_SIZE = -1  # `size` of the rows of a file whose rows are not all in yet
META_COLUMNS = ["id", "source", "source_raw", "kind", "t_start", "t_end", "page", "text", "thumb",
                "extra", "mtime", "size", "content_hash"]


def schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_raw", pa.binary(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("t_start", pa.float64()),
        pa.field("t_end", pa.float64()),
        pa.field("page", pa.int32()),
        pa.field("text", pa.string()),
        pa.field("thumb", pa.string()),
        pa.field("extra", pa.string()),
        pa.field("mtime", pa.float64()),
        pa.field("size", pa.int64()),
        pa.field("content_hash", pa.string()),
        pa.field("vector", pa.list_(pa.float16(), dim)),
    ])


def sql_str(value: str) -> str:
    """A SQL string literal (single quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def float32_vectors(col) -> np.ndarray:
    """Arrow fixed_size_list<float16|float32> column (chunked or not) -> float32 (n, dim).

    `flatten()` rather than `.values`, so a sliced array yields only its own rows."""
    arr = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    return arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, arr.type.list_size)


@dataclass
class FileState:
    mtime: float
    size: int
    content_hash: str

    @property
    def complete(self) -> bool:
        """False while a file's rows are still going in by parts (or a run stopped midway)."""
        return self.size != PARTIAL_SIZE


@dataclass
class SourceRows:
    """All records of one source file plus the file state they were computed from."""

    source_raw: bytes
    mtime: float
    size: int
    content_hash: str
    records: list[Record]


class Store:
    """Thin, typed wrapper over the LanceDB table. Knows nothing about models or indexers."""

    def __init__(self, db_dir: str | Path, dim: int, storage_options: dict | None = None) -> None:
        import lancedb

        self.db_dir = str(db_dir)
        self.dim = dim
        self._db = lancedb.connect(self.db_dir, read_consistency_interval=timedelta(0),
                                   storage_options=storage_options)
        listed = self._db.list_tables()
        names = getattr(listed, "tables", listed)
        if TABLE in list(names):
            self.table = self._db.open_table(TABLE)
        else:
            self.table = self._db.create_table(TABLE, schema=schema(dim))

    # ---- reads -------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return int(self.table.version)

    def count(self, where: str | None = None) -> int:
        return int(self.table.count_rows(where)) if where else int(self.table.count_rows())

    def file_states(self) -> dict[bytes, FileState]:
        """Per source file, the state its rows were computed from (for change detection)."""
        t = self.table.to_lance().to_table(columns=["source_raw", "mtime", "size", "content_hash"])
        raws = t.column("source_raw").to_pylist()
        mt = t.column("mtime").to_pylist()
        sz = t.column("size").to_pylist()
        hs = t.column("content_hash").to_pylist()
        return {r: FileState(m, s, h) for r, m, s, h in zip(raws, mt, sz, hs, strict=True)}

    def scan(self, columns: Sequence[str], where: str | None = None) -> pa.Table:
        return self.table.to_lance().to_table(columns=list(columns), filter=where)

    def vectors(self, where: str | None = None) -> tuple[pa.Table, np.ndarray]:
        """Metadata and float32 vectors of every matching row, in one consistent snapshot."""
        t = self.scan(META_COLUMNS + ["vector"], where)
        return t.drop_columns(["vector"]), float32_vectors(t.column("vector"))

    def snapshot(self):
        """The table pinned at its current version (a lance dataset): several reads of one build
        see the same rows even while a writer commits."""
        return self.table.to_lance()

    def vector_batches(self, snapshot, columns: Sequence[str], where: str | None = None,
                       batch_rows: int = 65_536) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        """(metadata batch, float32 vectors) over matching rows, a batch at a time, so an index
        over more vectors than fit in memory can still be built."""
        for b in snapshot.to_batches(columns=[*columns, "vector"], filter=where, batch_size=batch_rows):
            if b.num_rows:
                yield b.drop_columns(["vector"]), float32_vectors(b.column("vector"))

    def take_vectors(self, snapshot, positions: np.ndarray) -> np.ndarray:
        """float32 vectors of the rows at these scan positions (e.g. a k-means training sample)."""
        t = snapshot.take(np.asarray(positions, dtype=np.int64), columns=["vector"])
        return float32_vectors(t.column("vector"))

    def rows_by_id(self, ids: Sequence[str]) -> pa.Table:
        if not ids:
            return self.scan(META_COLUMNS, "false")
        where = "id IN (" + ",".join(sql_str(i) for i in ids) + ")"
        return self.scan(META_COLUMNS, where)

    # ---- writes ------------------------------------------------------------------------------
    def _to_arrow(self, items: Iterable[SourceRows]) -> pa.Table:
        cols: dict[str, list] = {c: [] for c in META_COLUMNS}
        vecs = []
        for item in items:
            src = display_path(item.source_raw)
            for r in item.records:
                v = np.asarray(r.vector, dtype=np.float32).reshape(-1)
                if v.shape[0] != self.dim:
                    raise ValueError(f"vector of dim {v.shape[0]} for a collection of dim {self.dim}")
                cols["id"].append(item_id(item.source_raw, r.locator()))
                cols["source"].append(src)
                cols["source_raw"].append(item.source_raw)
                cols["kind"].append(r.kind)
                cols["t_start"].append(r.t_start)
                cols["t_end"].append(r.t_end)
                cols["page"].append(r.page)
                cols["text"].append(r.text)
                cols["thumb"].append(r.thumb)
                cols["extra"].append(json.dumps(r.extra) if r.extra else None)
                cols["mtime"].append(item.mtime)
                cols["size"].append(item.size)
                cols["content_hash"].append(item.content_hash)
                vecs.append(v)
        arr = np.stack(vecs).astype(np.float16) if vecs else np.zeros((0, self.dim), np.float16)
        sch = schema(self.dim)
        arrays = [pa.array(cols[c], type=sch.field(c).type) for c in META_COLUMNS]
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), self.dim))
        return pa.Table.from_arrays(arrays, schema=sch)

    def replace_sources(self, items: Sequence[SourceRows]) -> None:
        """Atomically make the rows of these sources exactly `items` (one commit)."""
        if not items:
            return
        data = self._to_arrow(items)
        cond = "source IN (" + ",".join(sql_str(display_path(i.source_raw)) for i in items) + ")"
        (self.table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
         .when_not_matched_by_source_delete(cond).execute(data))

    def append_rows(self, item: SourceRows) -> None:
        """Add rows of one source, keeping its other rows (one commit): the parts of a big file."""
        if item.records:
            self.table.add(self._to_arrow([item]))

    def mark_complete(self, raw: bytes, mtime: float, size: int, content_hash: str) -> None:
        """Record the file state on every row of a source put in by parts (one commit): only
        now does change detection take the file as indexed."""
        self.table.update(where=f"source = {sql_str(display_path(raw))}",
                          values={"mtime": mtime, "size": size, "content_hash": content_hash})

    def delete_sources(self, raws: Sequence[bytes]) -> int:
        """Remove every row of these sources in one commit. Returns the number of sources."""
        if not raws:
            return 0
        for i in range(0, len(raws), 500):
            chunk = raws[i:i + 500]
            self.table.delete("source IN (" + ",".join(sql_str(display_path(r)) for r in chunk) + ")")
        return len(raws)

    def touch(self, raw: bytes, mtime: float) -> None:
        """Record a new mtime for a file whose content hash proved unchanged."""
        self.table.update(where=f"source = {sql_str(display_path(raw))}", values={"mtime": mtime})
