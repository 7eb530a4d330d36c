"""Pixel check of a candidate duplicate pair: do the two pictures look alike, not only mean alike?

CLIP vectors say what a picture shows; two different photos of the same thing (or, with a small
model, two purple circles on different backgrounds) can be closer than a photo and its crop.
A copy also keeps the picture's layout and colours, so each candidate pair of the ANN search is
checked on a 16×16 colour miniature of both files (JPEGs decoded at reduced size, so a check
costs a fraction of a full decode): the mean absolute difference, in [0, 1], is small for a
resize, a re-encode, a light crop or rotation and a burst shot, and large for a different
scene. Miniatures are made once per file and cached for the run.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image

SIDE = 16


def miniature(path: str | os.PathLike[str] | None) -> np.ndarray | None:
    """(SIDE, SIDE, 3) float32 in [0, 1] of the picture at `path`, or None when it cannot be read."""
    if not path:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.draft("RGB", (SIDE * 4, SIDE * 4))  # JPEG: decode at 1/2..1/8 scale
                small = im.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BOX)
        return np.asarray(small, np.float32) / 255.0
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two miniatures: 0 the same, ~0.3 unrelated pictures."""
    return float(np.abs(a - b).mean())


class Miniatures:
    """Miniatures by key (a file's node), made on first use."""

    def __init__(self) -> None:
        self._cache: dict[object, np.ndarray | None] = {}

    def get(self, key: object, path: str | os.PathLike[str] | None) -> np.ndarray | None:
        if key not in self._cache:
            self._cache[key] = miniature(path)
        return self._cache[key]
