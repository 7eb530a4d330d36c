"""Where exported encoders live, and how they get there without ever being half-written.

One folder per model (`export_dir`): the ONNX towers, the tokenizer and a `manifest.json` that
records the exporter versions, a sha256 per file, the probe's agreement figures and timings.
An export is built in a temporary folder and renamed into place under a per-model file lock,
so a crash leaves the old export or none, and two processes exporting at once take turns (the
second finds the first one's result). A file that no longer matches its sha256 or size, or a
manifest that cannot be read, makes the whole export count as missing: it is discarded and
redone. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from clipsearch.fsutil import write_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
VERIFIED = "verified.json"  # files whose sha256 was checked, with the stat they had then
FORMAT = 1  # manifest layout; a different one is redone


class CorruptExport(Exception):
    """A file of an export is missing, truncated or altered (its sha256 differs)."""


def exports_root() -> Path:
    """$CLIPSEARCH_CACHE_DIR/exports, else the exports folder in clipsearch's cache:
    $CLIPSEARCH_CACHE/exports, else $XDG_CACHE_HOME/clipsearch/exports (~/.cache/...)."""
    for env in ("CLIPSEARCH_CACHE_DIR", "CLIPSEARCH_CACHE"):
        if os.environ.get(env):
            return Path(os.environ[env]).expanduser() / "exports"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "clipsearch" / "exports"


def safe_name(model_id: str) -> str:
    """A folder name for `model_id`: readable, and unique through a short hash of the whole id."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("._")[:80] or "model"
    return f"{readable}-{hashlib.sha256(model_id.encode()).hexdigest()[:10]}"


def export_dir(model_id: str) -> Path:
    return exports_root() / safe_name(model_id)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stat_key(st: os.stat_result) -> list[int]:
    """What changes whenever a file's bytes do: size, mtime, and inode and ctime (which no
    copy or `utime` can carry over)."""
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def file_record(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


class Export:
    """One model's export as found in the cache: its manifest, and its files checked on use."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.manifest = manifest
        self._verified: set[str] = set()
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return str(self.manifest["model_id"])

    def file(self, name: str) -> Path:
        """The path of a listed file, its sha256 checked (CorruptExport if it differs).

        Checked once per file and not again while its stat (size, mtime, inode, ctime) stays
        as it was then, as recorded in `verified.json`: hashing a ViT's towers costs a cold
        query more than the rest of its start."""
        rec = self.manifest.get("files", {}).get(name)
        if rec is None:
            raise CorruptExport(f"{self.folder}: {name} is not in the manifest")
        path = self.folder / name
        with self._lock:
            if name not in self._verified:
                try:
                    st = path.stat()
                    stamp = {"sha256": rec["sha256"], "stat": _stat_key(st)}
                    seen = self._stamps().get(name) == stamp
                    ok = seen or (st.st_size == rec["bytes"] and sha256_file(path) == rec["sha256"])
                except OSError as e:
                    raise CorruptExport(f"{path}: unreadable ({e.strerror or e})") from e
                if not ok:
                    raise CorruptExport(f"{path} does not match its sha256 in the manifest "
                                        "(truncated or altered)")
                if not seen:
                    self._record_stamp(name, stamp)
                self._verified.add(name)
        return path

    def _stamps(self) -> dict[str, Any]:
        try:
            found = json.loads((self.folder / VERIFIED).read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def _record_stamp(self, name: str, stamp: dict[str, Any]) -> None:
        """Remember a checked file's stat (best effort: a read-only cache hashes every time)."""
        stamps = {**self._stamps(), name: stamp}
        try:
            write_atomic(self.folder / VERIFIED, json.dumps(stamps))
        except OSError:
            pass

    def derived_current(self, names: list[str], source: str) -> bool:
        """Whether files derived from the listed file `source` (`record_derived`) are all
        there, unchanged since they were made from the source as the manifest lists it now."""
        want = self.manifest.get("files", {}).get(source, {}).get("sha256")
        stamps = self._stamps()
        for name in names:
            try:
                key = _stat_key((self.folder / name).stat())
            except OSError:
                return False
            if want is None or stamps.get(name) != {"from": want, "stat": key}:
                return False
        return True

    def record_derived(self, names: list[str], source: str) -> None:
        """Record files just derived from `source` (see `derived_current`)."""
        want = self.manifest["files"][source]["sha256"]
        stamps = {**self._stamps(), **{n: {"from": want, "stat": _stat_key((self.folder / n).stat())}
                                       for n in names}}
        write_atomic(self.folder / VERIFIED, json.dumps(stamps))

    def variant(self, backend: str, precision: str) -> dict[str, Any] | None:
        out = self.manifest.get("variants", {}).get(f"{backend}/{precision}")
        return out if isinstance(out, dict) else None


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest, or None when it is missing, unreadable, of another layout, or lists a file
    that is missing or of the wrong size (a cheap stat: sha256 is checked when a file is used)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "model_id" not in manifest:
        return None
    files = manifest.get("files")
    if not isinstance(files, dict):
        return None
    for name, rec in files.items():
        try:
            if (folder / name).stat().st_size != rec["bytes"]:
                return None
        except (OSError, KeyError, TypeError):
            return None
    return manifest


def load(model_id: str) -> Export | None:
    """The cached export of `model_id`, or None (a damaged one is discarded on the way)."""
    folder = export_dir(model_id)
    if not folder.is_dir():
        return None
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("model_id") != model_id:
        log.info("discarding the damaged or outdated export in %s", folder)
        discard(folder)
        return None
    return Export(folder, manifest)


def discard(folder: Path) -> None:
    """Remove an export folder: renamed aside first, so no reader sees it half-deleted."""
    if not folder.exists():
        return
    trash = folder.with_name(f".trash-{folder.name}-{os.getpid()}-{threading.get_ident()}")
    try:
        os.replace(folder, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def locked(model_id: str) -> Iterator[None]:
    """Hold the model's export lock: one process at a time builds or changes its export."""
    root = exports_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{safe_name(model_id)}.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build(model_id: str, make: Callable[[Path], dict[str, Any]],
          accept: Callable[[Export], bool] = lambda e: True) -> Export:
    """The export of `model_id`: the cached one when it is sound and `accept`ed, else one made
    now by `make(folder)` (which writes the files and returns the manifest's other fields).

    Under the model's lock: a process that waited finds the export the other one finished."""
    with locked(model_id):
        found = load(model_id)
        if found is not None and accept(found):
            return found
        root = exports_root()
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{safe_name(model_id)}-", dir=root))
        try:
            fields = make(tmp)
            files = {p.name: file_record(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            manifest = {**fields, "format": FORMAT, "model_id": model_id, "files": files}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            final = export_dir(model_id)
            discard(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Export(final, manifest)


def add_files(export: Export, files: dict[str, Path], update: Callable[[dict[str, Any]], None]) -> Export:
    """Add files (moved in from temporary paths) and manifest changes to an existing export.
    The caller holds `locked(export.model_id)`; the manifest is replaced atomically last."""
    manifest = json.loads(json.dumps(export.manifest))
    for name, src in files.items():
        rec = file_record(src)
        os.replace(src, export.folder / name)
        manifest["files"][name] = rec
    update(manifest)
    write_atomic(export.folder / MANIFEST, json.dumps(manifest, indent=2))
    return Export(export.folder, manifest)
