"""Synthetic moment-retrieval benchmark: shape segments in videos with exact ground truth.

Each video (40–120 s) is a sequence of shots over backgrounds shared across videos; 4–8
segments of 3–20 s show one drifting, jittering shape (clipsearch.tiny.synth.shapes); the gaps
hold distractor shapes. Colour+shape combinations are dealt so that many occur exactly once
in the collection: those are the queries ("a red star"), with one true span each.

Two ways in:
- fast (default): frames are rendered at the indexer's sampling times and fed straight to
  the encoder; cuts are the true background changes. Measures retrieval, not decoding.
- `through_indexer=True`: videos are written as real mp4 files and indexed by VideoIndexer
  (PyAV decode, detected cuts, thumbnails) — what tests/test_video_eval.py runs.

`renderer="independent"` draws the shapes and backgrounds with clipsearch.tiny.world2 (its own
geometry, fills and colours, one style per segment), on 160 px frames, and writes the mp4
files at a low bitrate (CRF 32): figures for a model that must not only know its renderer.

The library half of benchmarks/video_moments.py (the command line), shared with the tests:

    .venv/bin/python -m benchmarks.video_moments --videos 20 --model clipsearch-tiny
"""

from __future__ import annotations

import json
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from clipsearch.moments import find_moments, rank_videos
from clipsearch.records import path_bytes
from clipsearch.store import SourceRows, Store
from clipsearch.tiny.model import encoder_identity
from clipsearch.tiny.synth.shapes import COLORS, SHAPES, ShapeSpec, canonical_query, draw_shape_on, layout_box
from clipsearch.video_metrics import Span, mean_iou, recall_at_iou, video_recall_at_k

FRAME = 224  # rendered frame size (square, so the encoder's centre crop keeps the whole frame)
INDEPENDENT_FRAME = 160  # frames of the independent renderer: small, as the failures were
CRF = {"synth": 20, "independent": 32}  # H.264 quality of the written files (higher = fewer bits)


@dataclass
class Segment:
    spec: ShapeSpec
    t_start: float
    t_end: float
    box0: tuple[int, int, int, int]
    box1: tuple[int, int, int, int]
    angle: float
    query: bool = False  # its colour+shape occurs nowhere else in the collection
    style: object | None = None  # a world2.ShapeStyle when the independent renderer draws it


@dataclass
class SynthVideo:
    name: str
    duration: float
    cuts: list[float]  # background changes
    backgrounds: list[int]  # background index per shot
    segments: list[Segment] = field(default_factory=list)
    distractors: list[Segment] = field(default_factory=list)
    renderer: str = "synth"
    frame: int = FRAME


# ---------------------------------------------------------------- world


def make_backgrounds(rng: np.random.Generator, n: int, size: int = FRAME) -> list[np.ndarray]:
    """Smooth, photo-like colour fields; shared by all videos so backgrounds never identify one."""
    out = []
    for _ in range(n):
        k = int(rng.integers(2, 5))
        cells = rng.integers(40, 216, (k, k, 3)).astype(np.uint8)
        field_img = Image.fromarray(cells).resize((size, size), Image.Resampling.BICUBIC)
        arr = np.asarray(field_img, np.float32) + rng.normal(0, 4, (size, size, 3))
        out.append(np.clip(arr, 0, 255).astype(np.uint8))
    return out


def _segment(spec: ShapeSpec, a: float, b: float, rng: np.random.Generator, query: bool = False,
             renderer: str = "synth") -> Segment:
    if renderer == "independent":
        from clipsearch.tiny.world2 import place_box, random_style

        style = random_style(spec.color, spec.shape, rng)
        box0f, angle = place_box(spec.size, spec.position, style.aspect, spec.shape, rng,
                                 INDEPENDENT_FRAME, INDEPENDENT_FRAME)
        box1f, _ = place_box(spec.size, spec.position, style.aspect, spec.shape, rng,
                             INDEPENDENT_FRAME, INDEPENDENT_FRAME)
        return Segment(spec, a, b, tuple(round(x) for x in box0f), tuple(round(x) for x in box1f),
                       angle, query, style)
    box0, angle = layout_box(spec, rng, FRAME, FRAME)
    box1, _ = layout_box(spec, rng, FRAME, FRAME)
    return Segment(spec, a, b, box0, box1, angle, query)


RENDERERS = ("synth", "independent")


