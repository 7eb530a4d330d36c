"""The unit every indexer produces and the core stores: one retrievable item."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KINDS = ("image", "video_frame", "video_window", "video", "doc_page", "doc_text",
         "ocr", "audio", "speech")


@dataclass
class Record:
    """One row-to-be. `vector` is float32, L2-normalised; the store casts it to float16.

    Locators: `t_start`/`t_end` (seconds) for video rows, `page` (1-based) for documents,
    `text` for document chunks, words read in pictures (`ocr` rows) and speech segments
    (`speech` rows, with `t_start`/`t_end`), `thumb` for a
    thumbnail file in the collection's thumbs folder
    (the store records it relative to the collection: `clipsearch.thumbs`).
    `extra` is a small JSON-able dict (shot cuts, char span, ...), stored as a JSON string.
    """

    kind: str
    vector: np.ndarray
    t_start: float | None = None
    t_end: float | None = None
    page: int | None = None
    text: str | None = None
    thumb: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def locator(self) -> str:
        """A string that identifies this item inside its source file."""
        parts = [self.kind]
        if self.t_start is not None:
            parts.append(f"t{self.t_start:.3f}-{self.t_end if self.t_end is None else round(self.t_end, 3)}")
        if self.page is not None:
            parts.append(f"p{self.page}")
        if "chunk" in self.extra:
            parts.append(f"c{self.extra['chunk']}")
        return ":".join(parts)


def path_bytes(path: str | os.PathLike[str]) -> bytes:
    """Raw filesystem bytes of a path: the only lossless key for non-UTF-8 names."""
    return os.fsencode(os.fspath(path))


def display_path(raw: bytes) -> str:
    """A valid-UTF-8 rendering of a path for display and Arrow string columns."""
    return raw.decode("utf-8", errors="backslashreplace")


def item_id(source_raw: bytes, locator: str) -> str:
    """Stable id: hash of the source path bytes and the item's locator."""
    h = hashlib.blake2b(source_raw + b"\0" + locator.encode(), digest_size=16)
    return h.hexdigest()
