"""Procedural renderer for the coloured-shapes world (one shape per image).

clipsearch-tiny is trained on these images and every demo, benchmark and retrieval test
draws from the same renderer, so keep its output distribution stable: changing the
geometry, colours or layouts here silently changes what the shipped model "knows".

All randomness comes from an explicit ``numpy.random.Generator`` so that a seed fully
determines an image.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "center", "top", "bottom")
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "textured", "photo", "page")

RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 165, 50),
    "blue": (30, 70, 225),
    "yellow": (245, 220, 25),
    "purple": (140, 45, 185),
    "orange": (250, 135, 15),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}

DEFAULT_BG_WEIGHTS: dict[str, float] = {
    "plain": 0.2, "gradient": 0.2, "textured": 0.2, "photo": 0.22, "page": 0.18,
}

# Max rotation (degrees) per shape: bigger angles would turn a square into a diamond
# or a cross into an "x", i.e. change the label.
_MAX_ROT = {"circle": 0.0, "square": 10.0, "triangle": 15.0, "star": 20.0, "cross": 10.0,
            "diamond": 8.0}
# Width/height ratio range of the shape's box; diamonds are deliberately narrow.
_ASPECT = {"circle": (0.85, 1.15), "square": (0.88, 1.12), "triangle": (0.85, 1.15),
           "star": (0.9, 1.1), "cross": (0.88, 1.12), "diamond": (0.6, 0.78)}
# Shape extent as a fraction of the canvas' short side.
_SIZE_FRAC = {"small": (0.16, 0.26), "large": (0.42, 0.56), None: (0.16, 0.56)}

_SIZE_WORDS = {"small": ("small", "small", "little", "tiny"), "large": ("large", "large", "big")}
_POS_NATURAL = {
    "left": ("on the left", "on the left side", "at the left", "in the left part of the image"),
    "right": ("on the right", "on the right side", "at the right",
              "in the right part of the image"),
    "center": ("in the center", "in the middle", "in the centre", "at the center of the image"),
    "top": ("at the top", "near the top", "in the upper part of the image",
            "at the top of the image"),
    "bottom": ("at the bottom", "near the bottom", "in the lower part of the image",
               "at the bottom of the image"),
}
_POS_SHORT = {
    "left": ("left", "left side", "on the left"),
    "right": ("right", "right side", "on the right"),
    "center": ("center", "centered", "middle"),
    "top": ("top", "top side", "at the top"),
    "bottom": ("bottom", "bottom side", "at the bottom"),
}
_POS_CANONICAL = {"left": "on the left", "right": "on the right", "center": "in the center",
                  "top": "at the top", "bottom": "at the bottom"}
_PREFIXES = ("", "", "", "a photo of ", "an image of ", "a picture of ", "a drawing of ",
             "a photo showing ")
_NOUNS = ("shape", "object", "figure")
# Filler words for page text: no colour or shape words, so text search never matches them.
_FILLER = (
    "the", "of", "and", "model", "data", "system", "results", "method", "we", "show", "that",
    "this", "paper", "section", "analysis", "value", "table", "report", "with", "for", "is",
    "are", "in", "on", "process", "design", "review", "page", "index", "search", "query",
    "sample", "measure", "growth", "period", "total", "level", "annual", "summary", "note",
    "using", "between", "each", "after", "before", "study", "case", "example", "field",
)


@dataclass(frozen=True)
class ShapeSpec:
    """What is in an image: the label the renderer draws and captions describe.

    ``size``/``position`` of None mean "unconstrained": the renderer picks any size or
    place and captions never mention that attribute.
    """

    shape: str
    color: str
    size: str | None = None
    position: str | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        if self.color not in COLORS:
            raise ValueError(f"unknown color {self.color!r}")
        if self.size is not None and self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}")
        if self.position is not None and self.position not in POSITIONS:
            raise ValueError(f"unknown position {self.position!r}")


# ----------------------------------------------------------------------------- specs, text


def random_spec(rng: np.random.Generator, p_size: float = 0.5, p_pos: float = 0.5) -> ShapeSpec:
    """A uniformly random shape and colour; size/position set with the given probabilities."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    color = COLORS[int(rng.integers(len(COLORS)))]
    size = SIZES[int(rng.integers(len(SIZES)))] if rng.random() < p_size else None
    pos = POSITIONS[int(rng.integers(len(POSITIONS)))] if rng.random() < p_pos else None
    return ShapeSpec(shape, color, size, pos)


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def canonical_query(spec: ShapeSpec, full: bool = False) -> str:
    """The plain query for a spec: "a red star"; with ``full`` also its set size/position,
    e.g. "a small red star on the left"."""
    words = [spec.color, spec.shape]
    if full and spec.size:
        words.insert(0, spec.size)
    text = _with_article(" ".join(words))
    if full and spec.position:
        text += " " + _POS_CANONICAL[spec.position]
    return text


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _natural_caption(rng: np.random.Generator, m: dict[str, str | None]) -> str:
    noun = m["shape"] or _pick(rng, _NOUNS)
    adjs = [w for w in (m["size"] and _pick(rng, _SIZE_WORDS[m["size"]]), m["color"]) if w]
    if len(adjs) == 2 and rng.random() < 0.1:
        adjs.reverse()
    head = _with_article(" ".join(adjs + [noun]))
    pos = m["position"] and _pick(rng, _POS_NATURAL[m["position"]])
    if pos and rng.random() < 0.15:
        return f"{pos}, {_pick(rng, _PREFIXES)}{head}"
    return _pick(rng, _PREFIXES) + head + (f" {pos}" if pos else "")


