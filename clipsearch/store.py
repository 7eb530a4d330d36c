"""The LanceDB table that is the collection's system of record.

One row per retrievable item. A write replaces *all* rows of a set of source files in one
merge_insert, i.e. one atomic commit: a crash leaves either the old rows or the new ones.

The table's schema metadata records which model made its vectors (`recorded_meta`), so the
collection's identity survives a lost or replaced `clipsearch.json`. Storage failures leave
every method as a one-line `StorageError` naming the collection (`clipsearch.failures`).

A file too big for one commit goes in by parts whose rows carry `size = PARTIAL_SIZE` until
`mark_complete` records its real state; change detection never takes such a file as indexed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from clipsearch import thumbs
from clipsearch.failures import detail, guarded, storage_errors
from clipsearch.file_states import PARTIAL_SIZE, STATE_COLUMNS, FileStates
from clipsearch.file_states import FileState as FileState  # re-exported: its home was here
from clipsearch.lazy import lazy_import
from clipsearch.records import Record, display_path, item_id
from clipsearch.testpoints import pause_at

if TYPE_CHECKING:
    import pyarrow.compute as pc
else:
    pc = lazy_import("pyarrow.compute")  # its import builds every function from docstrings; few paths need it

log = logging.getLogger(__name__)

TABLE = "items"
TABLE_META_KEY = b"clipsearch"  # schema metadata: JSON of the model fields of clipsearch.json
ABSOLUTE_THUMBS = f"thumb LIKE '/%/{thumbs.FOLDER}/%'"  # rows from before thumbnails were relative
TOUCH_BATCH = 500  # touched files recorded per commit
META_COLUMNS = ["id", "source", "source_raw", "kind", "t_start", "t_end", "page", "text", "thumb",
                "extra", "mtime", "size", "content_hash"]
SCHEMA_VERSION_KEY = b"clipsearch_schema"  # schema metadata: the table layout's version
SCHEMA_VERSION = 2  # 2: the file columns (FILE_FIELDS)
# When, where and with what each row's file was made (`clipsearch.metadata`); None = unknown.
# `taken_at_source` is None only for rows whose file was not read yet (e.g. a migrated table).
FILE_FIELDS = [
    pa.field("taken_at", pa.timestamp("us", tz="UTC")),
    pa.field("taken_at_source", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("camera", pa.string()),
    pa.field("lens", pa.string()),
    pa.field("gps_lat", pa.float64()),
    pa.field("gps_lon", pa.float64()),
    pa.field("place", pa.string()),
    pa.field("duration", pa.float64()),
    pa.field("pages", pa.int32()),
    pa.field("bytes", pa.int64()),
    pa.field("format", pa.string()),
]
FILE_COLUMNS = [f.name for f in FILE_FIELDS]


def schema(dim: int, meta: dict[str, Any] | None = None) -> pa.Schema:
    """The table's schema; `meta` (the model fields of clipsearch.json) goes into its metadata."""
    metadata = {SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()}
    if meta:
        metadata[TABLE_META_KEY] = json.dumps(meta, sort_keys=True).encode()
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
        *FILE_FIELDS,
        pa.field("vector", pa.list_(pa.float16(), dim)),
    ], metadata=metadata)


def sql_str(value: str) -> str:
    """A SQL string literal (single quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def sql_in(column: str, values: Iterable[str]) -> str:
    """A SQL `column IN (...)` test of string values, each quoted by `sql_str`."""
    return f"{column} IN (" + ",".join(sql_str(v) for v in values) + ")"


def sql_bytes(value: bytes) -> str:
    """A SQL binary literal (X'hex'): how rows are matched to their source file's raw name."""
    return "X'" + value.hex() + "'"


def sources_filter(raws: Iterable[bytes]) -> str:
    """SQL filter for every row of these source files, by raw path bytes: two names that
    display alike (invalid UTF-8 shown escaped) are still two files."""
    return "source_raw IN (" + ",".join(sql_bytes(r) for r in raws) + ")"


