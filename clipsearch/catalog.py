"""A small derived record of the table, so that `info`, opening a collection and an unchanged
`index` run need not open the table (importing Lance costs seconds on a cold start).

The maintainer writes it under the writer lock after each refresh of the derived state (and
after an unchanged run that found it stale): counts by kind, sources, the table's stats and
bytes, the model fields the table records, whether the full-text index was healthy, how many
rows still name absolute thumbnails, and every source's file state as `Store.file_states`
returns it (one row per source, sorted by name), as two Arrow IPC files: a base (FILE_STATES)
kept as it is from run to run, and a small delta (FILE_STATES_DELTA) of the sources changed
since the base was written, rewritten by each run; the delta is folded into a new base once it
holds DELTA_SHARE of the base's rows (`clipsearch.file_states`). So a run records its change
at a cost that follows the change.

It is trusted only while the table folder is exactly as it was when it was written
(`table_key`): the same version manifests (their names, and the newest one's size, mtime and
inode) and the same index files. Any commit, cleanup, copy, restore or damaged index file
changes the key, and then callers read the table itself; the next writer records it afresh.
A catalog that fails its own checksum, or whose file-state files fail their CRC, counts as
absent. Every file is replaced atomically, and the catalog itself is removed before and written
after its state files: a writer stopped in between leaves no catalog, and the table is read.
What changes without a table commit (the ANN index, transforms, thumbnails) is never taken
from here except as `thumb_bytes`, itself keyed on the thumbnail folder's own stat.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipsearch.fsutil import write_atomic
from clipsearch.testpoints import pause_at

if TYPE_CHECKING:
    from clipsearch.file_states import FileStates
    from clipsearch.store import Store

log = logging.getLogger(__name__)

CATALOG = "catalog.json"
FILE_STATES = "file_states.arrow"  # the base
FILE_STATES_DELTA = "file_states.delta.arrow"  # the sources changed since the base was written
FORMAT = 4  # 2: schema_version, unread_files, taken; 3: states one row per source, sorted; 4: base + delta
DELTA_SHARE = 0.05  # the delta is folded into a new base once it holds this share of the base's rows
TABLE_DIR = "items.lance"  # store.TABLE's folder (not imported: store.py imports pyarrow.compute)
THUMBS = "thumbs"  # thumbs.FOLDER
_V2_BASE = (1 << 64) - 1  # Lance's V2 manifest names count down from u64::MAX


def manifest_version(name: str) -> int:
    """The table version a `_versions/*.manifest` name stands for (both of Lance's schemes)."""
    n = int(name.split(".", 1)[0])
    return _V2_BASE - n if len(name.split(".", 1)[0]) == 20 and n > (1 << 63) else n


def table_key(table_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What identifies the table folder's state: its version files, the newest manifest's stat,
    and every index file's stat. None when there is no readable table there."""
    table_dir = os.fspath(table_dir)
    versions = os.path.join(table_dir, "_versions")
    try:
        with os.scandir(versions) as it:
            names = sorted(e.name for e in it)
        latest = max((n for n in names if n.endswith(".manifest")), key=manifest_version)
        st = os.stat(os.path.join(versions, latest))
        indices = []
        root = os.path.join(table_dir, "_indices")
        for top, _, files in os.walk(root):
            for f in files:
                p = os.path.join(top, f)
                s = os.stat(p)
                indices.append([os.path.relpath(p, root), s.st_size, s.st_mtime_ns, s.st_ino])
    except (OSError, ValueError):  # no folder, no manifest, or a name that is not a version
        return None
    return {"versions": names, "latest": [latest, st.st_size, st.st_mtime_ns, st.st_ino],
            "indices": sorted(indices)}


def _checksum(data: dict[str, Any]) -> int:
    body = {k: v for k, v in data.items() if k != "checksum"}
    return zlib.crc32(json.dumps(body, sort_keys=True).encode())


def _folder_stat(path: str) -> list[int] | None:
    """[inode, mtime_ns] of a file or folder, or None."""
    try:
        s = os.stat(path)
    except OSError:
        return None
    return [s.st_ino, s.st_mtime_ns]


def folder_bytes(path: str | os.PathLike[str], skip: Iterable[str] = ()) -> int:
    """Bytes of the regular files under `path` (not following links), leaving out the
    top-level entries named in `skip`."""
    total, stack, top = 0, [os.fspath(path)], True
    skipped = set(skip)
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    if top and e.name in skipped:
                        continue
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        elif e.is_file(follow_symlinks=False):
                            total += e.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            pass
        top = False
    return total


@dataclass
class Catalog:
    """The recorded facts of the table at `version` (see the module's docstring)."""

    folder: Path
    version: int
    rows: int
    sources: int
    kinds: dict[str, int]
    recorded_meta: dict[str, Any] | None
    fts_ok: bool
    absolute_thumbs: int
    stats: dict[str, int]
    thumbs: dict[str, Any]
    states_check: dict[str, Any]  # "base" and "delta": each file's size, CRC-32 and stat
    schema_version: int  # the table's (`Store.schema_version`): a run migrates an older one
    unread_files: int  # sources whose file columns were never read (`Store.sources_without_file_meta`)
    taken: dict[str, Any] | None  # `Store.file_summary`: the date range, top places and cameras

    def count_kinds(self, kinds: Iterable[str]) -> int:
        return sum(self.kinds.get(k, 0) for k in kinds)

    def vouches_for(self, meta: dict[str, Any]) -> bool:
        """The table records the model of `meta` (what `collection.settle_meta` checks)."""
        rec = self.recorded_meta
        return rec is not None and (rec.get("model_id"), rec.get("dim")) == (meta.get("model_id"),
                                                                              meta.get("dim"))

    def thumb_bytes(self) -> int | None:
        """The thumbnail folder's bytes as recorded, while that folder is as it was then."""
        stat = _folder_stat(os.path.join(self.folder, THUMBS))
        return int(self.thumbs["bytes"]) if stat is not None and stat == self.thumbs.get("stat") else None

    def disk_bytes(self) -> int:
        """Bytes of the whole collection folder: the table's as recorded, the thumbnails' as
        recorded while their folder is unchanged, the rest (ANN, transforms, logs) counted now."""
        thumbs = self.thumb_bytes()
        if thumbs is None:
            thumbs = folder_bytes(os.path.join(self.folder, THUMBS))
        return self.stats["bytes"] + thumbs + folder_bytes(self.folder, skip=(TABLE_DIR, THUMBS))

    def states_intact(self) -> bool:
        """The file-state files are, by their inode and mtime, the ones written with this
        catalog (`file_states` checks their CRC as it reads them)."""
        return all(_folder_stat(os.fspath(self.folder / name)) == self.states_check.get(part, {}).get("stat")
                   for part, name in STATE_FILES)

    def file_states(self) -> FileStates | None:
        """Every source's file state, as the table held them at `version`; None when a file is
        missing or fails its check (the caller reads the table)."""
        from clipsearch.file_states import FileStates

        try:
            base, delta = (_read_states(self.folder / name, self.states_check[part])
                           for part, name in STATE_FILES)
            if delta.column_names != FileStates.empty_delta(base.schema).column_names:
                raise ValueError("its delta does not hold its base's columns")
            return FileStates(base, prepared=True, delta=delta)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.info("%s: the file states are unusable (%s); reading them from the table", self.folder, e)
            return None


STATE_FILES = (("base", FILE_STATES), ("delta", FILE_STATES_DELTA))  # states_check's part -> file


_last_read: dict[str, tuple[tuple[Any, ...], Any]] = {}  # path -> (its check and stat, table)


def _read_states(path: Path, check: dict[str, Any]) -> Any:
    """One file-state file (an Arrow table), checked by size and CRC as it is read. The table
    last read from each path is kept while that file is, by its stat, the one read: a run reads
    and checks the base once, for its plan and its catalog both."""
    import pyarrow as pa
    import pyarrow.ipc

    key = (check["size"], check["crc32"], _folder_stat(os.fspath(path)))
    kept = _last_read.get(os.fspath(path))
    if kept is not None and kept[0] == key and key[2] is not None:
        return kept[1]
    data = path.read_bytes()
    if len(data) != check["size"] or zlib.crc32(data) != check["crc32"]:
        raise ValueError(f"{path.name} fails its check")
    try:
        table = pyarrow.ipc.open_file(pa.BufferReader(data)).read_all()
    except pa.ArrowException as e:
        raise ValueError(f"{path.name} is unreadable ({e})") from None
    for other in [p for p in _last_read if os.path.dirname(p) != os.path.dirname(os.fspath(path))]:
        del _last_read[other]  # one collection's files at a time: memory for the one being indexed
    _last_read[os.fspath(path)] = (key, table)
    return table


def _write_states(path: Path, table: Any) -> dict[str, Any]:
    """Write one file-state file atomically; returns its check (size, CRC, stat)."""
    import io

    import pyarrow.ipc

    buf = io.BytesIO()
    with pyarrow.ipc.new_file(buf, table.schema) as w:
        w.write_table(table)
    payload = buf.getvalue()
    write_atomic(path, payload)
    return {"size": len(payload), "crc32": zlib.crc32(payload), "stat": _folder_stat(os.fspath(path))}


def current_schema_version() -> int:
    """The table schema this clipsearch writes (`store.SCHEMA_VERSION`)."""
    from clipsearch.store import SCHEMA_VERSION

    return SCHEMA_VERSION


def fresh(folder: str | os.PathLike[str]) -> Catalog | None:
    """The collection's catalog while its table is as it was when the catalog was written;
    None when there is none, it is damaged, or the table has changed since."""
    return _load(Path(folder), fresh_only=True)


def last(folder: str | os.PathLike[str]) -> Catalog | None:
    """The catalog as last written, whether or not the table changed since (None when there is
    none or it is damaged): what the writer updates by the change (`write`'s `previous`)."""
    return _load(Path(folder), fresh_only=False)


def _load(folder: Path, fresh_only: bool) -> Catalog | None:
    try:
        data = json.loads((folder / CATALOG).read_text())
        if (not isinstance(data, dict) or data.get("format") != FORMAT
                or data.get("checksum") != _checksum(data)):
            raise ValueError("it is not a catalog of this clipsearch, or fails its checksum")
        if fresh_only and data["key"] != table_key(folder / TABLE_DIR):
            return None  # the table changed since: stale, not damaged
        return Catalog(folder=folder, version=int(data["version"]), rows=int(data["rows"]),
                       sources=int(data["sources"]), kinds={str(k): int(v) for k, v in data["kinds"].items()},
                       recorded_meta=data["recorded_meta"], fts_ok=bool(data["fts_ok"]),
                       absolute_thumbs=int(data["absolute_thumbs"]), stats=dict(data["stats"]),
                       thumbs=dict(data["thumbs"]), states_check=dict(data["states_check"]),
                       schema_version=int(data["schema_version"]), unread_files=int(data["unread_files"]),
                       taken=data["taken"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.info("%s is unusable (%s); reading the table instead", folder / CATALOG, e)
        return None


SUMMARY_COLUMNS = ["taken_at", "taken_at_source", "place", "camera"]  # of the file columns
MAX_CHANGED = 20_000  # changed sources read by name; past this, the states are read whole


def write(folder: str | os.PathLike[str], store: Store, fts_ok: bool, stats: dict[str, int],
          absolute_thumbs: int, previous: Catalog | None = None) -> bool:
    """Record the table as it is now (the caller holds the writer lock). Returns False, writing
    nothing, when the table folder cannot be keyed (not local) or is not at the version read.

    With `previous` (the catalog as last written) and the store's log of the sources it
    changed since that version (`Store.changes_since`), the file states are that catalog's
    with those sources' rows read again (through the scalar index on `source_raw`), not the
    table's every row, and only the delta file is written unless it is due to be folded into
    the base; else they are read whole and written as a new base."""
    folder = Path(folder)
    key = table_key(folder / TABLE_DIR)
    if key is None:
        return False
    snapshot = store.snapshot()
    version = int(snapshot.version)
    if manifest_version(key["latest"][0]) != version:
        return False
    import pyarrow.compute as pc

    (folder / CATALOG).unlink(missing_ok=True)  # never a catalog that names the old file states
    # The states as `Store.file_states` makes them (one row per source, sorted), saved in that
    # form: a reader loads them without converting a row (`Catalog.file_states`).
    from clipsearch.file_states import STATE_COLUMNS, FileStates
    from clipsearch.store import read_table, sources_filter

    cols = [*STATE_COLUMNS, *(c for c in SUMMARY_COLUMNS if c in store.file_columns())]
    changed = store.changes_since(previous.version) if previous is not None else None
    old = previous.file_states() if previous is not None and changed is not None else None
    check: dict[str, Any] = {}
    if old is not None and changed is not None and old.base.column_names == cols \
            and len(changed) <= MAX_CHANGED:
        fresh_rows = read_table(snapshot, cols, sources_filter(changed) if changed else "false")
        states = old.replaced(changed, FileStates(fresh_rows).base)
        if states.delta_rows > DELTA_SHARE * len(states.base):
            states = states.merged()
        else:
            assert previous is not None
            # the file read (and CRC-checked) above, kept as it is; its stat as it is now, so a
            # copied collection's base is trusted by stat from the next run on
            base_stat = _folder_stat(os.fspath(folder / FILE_STATES))
            check["base"] = {**previous.states_check["base"], "stat": base_stat}
    else:
        states = FileStates(read_table(snapshot, cols))
    if "base" not in check:
        check["base"] = _write_states(folder / FILE_STATES, states.base)
        pause_at("catalog")  # a new base written, its delta not yet, no catalog naming either
    check["delta"] = _write_states(folder / FILE_STATES_DELTA, states.delta)
    counts = pc.value_counts(snapshot.to_table(columns=["kind"]).column("kind")).to_pylist()
    kinds = {str(c["values"]): int(c["counts"]) for c in counts}
    taken, unread = _summary(states)
    thumbs = os.path.join(folder, THUMBS)
    data: dict[str, Any] = {
        "format": FORMAT, "key": key, "version": version, "rows": int(snapshot.count_rows()),
        "sources": len(states), "kinds": kinds, "recorded_meta": store.recorded_meta(), "fts_ok": fts_ok,
        "absolute_thumbs": int(absolute_thumbs), "stats": stats,
        "schema_version": store.schema_version(), "unread_files": unread, "taken": taken,
        "thumbs": {"stat": _folder_stat(thumbs), "bytes": folder_bytes(thumbs)},
        "states_check": check,
    }
    if table_key(folder / TABLE_DIR) != key:  # cannot happen under the writer lock; cheap to be sure
        return False
    data["checksum"] = _checksum(data)
    write_atomic(folder / CATALOG, json.dumps(data))
    return True


def _summary(states: FileStates, top: int = 5) -> tuple[dict[str, Any] | None, int]:
    """(`Store.file_summary`, how many complete sources were never described) from the file
    states with their SUMMARY_COLUMNS, one row per source: no read of the table. Counts over
    the whole base (kernels, no copy), less the base rows the delta replaces, plus the delta's;
    the date range over the base's kept rows (one column filtered) only when a replaced row
    may have held one of its ends."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from clipsearch.file_states import PARTIAL_SIZE

    base = states.base
    if "taken_at" not in base.column_names:
        return None, 0
    replaced, delta = states.replaced_rows(), states.live_delta()
    unread = 0
    counts: dict[str, dict[Any, int]] = {"place": {}, "camera": {}}
    for t, sign in ((base, 1), (replaced, -1), (delta, 1)):
        if not t.num_rows:
            continue
        mask = pc.and_(pc.is_null(t.column("taken_at_source")), pc.not_equal(t.column("size"), PARTIAL_SIZE))
        unread += sign * int(pc.sum(pc.cast(mask, "int64")).as_py() or 0)
        for column, got in counts.items():
            for c in pc.value_counts(t.column(column).drop_null()).to_pylist():
                got[c["values"]] = got.get(c["values"], 0) + sign * int(c["counts"])
    kept, gone = _span(base.column("taken_at")), _span(replaced.column("taken_at"))
    if kept is not None and gone is not None and (gone[0] <= kept[0] or gone[1] >= kept[1]):
        kept = _span(base.column("taken_at").filter(pa.array(states.kept())))  # an end may be gone
    ends = [r for r in (kept, _span(delta.column("taken_at"))) if r is not None]
    out: dict[str, Any] = {"first": None, "last": None}
    if ends:
        out["first"], out["last"] = min(e[0] for e in ends).isoformat(), max(e[1] for e in ends).isoformat()
    for column, key in (("place", "places"), ("camera", "cameras")):
        ranked = sorted(((v, n) for v, n in counts[column].items() if n > 0), key=lambda c: (-c[1], c[0]))
        out[key] = [[v, n] for v, n in ranked[:top]]
    return out, unread


def _span(times: Any) -> tuple[Any, Any] | None:
    """(earliest, latest) of a timestamp column, or None when it holds none."""
    import pyarrow.compute as pc

    if not len(times):
        return None
    s = pc.min_max(times)
    return (s["min"].as_py(), s["max"].as_py()) if s["min"].is_valid else None
