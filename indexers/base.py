"""The contract between the core pipeline and the per-medium indexers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeGuard, runtime_checkable

from clipsearch.records import Record

if TYPE_CHECKING:
    import torch

    from clipsearch.backends import AnyEncoder

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold


@dataclass
class IndexContext:
    thumb_dir: Path
    max_pixels: int = DEFAULT_MAX_PIXELS
    options: dict = field(default_factory=dict)


@dataclass
class Part:
    """Some records of one file, as a streaming indexer produces them, and how far it has got.

    `done`/`total` are in `unit`s ("pages", "MB"); `note` is something the run's summary should
    say about this file, such as a cap that stopped it early."""

    records: list[Record]
    done: float = 0.0
    total: float | None = None
    unit: str = ""
    note: str | None = None


@runtime_checkable
class Indexer(Protocol):
    medium: str

    def accepts(self, path: Path, head: bytes) -> bool:
        """Whether this file is this indexer's medium; decided by content (`head`), not by name."""
        ...

    def extract(self, path: Path, encoder: AnyEncoder, ctx: IndexContext) -> list[Record]:
        """All records of one file. Raises SkipFile(reason) on bad input."""
        ...


@runtime_checkable
class StreamingIndexer(Indexer, Protocol):
    """An indexer whose files can be too big to hold as records: the pipeline commits its parts
    as they come, so memory follows the work in flight, not the file size."""

    def extract_parts(self, path: Path, encoder: AnyEncoder, ctx: IndexContext) -> Iterator[Part]:
        """The records of one file, a part at a time. Raises SkipFile(reason) on bad input,
        possibly after some parts."""
        ...


@runtime_checkable
class BatchedIndexer(Indexer, Protocol):
    """An indexer whose files each make one row from one preprocessed pixel tensor: the pipeline
    runs `prepare` in worker threads and encodes many files in one batch (the image fast path)."""

    def prepare(self, path: Path, preprocess: Callable, ctx: IndexContext, min_side: int) -> torch.Tensor:
        """Decode and preprocess one file into the encoder's input. Raises SkipFile(reason)."""
        ...


def is_batched(indexer: Indexer) -> TypeGuard[BatchedIndexer]:
    """Whether the pipeline encodes this indexer's files in batches: it implements
    `BatchedIndexer.prepare` (the one method that path calls)."""
    return callable(getattr(indexer, "prepare", None))


def is_streaming(indexer: Indexer) -> TypeGuard[StreamingIndexer]:
    """Whether the pipeline commits this indexer's files part by part: it implements
    `StreamingIndexer.extract_parts` (the one method that path calls)."""
    return callable(getattr(indexer, "extract_parts", None))


def indexer_for(medium: str) -> Indexer:
    """The default indexer of `medium` (as a worker process rebuilds it from a job's medium)."""
    for ix in default_indexers():
        if ix.medium == medium:
            return ix
    raise ValueError(f"no indexer for the medium {medium!r}")


def default_indexers() -> list[Indexer]:
    """Images first: their content check is cheapest and most specific."""
    from clipsearch.indexers.audio import AudioIndexer
    from clipsearch.indexers.document import DocumentIndexer
    from clipsearch.indexers.image import ImageIndexer
    from clipsearch.indexers.video import VideoIndexer

    return [ImageIndexer(), VideoIndexer(), DocumentIndexer(), AudioIndexer()]
