"""Signed distance fields (pixels; negative inside) of the shape classes, with proportions
drawn from the range a person still gives that shape's name."""

from __future__ import annotations

import math

import numpy as np

# per-class proportion ranges (what still reads as the name)
STAR_INNER = (0.36, 0.56)       # inner / outer radius of the 5-pointed star
CROSS_ARM = (0.16, 0.38)        # arm half-thickness / half-extent (thin to thick plus sign)
TRIANGLE_HW = (0.72, 1.35)      # height / base width (squat to tall)
DIAMOND_WH = (0.52, 0.82)       # width / height of the rhombus
RECT_ASPECT = (0.9, 1.1)        # a square stays nearly square
ELLIPSE_ASPECT = (0.9, 1.1)
MAX_TURN = {"circle": 180.0, "square": 8.0, "triangle": 12.0, "star": 30.0, "cross": 8.0, "diamond": 6.0}


def polygon_sdf(px: np.ndarray, py: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Distance to a closed polygon's boundary, negative inside (even-odd rule)."""
    d2 = np.full(px.shape, np.inf)
    inside = np.zeros(px.shape, bool)
    n = len(verts)
    for i in range(n):
        ax, ay = verts[i]
        bx, by = verts[(i + 1) % n]
        ex, ey = bx - ax, by - ay
        wx, wy = px - ax, py - ay
        t = np.clip((wx * ex + wy * ey) / max(ex * ex + ey * ey, 1e-12), 0.0, 1.0)
        d2 = np.minimum(d2, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        crosses = (ay > py) != (by > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = ax + (py - ay) * ex / np.where(ey == 0, 1e-12, ey)
        inside ^= crosses & (px < xint)
    d = np.sqrt(d2)
    return np.where(inside, -d, d)


def star_vertices(r_out: float, inner: float) -> np.ndarray:
    ang = -math.pi / 2 + np.arange(10) * math.pi / 5
    r = np.where(np.arange(10) % 2 == 0, r_out, r_out * inner)
    return np.stack([r * np.cos(ang), r * np.sin(ang)], axis=1)


def cross_vertices(hx: float, hy: float, arm: float) -> np.ndarray:
    a = arm * min(hx, hy)
    return np.array([(-a, -hy), (a, -hy), (a, -a), (hx, -a), (hx, a), (a, a), (a, hy), (-a, hy),
                     (-a, a), (-hx, a), (-hx, -a), (-a, -a)])


def shape_sdf(shape: str, params: dict[str, float], hx: float, hy: float,
              px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """SDF of ``shape`` centred at the origin in a box of half-extents (hx, hy)."""
    if shape == "circle":
        k = min(hx, hy)
        return (np.hypot(px / hx, py / hy) - 1.0) * k
    if shape == "square":
        r = params.get("round", 0.0) * min(hx, hy)
        qx, qy = np.abs(px) - (hx - r), np.abs(py) - (hy - r)
        return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - r
    if shape == "triangle":
        verts = np.array([(params.get("apex", 0.0) * hx, -hy), (hx, hy), (-hx, hy)])
    elif shape == "star":
        r = min(hx, hy)
        verts = star_vertices(r, params["inner"]) * [hx / r, hy / r]
        verts[:, 1] += 0.1 * r * (hy / r)  # the star's centroid sits below the top point
    elif shape == "cross":
        verts = cross_vertices(hx, hy, params["arm"])
    elif shape == "diamond":
        verts = np.array([(0, -hy), (hx, 0), (0, hy), (-hx, 0)], float)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return polygon_sdf(px, py, verts)


def proportions(shape: str, rng: np.random.Generator) -> tuple[dict[str, float], float]:
    """(params, width/height of the box) for one drawing of ``shape``."""
    u = float(rng.uniform())
    if shape == "star":
        return {"inner": STAR_INNER[0] + u * (STAR_INNER[1] - STAR_INNER[0])}, float(rng.uniform(0.92, 1.08))
    if shape == "cross":
        return {"arm": CROSS_ARM[0] + u * (CROSS_ARM[1] - CROSS_ARM[0])}, float(rng.uniform(0.9, 1.1))
    if shape == "triangle":
        hw = TRIANGLE_HW[0] + u * (TRIANGLE_HW[1] - TRIANGLE_HW[0])
        return {"apex": float(rng.uniform(-0.15, 0.15))}, 1.0 / hw
    if shape == "diamond":
        return {}, DIAMOND_WH[0] + u * (DIAMOND_WH[1] - DIAMOND_WH[0])
    if shape == "square":
        return {"round": float(rng.choice([0.0, 0.0, 0.08, 0.15]))}, float(rng.uniform(*RECT_ASPECT))
    return {}, float(rng.uniform(*ELLIPSE_ASPECT))
