"""Collections on object storage (`s3://bucket/prefix`, `gs://…`, `az://…`).

A remote collection keeps its system of record where LanceDB can write it: the `items` Lance
table and `clipsearch.json` live under the URI, so any machine that can read the bucket can
search it. What is *derived* (the FAISS cache, thumbnails, the skip log) stays on the local
disk, in a cache directory keyed by the URI, and is rebuilt from the table when stale, exactly
as a local collection's is. Fitted transforms are small and costly to refit, so they are
mirrored next to the table.

    col = open_or_create("s3://bucket/photos", model="clipsearch-tiny")
    col.add(["/mnt/shared/photos"])            # or clipsearch.engines.ray_engine.index_with_ray
    col.search(text="a red circle")

Credentials and endpoint come from the usual environment variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL), handed both to
LanceDB (`storage_options`) and to pyarrow's filesystem for the metadata file, so the two
always talk to the same server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from clipsearch.collection import (
    META_FILE,
    SKIP_LOG,
    Collection,
    check_meta,
    model_fields,
    new_meta,
    settle_meta,
)
from clipsearch.errors import ClipsearchError, CollectionNotFound, UsageError
from clipsearch.failures import storage_errors
from clipsearch.fsutil import write_atomic
from clipsearch.model_registry import resolve

log = logging.getLogger(__name__)

REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs")
TRANSFORMS_FILE = "transforms.npz"


def is_remote(db: str | os.PathLike | None) -> bool:
    """Whether `db` names object storage rather than a local directory."""
    if db is None or not isinstance(db, str) or "://" not in db:
        return False
    return urlparse(db).scheme.lower() in REMOTE_SCHEMES


def storage_options_from_env(uri: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """LanceDB/Lance storage options for `uri` from the standard AWS_* variables.

    Only S3 needs translating (custom endpoints such as MinIO or moto, plain-http); GCS and
    Azure clients read their own environment variables directly.
    """
    env = dict(os.environ if env is None else env)
    if urlparse(uri).scheme.lower() not in ("s3", "s3a"):
        return {}
    opts: dict[str, str] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["aws_endpoint"] = endpoint
        if endpoint.startswith("http://"):
            opts["allow_http"] = "true"
    for var, key in (("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
                     ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
                     ("AWS_SESSION_TOKEN", "aws_session_token")):
        if env.get(var):
            opts[key] = env[var]
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        opts["aws_region"] = region
    return opts


def _pyarrow_fs(uri: str, opts: dict[str, str]):
    """(filesystem, root path) for the same server and credentials LanceDB uses."""
    import pyarrow.fs as pafs

    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    root = (parsed.netloc + parsed.path).rstrip("/")
    if scheme in ("s3", "s3a"):
        kw: dict[str, Any] = {}
        endpoint = opts.get("aws_endpoint")
        if endpoint:
            ep = urlparse(endpoint)
            kw["endpoint_override"] = ep.netloc or ep.path
            kw["scheme"] = ep.scheme or "https"
        if opts.get("aws_access_key_id"):
            kw["access_key"] = opts["aws_access_key_id"]
            kw["secret_key"] = opts.get("aws_secret_access_key")
            kw["session_token"] = opts.get("aws_session_token")
        if opts.get("aws_region"):
            kw["region"] = opts["aws_region"]
        return pafs.S3FileSystem(**kw), root
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path.rstrip("/")


def cache_root() -> Path:
    """$CLIPSEARCH_CACHE, else $XDG_CACHE_HOME/clipsearch (~/.cache/clipsearch)."""
    env = os.environ.get("CLIPSEARCH_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "clipsearch"


class Location:
    """Where a remote collection lives: its URI, storage options, and small-file I/O there."""

    def __init__(self, uri: str, storage_options: dict[str, str] | None = None) -> None:
        if not is_remote(uri):
            raise UsageError(f"{uri} is not an object-storage URI",
                             hint="use s3://bucket/prefix (or gs://, az://), or a local directory")
        self.uri = uri.rstrip("/")
        self.storage_options = dict(storage_options if storage_options is not None
                                    else storage_options_from_env(self.uri))
        self._fs = None
        self._root = ""

    def _fs_root(self):
        if self._fs is None:
            self._fs, self._root = _pyarrow_fs(self.uri, self.storage_options)
        return self._fs, self._root

    def _key(self, name: str) -> str:
        return f"{self._fs_root()[1]}/{name}"

    @property
    def cache_dir(self) -> Path:
        """Local directory for derived state (ANN cache, thumbnails, skip log), one per URI.

        Keyed by the endpoint too: the same bucket name on two servers is two collections.
        """
        key = (self.storage_options.get("aws_endpoint", "") + "|" + self.uri).encode()
        slug = "".join(c if c.isalnum() else "_" for c in self.uri.split("://", 1)[1])[-48:]
        return cache_root() / "remote" / f"{slug}-{hashlib.blake2b(key, digest_size=6).hexdigest()}"

    def exists(self, name: str) -> bool:
        import pyarrow.fs as pafs

        with storage_errors(self.uri):
            fs, _ = self._fs_root()
            return fs.get_file_info(self._key(name)).type == pafs.FileType.File

    def read_bytes(self, name: str) -> bytes | None:
        """The object's bytes, or None if it does not exist."""
        fs, _ = self._fs_root()
        try:
            with fs.open_input_stream(self._key(name)) as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            if "NoSuchKey" in str(e) or "does not exist" in str(e):
                return None
            with storage_errors(f"{self.uri}/{name}"):
                raise

    def write_bytes(self, name: str, data: bytes) -> None:
        """Replace the object whole (object stores make a completed PUT atomic)."""
        fs, _ = self._fs_root()
        try:
            with fs.open_output_stream(self._key(name)) as f:
                f.write(data)
        except OSError:
            with storage_errors(f"{self.uri}/{name}"):
                raise

    def read_json(self, name: str = META_FILE, missing_if_unreadable: bool = False) -> dict | None:
        data = self.read_bytes(name)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError as e:
            if missing_if_unreadable:
                return None
            raise ClipsearchError(f"{self.uri}/{name} is unreadable: {e}",
                                  hint="restore it from a backup, or re-index into a new --db") from e

    def store(self):
        """The collection's table here, if there is one (see `Store.open_existing`)."""
        from clipsearch.store import Store

        return Store.open_existing(self.uri, self.storage_options or None)

    def holds_collection(self) -> bool:
        """A clipsearch.json, or a table that records its model (clipsearch.json is rebuilt)."""
        if self.exists(META_FILE):
            return True
        store = self.store()
        return store is not None and store.recorded_meta() is not None

    def write_json(self, data: dict, name: str = META_FILE) -> None:
        self.write_bytes(name, json.dumps(data, indent=2).encode())

    def total_bytes(self) -> int:
        """Bytes stored under the URI (listing; costs one request per 1,000 objects)."""
        import pyarrow.fs as pafs

        with storage_errors(self.uri):
            fs, root = self._fs_root()
            infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)


