"""Video indexer: one PyAV decode pass → sampled frames, shot cuts, multi-scale windows.

Why one pass: decoding dominates indexing cost, so sampling (for the encoder), shot
detection (PySceneDetect's AdaptiveDetector on tiny frames) and thumbnails all share it.
Frames are downscaled inside the decoder's colour conversion (never converted at full
resolution), timestamps come from PTS (right for variable frame rate and non-zero starts),
and rotation side data is applied so phone videos are upright.

Rows produced (see `build_records`): `video_frame` per sample, `video_window` per multi-scale
window and per shot (mean-pooled frame vectors), and one pooled `video` row whose
`extra["cuts"]` lists the shot cuts that `clipsearch.moments` snaps to. With a speech engine
(`--asr`), the audio track adds `speech` rows (`clipsearch.indexers.audio.speech_rows`) and
the `video` row's `extra["asr"]` names the engine.
"""

from __future__ import annotations

import hashlib
import io
import math
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from clipsearch.indexers.photo_formats import STILL_BRANDS
from PIL import Image

from clipsearch.errors import SkipFile
from clipsearch.lazy import lazy_import
from clipsearch.records import Record, path_bytes

if TYPE_CHECKING:
    import av
else:
    av = lazy_import("av")  # PyAV: imported by the first video, not by every index run

if TYPE_CHECKING:
    from clipsearch.indexers.base import IndexContext

    from clipsearch.backends import AnyEncoder

WINDOW_SCALES: tuple[int, ...] = (2, 4, 8, 16, 32)
SHORT_VIDEO_S = 120.0
DEFAULT_FPS = 1.0
SHORT_VIDEO_FPS = 2.0
CUT_FPS = 10.0  # frames/s fed to the shot detector (enough to place a cut within 0.1 s)
CUT_WIDTH = 96  # detector frame width in pixels
ENCODE_BATCH = 32
_EPS = 1e-6


# ---------------------------------------------------------------- pooling


def _mean_pool(vectors: np.ndarray) -> np.ndarray:
    return vectors.mean(axis=0)


POOLERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"mean": _mean_pool}
"""Frame → clip pooling methods; part of the encoder configuration (`ModelSpec.pooling`)."""


def pool_frames(vectors: np.ndarray, method: str = "mean") -> np.ndarray:
    """Pool frame vectors into one L2-normalised vector (rows are normalised first)."""
    if method not in POOLERS:
        raise ValueError(f"unknown pooling '{method}'; known: {', '.join(sorted(POOLERS))}")
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[0] == 0:
        raise ValueError(f"need a non-empty (n, dim) array of frame vectors, got shape {v.shape}")
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    pooled = POOLERS[method](v).astype(np.float32)
    return pooled / max(float(np.linalg.norm(pooled)), 1e-12)


# ---------------------------------------------------------------- pure row building


def default_fps(duration: float | None, options: dict | None = None) -> float:
    """`options["fps"]` if given, else 2 fps for videos under 2 minutes and 1 fps otherwise."""
    if options and options.get("fps"):
        return float(options["fps"])
    if duration is not None and duration < SHORT_VIDEO_S:
        return SHORT_VIDEO_FPS
    return DEFAULT_FPS


def window_spans(duration: float, scales: Sequence[int] = WINDOW_SCALES) -> list[tuple[float, float, int]]:
    """Windows of each scale w at stride w/2; the last may be cut short by the video's end.

    A window starts only while at least half of it lies inside the video; scales longer
    than twice the video are skipped (the `video` row covers them).
    """
    spans = []
    for w in scales:
        if w > 2 * duration:
            continue
        stride = w / 2.0
        start = 0.0
        while True:
            spans.append((start, min(start + w, duration), int(w)))
            start += stride
            if start + stride >= duration - _EPS:
                break
    return spans


def shot_spans(cuts: Sequence[float], duration: float) -> list[tuple[float, float]]:
    """Shots as [start, end) spans from the cut times."""
    edges = [0.0, *[c for c in sorted(cuts) if 0.0 < c < duration], duration]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=False) if b > a]


