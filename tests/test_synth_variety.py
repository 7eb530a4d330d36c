"""The training-time variety of the synth renderer stays within what keeps the shapes apart."""

from __future__ import annotations

import numpy as np

from clipsearch.tiny.synth import ShapeSpec, render_shape, variety


def test_star_and_cross_proportions_stay_in_their_ranges() -> None:
    rng = np.random.default_rng(0)
    inner, arm = [], []
    for _ in range(200):
        star = variety.varied_outline("star", rng)
        cross = variety.varied_outline("cross", rng)
        assert star is not None and cross is not None
        pts = star - np.array([0.0, 0.1])
        inner.append(float(np.hypot(pts[1::2, 0], pts[1::2, 1]).mean()))
        arm.append(float(abs(cross[0, 0])))
    lo, hi = variety.STAR_INNER
    assert lo <= min(inner) and max(inner) <= hi and max(inner) - min(inner) > 0.8 * (hi - lo)
    lo, hi = variety.CROSS_ARM
    assert lo <= min(arm) and max(arm) <= hi and max(arm) - min(arm) > 0.8 * (hi - lo)


def test_variety_off_draws_the_canonical_image() -> None:
    spec = ShapeSpec("cross", "red")
    a = np.asarray(render_shape(spec, np.random.default_rng(5), size=64))
    b = np.asarray(render_shape(spec, np.random.default_rng(5), size=64, variety=False))
    c = np.asarray(render_shape(spec, np.random.default_rng(5), size=64, variety=True))
    assert np.array_equal(a, b)
    assert c.shape == a.shape
