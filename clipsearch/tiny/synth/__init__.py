"""Procedural synthetic data: the coloured-shapes world that clipsearch-tiny knows.

Benchmarks, sample collections and tests import the renderer from here so that every
part of the project draws exactly the same visual world the shipped model was trained on.
"""

from clipsearch.tiny.synth.shapes import (
    COLORS,
    POSITIONS,
    RGB,
    SHAPES,
    SIZES,
    ShapeSpec,
    apply_degradation,
    canonical_query,
    caption,
    caption_from_attrs,
    caption_with_attrs,
    draw_shape_on,
    layout_box,
    random_spec,
    render_page,
    render_shape,
)

__all__ = [
    "COLORS",
    "POSITIONS",
    "RGB",
    "apply_degradation",
    "SHAPES",
    "SIZES",
    "ShapeSpec",
    "canonical_query",
    "caption",
    "caption_from_attrs",
    "caption_with_attrs",
    "draw_shape_on",
    "layout_box",
    "random_spec",
    "render_page",
    "render_shape",
]
