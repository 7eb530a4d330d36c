"""A small derived record of the table, so that `info`, opening a collection and an unchanged
`index` run need not open the table (importing Lance costs seconds on a cold start).

The maintainer writes it under the writer lock after each refresh of the derived state (and
after an unchanged run that found it stale): counts by kind, sources, the table's stats and
bytes, the model fields the table records, whether the full-text index was healthy, how many
rows still name absolute thumbnails, and, in FILE_STATES (an Arrow IPC file), every source's
file state as `Store.file_states` returns it (one row per source, sorted by name).

It is trusted only while the table folder is exactly as it was when it was written
(`table_key`): the same version manifests (their names, and the newest one's size, mtime and
inode) and the same index files. Any commit, cleanup, copy, restore or damaged index file
changes the key, and then callers read the table itself; the next writer records it afresh.
A catalog that fails its own checksum, or whose file-state file fails its CRC, counts as absent.
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

if TYPE_CHECKING:
    from clipsearch.store import FileStates, Store

log = logging.getLogger(__name__)

CATALOG = "catalog.json"
FILE_STATES = "file_states.arrow"
FORMAT = 3  # 2: schema_version, unread_files, taken; 3: file states one row per source, sorted
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
    states_check: dict[str, int]
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
        """The file-state file is, by its inode and mtime, the one written with this catalog
        (`file_states` checks its CRC as it reads it)."""
        return _folder_stat(os.fspath(self.folder / FILE_STATES)) == self.states_check.get("stat")

    def file_states(self) -> FileStates | None:
        """Every source's file state, as the table held them at `version`; None when the file is
        missing or fails its check (the caller reads the table)."""
        import pyarrow as pa
        import pyarrow.ipc

        from clipsearch.store import FileStates

        path = self.folder / FILE_STATES
        try:
            data = path.read_bytes()
            if len(data) != self.states_check["size"] or zlib.crc32(data) != self.states_check["crc32"]:
                raise ValueError("it fails its check")
            states = FileStates(pyarrow.ipc.open_file(pa.BufferReader(data)).read_all(), prepared=True)
        except (OSError, ValueError, KeyError, pa.ArrowException) as e:
            log.info("%s is unusable (%s); reading the file states from the table", path, e)
            return None
        return states


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
    table's every row; else they are read whole."""
    import io

    import pyarrow.ipc

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
    from clipsearch.store import STATE_COLUMNS, FileStates, read_table, sources_filter

    cols = [*STATE_COLUMNS, *(c for c in SUMMARY_COLUMNS if c in store.file_columns())]
    changed = store.changes_since(previous.version) if previous is not None else None
    old = previous.file_states() if previous is not None and changed is not None else None
    if old is not None and changed is not None and old.table.column_names == cols \
            and len(changed) <= MAX_CHANGED:
        fresh_rows = read_table(snapshot, cols, sources_filter(changed) if changed else "false")
        table = old.replaced(changed, FileStates(fresh_rows).table)
    else:
        table = FileStates(read_table(snapshot, cols)).table
    counts = pc.value_counts(snapshot.to_table(columns=["kind"]).column("kind")).to_pylist()
    kinds = {str(c["values"]): int(c["counts"]) for c in counts}
    sources = table.num_rows
    taken, unread = _summary(table)
    buf = io.BytesIO()
    with pyarrow.ipc.new_file(buf, table.schema) as w:
        w.write_table(table)
    payload = buf.getvalue()
    write_atomic(folder / FILE_STATES, payload)
    thumbs = os.path.join(folder, THUMBS)
    data: dict[str, Any] = {
        "format": FORMAT, "key": key, "version": version, "rows": int(snapshot.count_rows()),
        "sources": sources, "kinds": kinds, "recorded_meta": store.recorded_meta(), "fts_ok": fts_ok,
        "absolute_thumbs": int(absolute_thumbs), "stats": stats,
        "schema_version": store.schema_version(), "unread_files": unread, "taken": taken,
        "thumbs": {"stat": _folder_stat(thumbs), "bytes": folder_bytes(thumbs)},
        "states_check": {"size": len(payload), "crc32": zlib.crc32(payload),
                         "stat": _folder_stat(os.fspath(folder / FILE_STATES))},
    }
    if table_key(folder / TABLE_DIR) != key:  # cannot happen under the writer lock; cheap to be sure
        return False
    data["checksum"] = _checksum(data)
    write_atomic(folder / CATALOG, json.dumps(data))
    return True


def _summary(table: Any, top: int = 5) -> tuple[dict[str, Any] | None, int]:
    """(`Store.file_summary`, how many complete sources were never described) from the file
    states with their SUMMARY_COLUMNS, one row per source: no read of the table."""
    import pyarrow.compute as pc

    from clipsearch.store import PARTIAL_SIZE

    if "taken_at" not in table.column_names:
        return None, 0
    unread = 0
    if table.num_rows:
        mask = pc.and_(pc.is_null(table.column("taken_at_source")),
                       pc.not_equal(table.column("size"), PARTIAL_SIZE))
        unread = int(pc.sum(pc.cast(mask, "int64")).as_py() or 0)
    out: dict[str, Any] = {"first": None, "last": None}
    span = pc.min_max(table.column("taken_at")) if table.num_rows else None
    if span is not None and span["min"].is_valid:
        out["first"], out["last"] = span["min"].as_py().isoformat(), span["max"].as_py().isoformat()
    for column, key in (("place", "places"), ("camera", "cameras")):
        counts = pc.value_counts(table.column(column).drop_null()).to_pylist() if table.num_rows else []
        counts.sort(key=lambda c: (-c["counts"], c["values"]))
        out[key] = [[c["values"], c["counts"]] for c in counts[:top]]
    return out, unread
