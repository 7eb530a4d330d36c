"""Shared test data for the core tests: a labelled folder of rendered shapes, indexed once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clipsearch.tiny.synth.shapes import COLORS, SHAPES, ShapeSpec, render_shape

# A fixed subset of colour+shape classes keeps the folder small but the task non-trivial.
CLASSES = [(c, s) for c in ("red", "green", "blue", "yellow") for s in ("star", "circle", "square")]


def write_shapes(folder: Path, per_class: int = 4, seed: int = 7, size: int = 160) -> dict[str, str]:
    """Render per_class JPEGs of each class into folder; returns {filename: 'color shape'}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = {}
    for color, shape in CLASSES:
        for i in range(per_class):
            im = render_shape(ShapeSpec(shape, color), rng, size=size)
            name = f"{color}_{shape}_{i}.jpg"
            im.save(folder / name, quality=92)
            labels[name] = f"{color} {shape}"
    return labels


__all__ = ["CLASSES", "COLORS", "SHAPES", "write_shapes"]
