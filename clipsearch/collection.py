"""`Collection`: the public entry point. A LanceDB table and its metadata (in a local directory
or on object storage, see `clipsearch.storage`), with its derived state: the FAISS accelerator,
fitted transforms and thumbnails.

    col = Collection.open("db")            # or Collection.create("db", model="clipsearch-tiny")
    col = Collection.open("s3://bucket/photos")
    col.add(["~/Pictures"])
    hits = col.search(text="a red car", k=10)
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from clipsearch import catalog, companions, leftovers, query_terms, thumbs
from clipsearch.errors import (
    ClipsearchError,
    CollectionNotFound,
    ModelMismatch,
    UsageError,
    WriterBusy,
)
from clipsearch.failures import storage_errors
from clipsearch.filters import Filters
from clipsearch.fsutil import is_within
from clipsearch.indexers.scanner import ScanRules
from clipsearch.maintainer import REFRESH_MARKER, Maintainer, OptimizeSummary, keep_versions
from clipsearch.model_registry import ModelSpec, resolve
from clipsearch.search import Hit, Hits, Searcher
from clipsearch.storage import (
    META_FILE,
    SKIP_LOG,
    TRANSFORMS_FILE,
    LocalStorage,
    Storage,
    default_db_dir,
    storage_for,
)

if TYPE_CHECKING:
    from clipsearch.backends import AnyEncoder
    from clipsearch.browse_topics import Topic
    from clipsearch.duplicate_moves import MoveResult
    from clipsearch.duplicates import DuplicateGroup, DuplicateReport
    from clipsearch.indexers.base import IndexContext
    from clipsearch.pipeline import IndexReport
    from clipsearch.store import Store
    from clipsearch.transforms import TransformSet

if TYPE_CHECKING:
    from clipsearch.indexers.base import IndexContext
    from clipsearch.pipeline import Committer, IndexReport

log = logging.getLogger(__name__)

Where = str | os.PathLike[str] | Storage | None  # a directory, an object-storage URI, or its storage

SCHEMA_VERSION = 1
MODEL_FIELDS = ("schema_version", "model", "model_name", "model_id", "dim")  # what the table records
__all__ = ["META_FILE", "REFRESH_MARKER", "SKIP_LOG", "Collection", "Hit", "IndexRun", "default_db_dir"]


def resolve_roots(paths: Sequence[str | os.PathLike[str]], known: Sequence[str] = ()) -> list[bytes]:
    """Absolute path bytes of what the user asked to index.

    A missing path is kept (the run warns and keeps its rows: a drive may be unplugged); only
    when nothing named exists and none of it was indexed before is it a usage error (a typo).
    """
    roots = [os.fsencode(os.path.abspath(os.path.expanduser(os.fspath(p)))) for p in paths]
    known_real = {os.path.realpath(os.fsencode(k)) for k in known}
    if roots and not any(os.path.exists(r) or os.path.realpath(r) in known_real for r in roots):
        raise UsageError(f"{os.fsdecode(roots[0])}: no such file or directory",
                         hint="check the path you passed to index")
    return roots


def cache_dirs() -> list[tuple[bytes, str]]:
    """Cache folders no walk enters: $XDG_CACHE_HOME (~/.cache) and clipsearch's own cache."""
    from clipsearch.objectstore import cache_root

    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    out = [(os.path.realpath(os.fsencode(xdg)), "the cache folder ($XDG_CACHE_HOME or ~/.cache)")]
    own = os.path.realpath(os.fsencode(str(cache_root())))
    if not any(is_within(own, d) for d, _ in out):
        out.append((own, "clipsearch's cache folder ($CLIPSEARCH_CACHE)"))
    return out


def check_meta(meta: dict[str, Any], where: str, model: str | None = None,
               checkpoint: str | None = None) -> None:
    """Refuse metadata from a newer clipsearch, and a model other than the collection's own."""
    if meta.get("schema_version", 0) > SCHEMA_VERSION:
        raise ClipsearchError(f"{where} was written by a newer clipsearch (schema "
                              f"{meta['schema_version']})", hint="upgrade clipsearch")
    if model or checkpoint:
        wanted = resolve(model or meta["model"]["arch"], checkpoint)
        if wanted.model_id() != meta["model_id"]:
            raise ModelMismatch(
                f"the collection at {where} was built with {meta['model_name']}, not {wanted.name}",
                hint="leave out --model (a collection knows its model), or use another --db")


def _check_pattern(pattern: str) -> None:
    """An exclude pattern pathspec can compile, or a usage error naming it."""
    import pathspec

    try:
        pathspec.GitIgnoreSpec.from_lines([pattern])
    except (ValueError, TypeError) as e:
        raise UsageError(f"--exclude {pattern!r}: not a valid pattern ({e})",
                         hint="use gitignore syntax, e.g. '*.tmp', 'node_modules/', '/raw'") from e


def model_fields(meta: dict[str, Any]) -> dict[str, Any]:
    """The part of clipsearch.json that the table itself records: which model made its vectors."""
    return {k: meta[k] for k in MODEL_FIELDS if k in meta}


GENERIC_DIR_NAMES = frozenset({"db", "index", "collection", ".clipsearch", "clipsearch", "data"})
MAX_NAME = 120  # characters of a collection's name


def folder_name(where: str) -> str:
    """A path's last folder name, or the one above it when that is a generic "db" (photos/db
    reads "photos"); "" for none."""
    parts = [p for p in where.replace("\\", "/").rstrip("/").split("/") if p and "://" not in p]
    for part in reversed(parts):
        if part.lower() not in GENERIC_DIR_NAMES:
            return part
    return parts[-1] if parts else ""


def checked_name(name: str) -> str:
    """A collection name as given (`index --name`), trimmed; refused when empty, too long or
    holding control characters, so that every place that shows it can."""
    text = " ".join(str(name).split())
    if not text:
        raise UsageError("the collection name is empty", hint="give a name such as 'Holiday 2024'")
    if len(text) > MAX_NAME:
        raise UsageError(f"the collection name is {len(text)} characters long; the limit is {MAX_NAME}",
                         hint="give a shorter name")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise UsageError("the collection name holds control characters", hint="give plain text")
    return text


