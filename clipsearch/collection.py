"""`Collection`: the public entry point. A directory holding a LanceDB table, its metadata,
the FAISS accelerator, fitted transforms and thumbnails.

    col = Collection.open("db")            # or Collection.create("db", model="clipsearch-tiny")
    col.add(["~/Pictures"])
    hits = col.search(text="a red car", k=10)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipsearch.errors import (
    ClipsearchError,
    CollectionNotFound,
    ModelMismatch,
    UsageError,
)
from clipsearch.model_registry import ModelSpec, resolve
from clipsearch.search import Hit, Searcher

log = logging.getLogger(__name__)

META_FILE = "clipsearch.json"
SCHEMA_VERSION = 1
SKIP_LOG = "skipped.log"
__all__ = ["Collection", "Hit"]


def default_db_dir() -> Path:
    """$CLIPSEARCH_DB, else $XDG_DATA_HOME/clipsearch/default (~/.local/share/clipsearch/default)."""
    env = os.environ.get("CLIPSEARCH_DB")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "clipsearch" / "default"


def resolve_roots(paths: Sequence[str | os.PathLike]) -> list[bytes]:
    """Absolute path bytes of what the user asked to index; a missing path is a usage error."""
    roots = []
    for p in paths:
        raw = os.fsencode(os.path.abspath(os.path.expanduser(os.fspath(p))))
        if not os.path.lexists(raw):
            raise UsageError(f"{os.fsdecode(raw)}: no such file or directory",
                             hint="check the path you passed to index")
        roots.append(raw)
    return roots


def check_meta(meta: dict, where: str, model: str | None = None, checkpoint: str | None = None) -> None:
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


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def new_meta(encoder) -> dict[str, Any]:
    """`clipsearch.json` of a new collection: what model built it, for checks on every open."""
    return {"schema_version": SCHEMA_VERSION, "model": encoder.spec.to_dict(),
            "model_name": encoder.spec.name, "model_id": encoder.model_id, "dim": encoder.dim,
            "created": time.time(), "roots": []}


class Collection:
    """A searchable collection on disk. Cheap to open; the model loads on first use."""

    def __init__(self, path: Path, meta: dict, device: str | None = "auto") -> None:
        self.path = Path(os.path.abspath(path))
        self.meta = meta
        self.device = device
        self.spec = ModelSpec.from_dict(meta["model"])
        self._encoder = None
        self._store = None
        self._searcher: Searcher | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike | None = None, model: str | None = None,
               checkpoint: str | None = None, device: str | None = "auto",
               pooling: str = "mean") -> Collection:
        """Create a collection for `model` (loads it first, so a bad model leaves nothing behind)."""
        from clipsearch.encoders import Encoder

        p = Path(path).expanduser() if path else default_db_dir()
        if (p / META_FILE).exists():
            raise UsageError(f"a collection already exists at {p}", hint="use Collection.open")
        encoder = Encoder.load(resolve(model, checkpoint, pooling), device=device)
        p.mkdir(parents=True, exist_ok=True)
        meta = new_meta(encoder)
        _write_json_atomic(p / META_FILE, meta)
        col = cls(p, meta, device)
        col._encoder = encoder
        return col

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, device: str | None = "auto",
             model: str | None = None, checkpoint: str | None = None) -> Collection:
        """Open an existing collection. If `model` is given it must be the one it was built with."""
        p = Path(path).expanduser() if path else default_db_dir()
        meta_path = p / META_FILE
        if not meta_path.is_file():
            raise CollectionNotFound(f"no collection at {p}",
                                     hint="create one with `clipsearch index PATH --db DIR`")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise ClipsearchError(f"{meta_path} is unreadable: {e}",
                                  hint="restore it from a backup, or re-index into a new --db") from e
        check_meta(meta, str(p), model, checkpoint)
        return cls(p, meta, device)

    @classmethod
    def open_or_create(cls, path: str | os.PathLike | None = None, model: str | None = None,
                       checkpoint: str | None = None, device: str | None = "auto") -> Collection:
        p = Path(path).expanduser() if path else default_db_dir()
        if (p / META_FILE).exists():
            return cls.open(p, device=device, model=model, checkpoint=checkpoint)
        return cls.create(p, model=model, checkpoint=checkpoint, device=device)

    @staticmethod
    def exists(path: str | os.PathLike | None = None) -> bool:
        p = Path(path).expanduser() if path else default_db_dir()
        return (p / META_FILE).is_file()

    # ---- parts, loaded lazily ----------------------------------------------------------------
    @property
    def encoder(self):
        if self._encoder is None:
            from clipsearch.encoders import Encoder

            self._encoder = Encoder.load(self.spec, device=self.device)
            if self._encoder.model_id != self.meta["model_id"]:
                raise ModelMismatch(f"the weights of {self.meta['model_name']} changed since the "
                                    f"collection at {self.path} was built",
                                    hint="re-index into a new --db with the current weights")
        return self._encoder

    @property
    def store(self):
        if self._store is None:
            from clipsearch.store import Store

            self._store = Store(self.path, int(self.meta["dim"]))
        return self._store

    @property
    def searcher(self) -> Searcher:
        if self._searcher is None:
            self._searcher = Searcher(self)
        return self._searcher

    @property
    def roots(self) -> list[str]:
        return list(self.meta.get("roots", []))

    @property
    def thumb_dir(self) -> Path:
        return self.path / "thumbs"

    # ---- writing -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writer_lock(self) -> Iterator[None]:
        """One writer per collection; readers never wait for it."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".writer.lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ClipsearchError(f"another process is indexing {self.path}",
                                      hint="wait for it to finish; searching works meanwhile") from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def add(self, paths: Sequence[str | os.PathLike], *, batch_size: int = 32,
            workers: int | None = None, progress: bool = False, max_pixels: int | None = None,
            options: dict | None = None, fit_transforms: bool = True, commit_files: int = 256,
            decode: str = "auto"):
        """Index files and folders: new and changed files are embedded, vanished ones removed.

        Returns an `IndexReport`. Bad files are skipped with a reason (see report.skipped and
        `skipped.log` in the collection directory); they never stop the job. `decode`: where
        JPEGs are decoded: auto (on the GPU when the encoder runs on CUDA), cpu or gpu.
        """
        from clipsearch import pipeline
        from clipsearch.indexers.base import default_indexers

        roots = resolve_roots(paths)
        with self._writer_lock():
            ctx = self._begin_run(roots, max_pixels, options)
            report = pipeline.run(self.store, self.encoder, roots, ctx, default_indexers(),
                                  batch_size=batch_size, workers=workers, progress=progress,
                                  commit_files=commit_files, decode=decode)
            self._finish_run(report, fit_transforms)
        return report

    def _begin_run(self, roots: list[bytes], max_pixels: int | None, options: dict | None):
        """Start of an indexing run (local or Ray engine), under the writer lock: thumbnail
        directory, the indexers' context, and the roots remembered for later runs."""
        from clipsearch.indexers.base import DEFAULT_MAX_PIXELS, IndexContext

        self.thumb_dir.mkdir(parents=True, exist_ok=True)
        self._remember_roots(roots)
        return IndexContext(thumb_dir=self.thumb_dir, max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
                            options=dict(options or {}))

    def _finish_run(self, report, fit_transforms: bool) -> None:
        """End of an indexing run: the skip log, then the derived state (ANN, full-text index,
        transforms), unless the run was interrupted or changed nothing and the saved ANN index
        already matches the table (a no-op re-run should cost a stat per file, not a rebuild)."""
        self._write_skip_log(report)
        unchanged = report.indexed == 0 and report.removed == 0
        skip = unchanged and self.searcher.ann_saved_version() == self.store.version
        if not report.interrupted and not skip:
            self.refresh(fit_transforms=fit_transforms)

    def save_meta(self) -> None:
        """Persist `self.meta` (a remote collection writes it next to its table instead)."""
        _write_json_atomic(self.path / META_FILE, self.meta)

    def _remember_roots(self, roots: list[bytes]) -> None:
        known = set(self.meta.get("roots", []))
        for r in roots:
            d = r if os.path.isdir(r) else os.path.dirname(r)
            known.add(os.fsdecode(d))
        self.meta["roots"] = sorted(known)
        self.save_meta()

    def _write_skip_log(self, report) -> None:
        lines = [f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  {report.summary()}"]
        lines += [f"{path}\t{reason}" for path, reason in report.skipped]
        (self.path / SKIP_LOG).write_text("\n".join(lines) + "\n")
        self.meta["last_run"] = {"summary": report.summary(), "skipped": len(report.skipped),
                                 "time": time.time()}
        self.save_meta()

    def refresh(self, fit_transforms: bool = True) -> None:
        """Rebuild what is derived from the table: the ANN index, full-text index, transforms."""
        self.searcher.ensure_text_index()  # first: building it makes a new table version
        self.searcher.rebuild_ann(save=True)  # tagged with the final version
        self.searcher.after_write(fit_transforms=fit_transforms)

    def remove(self, paths: Sequence[str | os.PathLike]) -> int:
        """Forget these files (and everything under these folders). Returns sources removed."""
        with self._writer_lock():
            states = self.store.file_states()
            prefixes = [os.fsencode(os.path.abspath(os.fspath(p))) for p in paths]
            gone = [r for r in states if any(r == p or r.startswith(p.rstrip(b"/") + b"/")
                                             for p in prefixes)]
            n = self.store.delete_sources(gone)
            self.refresh()
            return n

    # ---- reading -----------------------------------------------------------------------------
    def search(self, text: str | None = None, image: str | os.PathLike | Image.Image | None = None,
               k: int = 10, *, kind: str | None = None, under: str | None = None, offset: int = 0,
               whiten: bool = False, center: bool = False, invert: bool = False, hybrid: bool = False,
               sort: str | None = None) -> list[Hit]:
        """Text and/or image query → ranked hits (cosine scores, best first)."""
        return self.searcher.search(text=text, image=image, k=k, kind=kind, under=under, offset=offset,
                                    whiten=whiten, center=center, invert=invert, hybrid=hybrid, sort=sort)

    def browse(self, order: str = "atypical", *, kind: str | None = None, k: int = 10, offset: int = 0,
               under: str | None = None) -> list[Hit]:
        """No query: the collection ordered by typicality, "atypical" (outliers) or "typical" first.

        `kind`: image, video, frame, doc/page, or all (default). Needs fitted whitening (enough
        image-like items; `clipsearch fit-transforms`). `score` is the typicality, ||w||^2.
        """
        return self.searcher.browse(order=order, kind=kind, k=k, offset=offset, under=under)

    def moments(self, text: str, k: int = 10, under: str | None = None) -> list[Hit]:
        """Where in which video does `text` happen: hits of kind 'moment' with t_start/t_end."""
        return self.searcher.moments(text, k=k, under=under)

    def embed_text(self, text: str) -> np.ndarray:
        return self.encoder.encode_texts([text])[0]

    def info(self) -> dict[str, Any]:
        store = self.store
        t = store.scan(["kind", "source"])
        kinds: dict[str, int] = {}
        for kd in t.column("kind").to_pylist():
            kinds[kd] = kinds.get(kd, 0) + 1
        size = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return {
            "path": str(self.path),
            "items": t.num_rows,
            "sources": len(set(t.column("source").to_pylist())),
            "kinds": kinds,
            "model": self.meta["model_name"],
            "model_id": self.meta["model_id"],
            "dim": int(self.meta["dim"]),
            "roots": self.roots,
            "disk_bytes": size,
            "table_version": store.version,
            "ann": self.searcher.ann_description(),
            "transforms": self.searcher.transforms_description(),
            "last_run": self.meta.get("last_run", {}).get("summary"),
        }