def build_records(
    times: np.ndarray,
    vectors: np.ndarray,
    cuts: Sequence[float],
    duration: float,
    fps: float,
    *,
    shot_thumbs: Sequence[str | None] | None = None,
    pooling: str = "mean",
    scales: Sequence[int] = WINDOW_SCALES,
    extra: dict | None = None,
) -> list[Record]:
    """All rows of one video from its sampled frame times and (n, dim) frame vectors.

    Pure (no I/O), so the moment search can be tested on planted vectors. Windows whose span
    duplicates another window's (e.g. a shot equal to a 4 s window) are kept once, with both
    labels, because the row id is derived from kind + span.
    """
    times = np.asarray(times, dtype=np.float64)
    vectors = np.asarray(vectors, dtype=np.float32)
    if times.shape[0] != vectors.shape[0] or times.shape[0] == 0:
        raise ValueError(f"{times.shape[0]} frame times for {vectors.shape[0]} vectors")
    shots = shot_spans(cuts, duration)
    thumbs = list(shot_thumbs) if shot_thumbs is not None else [None] * len(shots)
    starts = np.array([a for a, _ in shots])

    def shot_index(t: float | np.ndarray):
        return np.clip(np.searchsorted(starts, t, side="right") - 1, 0, len(shots) - 1)

    shot_of = shot_index(times)
    step = 1.0 / fps
    recs: list[Record] = []
    for i, (t, v) in enumerate(zip(times, vectors, strict=False)):
        recs.append(Record("video_frame", v, float(t), float(min(t + step, max(duration, t + _EPS))),
                           thumb=thumbs[shot_of[i]], extra={"shot": int(shot_of[i])}))

    windows: dict[tuple[float, float], Record] = {}

    def add_window(a: float, b: float, label: int | str, shot: int) -> None:
        key = (round(a, 3), round(b, 3))
        if key in windows:
            windows[key].extra.setdefault("also", []).append(label)
            return
        inside = (times >= a - _EPS) & (times < b - _EPS)
        if not inside.any():
            return
        mid = times[inside][len(times[inside]) // 2]
        th = thumbs[shot] if shot >= 0 else thumbs[shot_index(mid)]
        windows[key] = Record("video_window", pool_frames(vectors[inside], pooling), float(a), float(b),
                              thumb=th, extra={"scale": label})

    for a, b, w in window_spans(duration, scales):
        add_window(a, b, w, -1)
    for j, (a, b) in enumerate(shots):
        add_window(a, b, "shot", j)
    recs.extend(windows.values())
    meta = {"duration": float(duration), "fps": float(fps), "frames": int(times.shape[0]),
            "cuts": [round(float(c), 3) for c in cuts], "pooling": pooling, **(extra or {})}
    recs.append(Record("video", pool_frames(vectors, pooling), 0.0, float(duration),
                       thumb=thumbs[0] if thumbs else None, extra=meta))
    return recs


# ---------------------------------------------------------------- decoding


@dataclass
class Sample:
    """One frame handed to the encoder: time (s from the video's start) and upright image."""

    t: float
    image: Image.Image
    at_cut: bool = False


@dataclass
class DecodeResult:
    """What one decode pass found besides the samples (filled in as decoding goes)."""

    cuts: list[float] = field(default_factory=list)
    duration: float = 0.0
    declared_duration: float | None = None
    start_time: float = 0.0
    width: int = 0
    height: int = 0
    rotation: int = 0
    fps: float = DEFAULT_FPS


def _upright(img: Image.Image, rotation: int) -> Image.Image:
    """Apply a display-matrix rotation (degrees counter-clockwise, as PyAV reports it)."""
    r = int(round(rotation / 90.0)) % 4
    if r == 0:
        return img
    return img.transpose((Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                          Image.Transpose.ROTATE_270)[r - 1])


def target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Size with the short side at `short_side` (never upscaled), even dimensions for swscale."""
    scale = min(1.0, short_side / max(1, min(width, height)))
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def _declared_duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def decode_samples(path: Path, short_side: int, options: dict | None, info: DecodeResult,
                   max_pixels: int | None = None) -> Iterator[Sample]:
    """Decode `path` once; yield sampled upright frames, and fill `info` (cuts, duration, ...).

    Raises SkipFile for anything that is not a decodable video.
    """
    from scenedetect import AdaptiveDetector
    from scenedetect.common import FrameTimecode, Timecode

    options = options or {}
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise SkipFile(f"{path}: not a readable video container ({e})") from e
    with container:
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
            raise SkipFile(f"{path}: no video stream ({kinds}); audio-only or not a video")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        cc = stream.codec_context
        if max_pixels and cc.width * cc.height > max_pixels:
            raise SkipFile(f"{path}: {cc.width}x{cc.height} exceeds the {max_pixels}-pixel limit")
        info.declared_duration = _declared_duration(container, stream)
        fps = default_fps(info.declared_duration, options)
        info.fps = fps
        step = 1.0 / fps
        if container.start_time is not None:
            info.start_time = container.start_time / 1_000_000
        elif stream.start_time is not None:
            info.start_time = float(stream.start_time * stream.time_base)
        detector = AdaptiveDetector(min_scene_len=float(options.get("min_shot", 0.6)))
        cut_rate = Fraction(float(options.get("cut_fps", CUT_FPS))).limit_denominator(1000)
        next_sample = 0.0
        next_detect = -1.0
        last_t: float | None = None
        last_dur = 0.0
        recent: list[tuple[float, Any]] = []  # last detector frames, to sample the one at a cut
        sampled: list[float] = []
        size = (0, 0)
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                # PyAV types time_base as optional; a decoded frame always has its stream's
                t = float(frame.pts * frame.time_base) - info.start_time  # type: ignore[operator]
                if last_t is not None and t <= last_t:
                    continue  # duplicate or out-of-order timestamp
                if last_t is None:
                    info.width, info.height = frame.width, frame.height
                    info.rotation = int(frame.rotation or 0)
                    size = target_size(frame.width, frame.height, short_side)
                last_t = t
                last_dur = float(frame.duration * frame.time_base) if frame.duration else 0.0  # type: ignore[operator]
                if t >= next_detect - _EPS:
                    next_detect = t + 1.0 / float(cut_rate)
                    recent = [*recent[-7:], (t, frame)]  # cuts are reported a few detector frames late
                    small = frame.to_ndarray(
                        width=CUT_WIDTH, height=_even(CUT_WIDTH * frame.height / frame.width), format="bgr24"
                    )
                    tc = FrameTimecode(Timecode(int(frame.pts), Fraction(frame.time_base)),  # type: ignore[arg-type]
                                       fps=cut_rate)
                    for cut in detector.process_frame(tc, small):
                        ct = float(cut.seconds) - info.start_time
                        if ct <= 0.0 or (info.cuts and ct <= info.cuts[-1]):
                            continue
                        info.cuts.append(ct)
                        # the frame at the cut opens a new shot: make sure it is sampled
                        hit = next(((rt, rf) for rt, rf in recent if abs(rt - ct) < _EPS), None)
                        if hit is not None and all(abs(hit[0] - x) > _EPS for x in sampled[-8:]):
                            sampled.append(hit[0])
                            yield Sample(hit[0], _upright(hit[1].to_image(width=size[0], height=size[1]),
                                                          info.rotation), at_cut=True)
                if t >= next_sample - _EPS:
                    next_sample = (math.floor(t / step + _EPS) + 1) * step
                    sampled.append(t)
                    yield Sample(t, _upright(frame.to_image(width=size[0], height=size[1]), info.rotation))
        except av.error.FFmpegError as e:
            where = f" at {last_t:.1f}s" if last_t is not None else ""
            raise SkipFile(f"{path}: corrupt video data{where} ({e})") from e
        if last_t is None:
            raise SkipFile(f"{path}: no decodable video frames")
        frame_dur = last_dur or (float(1 / stream.average_rate) if stream.average_rate else step)
        decoded = last_t + frame_dur
        declared = info.declared_duration
        # Demuxers disagree on whether the declared duration includes the start offset: take
        # the more generous reading before calling a file truncated.
        seen = max(decoded, decoded + info.start_time)
        if declared and declared > 2.0 and seen < 0.8 * declared:
            raise SkipFile(f"{path}: truncated (decoded {decoded:.1f}s of a declared {declared:.1f}s)")
        info.duration = decoded


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def _prefetch(gen: Iterator[Sample], depth: int = 64) -> Iterator[Sample]:
    """Run a generator in a thread so decoding overlaps encoding; re-raises its errors here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def worker() -> None:
        try:
            for item in gen:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as e:  # noqa: BLE001 - handed over to the consumer
            q.put(e)
        finally:
            q.put(done)

    th = threading.Thread(target=worker, name="video-decode", daemon=True)
    th.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while th.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                th.join(0.05)


# ---------------------------------------------------------------- the indexer

_MAGIC_EXT = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "mkv", ".webm": "webm", ".avi": "avi"}