def _comma_caption(rng: np.random.Generator, m: dict[str, str | None]) -> str:
    head = " ".join(w for w in (m["color"], m["shape"] or _pick(rng, _NOUNS)) if w)
    rest = []
    if m["size"]:
        rest.append(_pick(rng, _SIZE_WORDS[m["size"]]))
    if m["position"]:
        rest.append(_pick(rng, _POS_SHORT[m["position"]]))
    order = rng.permutation(len(rest))
    return ", ".join([head] + [rest[i] for i in order])


def _clause_caption(rng: np.random.Generator, m: dict[str, str | None]) -> str:
    noun = m["shape"] or _pick(rng, _NOUNS)
    adjs = [w for w in (m["color"], m["size"] and _pick(rng, _SIZE_WORDS[m["size"]])) if w]
    if len(adjs) == 2 and rng.random() < 0.5:
        adjs.reverse()
    text = _with_article(noun)
    if adjs:
        text += " that is " + " and ".join(adjs)
    if m["position"]:
        text += ", " + _pick(rng, _POS_NATURAL[m["position"]])
    return _pick(rng, _PREFIXES) + text


def caption_with_attrs(
    spec: ShapeSpec, rng: np.random.Generator, p_size: float = 0.75, p_pos: float = 0.75
) -> tuple[str, dict[str, str | None]]:
    """A varied caption plus the attributes it mentions (None = not mentioned).

    Training needs the mentioned attributes to know which images a caption fits:
    "a red star" fits every red star, "a small red star" only the small ones.
    """
    keep_shape, keep_color = rng.random() < 0.95, rng.random() < 0.95
    if not (keep_shape or keep_color):
        keep_shape = keep_color = True
    m: dict[str, str | None] = {
        "shape": spec.shape if keep_shape else None,
        "color": spec.color if keep_color else None,
        "size": spec.size if spec.size and rng.random() < p_size else None,
        "position": spec.position if spec.position and rng.random() < p_pos else None,
    }
    return caption_from_attrs(m, rng), m


def caption_from_attrs(m: dict[str, str | None], rng: np.random.Generator) -> str:
    """Word a caption that mentions exactly the attributes set in ``m``, in a random style
    (natural phrase, keyword list or relative clause)."""
    style = rng.random()
    if style < 0.6:
        return _natural_caption(rng, m)
    if style < 0.85:
        return _comma_caption(rng, m)
    return _clause_caption(rng, m)


