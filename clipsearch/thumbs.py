"""Thumbnails: how rows name them, where they really are, and which are no longer anyone's.

Rows store a thumbnail as a path relative to the collection directory (`thumbs/NAME`), so a
collection copied or moved elsewhere still finds its thumbnails: the stored name is resolved
against the collection's path when read. Rows written before that hold absolute paths; one
under some `.../thumbs/NAME` resolves to this collection's `thumbs/NAME` when that file exists,
and the next index run rewrites them relative (`Store.relativize_thumbs`).

A file that moves keeps its rows and their thumbnails, which are copied under names of the new
path (`carry`): a later file at the old path then writes its own thumbnails without touching
the moved file's. Copied, not hard-linked: an indexer may rewrite a thumbnail in place.
`sweep` deletes the files no row names any more.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from clipsearch import leftovers

FOLDER = "thumbs"  # inside the collection directory
SWEEP_MIN_AGE = 300.0  # seconds: a younger file may be a writer's, written before its commit


def stored_form(path: str | None) -> str | None:
    """What a row records for a thumbnail: `thumbs/NAME` for a file in a thumbs folder, so the
    collection can move; anything else as given."""
    if not path or not os.path.isabs(path):
        return path
    parent, name = os.path.split(path)
    return f"{FOLDER}/{name}" if os.path.basename(parent) == FOLDER and name else path


def resolve(base: str | os.PathLike[str], stored: str | None) -> str | None:
    """The file a row's thumbnail names, for the collection at `base`. A relative name is
    under `base`; an absolute one in some thumbs folder (an older row) is this collection's
    file of that name when it exists, else the path as stored."""
    if not stored:
        return stored
    if not os.path.isabs(stored):
        return os.path.join(os.fspath(base), stored)
    relative = stored_form(stored)
    if relative != stored and relative is not None:
        local = os.path.join(os.fspath(base), relative)
        if os.path.isfile(local):
            return local
    return stored


def carry(base: str | os.PathLike[str], stored: str | None, new_source: bytes) -> str | None:
    """The thumbnail `stored` copied under a name of `new_source`, as a row records it;
    `stored` itself when it names no file here."""
    old = resolve(base, stored)
    if not old or not os.path.isfile(old):
        return stored
    name = os.path.basename(old)
    digest = hashlib.blake2b(new_source + b"\0" + name.encode(), digest_size=12).hexdigest()
    new = Path(base) / FOLDER / f"m_{digest}{os.path.splitext(name)[1]}"
    tmp = leftovers.temp_name(new)  # a crash leaves a name the next run's cleanup knows
    shutil.copyfile(old, tmp)
    os.replace(tmp, new)
    return f"{FOLDER}/{new.name}"


def remove(thumb_dir: str | os.PathLike[str], stored: Iterable[str]) -> int:
    """Delete the thumbnails these rows named, those inside `thumb_dir` only (names resolved
    against the collection directory holding it); returns how many went."""
    folder = os.path.realpath(thumb_dir)
    base = os.path.dirname(os.path.abspath(thumb_dir))
    n = 0
    for s in stored:
        path = resolve(base, s)
        if path and os.path.realpath(os.path.dirname(path)) == folder:
            with contextlib.suppress(OSError):
                os.unlink(path)
                n += 1
    return n


def sweep(base: str | os.PathLike[str], referenced: Iterable[str | None],
          min_age: float = SWEEP_MIN_AGE) -> int:
    """Delete the files of the thumbs folder that no row names (`referenced`: the thumb column),
    leaving alone those younger than `min_age` seconds. Returns how many went."""
    folder = Path(base) / FOLDER
    keep = {os.path.basename(s) for s in referenced if s}
    cutoff = time.time() - min_age
    n = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for e in entries:
        if e.name in keep or not e.is_file(follow_symlinks=False):
            continue
        with contextlib.suppress(OSError):
            if e.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(e.path)
                n += 1
    return n
