"""Where a collection lives: a local directory or an object-storage URI, as one strategy object.

A `Collection` is the same class wherever it lives; what differs is here. Its system of record
(the Lance table and `clipsearch.json`) is at `uri`; its derived state (ANN index, thumbnails,
transforms, skip log, writer lock) is in the local `cache_dir`. For a local collection the two
are the same directory. For object storage the cache directory is keyed by the URI
(`objectstore.Location.cache_dir`), and the derived files other machines need and cannot cheaply
rebuild (fitted transforms, the skip log) are mirrored next to the table.

    storage = storage_for("s3://bucket/photos")   # or a local path, or None for the default
    storage.holds_collection()
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipsearch.errors import ClipsearchError, StorageError
from clipsearch.failures import storage_errors
from clipsearch.fsutil import write_atomic

if TYPE_CHECKING:
    from clipsearch.collection import Collection
    from clipsearch.objectstore import Location
    from clipsearch.search import Searcher
    from clipsearch.store import Store

META_FILE = "clipsearch.json"
SKIP_LOG = "skipped.log"
TRANSFORMS_FILE = "transforms.npz"

MetaRead = tuple[dict[str, Any] | None, ClipsearchError | None]


def default_db_dir() -> Path:
    """$CLIPSEARCH_DB, else $XDG_DATA_HOME/clipsearch/default (~/.local/share/clipsearch/default)."""
    env = os.environ.get("CLIPSEARCH_DB")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "clipsearch" / "default"


class Storage(ABC):
    """What differs between a collection in a local directory and one on object storage."""

    uri: str  # the collection: its table and clipsearch.json live here (also what messages name)
    cache_dir: Path  # the local directory of derived state and the writer lock
    storage_options: dict[str, str] | None = None  # for LanceDB/Lance (object storage only)
    remote: bool = False

    @property
    def meta_where(self) -> str:
        """clipsearch.json's location, for messages."""
        return f"{self.uri}/{META_FILE}"

    # ---- metadata ----------------------------------------------------------------------------
    @abstractmethod
    def meta_stamp(self) -> Any:
        """Something that changes whenever clipsearch.json is replaced (None: it is absent)."""

    @abstractmethod
    def read_meta(self) -> MetaRead:
        """(clipsearch.json parsed, None), (None, None) when absent, (None, error) when unreadable."""

    @abstractmethod
    def write_meta(self, meta: dict[str, Any]) -> None:
        """Replace clipsearch.json whole, so a reader sees the old or the new one, never a mix."""

    @abstractmethod
    def prepare(self) -> None:
        """Make room for a new collection (a local directory; nothing on object storage)."""

    # ---- derived files next to the table -----------------------------------------------------
    @abstractmethod
    def mirror(self, name: str) -> None:
        """Copy the derived file `name` from `cache_dir` next to the table (local: it is there)."""

    def pull(self, name: str) -> bool:
        """Bring the mirrored `name` into `cache_dir` when it changed; whether it did."""
        return False

    # ---- the table and its readers -----------------------------------------------------------
    def existing_store(self) -> Store | None:
        """The table here, if there is one (`Store.open_existing`)."""
        from clipsearch.store import Store

        return Store.open_existing(self.uri, self.storage_options or None)

    @abstractmethod
    def store(self, dim: int, meta: dict[str, Any]) -> Store:
        """The collection's table (created on first write); `meta` is its clipsearch.json."""

    def searcher(self, col: Collection) -> Searcher:
        """The query engine that suits this storage."""
        from clipsearch.search import Searcher

        return Searcher(col)

    @abstractmethod
    def info_fields(self) -> dict[str, Any]:
        """`info` fields that depend on where the collection is: its path (a remote one's disk
        bytes and cache dir)."""

    def holds_collection(self) -> bool:
        """A clipsearch.json, or a table that records its model (clipsearch.json is rebuilt)."""
        if self.meta_stamp() is not None:
            return True
        store = self.existing_store()
        return store is not None and store.recorded_meta() is not None


