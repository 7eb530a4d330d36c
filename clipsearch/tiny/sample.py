"""Write the small demo collection the README quick start and the tests use.

    python examples/make_sample_collection.py sample/files     # or: python -m clipsearch.tiny.sample

It writes `images/` (a few dozen rendered shapes, with varied sizes, positions and
backgrounds), `videos/` (two short H.264 clips made of shape segments, each drifting across
the frame) and `docs/` (a multi-page PDF with one figure and a paragraph per page), plus
`manifest.json` with the ground truth: labels, segment times and page contents.
Deterministic for a given --seed; existing files are left alone, so re-running is cheap.
"""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from clipsearch.tiny.synth.shapes import ShapeSpec, canonical_query, draw_shape_on, render_shape

IMAGE_CLASSES = [("red", "star"), ("blue", "circle"), ("green", "triangle"), ("yellow", "square"),
                 ("purple", "cross"), ("orange", "diamond"), ("white", "star"), ("black", "circle"),
                 ("red", "square"), ("blue", "triangle"), ("green", "diamond"), ("yellow", "cross")]
VIDEOS = {  # name -> list of (colour, shape, seconds)
    "shapes_a.mp4": [("red", "star", 6), ("blue", "circle", 6), ("yellow", "square", 6),
                     ("green", "diamond", 6)],
    "shapes_b.mp4": [("purple", "cross", 5), ("orange", "triangle", 7), ("white", "star", 6)],
}
PAGES = [  # (colour, shape, paragraph)
    ("green", "triangle", "Quarterly revenue grew in every region, led by the northern stores."),
    ("red", "circle", "The maintenance schedule for the coastal turbines moves to the spring."),
    ("blue", "square", "Staff training hours doubled after the new onboarding programme started."),
    ("yellow", "star", "Customer satisfaction scores reached a record high in the autumn survey."),
    ("purple", "diamond", "Shipping delays fell once the second warehouse opened near the harbour."),
]
FRAME = 160
RATE = 8


def write_images(out: Path, rng: np.random.Generator, per_class: int = 3) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    sizes, positions = (None, "small", "large"), (None, "left", "right", "top", "bottom", "center")
    rows = []
    for color, shape in IMAGE_CLASSES:
        for i in range(per_class):
            spec = ShapeSpec(shape, color, sizes[int(rng.integers(3))], positions[int(rng.integers(6))])
            path = out / f"{color}_{shape}_{i}.jpg"
            if not path.exists():
                render_shape(spec, rng, size=256).save(path, quality=90)
            rows.append({"file": str(path), "query": canonical_query(spec),
                         "full_query": canonical_query(spec, full=True)})
    return rows


def write_video(path: Path, segments: list[tuple[str, str, int]], rng: np.random.Generator) -> list[dict]:
    """Each segment is a shape drifting left to right over a shared gradient background."""
    import av

    ys, xs = np.mgrid[0:FRAME, 0:FRAME]
    base = np.stack([90 + 60 * xs / FRAME, 110 + 40 * ys / FRAME, np.full_like(xs, 150.0)], -1)
    bg = base.astype(np.uint8)
    truth, t0 = [], 0.0
    frames = []
    for color, shape, secs in segments:
        spec = ShapeSpec(shape, color)
        n = secs * RATE
        for i in range(n):
            u = i / max(n - 1, 1)
            x = int(20 + u * (FRAME - 100)) + int(rng.integers(-2, 3))
            img = Image.fromarray(bg)
            draw_shape_on(img, spec, (x, 40, x + 80, 120), rng, angle=float(rng.normal(0, 3)))
            frames.append(img)
        truth.append({"query": canonical_query(spec), "t_start": t0, "t_end": t0 + secs})
        t0 += secs
    if not path.exists():
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=RATE)
            stream.width = stream.height = FRAME
            stream.pix_fmt = "yuv420p"
            stream.options = {"preset": "veryfast", "crf": "22"}
            for i, img in enumerate(frames):
                frame = av.VideoFrame.from_image(img)
                frame.pts, frame.time_base = i, Fraction(1, RATE)
                out.mux(stream.encode(frame))
            out.mux(stream.encode())
    return truth


def _figure(spec: ShapeSpec, rng: np.random.Generator, px: int = 320) -> Image.Image:
    """A report-style figure: the shape on a white or light-grey panel, as figures in real
    documents usually are (and as benchmarks/doc_pages.py draws them)."""
    img = Image.new("RGB", (px, px), (255, 255, 255) if rng.random() < 0.5 else (242, 242, 246))
    side = px * rng.uniform(0.55, 0.8)
    lo, hi = (px - side) / 2, (px + side) / 2
    return draw_shape_on(img, spec, (int(lo), int(lo), int(hi), int(hi)), rng)


def write_pdf(path: Path, rng: np.random.Generator) -> list[dict]:
    """One figure and one paragraph per page, with a real text layer (reportlab)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    truth = []
    if not path.exists():
        c = canvas.Canvas(str(path), pagesize=A4)
        w, h = A4
        for n, (color, shape, text) in enumerate(PAGES, start=1):
            c.setFont("Helvetica-Bold", 18)
            c.drawString(60, h - 70, f"Section {n}")
            fig = _figure(ShapeSpec(shape, color, "large"), rng)
            c.drawImage(ImageReader(fig), 60, h - 460, 360, 360)
            c.setFont("Helvetica", 12)
            c.drawString(60, h - 490, text)
            c.showPage()
        c.save()
    for n, (color, shape, text) in enumerate(PAGES, start=1):
        truth.append({"page": n, "query": canonical_query(ShapeSpec(shape, color)), "text": text})
    return truth


def make_sample(out: Path, seed: int = 0) -> dict:
    """Write everything under `out`; returns (and saves) the ground-truth manifest."""
    rng = np.random.default_rng(seed)
    manifest = {"images": write_images(out / "images", rng), "videos": {}, "docs": {}}
    (out / "videos").mkdir(parents=True, exist_ok=True)
    for name, segments in VIDEOS.items():
        manifest["videos"][str(out / "videos" / name)] = write_video(out / "videos" / name, segments, rng)
    (out / "docs").mkdir(parents=True, exist_ok=True)
    pdf = out / "docs" / "annual_report.pdf"
    manifest["docs"][str(pdf)] = write_pdf(pdf, rng)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="sample/files", help="folder to write (default sample/files)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    m = make_sample(Path(args.out), args.seed)
    print(f"wrote {len(m['images'])} images, {len(m['videos'])} videos and {len(m['docs'])} PDF "
          f"to {args.out}")


if __name__ == "__main__":
    main()