class RemoteCollection(Collection):
    """A `Collection` whose table and metadata live on object storage.

    `path` is the local cache directory (derived state only); `uri` is the collection. The
    writer lock is per machine: Lance's commit protocol rejects or rebases conflicting
    commits from two machines, but run one indexer per collection all the same.
    """

    def __init__(self, location: Location, meta: dict, device: str | None = "auto",
                 backend: str | None = None, precision: str | None = None) -> None:
        super().__init__(location.cache_dir, meta, device, backend=backend, precision=precision)
        self.location = location
        self.uri = location.uri

    # ---- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def create(cls, uri: str, model: str | None = None, checkpoint: str | None = None,  # type: ignore[override]
               device: str | None = "auto", pooling: str = "mean",
               storage_options: dict[str, str] | None = None, backend: str | None = None,
               precision: str | None = None) -> RemoteCollection:
        """Create a collection at `uri` (loads the model first, so a bad model writes nothing)."""
        from clipsearch.backends import load_encoder

        loc = Location(uri, storage_options)
        if loc.holds_collection():
            raise UsageError(f"a collection already exists at {loc.uri}", hint="open it instead")
        encoder = load_encoder(resolve(model, checkpoint, pooling), device=device, backend=backend,
                               precision=precision)
        meta = new_meta(encoder)
        settle_meta(None, loc.store(), loc.uri)  # an old table that records nothing: refused
        loc.write_json(meta)
        col = cls(loc, meta, device, backend=backend, precision=precision)
        col._encoder = encoder
        return col

    @classmethod
    def open(cls, uri: str, device: str | None = "auto", model: str | None = None,  # type: ignore[override]
             checkpoint: str | None = None,
             storage_options: dict[str, str] | None = None, backend: str | None = None,
             precision: str | None = None) -> RemoteCollection:
        """Open the collection at `uri`; `model`, if given, must be the one it was built with."""
        loc = Location(uri, storage_options)
        store = loc.store()
        meta = loc.read_json(missing_if_unreadable=store is not None and store.recorded_meta() is not None)
        meta, rebuilt = settle_meta(meta, store, loc.uri)
        if meta is None:
            raise CollectionNotFound(f"no collection at {loc.uri}",
                                     hint="create one with `clipsearch index PATH --db URI`")
        if rebuilt:
            try:
                loc.write_json(meta)
            except ClipsearchError as e:
                log.warning("could not write the rebuilt %s/%s: %s", loc.uri, META_FILE, e)
        check_meta(meta, loc.uri, model, checkpoint)
        col = cls(loc, meta, device, backend=backend, precision=precision)
        if store is not None and store.dim == int(meta["dim"]):
            col._store = store
        col._pull_transforms()
        return col

    @classmethod
    def open_or_create(cls, uri: str, model: str | None = None,  # type: ignore[override]
                       checkpoint: str | None = None, device: str | None = "auto",
                       storage_options: dict[str, str] | None = None, backend: str | None = None,
                       precision: str | None = None) -> RemoteCollection:
        if Location(uri, storage_options).holds_collection():
            return cls.open(uri, device=device, model=model, checkpoint=checkpoint,
                            storage_options=storage_options, backend=backend, precision=precision)
        return cls.create(uri, model=model, checkpoint=checkpoint, device=device,
                          storage_options=storage_options, backend=backend, precision=precision)

    # ---- parts -------------------------------------------------------------------------------
    @property
    def store(self):
        if self._store is None:
            from clipsearch.store import Store

            self._store = Store(self.uri, int(self.meta["dim"]),
                                storage_options=self.location.storage_options or None,
                                meta=model_fields(self.meta))
        return self._store

    @property
    def searcher(self):
        if self._searcher is None:
            from clipsearch.engines.lance_ann import RemoteSearcher

            self._searcher = RemoteSearcher(self)
        return self._searcher

    # ---- metadata and derived state ----------------------------------------------------------
    def save_meta(self) -> None:
        self.location.write_json(self.meta)

    def _write_skip_log(self, report) -> None:
        """The local skip log, mirrored next to the table so other machines can read it."""
        self.path.mkdir(parents=True, exist_ok=True)
        super()._write_skip_log(report)
        self.location.write_bytes(SKIP_LOG, (self.path / SKIP_LOG).read_bytes())

    def push_transforms(self) -> None:
        """Mirror freshly fitted transforms next to the table (the maintainer calls this after
        every successful fit: after an index run and after `fit-transforms`)."""
        local = self.path / TRANSFORMS_FILE
        if local.is_file():
            self.location.write_bytes(TRANSFORMS_FILE, local.read_bytes())

    def _pull_transforms(self) -> None:
        data = self.location.read_bytes(TRANSFORMS_FILE)
        local = self.path / TRANSFORMS_FILE
        if data is None or (local.is_file() and local.read_bytes() == data):
            return
        with storage_errors(str(self.path)):
            self.path.mkdir(parents=True, exist_ok=True)
            write_atomic(local, data)

    def info(self) -> dict[str, Any]:
        out = super().info()
        out.update(path=self.uri, cache_dir=str(self.path), disk_bytes=self.location.total_bytes())
        return out


