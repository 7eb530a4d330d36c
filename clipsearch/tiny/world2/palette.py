"""Colour words as regions of HSV space rather than fixed RGB values: a draw is any colour
a person still calls by that name (own jitter, independent of the training palette)."""

from __future__ import annotations

import colorsys

import numpy as np

# name -> (hue range in degrees, saturation range, value range)
HSV_RANGES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "red": ((-7.0, 6.0), (0.72, 1.0), (0.62, 0.95)),
    "orange": ((22.0, 33.0), (0.8, 1.0), (0.88, 1.0)),
    "yellow": ((49.0, 59.0), (0.75, 1.0), (0.88, 1.0)),
    "green": ((100.0, 140.0), (0.6, 0.95), (0.5, 0.8)),
    "blue": ((208.0, 232.0), (0.7, 1.0), (0.68, 0.95)),
    "purple": ((270.0, 292.0), (0.55, 0.85), (0.5, 0.78)),
    "white": ((0.0, 360.0), (0.0, 0.05), (0.93, 1.0)),
    "black": ((0.0, 360.0), (0.0, 0.3), (0.02, 0.13)),
}


def named_colour(name: str, rng: np.random.Generator) -> np.ndarray:
    """An RGB float array (0..255) that reads as ``name``."""
    (h0, h1), (s0, s1), (v0, v1) = HSV_RANGES[name]
    h = (rng.uniform(h0, h1) % 360.0) / 360.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(s0, s1), rng.uniform(v0, v1))
    return np.array([r, g, b]) * 255.0


def backdrop_colour(rng: np.random.Generator, avoid: np.ndarray, min_dist: float = 120.0) -> np.ndarray:
    """A muted colour for a background, far enough from the shape's colour to keep it visible."""
    best, best_d = None, -1.0
    for _ in range(24):
        h = rng.uniform()
        s = rng.uniform(0.0, 0.35)
        v = rng.uniform(0.2, 0.97)
        c = np.array(colorsys.hsv_to_rgb(h, s, v)) * 255.0
        d = float(np.linalg.norm(c - avoid))
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    assert best is not None
    return best
