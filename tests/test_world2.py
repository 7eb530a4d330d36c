"""The independent evaluation renderer (clipsearch.tiny.world2): independent of synth, honest to
the words it draws, deterministic, and with the variety it promises."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch.tiny.synth import COLORS, SHAPES, ShapeSpec
from clipsearch.tiny.world2 import FILLS, draw_shape_in, figure_panel, place_box, random_style, render_image
from clipsearch.tiny.world2.chains import CHAINS, apply_chain
from clipsearch.tiny.world2.palette import HSV_RANGES, named_colour
from clipsearch.tiny.world2.sdf import polygon_sdf, shape_sdf, star_vertices

WORLD2 = Path(__file__).resolve().parents[1] / "clipsearch" / "tiny" / "world2"


def test_world2_shares_no_code_with_the_training_renderer() -> None:
    for path in WORLD2.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom | ast.Import):
                if isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                else:
                    names = [a.name for a in node.names]
                bad = [n for n in names if "synth" in n or n.startswith("clipsearch.tiny.data")]
                assert not bad, (path, bad)


def test_every_colour_word_has_a_region_and_draws_stay_in_it() -> None:
    assert set(HSV_RANGES) == set(COLORS)
    rng = np.random.default_rng(0)
    for name in COLORS:
        c = np.array([named_colour(name, rng) for _ in range(50)])
        assert ((c >= 0) & (c <= 255)).all()
        if name == "white":
            assert c.min() > 225
        elif name == "black":
            assert c.max() < 40
        else:
            assert c.max(axis=1).min() > 120  # saturated, not a grey


def test_sdf_signs_and_proportions() -> None:
    px, py = np.meshgrid(np.linspace(-30, 30, 61), np.linspace(-30, 30, 61))
    for shape in SHAPES:
        params = {"inner": 0.45, "arm": 0.3, "apex": 0.0, "round": 0.0}
        d = shape_sdf(shape, params, 20.0, 20.0, px, py)
        assert d[30, 30] < 0 and d[0, 0] > 0, shape  # centre inside, corner of the grid outside
    # a thin cross covers less than a thick one; a fat star more than a spiky one
    thin = (shape_sdf("cross", {"arm": 0.16}, 20, 20, px, py) < 0).sum()
    thick = (shape_sdf("cross", {"arm": 0.38}, 20, 20, px, py) < 0).sum()
    spiky = (polygon_sdf(px, py, star_vertices(20, 0.36)) < 0).sum()
    fat = (polygon_sdf(px, py, star_vertices(20, 0.56)) < 0).sum()
    assert thick > 1.6 * thin and fat > 1.3 * spiky


def _mask(img: Image.Image, bg: int = 128) -> np.ndarray:
    return np.abs(np.asarray(img, np.int16) - bg).sum(axis=2) > 40


@pytest.mark.parametrize("position", ["left", "right", "top", "bottom", "center"])
def test_place_box_honours_size_and_position(position: str) -> None:
    rng = np.random.default_rng(3)
    for size, lo, hi in (("small", 0.003, 0.04), ("large", 0.045, 0.45)):
        for shape in SHAPES:
            img = Image.new("RGB", (200, 200), (128, 128, 128))
            style = random_style("red", shape, rng)
            style.fill = "solid"
            box, turn = place_box(size, position, style.aspect, shape, rng, 200, 200)
            m = _mask(draw_shape_in(img, shape, box, turn, style))
            ys, xs = np.nonzero(m)
            cx, cy = xs.mean() / 200, ys.mean() / 200
            assert lo < m.mean() < hi, (size, shape, m.mean())
            expect = {"left": cx < 0.4, "right": cx > 0.6, "top": cy < 0.4, "bottom": cy > 0.6,
                      "center": abs(cx - 0.5) < 0.1 and abs(cy - 0.5) < 0.1}[position]
            assert expect, (position, size, shape, cx, cy)


def test_render_image_is_deterministic_and_varied() -> None:
    spec = ShapeSpec("cross", "green", "large", "center")
    a = [render_image(spec, np.random.default_rng(s)) for s in range(12)]
    b = [render_image(spec, np.random.default_rng(s)) for s in range(12)]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))
    sizes = {im.size[0] for im in a}
    assert all(im.size[0] == im.size[1] and 160 <= im.size[0] <= 320 for im in a) and len(sizes) > 6
    rng = np.random.default_rng(0)
    assert {random_style("red", "star", rng).fill for _ in range(60)} == set(FILLS)
    inner = [random_style("red", "star", rng).params["inner"] for _ in range(60)]
    assert max(inner) - min(inner) > 0.12


def test_outlined_shapes_are_hollow_and_chains_keep_the_size() -> None:
    rng = np.random.default_rng(1)
    style = random_style("blue", "square", rng)
    style.fill, style.params = "outlined", {"round": 0.0}
    canvas = Image.new("RGB", (160, 160), (128, 128, 128))
    img = draw_shape_in(canvas, "square", (30, 30, 130, 130), 0.0, style)
    m = _mask(img)
    assert m[80, 80] == 0 and m[80, 32] == 1  # centre is background, the edge is ink
    for chain in CHAINS:
        out = apply_chain(img, chain, rng)
        assert out.size == img.size and out.mode == "RGB"
        assert np.abs(np.asarray(out, np.float32) - np.asarray(img, np.float32)).mean() < 12, chain


def test_figure_panel_keeps_white_shapes_visible() -> None:
    rng = np.random.default_rng(5)
    for _ in range(5):
        panel = np.asarray(figure_panel(ShapeSpec("star", "white"), rng, 200), np.float32)
        assert panel.max() - np.median(panel) > 60  # the panel darkens behind a white shape