def make_world(n_videos: int, seed: int = 0, min_len: float = 40, max_len: float = 120,
               n_backgrounds: int = 8, renderer: str = "synth") -> tuple[list[SynthVideo], list[np.ndarray]]:
    """Videos with segment layouts and exact ground truth (no pixels yet)."""
    if renderer not in RENDERERS:
        raise ValueError(f"unknown renderer {renderer!r}: use one of {', '.join(RENDERERS)}")
    frame = INDEPENDENT_FRAME if renderer == "independent" else FRAME
    rng = np.random.default_rng(seed)
    combos = [(s, c) for s in SHAPES for c in COLORS]
    order = rng.permutation(len(combos))
    n_unique = min(len(combos) * 2 // 3, 2 * n_videos)  # dealt once each: the queries
    unique = [combos[i] for i in order[:n_unique]]
    common = [combos[i] for i in order[n_unique:]]  # may repeat: fillers and distractors
    videos = []
    for v in range(n_videos):
        duration = float(rng.integers(int(min_len), int(max_len) + 1))
        n_seg = int(rng.integers(4, 9))
        # lay segments out left to right with gaps of ≥ 2 s
        lengths = rng.uniform(3, 20, n_seg)
        while lengths.sum() + 2.0 * (n_seg + 1) > duration:
            lengths *= 0.9
            lengths = np.maximum(lengths, 3.0)
            if lengths.sum() + 2.0 * (n_seg + 1) > duration and n_seg > 4:
                n_seg -= 1
                lengths = lengths[:n_seg]
        slack = duration - lengths.sum() - 2.0 * (n_seg + 1)
        gaps = 2.0 + rng.dirichlet(np.ones(n_seg + 1)) * slack
        t, spans = 0.0, []
        for i in range(n_seg):
            t += gaps[i]
            a, b = round(t, 1), round(t + lengths[i], 1)
            spans.append((a, b))
            t = b
        # shots: change background at about half of the segment starts and in some gaps
        cuts = sorted({a for a, _ in spans if rng.random() < 0.5}
                      | {round(float(rng.uniform(0, duration)), 1) for _ in range(int(rng.integers(0, 3)))})
        cuts = [c for c in cuts if 1.0 < c < duration - 1.0]
        bgs = [int(rng.integers(n_backgrounds)) for _ in range(len(cuts) + 1)]
        for i in range(1, len(bgs)):  # a cut must change the background
            while bgs[i] == bgs[i - 1]:
                bgs[i] = int(rng.integers(n_backgrounds))
        video = SynthVideo(f"video_{v:03d}", duration, cuts, bgs, renderer=renderer, frame=frame)
        for a, b in spans:
            if unique and rng.random() < 0.6:
                shape, colour = unique.pop()
                video.segments.append(_segment(ShapeSpec(shape, colour), a, b, rng, True, renderer))
            else:
                shape, colour = common[int(rng.integers(len(common)))]
                video.segments.append(_segment(ShapeSpec(shape, colour), a, b, rng, False, renderer))
        # distractors: small common shapes in about half of the gaps (never overlapping segments)
        edges = [0.0, *[x for ab in spans for x in ab], duration]
        for ga, gb in zip(edges[0::2], edges[1::2], strict=True):
            if gb - ga > 3.0 and rng.random() < 0.5:
                shape, colour = common[int(rng.integers(len(common)))]
                spec = ShapeSpec(shape, colour, size="small")
                video.distractors.append(_segment(spec, ga + 0.5, gb - 0.5, rng, False, renderer))
        videos.append(video)
    if renderer == "independent":
        from clipsearch.tiny.world2 import video_backgrounds

        return videos, video_backgrounds(rng, n_backgrounds, frame)
    return videos, make_backgrounds(rng, n_backgrounds)


def render_frame(video: SynthVideo, t: float, backgrounds: list[np.ndarray], seed: int = 0) -> Image.Image:
    """The frame at time t: shot background + the shapes active at t (drifting with jitter)."""
    shot = int(np.searchsorted(video.cuts, t, side="right"))
    img = Image.fromarray(backgrounds[video.backgrounds[shot]].copy())
    rng = np.random.default_rng((seed, int(t * 1000), zlib.crc32(video.name.encode())))
    for seg in (*video.segments, *video.distractors):
        if seg.t_start <= t < seg.t_end:
            u = (t - seg.t_start) / max(seg.t_end - seg.t_start, 1e-6)
            box = [round((1 - u) * p + u * q + rng.normal(0, 2))
                   for p, q in zip(seg.box0, seg.box1, strict=True)]
            turn = seg.angle + float(rng.normal(0, 2))
            if seg.style is not None:
                from clipsearch.tiny.world2 import draw_shape_in

                draw_shape_in(img, seg.spec.shape, tuple(box), turn, seg.style)
            else:
                draw_shape_on(img, seg.spec, tuple(box), rng, turn)
    return img


# ---------------------------------------------------------------- indexing


def index_fast(videos: list[SynthVideo], backgrounds: list[np.ndarray], encoder, store: Store,
               fps: float | None = None) -> float:
    """Render frames at the indexer's sampling times, encode, and store rows. Returns seconds."""
    from clipsearch.indexers.video import build_records, default_fps

    t0 = time.perf_counter()
    items = []
    for v in videos:
        rate = fps or default_fps(v.duration)
        times = np.arange(0.0, v.duration, 1.0 / rate)
        times = np.unique(np.round(np.concatenate([times, v.cuts]), 3))  # the indexer samples each cut too
        frames = [render_frame(v, float(t), backgrounds) for t in times]
        vecs = encoder.encode_images(frames)
        recs = build_records(times, vecs, v.cuts, v.duration, rate)
        items.append(SourceRows(path_bytes(f"/synthetic/{v.name}.mp4"), 0.0, 0, v.name, recs))
    store.replace_sources(items)
    return time.perf_counter() - t0


def write_mp4(video: SynthVideo, backgrounds: list[np.ndarray], path: Path, rate: int = 8) -> Path:
    """Encode the video as H.264 at `rate` fps (enough for the indexer's 2 fps sampling)."""
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=rate)
        s.width = s.height = video.frame
        s.pix_fmt = "yuv420p"
        s.options = {"preset": "ultrafast", "crf": str(CRF[video.renderer])}
        for i in range(int(np.ceil(video.duration * rate))):
            f = av.VideoFrame.from_image(render_frame(video, i / rate, backgrounds))
            f.pts = i
            f.time_base = Fraction(1, rate)
            for pk in s.encode(f):
                out.mux(pk)
        for pk in s.encode():
            out.mux(pk)
    return path


