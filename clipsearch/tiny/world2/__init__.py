"""An independent renderer of the coloured-shapes world, for evaluation only.

clipsearch-tiny is trained on `clipsearch.tiny.synth`; figures measured on images from the
same code partly measure how well the model learned that code. This package draws the same
vocabulary (6 shapes, 8 colour words, 2 sizes, 5 positions) by a different path: signed
distance fields in numpy, its own palette jitter, fill styles, proportions, backgrounds and
compression chains. It must never import `clipsearch.tiny.synth` geometry, and training must
never draw from it.
"""

from clipsearch.tiny.world2.render import (
    FILLS,
    ShapeStyle,
    draw_shape_in,
    figure_panel,
    place_box,
    random_style,
    render_image,
    video_backgrounds,
)

__all__ = ["FILLS", "ShapeStyle", "draw_shape_in", "figure_panel", "place_box", "random_style",
           "render_image", "video_backgrounds"]