def sniff_container(head: bytes) -> str | None:
    """Container family from the first bytes: 'isobmff' (mp4/mov), 'ebml' (mkv/webm), 'avi'."""
    if len(head) >= 12 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "isobmff"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "ebml"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    return None


def _thumb_path(thumb_dir: Path, path: Path, t: float) -> Path:
    h = hashlib.blake2b(path_bytes(path) + f"@{t:.3f}".encode(), digest_size=12).hexdigest()
    return Path(thumb_dir) / f"v_{h}.jpg"


class VideoIndexer:
    """Indexes mp4, mov, mkv, webm and avi files (detected by content)."""

    medium = "video"

    def accepts(self, path: Path, head: bytes) -> bool:
        """Magic bytes decide; the extension only breaks ties (an ISO-BMFF file may be a HEIC image)."""
        kind = sniff_container(head)
        ext = Path(path).suffix.lower()
        if kind == "isobmff":
            brand = head[8:12]
            if brand in STILL_BRANDS or brand in (b"M4A ", b"M4B "):  # photos (HEIC, AVIF, CR3), audio
                return False
            return ext in _MAGIC_EXT or ext == ""
        return kind in ("ebml", "avi")

    def extract(self, path: Path, encoder: AnyEncoder, ctx: IndexContext) -> list[Record]:
        """Decode once, encode sampled frames in batches, and build all rows of the video."""
        path = Path(path)
        try:
            size = path.stat().st_size
        except OSError as e:
            raise SkipFile(f"{path}: cannot read ({e.strerror})") from e
        if size == 0:
            raise SkipFile(f"{path}: empty file (0 bytes)")
        options = dict(ctx.options or {})
        spec_pooling = getattr(getattr(encoder, "spec", None), "pooling", None)
        pooling = str(options.get("pooling") or spec_pooling or "mean")
        info = DecodeResult()
        times: list[float] = []
        vecs: list[np.ndarray] = []
        jpegs: list[bytes] = []  # ~10 KB per sample, so each shot's thumbnail can be picked afterwards
        batch: list[Sample] = []

        def flush() -> None:
            if batch:
                vecs.append(np.asarray(encoder.encode_images([s.image for s in batch]), dtype=np.float32))
                batch.clear()

        for s in _prefetch(decode_samples(path, encoder.image_size, options, info, ctx.max_pixels)):
            buf = io.BytesIO()
            s.image.convert("RGB").save(buf, "JPEG", quality=85)
            jpegs.append(buf.getvalue())
            times.append(s.t)
            batch.append(s)
            if len(batch) >= ENCODE_BATCH:
                flush()
        flush()
        if not times:
            raise SkipFile(f"{path}: no decodable video frames")
        order = np.argsort(np.asarray(times), kind="stable")
        t_arr = np.asarray(times)[order]
        v_arr = np.concatenate(vecs)[order]
        thumbs = self._write_thumbs(path, Path(ctx.thumb_dir), t_arr, [jpegs[i] for i in order],
                                    shot_spans(info.cuts, info.duration))
        extra = {"width": info.width, "height": info.height, "rotation": info.rotation,
                 "start_time": round(info.start_time, 6)}
        from clipsearch.indexers.audio import speech_rows

        speech, facts = speech_rows(path, encoder, ctx)  # the audio track, when --asr runs an engine
        extra.update(facts)
        return build_records(t_arr, v_arr, info.cuts, info.duration, info.fps,
                             shot_thumbs=thumbs, pooling=pooling, extra=extra) + speech

    @staticmethod
    def _write_thumbs(path: Path, thumb_dir: Path, times: np.ndarray, jpegs: Sequence[bytes],
                      shots: Sequence[tuple[float, float]]) -> list[str]:
        """One JPEG per shot: its first sample ≥ 0.5 s in (skips the blend right at a cut)."""
        thumb_dir.mkdir(parents=True, exist_ok=True)
        out = []
        for a, b in shots:
            inside = np.flatnonzero((times >= a - _EPS) & (times < b - _EPS))
            if inside.size == 0:
                i = int(np.argmin(np.abs(times - a)))
            else:
                late = inside[times[inside] >= a + min(0.5, (b - a) / 2) - _EPS]
                i = int(late[0] if late.size else inside[0])
            p = _thumb_path(thumb_dir, path, float(times[i]))
            p.write_bytes(jpegs[i])
            out.append(str(p.resolve()))
        return out
