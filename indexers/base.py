"""The contract between the core pipeline and the per-medium indexers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from clipsearch.records import Record

if TYPE_CHECKING:
    from clipsearch.encoders import Encoder

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold


@dataclass
class IndexContext:
    thumb_dir: Path
    max_pixels: int = DEFAULT_MAX_PIXELS
    options: dict = field(default_factory=dict)


@runtime_checkable
class Indexer(Protocol):
    medium: str

    def accepts(self, path: Path, head: bytes) -> bool:
        """Whether this file is this indexer's medium; decided by content (`head`), not by name."""
        ...

    def extract(self, path: Path, encoder: Encoder, ctx: IndexContext) -> list[Record]:
        """All records of one file. Raises SkipFile(reason) on bad input."""
        ...


def default_indexers() -> list[Indexer]:
    """Images first: their content check is cheapest and most specific."""
    from clipsearch.indexers.document import DocumentIndexer
    from clipsearch.indexers.image import ImageIndexer
    from clipsearch.indexers.video import VideoIndexer

    return [ImageIndexer(), VideoIndexer(), DocumentIndexer()]