def open_collection(db: str | os.PathLike | None = None, device: str | None = "auto",
                    model: str | None = None, checkpoint: str | None = None, backend: str | None = None,
                    precision: str | None = None) -> Collection:
    """`Collection.open` for a local directory or an object-storage URI (what the CLI calls)."""
    if is_remote(db):
        return RemoteCollection.open(str(db), device=device, model=model, checkpoint=checkpoint,
                                     backend=backend, precision=precision)
    return Collection.open(db, device=device, model=model, checkpoint=checkpoint, backend=backend,
                           precision=precision)


def collection_exists(db: str | os.PathLike | None = None) -> bool:
    """`Collection.exists` for a local directory or an object-storage URI."""
    if is_remote(db):
        return Location(str(db)).holds_collection()
    return Collection.exists(db)


def open_or_create(db: str | os.PathLike | None = None, model: str | None = None,
                   checkpoint: str | None = None, device: str | None = "auto", backend: str | None = None,
                   precision: str | None = None) -> Collection:
    """`Collection.open_or_create` for a local directory or an object-storage URI."""
    if is_remote(db):
        return RemoteCollection.open_or_create(str(db), model=model, checkpoint=checkpoint, device=device,
                                               backend=backend, precision=precision)
    return Collection.open_or_create(db, model=model, checkpoint=checkpoint, device=device, backend=backend,
                                     precision=precision)