def caption(spec: ShapeSpec, rng: np.random.Generator) -> str:
    """A random caption for a spec: any subset of its attributes, varied templates."""
    return caption_with_attrs(spec, rng)[0]


# ----------------------------------------------------------------------------- geometry


def _unit_polygon(shape: str) -> np.ndarray:
    """Outline of a shape inside the [-1, 1] square, as (N, 2) x/y points."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
    if shape == "triangle":
        return np.array([[0, -1], [1, 0.85], [-1, 0.85]], dtype=float)
    if shape == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(t), r * np.sin(t) + 0.1], axis=1)
    if shape == "cross":
        a = 0.32
        return np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1],
                         [-a, a], [-1, a], [-1, -a], [-a, -a]], dtype=float)
    if shape == "diamond":
        return np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], dtype=float)
    raise ValueError(f"unknown shape {shape!r}")


def _uniform(rng: np.random.Generator, lo: float, hi: float, jitter: bool) -> float:
    return float(rng.uniform(lo, hi)) if jitter and hi > lo else (lo + hi) / 2


def _center_range(pos: str | None, mx: float, my: float) -> tuple[tuple[float, float], ...]:
    """Allowed centre (x, y) ranges, as canvas fractions, that keep the shape in its region."""
    mid = (0.38, 0.62)
    ranges = {
        "left": ((mx, max(mx, 0.36)), mid),
        "right": ((min(1 - mx, 0.64), 1 - mx), mid),
        "top": (mid, (my, max(my, 0.36))),
        "bottom": (mid, (min(1 - my, 0.64), 1 - my)),
        "center": ((0.44, 0.56), (0.44, 0.56)),
        None: ((mx, 1 - mx), (my, 1 - my)),
    }[pos]
    out = []
    for (lo, hi), m in zip(ranges, (mx, my), strict=True):
        lo, hi = max(lo, m), min(hi, 1 - m)
        out.append((lo, max(lo, hi)))
    return tuple(out)


def layout_box(
    spec: ShapeSpec, rng: np.random.Generator, width: int, height: int, jitter: bool = True
) -> tuple[tuple[int, int, int, int], float]:
    """Box and rotation angle for a shape on a width x height canvas.

    Size and position jitter stay inside the named size band and region so that
    "small"/"on the left" remain true (and learnable) for every sample.
    """
    short = min(width, height)
    s = _uniform(rng, *_SIZE_FRAC[spec.size], jitter) * short
    lo, hi = _ASPECT[spec.shape]
    aspect = _uniform(rng, lo, hi, jitter)
    bw, bh = s * math.sqrt(aspect), s / math.sqrt(aspect)
    max_rot = _MAX_ROT[spec.shape]
    angle = _uniform(rng, -max_rot, max_rot, jitter)
    rad = math.radians(angle)
    ext_w = abs(bw * math.cos(rad)) + abs(bh * math.sin(rad))
    ext_h = abs(bw * math.sin(rad)) + abs(bh * math.cos(rad))
    mx, my = ext_w / 2 / width + 0.02, ext_h / 2 / height + 0.02
    (x_lo, x_hi), (y_lo, y_hi) = _center_range(spec.position, mx, my)
    cx = _uniform(rng, x_lo, x_hi, jitter) * width
    cy = _uniform(rng, y_lo, y_hi, jitter) * height
    box = (round(cx - bw / 2), round(cy - bh / 2), round(cx + bw / 2), round(cy + bh / 2))
    return box, angle


def _jitter_color(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    """Small hue/brightness noise so the model learns colour names, not exact RGB values."""
    c = np.asarray(rgb, dtype=float) * rng.uniform(0.9, 1.06) + rng.normal(0, 9, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _color_dist(a: tuple[int, ...] | np.ndarray, b: tuple[int, ...] | np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)))


def draw_shape_on(
    img: Image.Image,
    spec: ShapeSpec,
    box: tuple[int, int, int, int],
    rng: np.random.Generator,
    angle: float = 0.0,
    supersample: int = 2,
    color_jitter: bool = True,
    outline: np.ndarray | None = None,
    style: str = "solid",
    rgb: tuple[int, int, int] | None = None,
) -> Image.Image:
    """Draw one shape filling ``box`` (before rotation by ``angle`` degrees) into ``img``.

    Draws in place and returns ``img``. Edges are anti-aliased through a supersampled
    mask; a thin outline is added when the shape would otherwise vanish into the
    background (white star on a white page). ``outline`` (unit-square points), ``style``
    and ``rgb`` come from training-time variety (clipsearch.tiny.synth.variety).
    """
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    pts = (_unit_polygon(spec.shape) if outline is None else outline) * [(x1 - x0) / 2, (y1 - y0) / 2]
    rad = math.radians(angle)
    rot = np.array([[math.cos(rad), -math.sin(rad)], [math.sin(rad), math.cos(rad)]])
    pts = pts @ rot.T + [cx, cy]
    px0 = max(int(math.floor(pts[:, 0].min())) - 2, 0)
    py0 = max(int(math.floor(pts[:, 1].min())) - 2, 0)
    px1 = min(int(math.ceil(pts[:, 0].max())) + 2, img.width)
    py1 = min(int(math.ceil(pts[:, 1].max())) + 2, img.height)
    if px1 <= px0 or py1 <= py0:
        return img
    k = max(1, supersample)
    local = [((x - px0) * k, (y - py0) * k) for x, y in pts]
    size2 = ((px1 - px0) * k, (py1 - py0) * k)
    base = RGB[spec.color] if rgb is None else rgb
    fill = _jitter_color(base, rng) if color_jitter else base
    mask = Image.new("L", size2, 0)
    if style == "outlined":
        from clipsearch.tiny.synth.variety import outline_width

        ImageDraw.Draw(mask).polygon(local, outline=255, width=outline_width(size2, rng))
    else:
        ImageDraw.Draw(mask).polygon(local, fill=255)
    under = np.asarray(img.convert("RGB").crop((px0, py0, px1, py1)), dtype=float)
    region_mean = under.reshape(-1, 3).mean(axis=0)
    small_mask = mask.resize((px1 - px0, py1 - py0), Image.Resampling.BOX)
    if style in ("gradient", "textured"):
        from clipsearch.tiny.synth.variety import fill_layer

        img.paste(fill_layer(fill, small_mask.size, style, rng), (px0, py0), small_mask)
    else:
        img.paste(fill, (px0, py0), small_mask)
    if _color_dist(fill, region_mean) < 90:
        width = max(1, round(min(size2) / 45))
        edge = Image.new("L", size2, 0)
        ImageDraw.Draw(edge).polygon(local, outline=255, width=width)
        ink = (45, 45, 45) if sum(fill) > 300 else (210, 210, 210)
        img.paste(ink, (px0, py0), edge.resize((px1 - px0, py1 - py0), Image.Resampling.BOX))
    return img


# ----------------------------------------------------------------------------- backgrounds


def _contrasting(rng: np.random.Generator, avoid: tuple[int, int, int], min_dist: float = 115.0
                 ) -> tuple[int, int, int]:
    """A random colour at least ``min_dist`` away from the shape colour (it must stay visible)."""
    best, best_d = (128, 128, 128), -1.0
    for _ in range(40):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        d = _color_dist(c, avoid)
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def _near(rng: np.random.Generator, base: tuple[int, int, int], spread: float) -> np.ndarray:
    return np.clip(np.asarray(base, dtype=float) + rng.normal(0, spread, 3), 0, 255)


def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return xx, yy


def _smooth(field: np.ndarray, w: int, h: int) -> np.ndarray:
    """Upscale a small float field to w x h: smooth patterns need no full-res maths."""
    img = Image.fromarray(field.astype(np.float32), mode="F")
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), np.float32)


def _bg_plain(rng: np.random.Generator, w: int, h: int, avoid: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.asarray(_contrasting(rng, avoid), np.float32), (h, w, 3)).copy()


def _bg_neutral(rng: np.random.Generator, w: int, h: int, avoid: tuple[int, int, int]
                ) -> np.ndarray:
    """Plain grey that contrasts with the shape: colour is then obvious (training warm-up)."""
    lum = sum(avoid) / 3
    lo, hi = (0, 110) if lum > 200 else (150, 255) if lum < 50 else (40, 215)
    return np.full((h, w, 3), float(rng.uniform(lo, hi)), np.float32)


def _bg_gradient(rng: np.random.Generator, w: int, h: int, avoid: tuple[int, int, int]
                 ) -> np.ndarray:
    c1 = np.asarray(_contrasting(rng, avoid), np.float32)
    c2 = np.asarray(_contrasting(rng, avoid), np.float32)
    xx, yy = _grid(32, 32)
    if rng.random() < 0.7:
        th = rng.uniform(0, 2 * np.pi)
        t = (xx / 32 - 0.5) * np.cos(th) + (yy / 32 - 0.5) * np.sin(th) + 0.5
    else:
        cx, cy = rng.uniform(0.2, 0.8, 2)
        t = np.hypot(xx / 32 - cx, yy / 32 - cy) * 1.4
    t = np.clip(_smooth(t, w, h), 0, 1)[..., None]
    return c1 * (1 - t) + c2 * t


def _bg_textured(rng: np.random.Generator, w: int, h: int, avoid: tuple[int, int, int]
                 ) -> np.ndarray:
    c1 = np.asarray(_contrasting(rng, avoid), np.float32)
    c2 = _near(rng, tuple(int(v) for v in c1), rng.uniform(25, 70)).astype(np.float32)
    xx, yy = _grid(w, h)
    period = rng.uniform(0.03, 0.15) * min(w, h)
    kind = int(rng.integers(4))
    if kind == 0:  # stripes at a random angle
        th = rng.uniform(0, np.pi)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(th) + yy * np.sin(th)) / period)
    elif kind == 1:  # checkerboard
        t = ((xx // period + yy // period) % 2).astype(np.float32)
    elif kind == 2:  # dots
        fx, fy = (xx % period) / period - 0.5, (yy % period) / period - 0.5
        t = (np.hypot(fx, fy) < 0.25).astype(np.float32)
    else:  # blocky noise
        cells = max(2, int(min(w, h) / period))
        small = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
        t = np.asarray(small.resize((w, h), Image.Resampling.NEAREST), np.float32) / 255
    t = t[..., None]
    return c1 * (1 - t) + c2 * t


def _bg_photo(rng: np.random.Generator, w: int, h: int, avoid: tuple[int, int, int]
              ) -> np.ndarray:
    """Smooth colour fields plus blurry blobs and grain: a cheap stand-in for a photo."""
    base = _contrasting(rng, avoid, 100)
    k = int(rng.integers(2, 6))
    cells = np.stack([_near(rng, base, 45) for _ in range(k * k)]).reshape(k, k, 3)
    sw, sh = max(8, w // 4), max(8, h // 4)  # smooth content: draw at quarter resolution
    field = Image.fromarray(cells.astype(np.uint8)).resize((sw, sh), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(field)
    for _ in range(int(rng.integers(1, 5))):
        r = rng.uniform(0.08, 0.3) * min(sw, sh)
        x, y = rng.uniform(0, sw), rng.uniform(0, sh)
        col = tuple(int(v) for v in _near(rng, base, 60))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=col)
    field = field.filter(ImageFilter.GaussianBlur(min(sw, sh) * rng.uniform(0.03, 0.08)))
    arr = np.asarray(field.resize((w, h), Image.Resampling.BILINEAR), np.float32)
    grain = rng.standard_normal(arr.shape, dtype=np.float32) * rng.uniform(2, 7)
    return arr + grain


@lru_cache(maxsize=64)
def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(6, px))


def _filler_line(rng: np.random.Generator, n_words: int) -> str:
    return " ".join(_pick(rng, _FILLER) for _ in range(n_words))


@lru_cache(maxsize=32)
def _line_bank(px: int) -> tuple[Image.Image, ...]:
    """Pre-rendered filler text lines (L masks) per font size; pasting beats drawing text.

    Built from a fixed seed, so page images stay a pure function of the caller's rng.
    """
    rng = np.random.default_rng(px)
    font = _font(px)
    bank = []
    for _ in range(24):
        text = _filler_line(rng, 30)
        mask = Image.new("L", (int(font.getlength(text)) + 2, int(px * 1.3) + 2), 0)
        ImageDraw.Draw(mask).text((0, 0), text, fill=255, font=font)
        bank.append(mask)
    return tuple(bank)


def _paste_line(img: Image.Image, rng: np.random.Generator, px: int, xy: tuple[int, int],
                width: int, ink: tuple[int, int, int]) -> None:
    """Paste a random pre-rendered filler line, cropped to ``width`` pixels."""
    bank = _line_bank(px)
    line = bank[int(rng.integers(len(bank)))]
    start = int(rng.integers(0, max(1, line.width - width)))
    img.paste(ink, xy, line.crop((start, 0, start + max(1, width), line.height)))


def _bg_page(rng: np.random.Generator, w: int, h: int, avoid: tuple[int, int, int],
             keep_clear: tuple[int, int, int, int]) -> np.ndarray:
    """Off-white page with lines of text everywhere except around the figure."""
    paper = tuple(int(v) for v in np.clip(rng.normal(247, 5, 3), 225, 255))
    page = Image.new("RGB", (w, h), paper)
    draw = ImageDraw.Draw(page)
    fsize = int(min(w, h) * rng.uniform(0.045, 0.08))
    ink = tuple(int(v) for v in rng.integers(0, 90, 3))
    margin = int(w * rng.uniform(0.02, 0.08))
    y = int(rng.uniform(0.0, 0.06) * h)
    while y < h:
        if rng.random() > 0.1:
            width = int((w - 2 * margin) * (rng.uniform(0.4, 1.0) if rng.random() < 0.2 else 1))
            _paste_line(page, rng, fsize, (margin, y), width, ink)
        y += int(fsize * rng.uniform(1.25, 1.6))
    x0, y0, x1, y1 = keep_clear
    pad = int(0.06 * min(w, h))
    draw.rectangle((x0 - pad, y0 - pad, x1 + pad, y1 + pad), fill=paper)
    return np.asarray(page, np.float32)


def _background(kind: str, rng: np.random.Generator, w: int, h: int,
                avoid: tuple[int, int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    if kind == "plain":
        return _bg_plain(rng, w, h, avoid)
    if kind == "gradient":
        return _bg_gradient(rng, w, h, avoid)
    if kind == "neutral":
        return _bg_neutral(rng, w, h, avoid)
    if kind == "textured":
        return _bg_textured(rng, w, h, avoid)
    if kind == "photo":
        return _bg_photo(rng, w, h, avoid)
    if kind == "page":
        return _bg_page(rng, w, h, avoid, box)
    raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS} or 'random'")


def _lighting(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uneven illumination and vignette over the whole photo, shape included."""
    h, w = arr.shape[:2]
    xx, yy = _grid(32, 32)
    xx, yy = xx / 31, yy / 31
    th = rng.uniform(0, 2 * np.pi)
    t = (xx - 0.5) * np.cos(th) + (yy - 0.5) * np.sin(th)
    gain = 1 + t * rng.uniform(0, 0.3)
    vig = 1 - rng.uniform(0, 0.25) * (np.hypot(xx - 0.5, yy - 0.5) / 0.707) ** 2
    return arr * _smooth(gain * vig, w, h)[..., None]


