"""Every source file's state (mtime, size, content hash) as change detection asks for it.

Kept in Arrow form, one row per source sorted by its raw name (`STATE_COLUMNS`, plus whatever
columns the caller carries along): a lookup is a binary search, the sources under a folder are
one contiguous range, and nothing is converted per row, so an unchanged run over a
million-row table pays for the files it walks.

The states are a base plus a small delta: the catalog keeps the base file as it is and writes
only the delta (the sources changed since the base, and markers for those gone), so recording
a run's change costs the change, not the collection; the delta is folded into a new base
(`merged`) once it outgrows a share of the base. Lookups search the delta first, then the base.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from clipsearch.lazy import lazy_import

if TYPE_CHECKING:
    import pyarrow.compute as pc
else:
    pc = lazy_import("pyarrow.compute")

PARTIAL_SIZE = -1  # `size` of the rows of a file whose rows are not all in yet
STATE_COLUMNS = ["source_raw", "mtime", "size", "content_hash"]
GONE = "gone"  # the delta's marker column: True where a source of the base is gone
BASE_ROW = "base_row"  # the delta's column: its source's row in the base, -1 for a new source


@dataclass
class FileState:
    mtime: float
    size: int
    content_hash: str

    @property
    def complete(self) -> bool:
        """False while a file's rows are still going in by parts (or a run stopped midway)."""
        return self.size != PARTIAL_SIZE


class _Names(Sequence[bytes]):
    """The sorted raw names of a states table as a sequence `bisect` can search."""

    def __init__(self, raw: pa.Array) -> None:
        self.raw = raw

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i: Any) -> Any:
        return self.raw[i].as_py()


def _find(raw: pa.Array, name: bytes) -> int:
    """The row of `name` in the sorted names `raw`, or -1."""
    i = bisect.bisect_left(_Names(raw), name)
    return i if i < len(raw) and raw[i].as_py() == name else -1


def _range(raw: pa.Array, prefix: bytes) -> list[bytes]:
    """The sorted names in `raw` that are `prefix` or lie under it (`fsutil.is_within`): the
    range from `base/` up to (not including) `base0`, and `base` itself first."""
    base = prefix.rstrip(b"/") or b"/"
    out = [base] if _find(raw, base) >= 0 and base != b"/" else []
    lo_key = base if base == b"/" else base + b"/"
    hi_key = lo_key[:-1] + bytes([lo_key[-1] + 1])  # '/' + 1 = '0'
    names = _Names(raw)
    lo, hi = bisect.bisect_left(names, lo_key), bisect.bisect_left(names, hi_key)
    return out + raw.slice(lo, hi - lo).to_pylist()


def one_array(column: pa.ChunkedArray) -> pa.Array:
    """`column` as one array. An empty table's column has no chunks, and pyarrow imports pandas
    to combine none (an unchanged run must not: tests/test_startup.py)."""
    return column.combine_chunks() if column.num_chunks else pa.nulls(0, column.type)


def numpy_of(column: pa.ChunkedArray, dtype: type) -> np.ndarray:
    """A column of null-free fixed-width values (or booleans) as a numpy array, read from its
    buffer: pyarrow's own `to_numpy` imports pandas, which an unchanged run must not."""
    arr = one_array(column)
    if len(arr) == 0:
        return np.zeros(0, dtype)
    if arr.null_count:
        raise ValueError(f"a {column.type} column with nulls")
    data = arr.buffers()[1]
    if pa.types.is_boolean(arr.type):
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        return bits[arr.offset:arr.offset + len(arr)].astype(bool)
    width = np.dtype(dtype).itemsize
    return np.frombuffer(data, dtype=dtype, count=len(arr), offset=arr.offset * width).copy()