def collection_name(meta: dict[str, Any], where: str) -> str:
    """What a collection is called: its stored name (`index --name`), else the folder name of
    its first root, else its own folder's name."""
    stored = str(meta.get("name") or "").strip()
    if stored:
        return stored
    roots = meta.get("roots") or []
    return (folder_name(str(roots[0])) if roots else "") or folder_name(where) or "collection"


def meta_problem(meta: Any) -> str | None:
    """What makes `meta` no collection metadata (a hand-edited or foreign clipsearch.json), or None."""
    if not isinstance(meta, dict):
        return f"it holds a JSON {type(meta).__name__}, not an object"
    missing = [k for k in ("model", "model_name", "model_id", "dim") if k not in meta]
    if missing:
        return "it lacks " + ", ".join(repr(k) for k in missing)
    if not isinstance(meta["model"], dict) or "arch" not in meta["model"]:
        return "its 'model' names no model ('arch')"
    try:
        int(meta["dim"])
    except (TypeError, ValueError):
        return f"its 'dim' is {meta['dim']!r}, not a number"
    return None


def settle_meta(meta: dict[str, Any] | None, store: Store | None,
                where: str) -> tuple[dict[str, Any] | None, bool]:
    """The collection's metadata, with the table's own record of its model winning over a lost,
    unreadable or replaced clipsearch.json. Returns (meta, whether it was rebuilt); (None, False)
    when there is neither.

    Without that record (a table from before tables recorded it), rows and no clipsearch.json
    are refused: which model made them cannot be known, and a guess would mix two models.
    A damaged clipsearch.json (`meta_problem`) counts as lost when the table has that record.
    """
    recorded = store.recorded_meta() if store is not None else None
    problem = meta_problem(meta) if meta is not None else None
    if problem is not None:
        if recorded is None:
            raise ClipsearchError(f"{where}: {META_FILE} is damaged: {problem}",
                                  hint=f"restore {META_FILE} from a backup, or re-index into a new --db")
        meta = None  # rebuilt from the table's record below
    if recorded is None:
        if meta is None and store is not None and store.count() > 0:
            raise ModelMismatch(f"{where}: {META_FILE} is missing and the table does not record which "
                                "model made its vectors",
                                hint=f"restore {META_FILE} from a backup, or re-index into a new --db")
        return meta, False
    if meta is None:
        log.warning("%s: %s was missing or unreadable; rebuilt from the table's record of its model (%s)",
                    where, META_FILE, recorded.get("model_name"))
        return {**recorded, "created": time.time(), "roots": []}, True
    if (meta.get("model_id"), meta.get("dim")) != (recorded.get("model_id"), recorded.get("dim")):
        log.warning("%s: %s names the model %s but the table was built with %s; the table's "
                    "record wins", where, META_FILE, meta.get("model_name"), recorded.get("model_name"))
        return {**meta, **recorded}, True
    return meta, False


def new_meta(encoder: AnyEncoder) -> dict[str, Any]:
    """`clipsearch.json` of a new collection: what model built it, for checks on every open."""
    return {"schema_version": SCHEMA_VERSION, "model": encoder.spec.to_dict(),
            "model_name": encoder.spec.name, "model_id": encoder.model_id, "dim": encoder.dim,
            "created": time.time(), "roots": []}


def _save_rebuilt_meta(storage: Storage, meta: dict[str, Any]) -> None:
    """Write a rebuilt clipsearch.json; a reader on read-only storage goes on without it."""
    try:
        storage.write_meta(meta)
    except ClipsearchError as e:
        log.warning("could not write the rebuilt %s: %s", storage.meta_where, e)


class IndexRun:
    """One indexing run of a collection, as `Collection.index_run` hands it to an engine: the
    store, the roots, the walk rules, the indexers' context and commit groups (`committer`).
    The engine sets `report`; the run's end (skip log, derived state) is `finish`."""

    def __init__(self, col: Collection, roots: list[bytes], ctx: IndexContext, fit_transforms: bool) -> None:
        self.col, self.roots, self.ctx, self.fit_transforms = col, roots, ctx, fit_transforms
        self.rules = col.scan_rules()
        self.report: IndexReport | None = None

    @property
    def store(self) -> Store:
        """The collection's store, opened on first use (an unchanged run may never need it)."""
        return self.col.store

    def committer(self, max_files: int, max_rows: int = 5000, max_age: float = 10.0) -> Committer:
        """Groups this run's finished files into commits."""
        from clipsearch.pipeline import Committer

        return Committer(self.store, max_files, max_rows=max_rows, max_age=max_age,
                         thumb_dir=self.ctx.thumb_dir)

    def finish(self, report: IndexReport) -> None:
        """The skip log, remembered roots, and the derived state refreshed when rows changed."""
        self.report = report
        self.col._finish_run(report, self.fit_transforms)