def index_through_indexer(videos: list[SynthVideo], backgrounds: list[np.ndarray], encoder, store: Store,
                          workdir: Path) -> float:
    """Write real mp4 files and index them with VideoIndexer. Returns seconds spent indexing."""
    from clipsearch.indexers.base import IndexContext
    from clipsearch.indexers.video import VideoIndexer

    paths = [write_mp4(v, backgrounds, workdir / f"{v.name}.mp4") for v in videos]
    ctx = IndexContext(thumb_dir=workdir / "thumbs")
    idx = VideoIndexer()
    t0 = time.perf_counter()
    items = []
    for p in paths:
        assert idx.accepts(p, p.read_bytes()[:64])
        recs = idx.extract(p, encoder, ctx)
        items.append(SourceRows(path_bytes(str(p)), 0.0, 0, p.stem, recs))
    store.replace_sources(items)
    return time.perf_counter() - t0


# ---------------------------------------------------------------- evaluation


def evaluate(videos: list[SynthVideo], encoder, table, source_of, k: int = 10, ann_search=None,
             flank_weight: float = 0.0) -> dict:
    """R1@0.5, R1@0.7, mIoU (top-1 moment in the whole collection) and video-level R@1."""
    queries = [(v, s) for v in videos for s in v.segments if s.query]
    texts = [canonical_query(s.spec) for _, s in queries]
    qvecs = encoder.encode_texts(texts)
    preds, gts, ranked, lat, in_video = [], [], [], [], []
    for (v, seg), q in zip(queries, qvecs, strict=True):
        t0 = time.perf_counter()
        ms = find_moments(q, table, k=k, ann_search=ann_search, flank_weight=flank_weight)
        lat.append(time.perf_counter() - t0)
        preds.append([Span(m.source, m.t_start, m.t_end) for m in ms])
        gts.append(Span(source_of(v), seg.t_start, seg.t_end))
        ranked.append([h.source for h in rank_videos(q, table, k=5, ann_search=ann_search)])
        in_video.append(localise_in_video(q, table, source_of(v), flank_weight))
    return {
        "queries": len(queries),
        "R1@0.5": recall_at_iou(preds, gts, 0.5),
        "R1@0.7": recall_at_iou(preds, gts, 0.7),
        "R5@0.5": recall_at_iou(preds, gts, 0.5, k=5),
        "mIoU": float(mean_iou(preds, gts)),
        "video_R@1": video_recall_at_k(ranked, [g.source for g in gts], k=1),
        "query_ms_p50": 1000 * float(np.median(lat)) if lat else 0.0,
        # localisation alone: the top segment of the right video's own curve
        "in_video_R1@0.5": recall_at_iou(in_video, gts, 0.5),
        "in_video_mIoU": float(mean_iou(in_video, gts)),
    }


