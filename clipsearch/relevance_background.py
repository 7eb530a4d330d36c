"""The relevance background persisted in the collection, so a cold search does not sample it again.

Derived state (`relevance.Calibrator` draws it; this module only keeps it): per set of kinds,
the background sample's vectors, how many rows it samples, and the reference spreads, in
``<collection>/relevance.<kinds>.npz``. The file is keyed by the model, the table's version and
row count, and the sampling constants: when any of them differ (an `index` added rows, another
model, a new clipsearch) it is stale and is drawn and written again. Written atomically
(`derived_npz`); an unreadable or inconsistent file is logged and replaced; a folder
that cannot be written costs only the next process the draw.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch import derived_npz

log = logging.getLogger(__name__)

FORMAT = 1
PREFIX = "relevance."


@dataclass(frozen=True)
class Sample:
    """A background as persisted: its vectors, the rows they sample, the reference spreads."""

    vectors: np.ndarray
    rows: int
    references: dict[str, float]


class BackgroundFiles:
    """The persisted backgrounds of one collection (`folder`), for one model and constants."""

    def __init__(self, folder: Path, model_id: str, dim: int, constants: dict[str, int]) -> None:
        self.folder = Path(folder)
        self.model_id = model_id
        self.dim = dim
        self.constants = dict(constants)

    def path(self, kinds: tuple[str, ...]) -> Path:
        return self.folder / f"{PREFIX}{'+'.join(kinds)}.npz"

    def _key(self, kinds: tuple[str, ...], version: int, table_rows: int) -> dict[str, Any]:
        return {"format": FORMAT, "model_id": self.model_id, "dim": self.dim, "kinds": list(kinds),
                "version": int(version), "table_rows": int(table_rows), "constants": self.constants}

    def load(self, kinds: tuple[str, ...], version: int, table_rows: int) -> Sample | None:
        """The persisted sample if it is this collection's at this version, else None (a stale
        one silently, a damaged one with a warning)."""
        path = self.path(kinds)
        try:
            got = derived_npz.read(path, ("vectors",))
            if got is None:
                return None
            meta, arrays = got
            if not isinstance(meta.get("references"), dict):
                raise ValueError("no references recorded")
            if not derived_npz.is_current(meta, self._key(kinds, version, table_rows)):
                return None  # stale: another version, model or set of constants
            vectors = arrays["vectors"].astype(np.float32, copy=False)
            references = {str(k): float(v) for k, v in meta["references"].items()}
            rows = int(meta["rows"])
            if (vectors.ndim != 2 or vectors.shape[1] != self.dim or not np.isfinite(vectors).all()
                    or rows < len(vectors) or not all(np.isfinite(list(references.values())))):
                raise ValueError(f"inconsistent sample of shape {vectors.shape}")
        except Exception as e:  # truncated, garbage, another layout: draw it again
            log.warning("%s is unreadable (%s); drawing the relevance background again", path, e)
            return None
        return Sample(vectors, rows, references)

    def save(self, kinds: tuple[str, ...], version: int, table_rows: int, sample: Sample) -> None:
        """Write it atomically; a read-only or full disk only costs the next process the draw."""
        meta = self._key(kinds, version, table_rows)
        meta.update(rows=int(sample.rows), references={k: float(v) for k, v in sample.references.items()})
        derived_npz.write(self.path(kinds), meta, {"vectors": np.asarray(sample.vectors, dtype=np.float32)},
                          "relevance background")