def one_row_per_source(t: pa.Table) -> pa.Table:
    """`t` (rows with STATE_COLUMNS) with one row per source, the last in `t`'s order, sorted
    by the raw name (bytewise, as Python compares bytes)."""
    if not t.num_rows:
        return t.combine_chunks()
    order = pc.sort_indices(t, sort_keys=[("source_raw", "ascending")])  # stable: table order kept
    t = t.take(order)
    raw = t.column("source_raw").combine_chunks()
    n = len(raw)
    last = np.ones(n, bool)
    if n > 1:  # a row is its source's last when the next row names another source
        last[:-1] = pc.not_equal(raw.slice(1), raw.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    return t.filter(pa.array(last)).combine_chunks()


class FileStates(Mapping[bytes, FileState]):
    """Source file -> `FileState` (see the module docstring).

    `t` is either rows as the table holds them (`prepared=False`: sorted here, the last row of
    a source winning) or the prepared form (what the catalog saves). `delta`: a prepared
    table of the same columns plus `GONE`, over this base (`replaced` makes one)."""

    def __init__(self, t: pa.Table, prepared: bool = False, delta: pa.Table | None = None) -> None:
        self.base = (t if prepared else one_row_per_source(t)).combine_chunks()
        self._raw = one_array(self.base.column("source_raw"))
        self._mtime, self._size = self.base.column("mtime"), self.base.column("size")
        self._hash = self.base.column("content_hash")
        if delta is None:
            delta = self.empty_delta(self.base.schema)
        self.delta = delta.combine_chunks()
        self._draw = one_array(self.delta.column("source_raw"))
        self._gone = numpy_of(self.delta.column(GONE), bool)
        self._shadow = numpy_of(self.delta.column(BASE_ROW), np.int64)
        if len(self._shadow) and int(self._shadow.max()) >= len(self._raw):
            raise ValueError("the delta names rows its base does not have")
        self._table: pa.Table | None = None

    @staticmethod
    def empty_delta(schema: pa.Schema) -> pa.Table:
        # from no batches rather than Schema.empty_table(), which imports pandas
        delta = schema.append(pa.field(GONE, pa.bool_())).append(pa.field(BASE_ROW, pa.int64()))
        return pa.Table.from_batches([], schema=delta)

    # ---- the mapping -------------------------------------------------------------------------
    def _state(self, t: pa.Table, i: int) -> FileState:
        return FileState(float(t.column("mtime")[i].as_py()), int(t.column("size")[i].as_py()),
                         t.column("content_hash")[i].as_py())

    def __getitem__(self, raw: bytes) -> FileState:
        d = _find(self._draw, raw) if len(self._draw) else -1
        if d >= 0:
            if self._gone[d]:
                raise KeyError(raw)
            return self._state(self.delta, d)
        i = _find(self._raw, raw)
        if i < 0:
            raise KeyError(raw)
        return FileState(float(self._mtime[i].as_py()), int(self._size[i].as_py()), self._hash[i].as_py())

    def __contains__(self, raw: object) -> bool:
        if not isinstance(raw, bytes):
            return False
        d = _find(self._draw, raw) if len(self._draw) else -1
        return not self._gone[d] if d >= 0 else _find(self._raw, raw) >= 0

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.table.column("source_raw").to_pylist())

    def __len__(self) -> int:
        return len(self._raw) - int((self._shadow >= 0).sum()) + int((~self._gone).sum())

    # ---- by range and by size ----------------------------------------------------------------
    def under(self, prefixes: Sequence[bytes]) -> list[bytes]:
        """The sources that are one of `prefixes` or lie under one (`fsutil.is_within`), in
        name order per prefix."""
        delta_names = set(self._draw.to_pylist())
        live = self._draw.filter(pa.array(~self._gone)) if len(self._draw) else self._draw
        out: list[bytes] = []
        for p in prefixes:
            base = [r for r in _range(self._raw, p) if r not in delta_names] if delta_names \
                else _range(self._raw, p)
            out.extend(heapq.merge(base, _range(live, p)) if len(live) else base)
        return list(dict.fromkeys(out))

    def with_sizes(self, sizes: Iterable[int]) -> Iterator[tuple[bytes, FileState]]:
        """(source, state) of the sources whose recorded size is one of `sizes`."""
        wanted = np.asarray(sorted(set(sizes)), dtype=np.int64)
        hit = np.isin(self._size.to_numpy(), wanted)
        hit[self._shadow[self._shadow >= 0]] = False  # the delta says what these are now
        parts = [self.base.take(pa.array(np.flatnonzero(hit), pa.int64()))]
        if len(self._draw):
            mine = ~self._gone & np.isin(self.delta.column("size").to_numpy(zero_copy_only=False), wanted)
            parts.append(self.delta.take(pa.array(np.flatnonzero(mine), pa.int64())))
        for rows in parts:  # columns converted once: no search per row
            for raw, mtime, size, h in zip(*(rows.column(c).to_pylist() for c in STATE_COLUMNS), strict=True):
                yield raw, FileState(float(mtime), int(size), h)

    # ---- change ------------------------------------------------------------------------------
    def replaced(self, changed: Iterable[bytes], fresh: pa.Table) -> FileStates:
        """These states with the `changed` sources' rows made `fresh` (their rows now, in the
        prepared form; a changed source absent there is gone): the same base, a new delta, at
        a cost that follows the delta (a binary search of the base per changed source)."""
        changed = set(changed)
        cols = self.base.column_names
        fresh = fresh.select(cols).cast(self.base.schema)
        keep = [i for i, r in enumerate(self._draw.to_pylist()) if r not in changed]
        kept = self.delta.take(pa.array(keep, pa.int64()))
        now = fresh.column("source_raw").to_pylist()
        at_now = [_find(self._raw, r) for r in now]
        in_base = {r: i for r in changed.difference(now) if (i := _find(self._raw, r)) >= 0}
        gone = sorted(in_base)
        marks = pa.table({c: pa.array(gone, pa.binary()) if c == "source_raw" else pa.nulls(len(gone), f.type)
                          for c, f in zip(cols, self.base.schema, strict=True)}, schema=self.base.schema)
        parts = [kept,
                 fresh.append_column(GONE, pa.array(np.zeros(fresh.num_rows, bool)))
                 .append_column(BASE_ROW, pa.array(at_now, pa.int64())),
                 marks.append_column(GONE, pa.array(np.ones(len(gone), bool)))
                 .append_column(BASE_ROW, pa.array([in_base[r] for r in gone], pa.int64()))]
        delta = pa.concat_tables([p.cast(self.delta.schema) for p in parts])
        delta = delta.take(pc.sort_indices(delta, sort_keys=[("source_raw", "ascending")]))
        return FileStates(self.base, prepared=True, delta=delta)

    @property
    def table(self) -> pa.Table:
        """Base and delta as one prepared table (sorted, one row per source): what a merge
        saves as the new base. Costs a pass over the base when there is a delta."""
        if self._table is None:
            if not len(self._draw):
                self._table = self.base
            else:
                kept, live = self.parts()
                names = _Names(kept.column("source_raw").combine_chunks())
                at = [bisect.bisect_left(names, r) for r in live.column("source_raw").to_pylist()]
                order = np.insert(np.arange(kept.num_rows), at, kept.num_rows + np.arange(live.num_rows))
                both = pa.concat_tables([kept, live.cast(kept.schema)])
                self._table = both.take(pa.array(order)).combine_chunks()
        return self._table

    def replaced_rows(self) -> pa.Table:
        """The base's rows that the delta replaces or marks gone (as many as the delta's rows)."""
        return self.base.take(pa.array(self._shadow[self._shadow >= 0], pa.int64()))

    def live_delta(self) -> pa.Table:
        """The delta's rows of sources that are there (new or changed), in the base's columns."""
        return self.delta.filter(pa.array(~self._gone)).drop_columns([GONE, BASE_ROW])

    def kept(self) -> np.ndarray:
        """Per base row, whether the delta leaves it as it is (a mask; no copy of the base)."""
        keep = np.ones(len(self._raw), bool)
        keep[self._shadow[self._shadow >= 0]] = False
        return keep

    def parts(self) -> list[pa.Table]:
        """The states as tables that together hold each source once (the base's rows the delta
        does not replace, then the delta's live rows): a filter of the base, no sort."""
        if not len(self._draw):
            return [self.base]
        return [self.base.filter(pa.array(self.kept())), self.live_delta()]

    def merged(self) -> FileStates:
        """The same states with the delta folded into the base."""
        return self if not len(self._draw) else FileStates(self.table, prepared=True)

    @property
    def delta_rows(self) -> int:
        return len(self._draw)
