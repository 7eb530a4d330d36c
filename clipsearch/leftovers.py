"""Temporary files that a killed or failed process left in a collection, and their cleanup.

Every temporary name in a collection carries the pid of the process writing it
(`temp_name`), so the next writer can tell a leftover from a file a live reader is still
writing (a reader fitting the text mean for --center writes transforms, for one).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

_PID = re.compile(r"\.tmp-(\d+)-")


def temp_name(final: Path, pid: int | None = None) -> Path:
    """Where to write `final` before renaming it into place: `.NAME.tmp-PID-`."""
    return final.with_name(f".{final.name}.tmp-{os.getpid() if pid is None else pid}-")


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (this process included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_leftover(path: Path) -> bool:
    """A temporary file or folder whose writer is gone (or which names no writer)."""
    m = _PID.search(path.name)
    if m is None:
        return path.name.endswith(".tmp") or ".tmp-" in path.name
    return not process_alive(int(m.group(1)))


def clean(*dirs: Path) -> list[Path]:
    """Remove the leftovers directly inside `dirs`; returns what was removed. Call it while
    holding the writer lock: no other writer can be midway through a rename."""
    removed = []
    for d in dirs:
        try:
            entries = list(d.iterdir())
        except OSError:
            continue
        for p in entries:
            if not (p.name.endswith(".tmp") or ".tmp-" in p.name) or not is_leftover(p):
                continue
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            except OSError as e:
                log.warning("cannot remove the leftover %s: %s", p, e.strerror or e)
                continue
            removed.append(p)
    if removed:
        log.warning("removed %d leftover temporary file(s) of an interrupted write: %s", len(removed),
                    ", ".join(str(p) for p in removed[:5]) + (" ..." if len(removed) > 5 else ""))
    return removed
