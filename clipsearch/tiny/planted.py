"""A labelled near-duplicate world: distinct rendered shapes with planted copies of known kinds.

    make_planted(folder, distinct=200, per_type=10, seed=0) -> Planted

Planted types (each `per_type` times, on distinct originals): `resize` (x0.5), `jpeg40`
(quality 40), `crop90` (the central 90 %), `rotate10` (±10°, corners filled with the image's
mean colour), `burst` (three frames of one scene, the camera moving a few pixels between
them; none of them is an original) and `frame` (a photo grabbed from a short video that is
indexed too). `Planted.truth` holds every true pair by type; `score` gives pair precision and
recall of a set of groups. Used by tests/test_duplicates.py and benchmarks/duplicates.py.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from clipsearch.tiny.synth.shapes import random_spec, render_shape

TYPES = ("resize", "jpeg40", "crop90", "rotate10", "burst", "frame")
SIZE = 256
VIDEO_PX, VIDEO_RATE, VIDEO_SECONDS = 192, 8, 6


@dataclass
class Planted:
    root: Path
    distinct: list[str] = field(default_factory=list)
    truth: dict[str, set[frozenset[str]]] = field(default_factory=dict)  # type -> true pairs (paths)
    kind_of: dict[str, str] = field(default_factory=dict)  # planted file -> its type

    def all_pairs(self) -> set[frozenset[str]]:
        return set().union(*self.truth.values()) if self.truth else set()

    def score(self, groups: list[list[str]]) -> dict:
        """Pair precision and recall of `groups` (lists of paths), overall and per type."""
        predicted = {frozenset(p) for g in groups for p in itertools.combinations(sorted(g), 2)}
        truth = self.all_pairs()
        hit = predicted & truth
        out: dict = {"pairs_true": len(truth), "pairs_found": len(predicted), "pairs_right": len(hit),
                     "precision": len(hit) / len(predicted) if predicted else 1.0,
                     "recall": len(hit) / len(truth) if truth else 1.0, "by_type": {}}
        for t, pairs in self.truth.items():
            mine = {p for p in predicted if any(self.kind_of.get(x) == t for x in p)}
            out["by_type"][t] = {"recall": len(pairs & predicted) / len(pairs) if pairs else 1.0,
                                 "precision": len(mine & truth) / len(mine) if mine else 1.0,
                                 "pairs": len(pairs)}
        return out


def _jpeg(im: Image.Image, path: Path, quality: int) -> None:
    im.save(path, "JPEG", quality=quality)


def _reencoded(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _variant(kind: str, im: Image.Image, rng: np.random.Generator) -> Image.Image:
    if kind == "resize":
        return im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS)
    if kind == "jpeg40":
        return _reencoded(im, 40)
    if kind == "crop90":
        w, h = im.size
        dx, dy = int(w * 0.05), int(h * 0.05)
        return im.crop((dx, dy, w - dx, h - dy))
    if kind == "rotate10":
        fill = tuple(int(c) for c in np.asarray(im).reshape(-1, 3).mean(0))
        return im.rotate(float(rng.choice([-10.0, 10.0])), resample=Image.Resampling.BICUBIC, fillcolor=fill)
    raise ValueError(kind)


def _write_video(path: Path, rng: np.random.Generator) -> Image.Image:
    """A short clip panning over one rendered scene, and the frame a photo is grabbed from."""
    import av

    scene = render_shape(random_spec(rng), rng, size=VIDEO_PX + 48)
    n = VIDEO_SECONDS * VIDEO_RATE
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=VIDEO_RATE)
        stream.width = stream.height = VIDEO_PX
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "20"}
        for i in range(n):
            x = int(48 * i / (n - 1))
            frame = av.VideoFrame.from_image(scene.crop((x, 24, x + VIDEO_PX, 24 + VIDEO_PX)))
            frame.pts, frame.time_base = i, Fraction(1, VIDEO_RATE)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    with av.open(str(path)) as src:  # the photo is grabbed from the encoded clip, at 2 s
        for f in src.decode(video=0):
            if f.time is not None and f.time >= 2.0:
                return f.to_image().convert("RGB")
    raise RuntimeError(f"{path}: no frame at 2 s")


def make_planted(root: Path, distinct: int = 200, per_type: int = 10, seed: int = 0,
                 types: tuple[str, ...] = TYPES) -> Planted:
    """Write the world under `root` (distinct/, planted/, videos/) and return its truth."""
    rng = np.random.default_rng(seed)
    p = Planted(root, truth={t: set() for t in types})
    for sub in ("distinct", "planted", "videos"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    originals = []
    for i in range(distinct):
        path = root / "distinct" / f"img_{i:05d}.jpg"
        im = render_shape(random_spec(rng), rng, size=SIZE)
        _jpeg(im, path, 92)
        p.distinct.append(str(path))
        originals.append(im)
    image_types = [t for t in types if t in ("resize", "jpeg40", "crop90", "rotate10")]
    need = per_type * len(image_types)
    if need > distinct:
        raise ValueError(f"{distinct} distinct images cannot carry {need} planted copies")
    chosen = rng.choice(distinct, size=need, replace=False)
    for n, (t, i) in enumerate(zip(np.repeat(image_types, per_type), chosen, strict=True)):
        path = root / "planted" / f"{t}_{n:04d}.jpg"
        _jpeg(_variant(str(t), originals[i], rng), path, 40 if t == "jpeg40" else 92)
        p.truth[str(t)].add(frozenset((str(path), p.distinct[i])))
        p.kind_of[str(path)] = str(t)
    if "burst" in types:
        for b in range(per_type):
            scene = render_shape(random_spec(rng), rng, size=SIZE + 16)
            shots = []
            for s, off in enumerate((0, 4, 8)):
                path = root / "planted" / f"burst_{b:04d}_{s}.jpg"
                _jpeg(scene.crop((off, off // 2, off + SIZE, off // 2 + SIZE)), path, 92)
                shots.append(str(path))
                p.kind_of[str(path)] = "burst"
            p.truth["burst"] |= {frozenset(c) for c in itertools.combinations(shots, 2)}
    if "frame" in types:
        for v in range(per_type):
            video = root / "videos" / f"clip_{v:04d}.mp4"
            grabbed = _write_video(video, rng)
            path = root / "planted" / f"frame_{v:04d}.jpg"
            _jpeg(grabbed, path, 92)
            p.truth["frame"].add(frozenset((str(path), str(video))))
            p.kind_of[str(path)] = "frame"
    return p