class Collection:
    """A searchable collection, in a local directory or on object storage (`storage`). Cheap to
    open; the model loads on first use. `path` is the local directory of its derived state
    (the collection directory itself, for a local one); `uri` is where its table lives."""

    def __init__(self, storage: Storage | str | os.PathLike[str], meta: dict[str, Any],
                 device: str | None = "auto", backend: str | None = None,
                 precision: str | None = None) -> None:
        from clipsearch.backends import requested

        self.storage = storage if isinstance(storage, Storage) else LocalStorage(storage)
        self.path = self.storage.cache_dir
        self.uri = self.storage.uri
        self.meta = meta
        self._meta_stamp = self.storage.meta_stamp()
        self.device = device
        requested(backend, precision)  # a bad name fails at open, before any work
        self.backend, self.precision = backend, precision
        self.spec = ModelSpec.from_dict(meta["model"])
        self._encoder: AnyEncoder | None = None
        self._encoder_of: Collection | None = None  # a collection whose encoder this one shares
        self._store: Store | None = None
        self._searcher: Searcher | None = None
        self._maintainer: Maintainer | None = None
        self._parts_lock = threading.RLock()  # server threads share one collection: load parts once

    # ---- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Where = None, model: str | None = None,
               checkpoint: str | None = None, device: str | None = "auto",
               pooling: str = "mean", storage_options: dict[str, str] | None = None,
               backend: str | None = None, precision: str | None = None,
               name: str | None = None) -> Collection:
        """Create a collection for `model` in a directory or at an object-storage URI (loads the
        model first, so a bad model leaves nothing behind). `backend` / `precision`: see `open`.
        `name`: what the UI and `info` call it (default: its first root's folder name)."""
        from clipsearch.backends import load_encoder

        text = checked_name(name) if name is not None else None  # a bad name creates nothing
        storage = storage_for(path, storage_options)
        if storage.holds_collection():
            raise UsageError(f"a collection already exists at {storage.uri}", hint="use Collection.open")
        encoder = load_encoder(resolve(model, checkpoint, pooling), device=device, backend=backend,
                               precision=precision)
        storage.prepare()
        meta = new_meta(encoder)
        if text is not None:
            meta["name"] = text
        settle_meta(None, storage.existing_store(), storage.uri)  # an old table that records nothing: refused
        storage.write_meta(meta)
        col = cls(storage, meta, device, backend=backend, precision=precision)
        col._encoder = encoder
        return col

    @classmethod
    def open(cls, path: Where = None, device: str | None = "auto",
             model: str | None = None, checkpoint: str | None = None,
             storage_options: dict[str, str] | None = None, backend: str | None = None,
             precision: str | None = None) -> Collection:
        """Open an existing collection (a directory or an object-storage URI). If `model` is
        given it must be the one it was built with. A local collection whose catalog is fresh
        is opened without its table (`clipsearch.catalog`).

        `backend`: auto (default; $CLIPSEARCH_BACKEND), torch, onnx or openvino; `precision`:
        auto, fp32, bf16, fp16 or int8 ($CLIPSEARCH_PRECISION). See `clipsearch.backends`."""
        storage = storage_for(path, storage_options)
        stamp = storage.meta_stamp()  # before reading: a change made meanwhile is seen by reload_meta
        meta, unreadable = storage.read_meta()
        store = None
        facts = (catalog.fresh(storage.cache_dir)
                 if not storage.remote and meta is not None and meta_problem(meta) is None else None)
        if facts is not None and facts.vouches_for(meta):  # type: ignore[arg-type]
            rebuilt = False  # the table records this model (as of its current state): not opened
        else:
            store = storage.existing_store()
            meta, rebuilt = settle_meta(meta, store, storage.uri)
        if meta is None and unreadable is not None:
            raise unreadable
        if meta is None:
            raise CollectionNotFound(f"no collection at {storage.uri}",
                                     hint="create one with `clipsearch index PATH --db "
                                          f"{'URI' if storage.remote else 'DIR'}`")
        if rebuilt:
            _save_rebuilt_meta(storage, meta)
        check_meta(meta, storage.uri, model, checkpoint)
        col = cls(storage, meta, device, backend=backend, precision=precision)
        col._meta_stamp = storage.meta_stamp() if rebuilt else stamp
        if store is not None and store.dim == int(meta["dim"]):
            col._store = store
        storage.pull(TRANSFORMS_FILE)
        return col

    @classmethod
    def open_or_create(cls, path: Where = None, model: str | None = None,
                       checkpoint: str | None = None, device: str | None = "auto",
                       storage_options: dict[str, str] | None = None, backend: str | None = None,
                       precision: str | None = None, name: str | None = None) -> Collection:
        """`open`, or `create` where there is no collection yet; `name` (when given) names it."""
        storage = storage_for(path, storage_options)
        if storage.holds_collection():
            col = cls.open(storage, device=device, model=model, checkpoint=checkpoint, backend=backend,
                           precision=precision)
            if name is not None:
                col.name = name
            return col
        return cls.create(storage, model=model, checkpoint=checkpoint, device=device, backend=backend,
                          precision=precision, name=name)

    @staticmethod
    def exists(path: Where = None,
               storage_options: dict[str, str] | None = None) -> bool:
        """A clipsearch.json, or a table that records its model (clipsearch.json is rebuilt)."""
        return storage_for(path, storage_options).holds_collection()

    def reload_meta(self) -> bool:
        """Pick up a clipsearch.json another process replaced (new roots, scan options, last
        run), for a long-lived reader such as the HTTP server; returns whether it changed.

        One stat (one HEAD request on object storage) when nothing changed. The new metadata
        replaces the old in one assignment, so a concurrent reader sees one or the other whole.
        Metadata that is unreadable, damaged or names another model is not taken (logged): that
        collection must be reopened."""
        stamp = self.storage.meta_stamp()
        if stamp is None or stamp == self._meta_stamp:
            return False
        meta, unreadable = self.storage.read_meta()
        problem = str(unreadable) if unreadable is not None else meta_problem(meta)
        if problem is None and meta is not None and model_fields(meta) != model_fields(self.meta):
            problem = f"it now names the model {meta.get('model_name')}, not {self.meta.get('model_name')}"
        if problem is not None or meta is None:
            log.warning("%s changed but is not taken: %s; reopen the collection",
                        self.storage.meta_where, problem)
            return False
        self.storage.pull(TRANSFORMS_FILE)
        self.meta, self._meta_stamp = meta, stamp
        return True

    # ---- parts, loaded lazily ----------------------------------------------------------------
    @property
    def encoder(self) -> AnyEncoder:
        if self._encoder is None:
            with self._parts_lock:
                if self._encoder is None:
                    self._load_encoder()
        assert self._encoder is not None
        return self._encoder

    def share_encoder(self, other: Collection) -> None:
        """Use `other`'s encoder (loaded when either needs it) instead of loading a second one:
        `serve --watch` indexes through one Collection and queries through another, same model."""
        if model_fields(other.meta) != model_fields(self.meta):
            raise ModelMismatch(f"{other.uri} was built with {other.meta['model_name']}, "
                                f"{self.uri} with {self.meta['model_name']}",
                                hint="only collections of one model can share an encoder")
        self._encoder_of = other

    def _load_encoder(self) -> None:
        from clipsearch.backends import agreement, load_encoder

        if self._encoder_of is not None:
            self._encoder = self._encoder_of.encoder
            return
        encoder = load_encoder(self.spec, device=self.device, backend=self.backend, precision=self.precision)
        if encoder.model_id != self.meta["model_id"]:
            raise ModelMismatch(f"the weights of {self.meta['model_name']} changed since the "
                                f"collection at {self.path} was built",
                                hint="re-index into a new --db with the current weights")
        agreement.check(self.meta.get("backends", []), encoder, str(self.path))
        self._encoder = encoder

    def writing_encoder(self) -> AnyEncoder:
        """The encoder, for a run that writes vectors: its backend is recorded in the metadata."""
        from clipsearch.backends import agreement

        encoder = self.encoder
        self.record_writer(agreement.writer_record(encoder))
        return encoder

    def record_writer(self, record: dict[str, Any]) -> None:
        """Remember that vectors of this backend and precision (`agreement.writer_record`) are in
        the collection, so a query on another backend can be checked against them."""
        from clipsearch.backends import agreement

        writers = list(self.meta.get("backends", []))
        if not any(agreement.same(w, record) for w in writers):
            self.meta["backends"] = [*writers, record]
            self.save_meta()

    @property
    def store(self) -> Store:
        if self._store is None:
            with self._parts_lock:
                if self._store is None:
                    self._open_store()
        assert self._store is not None
        return self._store

    def _open_store(self) -> None:
        self._store = self.storage.store(int(self.meta["dim"]), self.meta)

    @property
    def searcher(self) -> Searcher:
        if self._searcher is None:
            with self._parts_lock:
                if self._searcher is None:
                    self._searcher = self.storage.searcher(self)
        return self._searcher

    @property
    def maintainer(self) -> Maintainer:
        """The write side: derived state after writes, compaction, transforms (see maintainer.py)."""
        if self._maintainer is None:
            with self._parts_lock:
                if self._maintainer is None:
                    self._maintainer = Maintainer(self)
        return self._maintainer

    @property
    def roots(self) -> list[str]:
        return list(self.meta.get("roots", []))

    @property
    def name(self) -> str:
        """The collection's human name (`index --name`; by default its first root's folder name),
        which the UI's status line and `info` show."""
        return collection_name(self.meta, self.uri)

    @name.setter
    def name(self, value: str) -> None:
        """Store a new name, kept across runs (metadata another process saved is taken first)."""
        text = checked_name(value)
        self.reload_meta()
        if self.meta.get("name") != text:
            self.meta["name"] = text
            self.save_meta()

    def scan_options(self) -> dict[str, Any]:
        """The walk options saved with the collection (what a plain re-run uses)."""
        saved = self.meta.get("scan") or {}
        return {"follow_symlinks": bool(saved.get("follow_symlinks", False)),
                "include_hidden": bool(saved.get("include_hidden", False)),
                "excludes": list(saved.get("excludes", []))}

    def set_scan_options(self, follow_symlinks: bool | None = None, include_hidden: bool | None = None,
                         exclude: Sequence[str] | None = None,
                         clear_excludes: bool = False) -> dict[str, Any]:
        """Change the saved walk options: None keeps a setting, `exclude` adds patterns
        (gitignore syntax, relative to each root), `clear_excludes` drops the saved ones first."""
        opts = self.scan_options()
        if follow_symlinks is not None:
            opts["follow_symlinks"] = bool(follow_symlinks)
        if include_hidden is not None:
            opts["include_hidden"] = bool(include_hidden)
        if clear_excludes:
            opts["excludes"] = []
        for pattern in exclude or ():
            _check_pattern(pattern)
            if pattern not in opts["excludes"]:
                opts["excludes"].append(pattern)
        if opts != self.scan_options() or "scan" not in self.meta:
            self.meta["scan"] = opts
            self.save_meta()
        return opts

    def scan_rules(self) -> ScanRules:
        """The rules of this collection's walks: saved options, saved roots, folders never entered."""
        opts = self.scan_options()
        never = [(os.path.realpath(os.fsencode(str(self.path))), "the collection's own folder"),
                 *cache_dirs()]
        return ScanRules(follow_symlinks=opts["follow_symlinks"], include_hidden=opts["include_hidden"],
                         excludes=tuple(opts["excludes"]), never_enter=tuple(never),
                         indexed=tuple(os.path.realpath(os.fsencode(r)) for r in self.roots))

    def run_roots(self, paths: Sequence[str | os.PathLike[str]] | None) -> list[bytes]:
        """What a run indexes: `paths`, or every saved root when none are given."""
        if paths:
            return resolve_roots(paths, self.roots)
        if not self.roots:
            raise UsageError("give the files or folders to index",
                             hint="clipsearch index PATH... (later runs without PATH update them all)")
        return [os.fsencode(r) for r in self.roots]

    @property
    def thumb_dir(self) -> Path:
        return self.path / thumbs.FOLDER

    # ---- writing -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writer_lock(self) -> Iterator[None]:
        """One writer per collection; readers never wait for it."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".writer.lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WriterBusy(f"another process is indexing {self.path}",
                                 hint="wait for it to finish; searching works meanwhile") from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def add(self, paths: Sequence[str | os.PathLike[str]] | None = None, *, batch_size: int = 32,
            workers: int | None = None, progress: bool = False, max_pixels: int | None = None,
            options: dict[str, Any] | None = None, fit_transforms: bool = True, commit_files: int = 256,
            decode: str = "auto", follow_symlinks: bool | None = None,
            include_hidden: bool | None = None, exclude: Sequence[str] | None = None,
            clear_excludes: bool = False, verify: bool = False, prune_missing: bool = False,
            commit_rows: int = 5000, ocr: str | None = None, asr: str | None = None,
            asr_model: str | None = None, language: str | None = None) -> IndexReport:
        """Index files and folders (default: every saved root): new and changed files are
        embedded, vanished ones removed.

        Returns an `IndexReport`. Bad files are skipped with a reason (see report.skipped and
        `skipped.log` in the collection directory); they never stop the job. `decode`: where
        JPEGs are decoded: auto (on the GPU when the encoder runs on CUDA), cpu or gpu.
        `follow_symlinks`, `include_hidden`, `exclude`, `clear_excludes` change the saved walk
        options (see `set_scan_options`). `verify` re-hashes files whose size and mtime did not
        change. A root that is missing or now empty keeps its rows (`report.vanished`) unless
        `prune_missing`.
        `options` go to the indexers, e.g. {"max_text_chunks": 5000} (text rows per document;
        0 = no cap); files indexed only in part are listed in report.notes. `commit_rows`: rows
        per commit, also the batch in which one big document's rows are committed.
        `ocr`: read the words in images, scanned pages and video frames (`clipsearch.ocr_index`):
        "auto" (default: when the engine is installed), "on" or "off". "on" without the engine
        indexes the rest and says why in `report.ocr_problem`.
        `asr`, `asr_model`, `language`: speech in videos and audio files (`clipsearch.speech`):
        "auto" (default: when an engine with weights is here), "on" or "off"; the Whisper model
        (a name, a folder, or "pocketsphinx"); the spoken language. The same as the options
        of those names.
        """
        from clipsearch import ocr as ocr_engine
        from clipsearch import pipeline
        from clipsearch.indexers.base import default_indexers

        try:
            read_words, ocr_problem = ocr_engine.resolve_mode(ocr), None
        except ocr_engine.OcrUnavailable as e:
            read_words, ocr_problem = False, f"{e} ({e.hint})"
        speech = {key: value for key, value in (("asr", asr), ("asr_model", asr_model),
                                                ("language", language)) if value is not None}
        options = {**(options or {}), **speech, "ocr": read_words}
        with self.index_run(paths, max_pixels=max_pixels, options=options, fit_transforms=fit_transforms,
                            follow_symlinks=follow_symlinks, include_hidden=include_hidden,
                            exclude=exclude, clear_excludes=clear_excludes) as run:
            facts = catalog.fresh(self.path)  # the table's file states without opening it
            run.report = pipeline.run(lambda: run.store, self.writing_encoder, run.roots, run.ctx,
                                      default_indexers(), batch_size=batch_size, workers=workers,
                                      progress=progress, commit_files=commit_files, decode=decode,
                                      rules=run.rules, verify=verify, prune_missing=prune_missing,
                                      commit_rows=commit_rows, states=facts.file_states() if facts else None)
            run.report.ocr_problem = ocr_problem
            self._read_words(run, read_words, progress)
            self._speech_after(run.report, run.ctx.options)
        return run.report

    def _read_words(self, run: IndexRun, read_words: bool, progress: bool) -> None:
        """The OCR pass of a run (`ocr_index.read_collection`). `meta["ocr_read"]` records that
        every file has been read, so an unchanged run with OCR on opens no table for it."""
        report = run.report
        if report is None or report.interrupted:
            return
        if not read_words:
            if report.indexed and self.meta.get("ocr_read"):
                self.meta["ocr_read"] = False  # these new files wait for a run with OCR on
                self.save_meta()
            return
        if not report.indexed and self.meta.get("ocr_read"):
            return
        from clipsearch.ocr_index import read_collection

        read_collection(run.store, self.writing_encoder, report, run.ctx.max_pixels, progress=progress)
        if not report.interrupted and report.ocr_problem is None and not self.meta.get("ocr_read"):
            self.meta["ocr_read"] = True
            self.save_meta()

    def _speech_after(self, report: IndexReport, options: dict[str, Any]) -> None:
        """After a run: transcribe what was indexed without speech when an engine runs now
        (`speech_backfill`), and remember whether anything is left unheard."""
        from clipsearch import speech_backfill
        from clipsearch.speech import engine_slot

        key = speech_backfill.META_KEY
        if report.interrupted:
            return
        if speech_backfill.due(self.meta, options):
            try:
                complete = speech_backfill.backfill(self.store, self.writing_encoder, options, report)
            except KeyboardInterrupt:
                report.interrupted = True
                return
            if complete:
                self.meta[key] = True
                self.save_meta()
        elif report.indexed and self.meta.get(key):
            slot = engine_slot(options)
            if slot is None or slot.problem:  # files went in unheard
                self.meta[key] = False
                self.save_meta()

    @contextlib.contextmanager
    def index_run(self, paths: Sequence[str | os.PathLike[str]] | None = None, *,
                  max_pixels: int | None = None, options: dict[str, Any] | None = None,
                  fit_transforms: bool = True,
                  follow_symlinks: bool | None = None, include_hidden: bool | None = None,
                  exclude: Sequence[str] | None = None, clear_excludes: bool = False) -> Iterator[IndexRun]:
        """One indexing run, for any engine: holds the writer lock, saves the walk options,
        prepares thumbnails and the indexers' context; on a clean exit with `run.report` set,
        writes the skip log and refreshes the derived state (see `IndexRun.finish`)."""
        roots = self.run_roots(paths)  # a usage error stops the run before it waits for anything
        keep_versions()  # a bad retention setting stops the run before it writes anything
        with self._writer_lock():
            # another process may have saved other roots or options since this one read them
            if self.reload_meta() and not paths:
                roots = self.run_roots(paths)
            self.set_scan_options(follow_symlinks, include_hidden, exclude, clear_excludes)
            run = IndexRun(self, roots, self._begin_run(roots, max_pixels, options), fit_transforms)
            yield run
            if run.report is not None:
                run.finish(run.report)

    def _begin_run(self, roots: list[bytes], max_pixels: int | None,
                   options: dict[str, Any] | None) -> IndexContext:
        """Start of an indexing run (see `index_run`), under the writer lock: thumbnail
        directory, the indexers' context, and the roots remembered for later runs."""
        from clipsearch.indexers.base import DEFAULT_MAX_PIXELS, IndexContext

        with storage_errors(str(self.path)):
            self.thumb_dir.mkdir(parents=True, exist_ok=True)
        leftovers.clean(self.path, self.searcher.ann_dir, self.thumb_dir)
        facts = catalog.fresh(self.path)  # what it says needs no table opened
        if (facts is None or facts.recorded_meta is None) and self.store.recorded_meta() is None:
            self.store.record_meta(model_fields(self.meta))  # a table from before tables recorded it
        if facts is None or facts.absolute_thumbs:
            self.store.relativize_thumbs()  # rows from before thumbnails were named relative
        if facts is None or facts.schema_version < catalog.current_schema_version():
            self.store.migrate()  # an older table gets the file columns (filled at the run's end)
        self._remember_roots([r for r in roots if os.path.exists(r)])
        return IndexContext(thumb_dir=self.thumb_dir, max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
                            options=dict(options or {}))

    def _finish_run(self, report: IndexReport, fit_transforms: bool) -> None:
        """End of an indexing run: the skip log, then (unless the run was interrupted) the
        derived state, which the maintainer brings up to date (`Maintainer.after_run`)."""
        self._remember_roots(report.linked_roots)
        if report.pruned_roots:
            self._forget_roots(report.pruned_roots)
        facts = None if report.interrupted else catalog.fresh(self.path)
        if not report.interrupted and (facts is None or facts.unread_files):
            from clipsearch.pipeline import fill_file_meta

            # all described at the last catalog: only the sources changed since can lack it
            last = catalog.last(self.path) if facts is None else None
            among = self.store.changes_since(last.version) if last is not None and not last.unread_files \
                else None
            report.described = fill_file_meta(self.store, among=among)
        self._write_skip_log(report)
        if not report.interrupted:
            self.maintainer.after_run(report, fit_transforms)

    def save_meta(self) -> None:
        """Persist `self.meta` where the table is (`storage.write_meta`)."""
        self.storage.write_meta(self.meta)
        self._meta_stamp = self.storage.meta_stamp()

    def _remember_roots(self, roots: list[bytes]) -> None:
        """Save roots by real path; a file root stays a file (it admits no siblings)."""
        known = {os.path.realpath(r) for r in self.meta.get("roots", [])}
        known |= {os.fsdecode(os.path.realpath(r)) for r in roots}
        changed = sorted(known) != self.meta.get("roots")
        if not self.meta.get("name") and (self.roots or roots):  # the first indexed root names it
            first = self.roots[0] if self.roots else os.fsdecode(os.path.realpath(roots[0]))
            first = first if os.path.isdir(first) else os.path.dirname(first)  # a file root: its folder
            self.meta["name"] = folder_name(first) or folder_name(self.uri) or "collection"
            changed = True
        if changed:
            self.meta["roots"] = sorted(known)
            self.save_meta()

    def _forget_roots(self, paths: Sequence[bytes]) -> list[str]:
        """Drop the saved roots that are, or lie under, any of `paths`; returns those dropped."""
        prefixes = [f for p in paths for f in (os.path.abspath(p), os.path.realpath(p))]
        dropped = [r for r in self.roots if any(is_within(os.fsencode(r), p) for p in prefixes)]
        if dropped:
            self.meta["roots"] = [r for r in self.roots if r not in dropped]
            self.save_meta()
        return dropped

    def _write_skip_log(self, report: IndexReport) -> None:
        lines = [f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  {report.summary()}"]
        lines += [f"{path}\t{reason}" for path, reason in report.skipped]
        lines += [f"{root}\tnot updated: {reason}; its rows are kept (--prune-missing removes them)"
                  for root, reason in report.vanished]
        lines += [f"{path}\tnote: {note}" for path, note in report.notes]
        with storage_errors(str(self.path / SKIP_LOG)):
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / SKIP_LOG).write_text("\n".join(lines) + "\n")
        self.storage.mirror(SKIP_LOG)  # other machines read it next to the table
        self.meta["last_run"] = {"summary": report.summary(), "skipped": len(report.skipped),
                                 "time": time.time()}
        self.save_meta()

    def refresh(self, fit_transforms: bool = True) -> None:
        """Bring what is derived from the table up to date: full-text index, compaction, ANN
        index, transforms, old versions (`Maintainer.refresh`). The caller holds the writer lock
        or knows no one else writes."""
        self.maintainer.refresh(fit_transforms=fit_transforms)

    def optimize(self, transforms: bool = False) -> OptimizeSummary:
        """Compact the table, rebuild the full-text index, retrain the ANN index and clean up
        old versions past the retention ($CLIPSEARCH_KEEP_VERSIONS_MINUTES, default 10);
        `transforms` refits them too. Takes the writer lock. Returns what changed."""
        with self._writer_lock():
            return self.maintainer.optimize(transforms=transforms)

    def fit_transforms(self, strict: bool = False, text_source: str = "builtin",
                       reason: str = "on demand") -> TransformSet:
        """Refit whitening + centering now, on a bounded sample (`Maintainer.fit_transforms`),
        under the writer lock. Nothing is saved when nothing could be fitted."""
        with self._writer_lock():
            return self.maintainer.fit_transforms(strict=strict, text_source=text_source, reason=reason)

    def remove(self, paths: Sequence[str | os.PathLike[str]]) -> int:
        """Forget these files (and everything under these folders), and drop them from the saved
        roots so a plain re-run does not bring them back. Needs no model. Returns sources removed.

        A file or folder inside a root that stays is indexed again by the next run of that root:
        exclude it (`exclude=`, `.clipsearchignore`) to keep it out."""
        raws = [os.fsencode(os.path.abspath(os.path.expanduser(os.fspath(p)))) for p in paths]
        prefixes = [f for r in raws for f in (r, os.path.realpath(r))]
        with self._writer_lock():
            self.reload_meta()  # the roots as saved now, not as this handle first read them
            gone = [r for r in self.store.file_states() if any(is_within(r, p) for p in prefixes)]
            n = self.store.delete_sources(gone, thumb_dir=self.thumb_dir)
            self._forget_roots(raws)
            if n:
                self.refresh()
            return n

    def watch(self, paths: Sequence[str | os.PathLike[str]] | None = None, *,
              stop: threading.Event | None = None, on_run: Callable[[IndexReport], None] | None = None,
              quiet: float = 1.5, max_wait: float = 10.0, rescan_every: float = 300.0,
              **add_options: Any) -> None:
        """Keep the collection current until `stop` is set (blocking): one catch-up run, then
        one incremental run per batch of file events under `paths` (default: the saved roots),
        a batch ending after `quiet` seconds without events or `max_wait` after its first; a
        full rescan every `rescan_every` seconds, and only that past the platform's watch limit.
        `on_run(report)` follows every run. See `clipsearch.watch.Watcher` for a thread."""
        from clipsearch.watch import Watcher

        Watcher(self, paths, quiet=quiet, max_wait=max_wait, rescan_every=rescan_every, on_run=on_run,
                add_options=add_options).run(stop)

    # ---- reading -----------------------------------------------------------------------------
    def search(self, text: str | None = None, image: str | os.PathLike[str] | Image.Image | None = None,
               k: int = 10, *, kind: str | None = None, under: str | None = None, offset: int = 0,
               whiten: bool = False, center: bool = False, invert: bool = False, hybrid: bool = False,
               sort: str | None = None, where: str | None = None, after: str | datetime | None = None,
               before: str | datetime | None = None, camera: str | None = None, place: str | None = None,
               near: str | tuple[float, ...] | None = None, format: str | None = None,
               min_pixels: int | None = None, terms: Iterable[Any] | str | None = None,
               words_only: bool = False, visual_only: bool = False,
               min_relevance: str | float | None = None) -> Hits:
        """Text and/or image query → ranked hits (cosine scores, best first). Their `warnings`
        say what the caller should know, e.g. that a long text query was cut.

        `terms`: more parts of the query, each with a signed weight (README, "Query operators"):
        `[("golden retriever", 1.0), (Path("pool.jpg"), 1.0), ("indoors", -1.0)]` (a str is
        text, a Path or PIL image an image, `query_terms.item(ID)` an indexed item), or the
        inline form as one str, `"2:golden retriever + ./pool.jpg - indoors"`. The query is
        the weighted sum of the terms' unit vectors, renormalised; `text` and `image` are
        terms of weight 1 before them.

        Each hit has a calibrated `relevance` (0..1, per query: `clipsearch.relevance`).
        `min_relevance`: "auto", a number in 0..1, or None/"off" (default: k hits, uncut);
        with a cut, `hits.weaker` are the hits it dropped, else `hits.would_cut` counts the
        hits the auto cut would drop.

        Metadata prefilters (README, "Filters"): `after`/`before` (ISO dates: 2024, 2024-08,
        2024-08-03; `before` exclusive, a partial date meaning its end), `camera` and `place`
        (case-insensitive substrings), `near` ("LAT,LON[,KM]" or a tuple), `format`,
        `min_pixels`, `where` (SQL over the documented columns). `sort`: score, typicality,
        date (oldest first) or -date; by date, the top hits by score are reordered.
        A text query ranks items by what they show and the words in them (document text, OCR);
        `words_only` / `visual_only` use one source alone; `kind="ocr"` the words read by OCR."""
        from clipsearch.relevance import parse_min_relevance

        threshold = parse_min_relevance(min_relevance)
        filters = Filters.parse(after=after, before=before, camera=camera, place=place, near=near,
                                format=format, min_pixels=min_pixels, where=where)
        extra = query_terms.as_terms(terms) if terms is not None else None
        hits = self.searcher.search(text=text, image=image, k=k, kind=kind, under=under, offset=offset,
                                    whiten=whiten, center=center, invert=invert, hybrid=hybrid, sort=sort,
                                    filters=filters or None, terms=extra,
                                    words_only=words_only, visual_only=visual_only, min_relevance=threshold)
        warnings = self.query_warnings(text)
        for t in extra or ():
            if t.kind == "text":
                warnings += [w for w in self.query_warnings(str(t.value)) if w not in warnings]
        return Hits(self._located(hits), warnings=warnings, min_relevance=threshold,
                    weaker=self._located(hits.weaker), would_cut=hits.would_cut)

    def _located(self, hits: list[Hit]) -> list[Hit]:
        """Hits whose thumbnail is the file it names in this collection's directory, wherever
        the collection lies now (rows store it relative, see `clipsearch.thumbs`), and which
        name their Live Photo companion (`clipsearch.companions`)."""
        for h in hits:
            h.thumb = thumbs.resolve(self.path, h.thumb)
        companions.attach(self.store, hits)
        return hits

    def query_warnings(self, text: str | None) -> list[str]:
        """What to tell the caller about a text query before (or without) running it."""
        from clipsearch.tokens import truncation_note

        note = truncation_note(self.encoder, text) if text and text.strip() else None
        return [note] if note else []

    def browse(self, order: str = "atypical", *, kind: str | None = None, k: int = 10, offset: int = 0,
               under: str | None = None) -> list[Hit]:
        """No query: the collection ordered by typicality, "atypical" (outliers) or "typical" first.

        `kind`: image, video, frame, doc/page, or all (default). Needs fitted whitening (enough
        image-like items; `clipsearch fit-transforms`). `score` is the typicality, ||w||^2.
        """
        return self._located(self.searcher.browse(order=order, kind=kind, k=k, offset=offset, under=under))

    def browse_by_date(self, *, kind: str | None = None, k: int = 10, offset: int = 0,
                       under: str | None = None) -> list[Hit]:
        """No query: one hit per file, newest first; `extra["month"]` ("2024-05") groups them.
        Reads only a few metadata columns, once per table version (then pages are slices)."""
        return self._located(self.searcher.browse_by_date(kind=kind, k=k, offset=offset, under=under))

    def browse_topics(self, *, kind: str | None = None) -> list[Topic]:
        """No query: the collection's topics, largest first: clusters of its image-like vectors,
        each with an id, a label (words from a built-in vocabulary and the collection's own
        text), a size (items) and a few example item ids. Computed once per table version and
        kept in the collection folder (`clipsearch.browse_topics`)."""
        return self.searcher.browse_topics(kind=kind)

    def browse_topic(self, topic: int, page: int = 0, *, k: int = 20, offset: int | None = None,
                     kind: str | None = None) -> list[Hit]:
        """The items of topic `topic`, one per file or page, the most central first, `k` a page
        (`page` from 0, or `offset`); score: the cosine to the topic's centre."""
        start = page * k if offset is None else offset
        return self._located(self.searcher.browse_topic(topic, kind=kind, k=k, offset=start))

    def items(self, ids: Sequence[str]) -> list[Hit]:
        """The hits of these row ids (e.g. a topic's examples), in order, score 0."""
        return self._located(self.searcher.items(ids))

    def moments(self, text: str, k: int = 10, under: str | None = None, **filters: Any) -> Hits:
        """Where in which video does `text` happen: hits of kind 'moment' with t_start/t_end.
        `filters`: the metadata prefilters of `search` (after, before, camera, place, ...)."""
        return self.search(text, k=k, kind="moment", under=under, **filters)

    def duplicates(self, *, threshold: str | float | None = "auto", kind: str = "all",
                   pixel_check: bool = True) -> DuplicateReport:
        """Groups of exact and near-duplicate files, each with a suggested keeper and why
        (`clipsearch.duplicates`). `threshold`: "auto" (from the collection's nearest-neighbour
        similarities) or a cosine similarity; `kind`: image, video or all (all also pairs a photo
        with the video it is a frame of). `pixel_check`: confirm candidate pairs on miniatures
        of the files (`clipsearch.pixel_check`). Reads only: nothing is moved or deleted."""
        from clipsearch import duplicates

        t = duplicates.parse_threshold(threshold)
        k = duplicates.check_kind(kind)
        ann = self.searcher.ann()
        report = duplicates.find(self.store, ann.search, kind=k, threshold=t,
                                 pixel_check=pixel_check, search_arrays=ann.search_arrays,
                                 picture_of=lambda src, thumb: src or thumbs.resolve(self.path, thumb))
        for g in report.groups:
            for i, f in enumerate(g.files):
                g.files[i] = replace(f, thumb=thumbs.resolve(self.path, f.thumb))
        return report

    def move_duplicates(self, dest: str | os.PathLike[str], *, threshold: str | float | None = "auto",
                        kind: str = "all", groups: Sequence[DuplicateGroup] | None = None) -> MoveResult:
        """Move every duplicate group's non-keepers into folder `dest` (never a delete); the
        collection follows (their rows move with them, no embedding). Crash-safe: a journal,
        finished by the next call (`clipsearch.duplicate_moves`). `groups`: those to act on
        (default: found now, after any interrupted move is finished)."""
        from clipsearch import duplicate_moves

        duplicate_moves.check_dest(self, Path(dest))
        resumed = duplicate_moves.finish_pending(self)
        if groups is None or resumed:
            groups = self.duplicates(threshold=threshold, kind=kind).groups
        result = duplicate_moves.move(self, groups, dest)
        result.resumed = resumed
        return result

    def remember_root(self, path: str | os.PathLike[str]) -> None:
        """Save `path` as a root of the collection (a plain `index` run then covers it)."""
        self._remember_roots([os.fsencode(os.path.abspath(os.fspath(path)))])

    def backend_info(self) -> dict[str, Any]:
        """The backend queries run on (the loaded encoder's, else what the export's manifest says
        one would get: no model is loaded for this) and the backends that wrote the vectors."""
        from clipsearch.backends import describe

        enc = self._encoder
        if enc is not None:
            query = {"backend": enc.backend, "precision": enc.precision, "note": "in use"}
        else:
            query = describe(self.spec, self.device, self.backend, self.precision)
        return {**query, "vectors_by": list(self.meta.get("backends", []))}

    def embed_text(self, text: str) -> np.ndarray:
        vec: np.ndarray = self.encoder.encode_texts([text])[0]
        return vec

    def info(self) -> dict[str, Any]:
        """What `clipsearch info` shows. The table's part comes from the catalog while it is
        fresh (`clipsearch.catalog`: no table opened), else from the table."""
        from clipsearch.ann import AnnIndex

        facts = catalog.fresh(self.path)
        if facts is not None:
            table = {"items": facts.rows, "sources": facts.sources, "kinds": dict(facts.kinds),
                     "disk_bytes": facts.disk_bytes(), "table_version": facts.version,
                     "table": {k: facts.stats[k] for k in ("versions", "fragments", "small_files",
                                                           "deleted_rows", "bytes")},
                     "taken": facts.taken}
            ann = AnnIndex.describe_saved(self.searcher.ann_dir)
            if ann is None or ann["version"] != facts.version:
                ann = self.searcher.ann_description()
        else:
            store = self.store
            t = store.scan(["kind", "source_raw"])
            kinds: dict[str, int] = {}
            for kd in t.column("kind").to_pylist():
                kinds[kd] = kinds.get(kd, 0) + 1
            table = {"items": t.num_rows, "sources": len(set(t.column("source_raw").to_pylist())),
                     "kinds": kinds, "disk_bytes": catalog.folder_bytes(self.path),
                     "table_version": store.version, "table": self.maintainer.table_stats().to_dict(),
                     "taken": store.file_summary()}
            ann = self.searcher.ann_description()
        return {
            "name": self.name,
            "path": str(self.path),
            "items": table["items"],
            "sources": table["sources"],
            "kinds": table["kinds"],
            "model": self.meta["model_name"],
            "model_id": self.meta["model_id"],
            "dim": int(self.meta["dim"]),
            "backend": self.backend_info(),
            "roots": self.roots,
            "scan": self.scan_options(),
            "disk_bytes": table["disk_bytes"],
            "table_version": table["table_version"],
            "table": table["table"],
            "ann": ann,
            "transforms": self.searcher.transforms_description(),
            "transforms_fit": self.searcher.transforms_fit(),
            "last_run": self.meta.get("last_run", {}).get("summary"),
            "taken": table["taken"],
            **self.storage.info_fields(),  # path (and a remote one's disk bytes and cache dir)
        }
