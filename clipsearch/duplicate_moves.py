"""Moving the non-keepers of duplicate groups into a folder the user names: never a delete.

Crash safety is move-then-index with a journal. Before any file moves, the plan (each source
and its destination) is written atomically to `DB/duplicates.moves.json`, and the destination
folder is saved as a root of the collection. Each file is then renamed (on another file system:
copied to a temporary name, synced, renamed into place, and only then the original unlinked).
Last, an ordinary incremental index run over the destination and the sources' roots carries
each moved file's rows, vectors included, to its new path (`moves`: recognised by content
hash, no embedding), and the journal is removed.

A kill at any point loses no file: each one is at its source or at its destination (a
cross-device copy cut short leaves the original and a temporary file, which the resume
removes). The table is always a committed version; until the index run it names the old
paths, and the next `move` (which finishes a journal it finds first) or any `clipsearch index`
brings it to the files.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clipsearch.errors import UsageError
from clipsearch.fsutil import is_within, write_atomic
from clipsearch.testpoints import MOVE_STEP, pause_at

if TYPE_CHECKING:
    from clipsearch.collection import Collection
    from clipsearch.duplicates import DuplicateGroup
    from clipsearch.pipeline import IndexReport

JOURNAL = "duplicates.moves.json"
PART = ".clipsearch-part"  # suffix of a cross-device copy not yet in place


@dataclass
class MoveResult:
    """What a move did: files moved (source, destination), and the index run that followed."""

    moved: list[tuple[str, str]]
    resumed: int  # files of an interrupted earlier move finished first
    report: IndexReport | None

    def line(self) -> str:
        resumed = f" (and finished {self.resumed} of an interrupted move)" if self.resumed else ""
        carried = f"; the collection followed: {self.report.summary()}" if self.report else ""
        return f"moved {len(self.moved)} files{resumed}{carried}"


def plan(groups: Sequence[DuplicateGroup], dest: Path, roots: Sequence[str]) -> list[tuple[str, str]]:
    """(source, destination) of every non-keeper not already inside `dest`: the path below its
    root, kept under `dest` (so two `IMG_0001.jpg` of two folders do not collide), with a
    numbered name where a file is there already."""
    dest = Path(os.path.abspath(dest))
    out: list[tuple[str, str]] = []
    taken: set[str] = set()
    for g in groups:
        for f in g.others:
            if is_within(f.source, str(dest)):
                continue
            root = max((r for r in roots if is_within(f.source, r) and f.source != r), key=len, default=None)
            rel = os.path.relpath(f.source, root) if root else os.path.basename(f.source)
            target = dest / rel
            stem, suffix, i = target.with_suffix(""), target.suffix, 1
            while str(target) in taken or target.exists():
                target = Path(f"{stem}-{i}{suffix}")
                i += 1
            taken.add(str(target))
            out.append((f.source, str(target)))
    return out


def check_dest(col: Collection, dest: Path) -> Path:
    """The destination as an absolute path; refused inside the collection's own folder or onto a file."""
    dest = Path(os.path.abspath(os.path.expanduser(dest)))
    if is_within(str(dest), str(Path(col.path).resolve())) or is_within(str(dest), str(col.path)):
        raise UsageError(f"--move-to {dest} is inside the collection's folder",
                         hint="name a folder of your own, e.g. ~/Pictures/duplicates")
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"--move-to {dest} is a file, not a folder", hint="name a folder (it is created)")
    return dest


def _move_one(src: str, dst: str) -> bool:
    """Move one file; False when it is no longer at `src` (moved already, or gone)."""
    if not os.path.lexists(src):
        return False
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.lexists(dst):  # never overwrite: the plan chose a free name, so this is ours done
        return False
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        part = dst + PART
        shutil.copy2(src, part)
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        os.rename(part, dst)
        os.unlink(src)
    return True


def _journal(col: Collection) -> Path:
    return Path(col.path) / JOURNAL


def pending(col: Collection) -> dict | None:
    """The journal of a move that did not finish, or None."""
    p = _journal(col)
    try:
        return dict(json.loads(p.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # a torn journal cannot be: it is written atomically; an unreadable one is ignored


def _run(col: Collection, journal: dict) -> tuple[list[tuple[str, str]], IndexReport]:
    moved = []
    for src, dst in journal["moves"]:
        part = dst + PART
        if os.path.lexists(part) and os.path.lexists(src):
            os.unlink(part)  # a cross-device copy cut short: the original is still there
        if _move_one(src, dst):
            moved.append((src, dst))
            pause_at(MOVE_STEP)
    report = col.add([journal["dest"], *journal["roots"]], fit_transforms=False)
    _journal(col).unlink(missing_ok=True)
    return moved, report


def finish_pending(col: Collection) -> int:
    """Finish a move that a kill or a failure cut short (its journal): the files still to move
    are moved, the collection follows. Returns how many files it moved now."""
    earlier = pending(col)
    if earlier is None:
        return 0
    done, _ = _run(col, earlier)
    return len(done)


def move(col: Collection, groups: Sequence[DuplicateGroup], dest: str | os.PathLike[str]) -> MoveResult:
    """Move every group's non-keepers under `dest` (see the module docstring). Groups must be
    found after `finish_pending`, so that they name the files where they are."""
    target = check_dest(col, Path(dest))
    moves = plan(groups, target, col.roots)
    if not moves:
        return MoveResult([], 0, None)
    roots = sorted({r for src, _ in moves for r in col.roots if is_within(src, r)})
    target.mkdir(parents=True, exist_ok=True)
    journal = {"dest": str(target), "roots": roots, "moves": moves}
    write_atomic(_journal(col), json.dumps(journal))
    col.remember_root(target)
    moved, report = _run(col, journal)
    return MoveResult(moved, 0, report)
