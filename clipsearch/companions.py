"""Live Photos: a still and the short video of the same name beside it belong together.

A phone's Live Photo (or motion photo) is two files in one folder, `IMG_0001.HEIC` and
`IMG_0001.MOV` (a `.JPG` and an `.MP4` once exported). Each is indexed as what it is, an image
and a video; a hit on either names the other as its `companion`.

Derived at query time, not stored: the link is a fact about two rows, true only while both are
indexed, so a stored one would go stale whenever either file is added, moved, excluded or
removed, and every writer (index, watch, moves, prune) would have to keep it. Looking it up
costs one scan of the `source` column for a page of hits, as the UI's page of file URLs does.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from clipsearch.store import sql_in

if TYPE_CHECKING:
    from clipsearch.search import Hit
    from clipsearch.store import Store

STILL_EXTENSIONS = (".heic", ".heif", ".jpg", ".jpeg")
MOTION_EXTENSIONS = (".mov", ".mp4")
STILL_KINDS = frozenset({"image"})
MOTION_KINDS = frozenset({"video", "video_frame", "video_window", "moment"})


def candidates(source: str, kind: str) -> list[str]:
    """The paths a companion of `source` (a hit of `kind`) could have: the same folder and
    name, the other medium's extensions as phones and cameras spell them (lower or upper case)."""
    stem, ext = os.path.splitext(source)
    others: tuple[str, ...]
    if kind in STILL_KINDS and ext.lower() in STILL_EXTENSIONS:
        others = MOTION_EXTENSIONS
    elif kind in MOTION_KINDS and ext.lower() in MOTION_EXTENSIONS:
        others = STILL_EXTENSIONS
    else:
        return []
    return [stem + e for o in others for e in (o, o.upper())]


def attach(store: Store, hits: list[Hit]) -> None:
    """Set `companion` (the other file's path) and `companion_id` (one of its rows) on every hit
    whose Live Photo partner is indexed."""
    wanted = {h.source: candidates(h.source, h.kind) for h in hits}
    paths = sorted({p for ps in wanted.values() for p in ps})
    if not paths:
        return
    found: dict[str, tuple[str, str]] = {}  # path -> (row id, kind)
    for r in store.scan(["id", "source", "kind"], sql_in("source", paths)).to_pylist():
        found.setdefault(r["source"], (r["id"], r["kind"]))
    if not found:
        return
    for h in hits:
        still = h.kind in STILL_KINDS
        for path in wanted.get(h.source, ()):
            row = found.get(path)
            if row is not None and (row[1] in MOTION_KINDS if still else row[1] in STILL_KINDS):
                h.companion, h.companion_id = path, row[0]
                break