def apply_degradation(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Random low resolution, blur, sensor noise and JPEG artefacts (video/scan look)."""
    size = img.size
    scale = min(size) / 64
    if rng.random() < 0.25:
        f = rng.uniform(1.5, 3.0)
        small = (max(8, int(size[0] / f)), max(8, int(size[1] / f)))
        img = img.resize(small, Image.Resampling.BILINEAR).resize(size, Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.0) * scale))
    if rng.random() < 0.5:
        arr = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(2, 14), (size[1], size[0], 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(10, 60)))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


def _choose_background(rng: np.random.Generator, background: str,
                       bg_weights: dict[str, float] | None) -> str:
    if background != "random":
        return background
    weights = bg_weights or DEFAULT_BG_WEIGHTS
    names = list(weights)
    p = np.asarray([weights[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def render_shape(
    spec: ShapeSpec,
    rng: np.random.Generator,
    size: int = 224,
    background: str = "random",
    jitter: bool = True,
    degrade: bool = False,
    bg_weights: dict[str, float] | None = None,
    variety: bool = False,
) -> Image.Image:
    """Render one shape on a size x size RGB canvas.

    ``background`` is one of plain, gradient, textured, photo (photo-like), page
    (page-with-text), neutral (plain grey) or "random" (drawn from ``bg_weights``). ``jitter`` varies scale,
    position (within the named region), rotation and aspect; ``degrade`` adds blur,
    noise, low resolution and JPEG artefacts. Drawn at 2x and downscaled for clean edges.
    ``variety`` (training only) varies proportions, fill style and colour within the names and
    adds resampling chains (clipsearch.tiny.synth.variety); off, the output is the canonical one.
    """
    kind = _choose_background(rng, background, bg_weights)
    w = h = 2 * size
    box, angle = layout_box(spec, rng, w, h, jitter)
    arr = _background(kind, rng, w, h, RGB[spec.color], box)
    canvas = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if variety:
        from clipsearch.tiny.synth import variety as var

        stretch = var.box_stretch(spec.shape, rng)
        cy, half = (box[1] + box[3]) / 2, (box[3] - box[1]) / 2 * stretch
        box = (box[0], round(cy - half), box[2], round(cy + half))
        draw_shape_on(canvas, spec, box, rng, angle, supersample=1, color_jitter=jitter,
                      outline=var.varied_outline(spec.shape, rng), style=var.fill_style(rng),
                      rgb=var.drift_colour(RGB[spec.color], rng))
    else:
        draw_shape_on(canvas, spec, box, rng, angle, supersample=1, color_jitter=jitter)
    if kind == "photo":
        canvas = Image.fromarray(np.clip(_lighting(np.asarray(canvas, np.float32), rng), 0, 255)
                                 .astype(np.uint8))
    img = canvas.resize((size, size), Image.Resampling.LANCZOS)
    if variety and rng.random() < 0.3:
        from clipsearch.tiny.synth.variety import resample_chain

        img = resample_chain(img, rng)
    return apply_degradation(img, rng) if degrade else img


# ----------------------------------------------------------------------------- pages


def _wrap(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: float
          ) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        trial = f"{cur} {word}".strip()
        if cur and font.getlength(trial) > width:
            lines.append(cur)
            cur = word
        else:
            cur = trial
    if cur:
        lines.append(cur)
    return lines


def _figure_rect(spec: ShapeSpec, rng: np.random.Generator, w: int, h: int, margin: int,
                 top: int) -> tuple[int, int, int, int]:
    """Where the figure goes on the page; size/position words map to page layout."""
    tw = w - 2 * margin
    lo, hi = {"small": (0.28, 0.38), "large": (0.55, 0.75), None: (0.3, 0.7)}[spec.size]
    fw = int(tw * rng.uniform(lo, hi))
    fh = int(fw * rng.uniform(0.7, 1.0))
    fx = {"left": margin, "right": w - margin - fw}.get(spec.position, margin + (tw - fw) // 2)
    bottom_limit = h - margin - fh - int(0.04 * h)
    fy = {"top": top, "bottom": bottom_limit, "center": (h - fh) // 2}.get(
        spec.position, int(rng.uniform(top, max(top, bottom_limit))))
    return fx, max(top, fy), fx + fw, max(top, fy) + fh


def render_page(
    spec: ShapeSpec,
    rng: np.random.Generator,
    size: tuple[int, int] = (424, 600),
    paragraphs: list[str] | None = None,
    title: str | None = None,
    figure_caption: str | None = None,
) -> Image.Image:
    """A white document page: title, paragraph text and one figure showing ``spec``.

    The figure's box is returned in ``img.info["figure_box"]`` so document benchmarks
    know where the shape is. ``spec.size``/``spec.position`` choose figure size and place.
    """
    w, h = size
    page = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    margin = int(0.08 * w)
    body = _font(max(7, round(h / 55)))
    head = _font(max(9, round(h / 32)))
    line_h = int(body.size * 1.4)
    draw.text((margin, margin), title or _filler_line(rng, 4).title(), fill=(0, 0, 0), font=head)
    top = margin + int(head.size * 2)
    fig = _figure_rect(spec, rng, w, h, margin, top)
    _draw_figure(page, spec, fig, rng, figure_caption, body)
    lines = _wrap(" ".join(paragraphs), body, w - 2 * margin) if paragraphs else None
    _flow_text(page, rng, lines, body, (margin, top, w - margin, h - margin), fig, line_h)
    page.info["figure_box"] = fig
    return page


def _draw_figure(page: Image.Image, spec: ShapeSpec, fig: tuple[int, int, int, int],
                 rng: np.random.Generator, figure_caption: str | None,
                 font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> None:
    x0, y0, x1, y1 = fig
    draw = ImageDraw.Draw(page)
    if rng.random() < 0.5:
        draw.rectangle(fig, fill=(242, 242, 246), outline=(150, 150, 150))
    inner = ShapeSpec(spec.shape, spec.color)
    fw, fh = x1 - x0, y1 - y0
    s = min(fw, fh) * rng.uniform(0.55, 0.8)
    lo, hi = _ASPECT[spec.shape]
    a = math.sqrt(rng.uniform(lo, hi))
    cx, cy = x0 + fw / 2, y0 + fh / 2
    box = (round(cx - s * a / 2), round(cy - s / a / 2), round(cx + s * a / 2),
           round(cy + s / a / 2))
    draw_shape_on(page, inner, box, rng, rng.uniform(-1, 1) * _MAX_ROT[spec.shape])
    label = figure_caption or f"Figure {int(rng.integers(1, 9))}. " + _filler_line(rng, 4)
    while " " in label and font.getlength(label) > fw:
        label = label.rsplit(" ", 1)[0]
    draw.text((x0, y1 + 3), label, fill=(60, 60, 60), font=font)


def _flow_text(page: Image.Image, rng: np.random.Generator, lines: list[str] | None,
               font: ImageFont.FreeTypeFont, area: tuple[int, int, int, int],
               fig: tuple[int, int, int, int], line_h: int) -> None:
    """Lay text lines top to bottom, beside the figure when there is room, else skip past it.

    ``lines`` of None fills the page with pre-rendered filler text (fast, for training).
    """
    draw = ImageDraw.Draw(page)
    left, y, right, bottom = area
    fx0, fy0, fx1, fy1 = fig
    pad = line_h
    it = iter(lines or [])
    while y + line_h <= bottom:
        x_lo, x_hi = left, right
        if fy0 - pad < y + line_h and y < fy1 + pad + line_h:
            gap_l, gap_r = fx0 - pad - left, right - (fx1 + pad)
            if max(gap_l, gap_r) < 0.3 * (right - left):
                y += line_h
                continue
            x_lo, x_hi = (left, fx0 - pad) if gap_l >= gap_r else (fx1 + pad, right)
        if lines is None:
            _paste_line(page, rng, int(font.size), (x_lo, y), x_hi - x_lo, (20, 20, 20))
            y += line_h
            continue
        line = next(it, None)
        if line is None:
            return
        while line and font.getlength(line) > x_hi - x_lo:
            line = line.rsplit(" ", 1)[0] if " " in line else ""
        draw.text((x_lo, y), line, fill=(20, 20, 20), font=font)
        y += line_h