class LocalStorage(Storage):
    """A collection in one local directory: table, metadata and derived state side by side."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        p = Path(path).expanduser() if path else default_db_dir()
        self.cache_dir = Path(os.path.abspath(p))
        self.uri = str(self.cache_dir)

    @property
    def meta_where(self) -> str:
        return str(self.cache_dir / META_FILE)

    def meta_stamp(self) -> Any:
        try:
            st = (self.cache_dir / META_FILE).stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def read_meta(self) -> MetaRead:
        path = self.cache_dir / META_FILE
        if not path.is_file():
            return None, None
        try:
            return json.loads(path.read_text()), None
        except (OSError, ValueError) as e:
            return None, ClipsearchError(f"{path} is unreadable: {e}",
                                         hint="restore it from a backup, or re-index into a new --db")

    def write_meta(self, meta: dict[str, Any]) -> None:
        path = self.cache_dir / META_FILE
        with storage_errors(str(path)):
            write_atomic(path, json.dumps(meta, indent=2))

    def prepare(self) -> None:
        with storage_errors(str(self.cache_dir)):
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    def mirror(self, name: str) -> None:
        """The file is already next to the table."""

    def store(self, dim: int, meta: dict[str, Any]) -> Store:
        from clipsearch.collection import model_fields
        from clipsearch.store import TABLE, Store

        if "last_run" in meta and not (self.cache_dir / f"{TABLE}.lance").is_dir():
            raise StorageError(f"the collection's table {self.cache_dir / TABLE}.lance is missing",
                               hint="restore the collection folder from a backup, or re-index "
                                    "into a new --db")
        return Store(self.cache_dir, dim, meta=model_fields(meta))

    def info_fields(self) -> dict[str, Any]:
        return {"path": str(self.cache_dir)}  # disk bytes: the catalog's, or one walk (`info`)


class ObjectStorage(Storage):
    """A collection on object storage (`s3://`, `gs://`, `az://`): table and metadata under the
    URI, derived state in a local cache directory, transforms and skip log mirrored.

    The writer lock is per machine: Lance's commit protocol rejects or rebases conflicting
    commits from two machines, but run one indexer per collection all the same.
    """

    remote = True

    def __init__(self, uri: str, storage_options: dict[str, str] | None = None) -> None:
        from clipsearch.objectstore import Location

        self.location: Location = Location(uri, storage_options)
        self.uri = self.location.uri
        self.storage_options = self.location.storage_options
        self.cache_dir = self.location.cache_dir
        self._pulled: dict[str, Any] = {}  # name -> stamp of the object last pulled

    def meta_stamp(self) -> Any:
        return self.location.stamp(META_FILE)

    def read_meta(self) -> MetaRead:
        data = self.location.read_bytes(META_FILE)
        if data is None:
            return None, None
        try:
            return json.loads(data), None
        except ValueError as e:
            return None, ClipsearchError(f"{self.meta_where} is unreadable: {e}",
                                         hint="restore it from a backup, or re-index into a new --db")

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.location.write_json(meta, META_FILE)

    def prepare(self) -> None:
        """Nothing: the table and clipsearch.json are created by their first write."""

    def mirror(self, name: str) -> None:
        local = self.cache_dir / name
        if local.is_file():
            self.location.write_bytes(name, local.read_bytes())
            self._pulled[name] = self.location.stamp(name)

    def pull(self, name: str) -> bool:
        stamp = self.location.stamp(name)
        local = self.cache_dir / name
        if stamp is None or (stamp == self._pulled.get(name) and local.is_file()):
            return False
        data = self.location.read_bytes(name)
        self._pulled[name] = stamp
        if data is None or (local.is_file() and local.read_bytes() == data):
            return False
        with storage_errors(str(self.cache_dir)):
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(local, data)
        return True

    def store(self, dim: int, meta: dict[str, Any]) -> Store:
        from clipsearch.collection import model_fields
        from clipsearch.store import Store

        return Store(self.uri, dim, storage_options=self.storage_options or None, meta=model_fields(meta))

    def searcher(self, col: Collection) -> Searcher:
        from clipsearch.engines.lance_ann import RemoteSearcher

        return RemoteSearcher(col)

    def info_fields(self) -> dict[str, Any]:
        return {"path": self.uri, "cache_dir": str(self.cache_dir),
                "disk_bytes": self.location.total_bytes()}


def storage_for(db: str | os.PathLike[str] | Storage | None = None,
                storage_options: dict[str, str] | None = None) -> Storage:
    """The storage of `db`: an object-storage URI (s3://, gs://, az://), else a local directory
    (None: the default one, $CLIPSEARCH_DB)."""
    from clipsearch.objectstore import is_remote

    if isinstance(db, Storage):
        return db
    if is_remote(db):
        return ObjectStorage(str(db), storage_options)
    return LocalStorage(db)
