"""Images, figure panels and video frames of the independent renderer.

A drawing is: a background of its own kinds, one shape rasterised from its signed distance
field (anti-aliased by the field itself, no supersampling), a fill style, a colour drawn from
its colour word's HSV region, and for still images a compression chain. Canvas sizes vary
160-320 px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

from clipsearch.tiny.world2.chains import random_chain
from clipsearch.tiny.world2.palette import backdrop_colour, named_colour
from clipsearch.tiny.world2.sdf import MAX_TURN, proportions, shape_sdf

FILLS = ("solid", "outlined", "gradient", "textured")
FILL_WEIGHTS = (0.4, 0.2, 0.2, 0.2)
BACKDROPS = ("flat", "two_tone", "radial", "stripes", "paper", "blobs", "grid")
CANVAS = (160, 320)
# extent (longest side of the shape's box) as a fraction of the canvas, per size word
_EXTENT = {"small": (0.15, 0.25), "large": (0.44, 0.6), None: (0.2, 0.5)}


@dataclass
class ShapeStyle:
    """How one shape is drawn; fixed for a video segment so frames do not flicker."""

    colour: np.ndarray
    fill: str
    params: dict[str, float]
    aspect: float  # box width / height
    outline: float = 0.12  # ring thickness / short half-extent, for "outlined"
    direction: float = 0.0  # gradient direction (radians)
    texture_seed: int = 0
    extras: dict[str, float] = field(default_factory=dict)


def random_style(colour_word: str, shape: str, rng: np.random.Generator) -> ShapeStyle:
    """A fill style, colour and proportions for ``shape`` in ``colour_word``."""
    params, aspect = proportions(shape, rng)
    fill = FILLS[int(rng.choice(len(FILLS), p=np.asarray(FILL_WEIGHTS) / sum(FILL_WEIGHTS)))]
    return ShapeStyle(named_colour(colour_word, rng), fill, params, aspect,
                      outline=float(rng.uniform(0.2, 0.34)), direction=float(rng.uniform(0, 2 * math.pi)),
                      texture_seed=int(rng.integers(1 << 30)))


# ------------------------------------------------------------------------------ backgrounds


def _field(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    """A smooth random field in [0, 1] (coarse noise upsampled bicubically)."""
    small = (rng.uniform(0, 255, (cells, cells))).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), np.float32) / 255.0


def backdrop(kind: str, rng: np.random.Generator, w: int, h: int, avoid: np.ndarray) -> np.ndarray:
    """An (h, w, 3) float background of the given kind, muted and away from ``avoid``."""
    a = backdrop_colour(rng, avoid)
    b = backdrop_colour(rng, avoid)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "flat":
        t = np.zeros((h, w), np.float32)
    elif kind == "two_tone":
        ang = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(ang) + yy * math.sin(ang))
        t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
    elif kind == "radial":
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        t = np.clip(np.hypot(xx - cx, yy - cy) / (0.8 * max(w, h)), 0, 1)
    elif kind == "stripes":
        ang, period = rng.uniform(0, math.pi), rng.uniform(0.04, 0.12) * w
        t = 0.5 + 0.5 * np.sign(np.sin(2 * math.pi * (xx * math.cos(ang) + yy * math.sin(ang)) / period))
        t *= 0.35
    elif kind == "paper":
        t = np.clip(0.15 * _field(rng, w, h, 6) + rng.normal(0, 0.04, (h, w)), 0, 1)
    elif kind == "blobs":
        t = _field(rng, w, h, int(rng.integers(2, 5)))
    else:  # grid: graph paper
        step = int(rng.integers(10, 24)) * max(1, w // 160)
        t = (((xx % step) < 1.2) | ((yy % step) < 1.2)).astype(np.float32) * 0.6
    return a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]


def video_backgrounds(rng: np.random.Generator, n: int, size: int) -> list[np.ndarray]:
    """Shot backgrounds for the moment benchmark (uint8), shared by all videos."""
    grey = np.array([128.0, 128.0, 128.0])
    out = []
    for i in range(n):
        kind = BACKDROPS[i % len(BACKDROPS)]
        arr = backdrop(kind, rng, size, size, grey) + rng.normal(0, 3, (size, size, 3))
        out.append(np.clip(arr, 0, 255).astype(np.uint8))
    return out


# ------------------------------------------------------------------------------ shapes


def _fill_colour(style: ShapeStyle, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per-pixel colour over the shape's local coordinates u, v (in [-1, 1])."""
    c = style.colour
    if style.fill == "gradient":
        t = u * math.cos(style.direction) + v * math.sin(style.direction)
        dark = c.max() < 60
        span = 0.12 if (c.min() > 220 or dark) else 0.22
        out = c[None, None] * (1.0 + span * t[..., None] / 1.4)
        return out + (25.0 * (t[..., None] + 1.4) / 2.8 if dark else 0.0)
    if style.fill == "textured":
        rng = np.random.default_rng(style.texture_seed)
        freq = rng.uniform(3, 7)
        pat = np.sin(freq * math.pi * (u + 0.6 * v)) * np.sin(freq * math.pi * (v - 0.4 * u))
        amp = 0.1 if c.min() > 220 else 0.16
        out = c[None, None] * (1.0 + amp * pat[..., None])
        return out + (18.0 * (pat[..., None] + 1) if c.max() < 60 else 0.0)
    return np.broadcast_to(c, (*u.shape, 3))