def float32_vectors(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Arrow fixed_size_list<float16|float32> column (chunked or not) -> float32 (n, dim).

    `flatten()` rather than `.values`, so a sliced array yields only its own rows."""
    arr = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    vectors: np.ndarray = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return vectors.reshape(-1, arr.type.list_size)


@dataclass
class SourceRows:
    """All records of one source file plus the file state they were computed from."""

    source_raw: bytes
    mtime: float
    size: int
    content_hash: str
    records: list[Record]
    file_meta: dict[str, Any] | None = None  # FILE_COLUMNS values (None: not read; filled later)


class Store:
    """Thin, typed wrapper over the LanceDB table. Knows nothing about models or indexers.

    Reads go through the Lance dataset (`dataset`, always at the latest version); LanceDB, a
    far heavier import, is opened only for a write or the full-text index (`table`).
    `meta` is what a new table records about its model (see `recorded_meta`)."""

    def __init__(self, db_dir: str | Path, dim: int, storage_options: dict[str, str] | None = None,
                 meta: dict[str, Any] | None = None, create: bool = True) -> None:
        self.db_dir = str(db_dir)
        self.dim = dim
        self.storage_options = storage_options
        self._table: Any = None
        self._indexes_checked = False  # `_write`: the scalar indexes verified before the first write
        self._log_base: int | None = None  # `changes_since`: the version the change log starts at
        self._changed: set[bytes] = set()  # ... and the sources whose rows this store wrote since
        with storage_errors(self.db_dir):
            self._dataset: Any = _open_dataset(self.uri, storage_options)
            if self._dataset is None:
                if not create:
                    raise LookupError(f"no table at {self.db_dir}")
                # exist_ok: another process (a reader's first look, a second writer) may create
                # it between the look above and here; both then use the one table
                self._table = _connect(self.db_dir, storage_options).create_table(
                    TABLE, schema=schema(dim, meta), exist_ok=True)
                self._dataset = _open_dataset(self.uri, storage_options)

    @classmethod
    def open_existing(cls, db_dir: str | Path, storage_options: dict[str, str] | None = None) -> Store | None:
        """The table at `db_dir` if there is one (its dim read from its schema); never creates."""
        if "://" not in str(db_dir) and not (Path(db_dir) / f"{TABLE}.lance").is_dir():
            return None  # nothing to open; and a look must not create the folder
        try:
            store = cls(db_dir, 0, storage_options, create=False)
        except LookupError:
            return None
        store.dim = int(store.dataset.schema.field("vector").type.list_size)
        return store

    @property
    def uri(self) -> str:
        """The Lance dataset of the table (LanceDB keeps a table TABLE at db_dir/TABLE.lance)."""
        return f"{self.db_dir.rstrip('/')}/{TABLE}.lance"

    @property
    def dataset(self) -> Any:
        """The table as a Lance dataset at its latest version: another process's commits are
        seen on the next read, as LanceDB's `read_consistency_interval=0` would."""
        with storage_errors(self.db_dir):
            ds = self._dataset
            latest = ds.latest_version
            if latest != ds.version:
                ds = self._dataset = ds.checkout_version(latest)
            return ds

    @property
    def table(self) -> Any:
        """The LanceDB table: for its creation and the full-text index (imports LanceDB on first
        use). Rows are written through the Lance dataset: an index run need not import LanceDB."""
        if self._table is None:
            with storage_errors(self.db_dir):
                self._table = _connect(self.db_dir, self.storage_options).open_table(TABLE)
        return self._table

    # ---- reads -------------------------------------------------------------------------------
    @property
    @guarded
    def version(self) -> int:
        return int(self.dataset.version)

    @guarded
    def recorded_meta(self) -> dict[str, Any] | None:
        """The model fields the table recorded when it was created (None for an older table)."""
        raw = (self.dataset.schema.metadata or {}).get(TABLE_META_KEY)
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    @guarded
    def record_meta(self, meta: dict[str, Any]) -> None:
        """Record the model fields in a table made before tables recorded them."""
        self.dataset.update_schema_metadata(
            {TABLE_META_KEY.decode(): json.dumps(meta, sort_keys=True)})

    @guarded
    def count(self, where: str | None = None) -> int:
        return int(self.dataset.count_rows(filter=where)) if where else int(self.dataset.count_rows())

    @guarded
    def file_states(self) -> FileStates:
        """Per source file, the state its rows were computed from (for change detection)."""
        return FileStates(self.dataset.to_table(columns=STATE_COLUMNS))

    @guarded
    def scan(self, columns: Sequence[str], where: str | None = None) -> pa.Table:
        return read_table(self.dataset, columns, where)

    @guarded
    def vectors(self, where: str | None = None) -> tuple[pa.Table, np.ndarray]:
        """Metadata and float32 vectors of every matching row, in one consistent snapshot."""
        t = self.scan(META_COLUMNS + ["vector"], where)
        return t.drop_columns(["vector"]), float32_vectors(t.column("vector"))

    @guarded
    def snapshot(self) -> Any:
        """The table pinned at its current version (a lance dataset): several reads of one build
        see the same rows even while a writer commits. A dataset object of its own: the
        store's commits move `self.dataset` on, not the snapshots taken before them."""
        ds = self.dataset
        return ds.checkout_version(ds.version)

    @guarded
    def vector_batches(self, snapshot: Any, columns: Sequence[str], where: str | None = None,
                       batch_rows: int = 65_536) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        """(metadata batch, float32 vectors) over matching rows, a batch at a time, so an index
        over more vectors than fit in memory can still be built."""
        for b in snapshot.to_batches(columns=[*columns, "vector"], filter=where, batch_size=batch_rows):
            if b.num_rows:
                yield b.drop_columns(["vector"]), float32_vectors(b.column("vector"))

    @guarded
    def take_vectors(self, snapshot: Any, positions: np.ndarray) -> np.ndarray:
        """float32 vectors of the rows at these scan positions (e.g. a k-means training sample)."""
        t = snapshot.take(np.asarray(positions, dtype=np.int64), columns=["vector"])
        return float32_vectors(t.column("vector"))

    @guarded
    def sample_vectors(self, kinds: tuple[str, ...], limit: int, seed: int = 0) -> tuple[np.ndarray, int]:
        """(float32 vectors of at most `limit` rows of these kinds, how many rows they sample).

        Reads the kind column and the sampled rows' vectors only: a fit on a sample of a big
        collection costs the sample, not the collection."""
        snapshot = self.snapshot()
        kind = snapshot.to_table(columns=["kind"]).column("kind")
        positions = np.flatnonzero(pc.is_in(kind, pa.array(list(kinds))).to_numpy(zero_copy_only=False))
        n = len(positions)
        if n > limit:
            positions = np.sort(np.random.default_rng(seed).choice(positions, size=limit, replace=False))
        if not len(positions):
            return np.zeros((0, self.dim), np.float32), 0
        return self.take_vectors(snapshot, positions), n

    @guarded
    def thumbs_of(self, raws: Sequence[bytes]) -> list[str]:
        """Thumbnail paths recorded in the rows of these sources."""
        out: list[str] = []
        for i in range(0, len(raws), 500):
            t = self.scan(["thumb"], sources_filter(raws[i:i + 500]))
            out += [x for x in t.column("thumb").to_pylist() if x]
        return out

    @guarded
    def text_index_problem(self, column: str, probe: str) -> str | None:
        """Why the full-text index on `column` cannot serve (missing, unreadable), or None.
        Asked through the Lance dataset: a health check on an unchanged run needs no LanceDB.
        `probe`: a word to query, so that the index files are read, not only listed."""
        ds = self.dataset
        if not any(ix["type"] == "Inverted" and list(ix["fields"]) == [column] for ix in ds.list_indices()):
            return f"the full-text index on {column!r} is missing"
        try:
            ds.to_table(columns=["id"], full_text_query={"query": probe, "columns": [column]}, limit=1,
                        disable_scoring_autoprojection=True)
        except Exception as e:  # lance raises OSError, ValueError, its own errors alike
            return f"the full-text index on {column!r} is unreadable ({detail(e)})"
        return None

    @guarded
    def text_indexed_columns(self) -> list[str]:
        """The columns a full-text (inverted) index covers."""
        return [c for ix in self.dataset.list_indices() if ix["type"] == "Inverted" for c in ix["fields"]]

    @guarded
    def thumb_column(self) -> list[str]:
        """Every thumbnail name the rows record (what an orphan sweep must keep)."""
        return [x for x in self.scan(["thumb"], "thumb IS NOT NULL").column("thumb").to_pylist() if x]

    @guarded
    def records_at(self, snapshot: Any, raws: Sequence[bytes]) -> dict[bytes, list[Record]]:
        """The rows of these sources in `snapshot` as records, vectors included, per source (in
        table order): what a file that moved takes to its new path instead of being embedded
        again. A filtered scan: Lance's take by scan position costs seconds at a million rows."""
        out: dict[bytes, list[Record]] = {r: [] for r in raws}
        if not out:
            return out
        t = read_table(snapshot, META_COLUMNS + ["vector"], sources_filter(out))
        vecs = float32_vectors(t.column("vector"))
        for row, v in zip(t.drop_columns(["vector"]).to_pylist(), vecs, strict=True):
            out[row["source_raw"]].append(Record(
                kind=row["kind"], vector=v, t_start=row["t_start"], t_end=row["t_end"],
                page=row["page"], text=row["text"], thumb=row["thumb"],
                extra=json.loads(row["extra"]) if row["extra"] else {}))
        return out

    @guarded
    def thumbs_at(self, snapshot: Any, raws: Sequence[bytes]) -> list[str]:
        """Thumbnail names of the rows of these sources in `snapshot`."""
        if not raws:
            return []
        t = read_table(snapshot, ["thumb"], sources_filter(dict.fromkeys(raws)))
        return [x for x in t.column("thumb").to_pylist() if x]

    @guarded
    def rows_by_id(self, ids: Sequence[str]) -> pa.Table:
        """The rows of these ids: their locators and, where the table has them, file columns."""
        columns = META_COLUMNS + self.file_columns()
        if not ids:
            return self.scan(columns, "false")
        return self.scan(columns, sql_in("id", ids))

    # ---- the file columns (schema version 2) ------------------------------------------------
    @guarded
    def file_columns(self) -> list[str]:
        """The file columns this table has: all of them, or none for a table not yet migrated."""
        names = set(self.dataset.schema.names)
        return [c for c in FILE_COLUMNS if c in names]

    @guarded
    def schema_version(self) -> int:
        """The table layout's version (1: a table from before versions were recorded)."""
        raw = (self.dataset.schema.metadata or {}).get(SCHEMA_VERSION_KEY)
        try:
            return int(raw) if raw else 1
        except ValueError:
            return 1

    @guarded
    def migrate(self) -> list[str]:
        """Bring an older table to SCHEMA_VERSION in place (the writer's call, under its lock):
        the missing file columns are added, all null, without rewriting any data. Returns them."""
        have = set(self.dataset.schema.names)
        missing = [f for f in FILE_FIELDS if f.name not in have]
        if missing:
            self.dataset.add_columns(pa.schema(missing))
        if missing or self.schema_version() < SCHEMA_VERSION:
            self.dataset.update_schema_metadata({SCHEMA_VERSION_KEY.decode(): str(SCHEMA_VERSION)})
        return [f.name for f in missing]

    @guarded
    def file_summary(self, top: int = 5) -> dict[str, Any] | None:
        """When the collection's files were taken (first, last, UTC ISO times) and its most
        frequent places and cameras ([name, files]), from those columns alone; None for a
        table without them."""
        if "taken_at" not in self.file_columns():
            return None
        t = self.scan(["source_raw", "taken_at", "place", "camera"])
        if t.num_rows:  # one row per file: its rows all carry the same values
            t = t.take(_first_per_source(t))
        span = pc.min_max(t.column("taken_at")) if t.num_rows else None
        out: dict[str, Any] = {"first": None, "last": None}
        if span is not None and span["min"].is_valid:
            out["first"], out["last"] = span["min"].as_py().isoformat(), span["max"].as_py().isoformat()
        for column, key in (("place", "places"), ("camera", "cameras")):
            counts = pc.value_counts(t.column(column).drop_null()).to_pylist() if t.num_rows else []
            counts.sort(key=lambda c: (-c["counts"], c["values"]))
            out[key] = [[c["values"], c["counts"]] for c in counts[:top]]
        return out

    @guarded
    def sources_without_file_meta(self, among: Iterable[bytes] | None = None) -> list[bytes]:
        """Complete sources whose file columns were never read (migrated or carried rows);
        with `among`, of those sources only (read through the index on `source_raw`)."""
        if "taken_at_source" not in self.file_columns():
            return []
        where = f"taken_at_source IS NULL AND size <> {PARTIAL_SIZE}"
        if among is not None:
            among = list(among)
            if not among:
                return []
            where = f"{sources_filter(among)} AND {where}"
        t = self.scan(["source_raw"], where)
        return list(dict.fromkeys(t.column("source_raw").to_pylist()))

    @guarded
    def set_file_meta(self, values: dict[bytes, dict[str, Any]], batch: int = 2000) -> int:
        """Write the file columns of these sources on all their rows, one commit per `batch`
        sources; vectors and locators are not touched. Returns the rows written."""
        raws = list(values)
        written = 0
        for i in range(0, len(raws), batch):
            chunk = raws[i:i + batch]
            rows = self.scan(["id", "source_raw"], sources_filter(chunk))
            if not rows.num_rows:
                continue
            per_row = [values[r] for r in rows.column("source_raw").to_pylist()]
            data = pa.table({"id": rows.column("id"), **{
                f.name: pa.array([m.get(f.name) for m in per_row], type=f.type) for f in FILE_FIELDS}})
            self._write(lambda ds, d=data: ds.merge_insert("id").when_matched_update_all().execute(d),
                        chunk)
            written += rows.num_rows
        return written

    # ---- writes ------------------------------------------------------------------------------
    def _to_arrow(self, items: Iterable[SourceRows]) -> pa.Table:
        cols: dict[str, list[Any]] = {c: [] for c in META_COLUMNS + FILE_COLUMNS}
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
                cols["thumb"].append(thumbs.stored_form(r.thumb))
                cols["extra"].append(json.dumps(r.extra) if r.extra else None)
                cols["mtime"].append(item.mtime)
                cols["size"].append(item.size)
                cols["content_hash"].append(item.content_hash)
                file_meta = item.file_meta or {}
                for c in FILE_COLUMNS:
                    cols[c].append(file_meta.get(c))
                vecs.append(v)
        arr = np.stack(vecs).astype(np.float16) if vecs else np.zeros((0, self.dim), np.float16)
        sch = schema(self.dim)
        arrays = [pa.array(cols[c], type=sch.field(c).type) for c in META_COLUMNS + FILE_COLUMNS]
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), self.dim))
        return pa.Table.from_arrays(arrays, schema=sch)

    @guarded
    def replace_sources(self, items: Sequence[SourceRows], delete: Sequence[bytes] = ()) -> None:
        """Atomically make the rows of these sources exactly `items`, and remove every row of
        the sources in `delete` (one commit): a moved file's rows leave its old path as they
        arrive at the new one."""
        if not items and not delete:
            return
        data = self._to_arrow(items)
        raws = [*(i.source_raw for i in items), *delete]
        cond = sources_filter(raws)
        # Rows of these sources that the new ones do not replace must go in the same commit.
        # Lance answers that clause by a full join, so it is added only when there are such
        # rows (a file that lost rows, a moved file's old path), found through the indexes.
        held = self.scan(["id"], cond).column("id")
        has_leftover = len(held) > 0 and not pc.all(
            pc.is_in(held, value_set=data.column("id").combine_chunks())).as_py()

        def commit(ds: Any) -> None:
            builder = ds.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
            if has_leftover:
                builder = builder.when_not_matched_by_source_delete(cond)
            builder.execute(data)
        self._write(commit, raws)

    @guarded
    def append_rows(self, item: SourceRows) -> None:
        """Add rows of one source, keeping its other rows (one commit): the parts of a big file."""
        if item.records:
            data = self._to_arrow([item])
            self._write(lambda ds: ds.insert(data), [item.source_raw])

    @guarded
    def replace_kind(self, item: SourceRows, kind: str) -> None:
        """Atomically make the `kind` rows of one source exactly those of `item.records` of that
        kind, and rewrite its other records given there (same ids), keeping every other row:
        rows derived later (speech) added to a file without re-embedding the rest."""
        data = self._to_arrow([item])
        cond = f"{sources_filter([item.source_raw])} AND kind = {sql_str(kind)}"
        (self.table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
         .when_not_matched_by_source_delete(cond).execute(data))

    @guarded
    def mark_complete(self, raw: bytes, mtime: float, size: int, content_hash: str) -> None:
        """Record the file state on every row of a source put in by parts (one commit): only
        now does change detection take the file as indexed."""
        values = {"mtime": repr(float(mtime)), "size": str(int(size)), "content_hash": sql_str(content_hash)}
        self._write(lambda ds: ds.update(values, where=sources_filter([raw])), [raw])

    @guarded
    def delete_sources(self, raws: Sequence[bytes], thumb_dir: str | os.PathLike[str] | None = None) -> int:
        """Remove every row of these sources (one commit per 500). Returns the number of sources.

        With `thumb_dir`, their thumbnails there go too, so nothing of a file that left the
        collection can still be served."""
        if not raws:
            return 0
        for i in range(0, len(raws), 500):
            chunk = raws[i:i + 500]
            named = self.thumbs_of(chunk) if thumb_dir is not None else []
            self._write(lambda ds, c=chunk: ds.delete(sources_filter(c)), chunk)
            if thumb_dir is not None:
                thumbs.remove(thumb_dir, named)
        return len(raws)

    @guarded
    def relativize_thumbs(self) -> int:
        """Rewrite absolute thumbnail paths of older rows (`.../thumbs/NAME`) as `thumbs/NAME`,
        in one commit, so the collection can move. Returns the rows rewritten."""
        where = ABSOLUTE_THUMBS
        n = self.count(where)
        if n:
            self.dataset.update({
                "thumb": f"regexp_replace(thumb, '^.*/{thumbs.FOLDER}/', '{thumbs.FOLDER}/')"}, where=where)
        return n

    @guarded
    def touch(self, raw: bytes, mtime: float) -> None:
        """Record a new mtime for a file whose content hash proved unchanged."""
        self.touch_many([(raw, mtime)])

    @guarded
    def touch_many(self, files: Sequence[tuple[bytes, float]], batch: int | None = None) -> None:
        """Record new mtimes of files whose content hash proved unchanged: one commit per
        `batch` files (default `TOUCH_BATCH`; a merge of the rows' ids and new mtimes), not one
        per file. Each commit stands alone: a run stopped between them is finished by the next."""
        batch = batch or TOUCH_BATCH
        if not files:
            return
        new = dict(files)
        rows = self.scan(["id", "source_raw"], sources_filter(new))  # one scan for every batch
        raws = rows.column("source_raw").to_pylist()
        order = {raw: i for i, raw in enumerate(new)}  # batches follow the callers' file order
        by_batch: dict[int, list[int]] = {}
        for r, raw in enumerate(raws):
            by_batch.setdefault(order[raw] // batch, []).append(r)
        for n, (_, picked) in enumerate(sorted(by_batch.items())):
            if n:
                pause_at("touch")
            part = rows.take(pa.array(picked))
            mtimes = [new[raws[r]] for r in picked]
            data = pa.table({"id": part.column("id"), "mtime": pa.array(mtimes, pa.float64())})
            self._write(lambda ds, d=data: ds.merge_insert("id").when_matched_update_all().execute(d),
                        [raws[r] for r in picked])

    def _write(self, commit: Any, sources: Iterable[bytes]) -> None:
        """Run `commit(dataset)`, a commit that changes the rows of `sources` (logged, see
        `changes_since`); if it fails while the table has our scalar indexes (a damaged one
        fails reads and writes alike), drop them and commit again without (the maintainer
        rebuilds them at the run's end)."""
        from clipsearch import scalar_index

        if not self._changed:  # the log starts here: nothing of ours since this version
            self._log_base = self.version
        self._changed.update(sources)
        if not self._indexes_checked:  # once per store: a damaged index is dropped, not used
            self._indexes_checked = True
            scalar_index.verify(self.db_dir, self)
        try:
            commit(self.dataset)
        except Exception as e:
            if not scalar_index.ours(self.dataset):
                raise
            log.warning("%s: a write failed on the table's scalar indexes (%s); dropping them",
                        self.db_dir, detail(e))
            scalar_index.drop(self)
            commit(self.dataset)

    def changes_since(self, version: int) -> set[bytes] | None:
        """The sources whose rows (or file columns) changed since table `version`, when this
        store made every such commit since then (the writer's, under its lock); None when it
        cannot tell (it logged from another version: another process wrote in between, or this
        one started later). Upkeep commits (indexes, compaction) change no row's values."""
        if not self._changed:
            return set() if self.version == version else None
        return set(self._changed) if self._log_base == version else None

    def clear_changes(self) -> None:
        """Start the change log afresh (after what it fed was brought up to date)."""
        self._changed, self._log_base = set(), None

    # ---- upkeep ------------------------------------------------------------------------------
    @guarded
    def compact(self) -> None:
        """Merge small data files and drop deleted rows (one commit; indexes are remapped).

        Lance's plan / rewrite / commit: the rewritten files are not part of the table until
        the commit, so a writer stopped before it leaves the old files in use (and some unused
        files, which version cleanup removes)."""
        from lance.optimize import Compaction, CompactionOptions

        dataset = self.dataset
        plan = Compaction.plan(dataset, CompactionOptions())
        if not plan.tasks:
            return
        rewrites = [task.execute(dataset) for task in plan.tasks]
        pause_at("compact")
        Compaction.commit(dataset, rewrites)

    @guarded
    def cleanup_versions(self, keep: timedelta) -> int:
        """Remove the versions superseded more than `keep` ago, and the files only they use;
        returns how many. A reader that opened a version while it was the latest has `keep`
        to finish with it (a version's own age says nothing: the latest may be a week old)."""
        dataset = self.dataset
        listed = dataset.versions()
        old = [a["version"] for a, b in zip(listed, listed[1:], strict=False)
               if _age(b["timestamp"]) >= keep]
        if old:
            pause_at("cleanup")
            dataset.cleanup_old_versions(versions=old)
        return len(old)


def read_table(dataset: Any, columns: Sequence[str], where: str | None = None) -> pa.Table:
    """A filtered read of a dataset (or snapshot); one that fails on a scalar index (damaged
    since the writer checked it) is read again without the indexes (`clipsearch.scalar_index`)."""
    try:
        return dataset.to_table(columns=list(columns), filter=where)
    except Exception as e:
        scalar = ("BTree", "BloomFilter")
        if where is None or not any(ix.index_type in scalar for ix in dataset.describe_indices()):
            raise
        log.info("a read of %s failed on a scalar index (%s); reading without", dataset.uri, detail(e))
        return dataset.to_table(columns=list(columns), filter=where, use_scalar_index=False)


def _first_per_source(t: pa.Table) -> pa.Array:
    """Positions of the first row of each source in `t`."""
    raws = t.column("source_raw").combine_chunks()
    _, first = np.unique(pc.dictionary_encode(raws).indices.to_numpy(zero_copy_only=False), return_index=True)
    return pa.array(np.sort(first))


def _age(stamp: datetime) -> timedelta:
    """How long ago a version's timestamp was (lance lists naive local times)."""
    return datetime.now(stamp.tzinfo) - stamp


def _connect(db_dir: str, storage_options: dict[str, str] | None) -> Any:
    import lancedb

    return lancedb.connect(db_dir, read_consistency_interval=timedelta(0), storage_options=storage_options)


def _open_dataset(uri: str, storage_options: dict[str, str] | None) -> Any:
    """The Lance dataset at `uri`, or None when there is none. A local table folder that Lance
    cannot open (its versions deleted, say) is damaged, not absent: that raises, so that no
    new table is made over it."""
    from clipsearch.lance_import import lance as import_lance

    lance = import_lance()
    try:
        return lance.dataset(uri, storage_options=storage_options)
    except ValueError as e:  # lance's "Dataset at path ... was not found"
        if "not found" in str(e).lower() and ("://" in uri or not os.path.isdir(uri)):
            return None
        raise