def localise_in_video(query: np.ndarray, table, source: str, flank_weight: float = 0.0) -> list[Span]:
    """Segments of one known video for the query (single-video moment retrieval)."""
    from clipsearch.moments import segments_from_curve
    from clipsearch.store import float32_vectors, sql_str

    where = f"source = {sql_str(source)} AND kind IN ('video_frame', 'video')"
    rows = table.search().where(where).select(["kind", "t_start", "extra", "vector"]).limit(None).to_arrow()
    kinds = rows.column("kind").to_pylist()
    video = [json.loads(e or "{}") for k, e in zip(kinds, rows.column("extra").to_pylist(), strict=True)
             if k == "video"]
    frames = rows.filter(pa.array([k == "video_frame" for k in kinds]))
    t = frames.column("t_start").to_numpy()
    sims = float32_vectors(frames.column("vector")) @ query
    order = np.argsort(t)
    cuts = video[0].get("cuts", []) if video else []
    segs = segments_from_curve(t[order], sims[order], cuts, flank_weight=flank_weight)
    return [Span(source, g.t_start, g.t_end) for g in segs]


def run_benchmark(n_videos: int = 20, *, encoder=None, model: str = "clipsearch-tiny", seed: int = 0,
                  min_len: float = 40, max_len: float = 120, through_indexer: bool = False,
                  workdir: str | Path | None = None, flank_weight: float = 0.0,
                  renderer: str = "synth") -> dict:
    """Build the synthetic collection, index it, and score every unique-combination query."""
    if encoder is None:
        from clipsearch.encoders import Encoder

        encoder = Encoder.load(model, device="cpu")
    videos, backgrounds = make_world(n_videos, seed, min_len, max_len, renderer=renderer)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        store = Store(work / "db", encoder.dim)
        if through_indexer:
            secs = index_through_indexer(videos, backgrounds, encoder, store, work)

            def source_of(v: SynthVideo) -> str:
                return str(work / f"{v.name}.mp4")
        else:
            secs = index_fast(videos, backgrounds, encoder, store)

            def source_of(v: SynthVideo) -> str:
                return f"/synthetic/{v.name}.mp4"
        result = evaluate(videos, encoder, store.table, source_of, flank_weight=flank_weight)
    result.update({
        "videos": n_videos,
        "video_seconds": round(sum(v.duration for v in videos), 1),
        "segments": sum(len(v.segments) for v in videos),
        "index_s": round(secs, 2),
        "mode": "indexer" if through_indexer else "fast",
        "renderer": renderer,
        **encoder_identity(encoder),
    })
    return result


def indexing_speed(height: int, seconds: float = 60.0, *, encoder=None, model: str = "clipsearch-tiny",
                   fps: float = 1.0, rate: int = 25, workdir: str | Path | None = None) -> dict:
    """Video-seconds indexed per wall-second (decode + cut detection + encode) for one 16:9 file.

    The file is written first (not timed): synthetic shots scaled up to `height`p at `rate` fps.
    """
    import av

    from clipsearch.indexers.base import IndexContext
    from clipsearch.indexers.video import VideoIndexer

    if encoder is None:
        from clipsearch.encoders import Encoder

        encoder = Encoder.load(model, device="cpu")
    width = int(round(height * 16 / 9 / 2)) * 2
    videos, backgrounds = make_world(1, seed=5, min_len=seconds, max_len=seconds)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(workdir or tmp)
        path = work / f"speed_{height}p.mp4"
        with av.open(str(path), "w") as out:
            s = out.add_stream("libx264", rate=rate)
            s.width, s.height, s.pix_fmt = width, height, "yuv420p"
            s.options = {"preset": "ultrafast", "crf": "23"}
            for i in range(int(seconds * rate)):
                img = render_frame(videos[0], i / rate, backgrounds).resize((width, height))
                f = av.VideoFrame.from_image(img)
                f.pts, f.time_base = i, Fraction(1, rate)
                for pk in s.encode(f):
                    out.mux(pk)
            for pk in s.encode():
                out.mux(pk)
        t0 = time.perf_counter()
        ctx = IndexContext(thumb_dir=work / "thumbs", options={"fps": fps})
        recs = VideoIndexer().extract(path, encoder, ctx)
        wall = time.perf_counter() - t0
    return {"height": height, "video_s": seconds, "wall_s": round(wall, 2),
            "video_s_per_wall_s": round(seconds / wall, 2),
            "frames_encoded": sum(r.kind == "video_frame" for r in recs),
            **encoder_identity(encoder)}