def draw_shape_in(img: Image.Image, shape: str, box: tuple[float, float, float, float], angle: float,
                  style: ShapeStyle) -> Image.Image:
    """Rasterise ``shape`` filling ``box`` (before turning by ``angle`` degrees) into ``img``; returns it."""
    x0, y0, x1, y1 = box
    cx, cy, hx, hy = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 1.0), max((y1 - y0) / 2, 1.0)
    reach = math.hypot(hx, hy) + 2
    bx0, by0 = max(int(cx - reach), 0), max(int(cy - reach), 0)
    bx1, by1 = min(int(cx + reach) + 1, img.width), min(int(cy + reach) + 1, img.height)
    if bx1 <= bx0 or by1 <= by0:
        return img
    yy, xx = np.mgrid[by0:by1, bx0:bx1].astype(np.float64)
    rad = math.radians(angle)
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    px = dx * math.cos(rad) + dy * math.sin(rad)
    py = -dx * math.sin(rad) + dy * math.cos(rad)
    d = shape_sdf(shape, style.params, hx, hy, px, py)
    if style.fill == "outlined":
        t = max(2.0, style.outline * min(hx, hy))
        d = np.abs(d + t / 2) - t / 2
    alpha = np.clip(0.5 - d, 0.0, 1.0)[..., None]
    region = np.asarray(img.convert("RGB"), np.float64)[by0:by1, bx0:bx1]
    colour = np.clip(_fill_colour(style, px / hx, py / hy), 0, 255)
    out = region * (1 - alpha) + colour * alpha
    arr = np.asarray(img.convert("RGB")).copy()
    arr[by0:by1, bx0:bx1] = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    img.paste(Image.fromarray(arr))
    return img


def place_box(size: str | None, position: str | None, aspect: float, shape: str, rng: np.random.Generator,
              w: int, h: int) -> tuple[tuple[float, float, float, float], float]:
    """A box (x0, y0, x1, y1) and turn (degrees) that honour the size and position words."""
    side = min(w, h)
    ext = rng.uniform(*_EXTENT[size]) * side
    bw, bh = (ext, ext / aspect) if aspect >= 1 else (ext * aspect, ext)
    mx, my = bw / 2 + 0.03 * w, bh / 2 + 0.03 * h

    def span(lo: float, hi: float, half: float, full: int) -> float:
        lo, hi = max(lo * full, half), min(hi * full, full - half)
        return float(rng.uniform(lo, hi)) if hi > lo else float(min(max(full / 2, half), full - half))

    ranges = {"left": ((0.0, 0.33), (0.38, 0.62)), "right": ((0.67, 1.0), (0.38, 0.62)),
              "top": ((0.38, 0.62), (0.0, 0.33)), "bottom": ((0.38, 0.62), (0.67, 1.0)),
              "center": ((0.45, 0.55), (0.45, 0.55)), None: ((0.0, 1.0), (0.0, 1.0))}
    (ax, bx), (ay, by) = ranges[position]
    cx, cy = span(ax, bx, mx, w), span(ay, by, my, h)
    turn = float(rng.uniform(-MAX_TURN[shape], MAX_TURN[shape]))
    return (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), turn


def render_image(spec, rng: np.random.Generator, size: int | None = None, chain: bool = True) -> Image.Image:
    """One evaluation image of ``spec`` (a ShapeSpec): own background, style, chain; 160-320 px."""
    size = int(rng.integers(CANVAS[0], CANVAS[1] + 1)) if size is None else size
    style = random_style(spec.color, spec.shape, rng)
    kind = BACKDROPS[int(rng.integers(len(BACKDROPS)))]
    img = Image.fromarray(np.clip(backdrop(kind, rng, size, size, style.colour), 0, 255).astype(np.uint8))
    box, turn = place_box(spec.size, spec.position, style.aspect, spec.shape, rng, size, size)
    draw_shape_in(img, spec.shape, box, turn, style)
    if rng.random() < 0.2:  # out-of-focus camera
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.2)) * size / 200))
    return random_chain(img, rng) if chain else img


def figure_panel(spec, rng: np.random.Generator, px: int) -> Image.Image:
    """A document figure: a light panel (maybe framed) with the shape in most of it."""
    style = random_style(spec.color, spec.shape, rng)
    h = int(px * rng.uniform(0.7, 1.0))
    light = np.array([rng.uniform(235, 255)] * 3) - np.array([0, rng.uniform(0, 8), rng.uniform(0, 12)])
    if style.colour.min() > 200:  # a white shape goes on a darker panel
        light = light * rng.uniform(0.35, 0.6)
    img = Image.new("RGB", (px, h), tuple(int(v) for v in light))
    ext = min(px, h) * rng.uniform(0.5, 0.78)
    bw, bh = (ext, ext / style.aspect) if style.aspect >= 1 else (ext * style.aspect, ext)
    cx, cy = px / 2 + rng.uniform(-0.08, 0.08) * px, h / 2 + rng.uniform(-0.06, 0.06) * h
    turn = float(rng.uniform(-MAX_TURN[spec.shape], MAX_TURN[spec.shape]))
    return draw_shape_in(img, spec.shape, (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), turn, style)
