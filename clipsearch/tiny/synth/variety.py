"""Training-time variety for the synth renderer: proportions, fill styles, colour drift and
resampling chains beyond its one canonical drawing of each shape.

A model trained on one star (inner radius 0.42) and one cross (arm 0.32) learns those two
drawings, not the names: drawn by other code it confused thin crosses and fat stars
(issue #22). ``render_shape(..., variety=True)`` draws from here; off by default, so the
canonical renderer's output (and every seed-pinned test and benchmark) is unchanged.
"""

from __future__ import annotations

import colorsys
import io

import numpy as np
from PIL import Image

FILL_STYLES = ("solid", "outlined", "gradient", "textured")
_FILL_P = (0.45, 0.2, 0.175, 0.175)
# Star and cross proportions still inside their names but away from where the two blur together
# at the model's 64 px input. Fine-tuned on the wider ranges (inner radius 0.33-0.6, arm
# 0.14-0.42), the model told stars from crosses less well on both renderers (RESULTS.md, #22).
STAR_INNER = (0.38, 0.5)
CROSS_ARM = (0.2, 0.36)


def varied_outline(shape: str, rng: np.random.Generator) -> np.ndarray | None:
    """An outline in the [-1, 1] square for the proportions a person still gives ``shape``'s name,
    or None where the canonical one already covers them (circle, square, diamond: the box's
    aspect varies those)."""
    if shape == "star":
        inner = rng.uniform(*STAR_INNER)
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return np.stack([r * np.cos(t), r * np.sin(t) + 0.1], axis=1)
    if shape == "cross":
        a = rng.uniform(*CROSS_ARM)
        return np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1],
                         [-a, a], [-1, a], [-1, -a], [-a, -a]], dtype=float)
    if shape == "triangle":
        apex = rng.uniform(-0.2, 0.2)
        return np.array([[apex, -1], [1, 1], [-1, 1]], dtype=float)
    return None


def box_stretch(shape: str, rng: np.random.Generator) -> float:
    """Height factor for the layout box: squat and tall triangles, wider or narrower diamonds."""
    if shape == "triangle":
        return float(rng.uniform(0.7, 1.35))
    if shape == "diamond":
        return float(rng.uniform(0.85, 1.25))
    return 1.0


def fill_style(rng: np.random.Generator) -> str:
    return FILL_STYLES[int(rng.choice(len(FILL_STYLES), p=_FILL_P))]


def drift_colour(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    """Move a colour within its name: a few degrees of hue, less saturation, other brightness."""
    r, g, b = (v / 255 for v in rgb)
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    if s > 0.3:  # chromatic: hue and saturation may drift; greys (white, black) keep their value band
        h = (h + rng.uniform(-0.022, 0.022)) % 1.0
        s = s * rng.uniform(0.72, 1.0)
        v = min(1.0, v * rng.uniform(0.78, 1.08))
    out = colorsys.hsv_to_rgb(h, s, v)
    return tuple(int(round(c * 255)) for c in out)


def fill_layer(rgb: tuple[int, int, int], size: tuple[int, int], style: str, rng: np.random.Generator
               ) -> Image.Image:
    """An RGB layer to paste through the shape's mask: a tone gradient or a woven texture of ``rgb``."""
    w, h = size
    base = np.asarray(rgb, np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx, yy = xx / max(w, 1) - 0.5, yy / max(h, 1) - 0.5
    if style == "gradient":
        ang = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(ang) + yy * np.sin(ang)
        amp = 0.1 if base.min() > 200 else 0.35
        arr = base * (1 + amp * t[..., None]) + (40 * (t[..., None] + 0.7) if base.max() < 50 else 0)
    else:  # textured
        f = rng.uniform(4, 10)
        pat = np.sign(np.sin(f * np.pi * (xx + yy))) * 0.5 + rng.normal(0, 0.3, (h, w))
        amp = 0.07 if base.min() > 200 else 0.15
        arr = base * (1 + amp * pat[..., None]) + (20 * (pat[..., None] + 1) if base.max() < 50 else 0)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def outline_width(size2: tuple[int, int], rng: np.random.Generator) -> int:
    """Stroke of an outlined shape: thick enough that its colour still reads at 64 px."""
    return max(2, int(round(min(size2) * rng.uniform(0.09, 0.16))))


def resample_chain(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Half or double size and back, then maybe a JPEG with 4:2:0 chroma (a phone, a chat app)."""
    w, h = img.size
    f = float(rng.choice([0.5, 0.6, 2.0]))
    img = img.resize((max(8, int(w * f)), max(8, int(h * f))), Image.Resampling.BILINEAR).resize(
        (w, h), Image.Resampling.BICUBIC)
    if rng.random() < 0.7:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", quality=int(rng.integers(35, 85)), subsampling=2)
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img
