"""The relevance background persisted in the collection, so a cold search does not sample it again.

Derived state (`relevance.Calibrator` draws it; this module only keeps it): per set of kinds,
the background sample's vectors, how many rows it samples, and the reference spreads, in
``<collection>/relevance.<kinds>.npz``. The file is keyed by the model, the table's version and
row count, and the sampling constants: when any of them differ (an `index` added rows, another
model, a new clipsearch) it is stale and is drawn and written again. Written atomically
(`fsutil.write_atomic`); an unreadable or inconsistent file is logged and replaced; a folder
that cannot be written costs only the next process the draw.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.fsutil import write_atomic

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
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                vectors = np.asarray(data["vectors"], dtype=np.float32)
            if not isinstance(meta, dict) or not isinstance(meta.get("references"), dict):
                raise ValueError("no references recorded")
            key = {k: meta.get(k) for k in self._key(kinds, version, table_rows)}
            if key != self._key(kinds, version, table_rows):
                return None  # stale: another version, model or set of constants
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
        buf = io.BytesIO()
        np.savez(buf, vectors=np.asarray(sample.vectors, dtype=np.float32), meta=np.array(json.dumps(meta)))
        try:
            write_atomic(self.path(kinds), buf.getvalue())
        except OSError as e:
            log.info("cannot keep the relevance background in %s: %s", self.folder, e.strerror or e)
