"""Object-storage locations (`s3://bucket/prefix`, `gs://…`, `az://…`) for collections.

A remote collection keeps its system of record where LanceDB can write it: the `items` Lance
table and `clipsearch.json` live under the URI, so any machine that can read the bucket can
search it. What is *derived* (the FAISS cache, thumbnails, the skip log) stays on the local
disk, in a cache directory keyed by the URI, and is rebuilt from the table when stale, exactly
as a local collection's is. Fitted transforms are small and costly to refit, so they are
mirrored next to the table. `clipsearch.storage.ObjectStorage` is the storage strategy a
`Collection` uses there; this module is its small-file I/O (`Location`) and configuration.

    col = Collection.open_or_create("s3://bucket/photos", model="clipsearch-tiny")
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
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from clipsearch.errors import ClipsearchError, UsageError
from clipsearch.failures import storage_errors

if TYPE_CHECKING:
    from clipsearch.collection import Collection

log = logging.getLogger(__name__)

REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs")
META_FILE = "clipsearch.json"


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

    def stamp(self, name: str) -> tuple[Any, int] | None:
        """(modification time, size) of the object, or None if it does not exist: one HEAD
        request, so a reader can tell a replaced object without downloading it."""
        import pyarrow.fs as pafs

        with storage_errors(self.uri):
            fs, _ = self._fs_root()
            info = fs.get_file_info(self._key(name))
        if info.type != pafs.FileType.File:
            return None
        return (info.mtime_ns, int(info.size or 0))

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

    def write_json(self, data: dict, name: str = META_FILE) -> None:
        self.write_bytes(name, json.dumps(data, indent=2).encode())

    def total_bytes(self) -> int:
        """Bytes stored under the URI (listing; costs one request per 1,000 objects)."""
        import pyarrow.fs as pafs

        with storage_errors(self.uri):
            fs, root = self._fs_root()
            infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)


def open_collection(db: str | os.PathLike | None = None, device: str | None = "auto",
                    model: str | None = None, checkpoint: str | None = None, backend: str | None = None,
                    precision: str | None = None) -> Collection:
    """`Collection.open` (kept for callers of this module: it takes a directory or a URI)."""
    from clipsearch.collection import Collection

    return Collection.open(db, device=device, model=model, checkpoint=checkpoint, backend=backend,
                           precision=precision)


def collection_exists(db: str | os.PathLike | None = None) -> bool:
    """`Collection.exists` (kept for callers of this module)."""
    from clipsearch.collection import Collection

    return Collection.exists(db)


def open_or_create(db: str | os.PathLike | None = None, model: str | None = None,
                   checkpoint: str | None = None, device: str | None = "auto", backend: str | None = None,
                   precision: str | None = None) -> Collection:
    """`Collection.open_or_create` (kept for callers of this module)."""
    from clipsearch.collection import Collection

    return Collection.open_or_create(db, model=model, checkpoint=checkpoint, device=device, backend=backend,
                                     precision=precision)
