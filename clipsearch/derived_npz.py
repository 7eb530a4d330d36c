"""Derived arrays kept beside a collection: one ``.npz`` holding named arrays and a JSON ``meta``
whose key fields say which collection state they were computed from.

The owners (the relevance background, the browse topics) decide the key and check their
arrays' consistency; this module does the file: read it back, tell a stale key, write it
atomically, and let a read-only or full disk cost only the next process the recomputation.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.fsutil import write_atomic

log = logging.getLogger(__name__)


def read(path: Path, names: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """(meta, the arrays called `names`) of `path`, or None when there is no such file. Raises
    on a damaged file (truncated, garbage, another layout): the owner logs it and recomputes."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        arrays = {name: np.asarray(data[name]) for name in names}
    if not isinstance(meta, dict):
        raise ValueError("no key recorded")
    return meta, arrays


def is_current(meta: dict[str, Any], key: dict[str, Any]) -> bool:
    """Whether `meta` was written for `key` (every key field equal)."""
    return {k: meta.get(k) for k in key} == key


def write(path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray], what: str) -> None:
    """Write `arrays` and `meta` atomically; a folder that cannot be written is logged, not raised
    (`what` names the state in that line)."""
    payload: dict[str, Any] = {"meta": np.array(json.dumps(meta)), **arrays}
    buf = io.BytesIO()
    np.savez(buf, **payload)
    try:
        write_atomic(path, buf.getvalue())
    except OSError as e:
        log.info("cannot keep the %s in %s: %s", what, path.parent, e.strerror or e)
