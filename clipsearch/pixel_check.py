"""Pixel check of a candidate duplicate pair: do the two pictures look alike, not only mean alike?

CLIP vectors say what a picture shows; two different photos of the same thing (or, with a small
model, two purple circles on different backgrounds) can be closer than a photo and its crop.
A copy also keeps the picture's layout and colours, so each candidate pair of the ANN search is
checked on 16×16 colour miniatures of both files (JPEGs decoded at reduced size, so a check
costs a fraction of a full decode).

A light crop, a small rotation or a camera that moved between two shots shifts every pixel of
the miniature, so one plain comparison calls them different. Each file therefore gets a few
aligned views besides its plain miniature (`VIEWS`: the central 90 %, ±10° rotations, small
shifts, made from a larger decode), and the distance of a pair is the best match of one
file's views against the other's plain miniature, both ways round: the mean absolute
difference, in [0, 1], small for a copy and ~0.3 for a different scene. Views are made once
per file and cached for the run.

A plain light background with a small shape differs little from another such picture on
average, so the mean difference alone lets two low-contrast pictures pass for copies. The
second check (`relative`) divides a pair's distance by the pictures' own contrast (the mean
deviation of each plain miniature from its mean colour): a copy differs from its original by
a small share of what the picture varies by, two different pictures by about as much.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
from PIL import Image

SIDE = 16
# a pair is a copy only if its distance is at most this share of the pictures' mean contrast
RELATIVE_MAX = 0.9
CONTRAST_FLOOR = 0.02  # near-flat pictures: their contrast counts as this, so copies still pass
BASE = 64  # the views are resampled from a decode of this side, then boxed down to SIDE
# (zoom, degrees, dx, dy): zoom 0.9 shows the central 90 %; dx, dy shift by that share of the side
VIEWS: tuple[tuple[float, float, float, float], ...] = (
    (1.0, 0.0, 0.0, 0.0),  # the plain miniature: always first
    (0.9, 0.0, 0.0, 0.0),
    (0.95, 0.0, 0.0, 0.0),
    (1.0, 10.0, 0.0, 0.0),
    (1.0, -10.0, 0.0, 0.0),
    (1.0, 0.0, 0.06, 0.0),
    (1.0, 0.0, -0.06, 0.0),
    (1.0, 0.0, 0.0, 0.06),
    (1.0, 0.0, 0.0, -0.06),
)


def _view(base: Image.Image, fill: tuple[int, ...], zoom: float, degrees: float, dx: float,
          dy: float) -> np.ndarray:
    if (zoom, degrees, dx, dy) == (1.0, 0.0, 0.0, 0.0):
        out = base
    else:
        # PIL's affine maps each output pixel to the input: centre + zoom·R(θ)·(p - centre) + shift
        c = BASE / 2
        cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
        a, b, d, e = zoom * cos, -zoom * sin, zoom * sin, zoom * cos
        data = (a, b, c - a * c - b * c + dx * BASE, d, e, c - d * c - e * c + dy * BASE)
        out = base.transform((BASE, BASE), Image.Transform.AFFINE, data,
                             resample=Image.Resampling.BILINEAR, fillcolor=fill)
    return np.asarray(out.resize((SIDE, SIDE), Image.Resampling.BOX), np.float32) / 255.0


def miniature(path: str | os.PathLike[str] | None) -> np.ndarray | None:
    """(len(VIEWS), SIDE, SIDE, 3) float32 in [0, 1]: the picture at `path` in each view (the
    plain miniature first), or None when it cannot be read."""
    if not path:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.draft("RGB", (BASE, BASE))  # JPEG: decode at 1/2..1/8 scale
                base = im.convert("RGB").resize((BASE, BASE), Image.Resampling.BOX)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    fill = tuple(int(v) for v in np.asarray(base).reshape(-1, 3).mean(axis=0))  # rotated corners
    return np.stack([_view(base, fill, *v) for v in VIEWS])


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """The best aligned match of two files' views (see the module docstring): 0 the same,
    ~0.3 unrelated pictures."""
    one = np.abs(a - b[0]).mean(axis=(1, 2, 3)).min()
    other = np.abs(b[1:] - a[0]).mean(axis=(1, 2, 3)).min() if len(b) > 1 else one
    return float(min(one, other))


def contrast(views: np.ndarray) -> float:
    """How much a picture varies: the mean absolute deviation of its plain miniature from its
    mean colour (0 a flat picture)."""
    plain = views[0]
    return float(np.abs(plain - plain.mean(axis=(0, 1))).mean())


def relative(d: float, contrast_a: float, contrast_b: float) -> float:
    """A pair's distance `d` as a share of the two pictures' mean contrast (see the module
    docstring): well under 1 for a copy, about 1 or more for two different pictures."""
    return d / max((contrast_a + contrast_b) / 2, CONTRAST_FLOOR)


class Miniatures:
    """Miniatures by key (a file's node), made on first use."""

    def __init__(self) -> None:
        self._cache: dict[object, np.ndarray | None] = {}

    def get(self, key: object, path: str | os.PathLike[str] | None) -> np.ndarray | None:
        if key not in self._cache:
            self._cache[key] = miniature(path)
        return self._cache[key]
