"""Walk the roots and report every candidate file, or why it cannot be read.

Paths are bytes from start to end, so names that are not valid UTF-8 survive. Symlinks are
followed, but a directory is entered once (by device and inode), so symlink loops end.
"""

from __future__ import annotations

import errno
import os
import stat as st
from collections.abc import Iterator
from dataclasses import dataclass

MEDIA_EXTENSIONS = {
    b".jpg", b".jpeg", b".png", b".webp", b".bmp", b".gif", b".tif", b".tiff",
    b".mp4", b".m4v", b".mkv", b".webm", b".mov", b".avi",
    b".pdf", b".txt", b".md", b".markdown",
}


@dataclass
class Found:
    path: bytes
    mtime: float
    size: int


@dataclass
class Problem:
    path: bytes
    reason: str


def has_media_extension(path: bytes) -> bool:
    return os.path.splitext(path)[1].lower() in MEDIA_EXTENSIONS


def _explain(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "symlink loop"
    if e.errno == errno.EACCES:
        return "permission denied (unreadable)"
    return e.strerror or str(e)


def _classify(path: bytes) -> Found | Problem | str | None:
    """Found file, Problem, 'dir' for a directory to enter, or None to ignore."""
    try:
        s = os.stat(path)
    except OSError as e:
        if os.path.islink(path):
            return Problem(path, "symlink loop" if e.errno == errno.ELOOP else "dangling symlink")
        return Problem(path, _explain(e))
    if st.S_ISDIR(s.st_mode):
        return "dir"
    if not st.S_ISREG(s.st_mode):
        return None
    return Found(path, s.st_mtime, s.st_size)


def scan(roots: list[bytes]) -> Iterator[Found | Problem]:
    """Yield regular files (any extension) and problems under the roots, depth first, sorted."""
    seen_dirs: set[tuple[int, int]] = set()
    for root in roots:
        root = os.path.abspath(root)
        kind = _classify(root)
        if isinstance(kind, Found | Problem):
            yield kind
            continue
        if kind != "dir":
            continue
        stack = [root]
        while stack:
            d = stack.pop()
            try:
                s = os.stat(d)
                key = (s.st_dev, s.st_ino)
                if key in seen_dirs:
                    if os.path.islink(d):
                        yield Problem(d, "symlink loop (directory already visited)")
                    continue
                seen_dirs.add(key)
                names = sorted(os.listdir(d))
            except OSError as e:
                yield Problem(d, f"cannot list directory: {_explain(e)}")
                continue
            subdirs = []
            for name in names:
                p = os.path.join(d, name)
                kind = _classify(p)
                if kind == "dir":
                    subdirs.append(p)
                elif kind is not None:
                    yield kind
            stack.extend(reversed(subdirs))
