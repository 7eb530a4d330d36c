"""Small file-system helpers every module shares: path containment and atomic writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import AnyStr

from clipsearch.leftovers import temp_name


def is_within(path: AnyStr, base: AnyStr) -> bool:
    """Whether `path` is `base` or lies under it, by whole path components ("/a/bc" is not
    under "/a/b"). Both absolute and normalised, both str or both bytes."""
    sep = os.sep.encode() if isinstance(base, bytes) else os.sep
    base = base.rstrip(sep) or sep
    return path == base or path.startswith(base if base == sep else base + sep)


def folder_prefix(base: str) -> str:
    """`base` with one trailing separator: what every path under it starts with (for prefix
    searches in SQL or sorted lists; the folder itself is matched apart)."""
    return base.rstrip(os.sep) + os.sep


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Replace `path` with `data` all at once: a crash or a full disk leaves the old file or the
    new one, never a torn one. The temporary file carries this process's pid (`temp_name`) so
    a later writer can clean it up; concurrent writers in one process do not collide."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=temp_name(path).name, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
