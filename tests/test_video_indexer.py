"""VideoIndexer on small videos written here with PyAV: timestamps, rotation, cuts, bad input."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from clipsearch.indexers.base import IndexContext
from clipsearch.indexers.video import (
    VideoIndexer,
    build_records,
    default_fps,
    pool_frames,
    shot_spans,
    window_spans,
)
from PIL import Image
from support import solid, write_video

from clipsearch.errors import SkipFile
from clipsearch.records import path_bytes

SHOT_COLOURS = [(220, 30, 30), (30, 70, 225), (245, 220, 25)]


class FakeEncoder:
    """Colour-histogram 'encoder': enough to tell shots apart; remembers the images it saw."""

    image_size = 32
    dim = 6

    def __init__(self) -> None:
        self.seen: list[Image.Image] = []

    def encode_images(self, images):
        self.seen.extend(images)
        out = []
        for im in images:
            a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
            v = np.concatenate([a.mean(axis=(0, 1)), a.std(axis=(0, 1))]) + 1e-3
            out.append(v / np.linalg.norm(v))
        return np.stack(out).astype(np.float32)


@pytest.fixture
def ctx(tmp_path: Path) -> IndexContext:
    return IndexContext(thumb_dir=tmp_path / "thumbs", options={})


def frames_of(recs):
    return sorted((r for r in recs if r.kind == "video_frame"), key=lambda r: r.t_start)


def test_timestamps_come_from_pts_with_start_offset_and_gaps(tmp_path, ctx):
    # 2 s at 10 fps starting at 5 s, a 1.5 s freeze (no frames), then 2 s more.
    pts = [5000 + 100 * i for i in range(20)] + [8400 + 100 * i for i in range(20)]
    for ext in ("mkv", "mp4"):
        path = write_video(tmp_path / f"vfr.{ext}", pts, lambda p: solid((200, 120, 40)))
        ctx.options = {"fps": 2.0}
        recs = VideoIndexer().extract(path, FakeEncoder(), ctx)
        rel = [(p - 5000) / 1000 for p in pts]
        expected, nxt = [], 0.0
        for t in rel:  # a sample is the first frame at or after each 0.5 s grid point
            if t >= nxt - 1e-6:
                expected.append(t)
                nxt = (np.floor(t / 0.5 + 1e-6) + 1) * 0.5
        got = [r.t_start for r in frames_of(recs)]
        np.testing.assert_allclose(got, expected, atol=1e-3)
        assert 3.4 in [round(t, 3) for t in got]  # first frame after the freeze, not index/fps
        video = next(r for r in recs if r.kind == "video")
        assert video.extra["start_time"] == pytest.approx(5.0)
        assert video.t_end == pytest.approx(rel[-1] + 0.04, abs=0.07)


def test_rotation_metadata_makes_frames_upright(tmp_path, ctx):
    def left_white(_p):
        a = np.zeros((48, 64, 3), np.uint8)
        a[:, :32] = 255
        return a

    path = write_video(tmp_path / "rot.mp4", range(0, 1000, 100), left_white, rotation=90)
    enc = FakeEncoder()
    recs = VideoIndexer().extract(path, enc, ctx)
    img = np.asarray(enc.seen[0].convert("L"), dtype=np.float32)
    h, w = img.shape
    assert h > w  # landscape storage, portrait display
    # 90° counter-clockwise: the stored left half ends up at the bottom
    assert img[h // 2 + 2 :].mean() > 200 and img[: h // 2 - 2].mean() < 50
    assert next(r for r in recs if r.kind == "video").extra["rotation"] == 90


def test_large_input_is_downscaled_before_the_encoder(tmp_path, ctx):
    path = write_video(tmp_path / "big.mp4", [0, 1000, 2000], lambda p: solid((30, 165, 50), (2560, 1440)),
                       size=(2560, 1440), codec="mpeg4")
    enc = FakeEncoder()
    VideoIndexer().extract(path, enc, ctx)
    assert enc.seen
    for im in enc.seen:
        assert min(im.size) == enc.image_size and max(im.size) <= 2 * enc.image_size


def test_shot_cuts_each_shot_sampled_thumbs_and_windows(tmp_path, ctx):
    # three 3 s shots of different colours at 50 fps (much faster than the detector's 10 fps)
    path = write_video(tmp_path / "shots.webm", range(0, 9000, 20),
                       lambda p: solid(SHOT_COLOURS[p // 3000], seed=p), codec="libvpx-vp9")
    ctx.options = {"fps": 0.1}  # one regular sample (t=0): only cut samples can cover shots 2 and 3
    recs = VideoIndexer().extract(path, FakeEncoder(), ctx)
    video = next(r for r in recs if r.kind == "video")
    cuts = video.extra["cuts"]
    assert len(cuts) == 2
    np.testing.assert_allclose(cuts, [3.0, 6.0], atol=0.15)
    frames = frames_of(recs)
    for a, b in shot_spans(cuts, video.t_end):
        assert any(a - 1e-6 <= f.t_start < b for f in frames), f"shot {a}-{b} has no sample"
    thumbs = {f.thumb for f in frames}
    assert len(thumbs) == 3 and all(Path(t).is_file() for t in thumbs)
    for f in frames:  # each frame points to the thumbnail of its own shot
        shot = int(np.searchsorted(cuts, f.t_start, side="right"))
        colour = np.asarray(Image.open(f.thumb).convert("RGB")).reshape(-1, 3).mean(0)
        assert np.abs(colour - SHOT_COLOURS[shot]).max() < 30
    windows = [r for r in recs if r.kind == "video_window"]
    labels = {str(w.extra["scale"]) for w in windows} | {
        str(x) for w in windows for x in w.extra.get("also", [])}
    assert {"2", "4", "8", "shot"} <= labels
    for r in recs:
        assert r.vector.dtype == np.float32
        assert np.linalg.norm(r.vector) == pytest.approx(1.0, abs=1e-5)
    locators = [r.locator() for r in recs]
    assert len(locators) == len(set(locators))


def _write_audio_only(path: Path) -> Path:
    out = av.open(str(path), "w")
    s = out.add_stream("aac", rate=16000)
    s.layout = "mono"
    for i in range(20):
        f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        f.sample_rate = 16000
        f.pts = i * 1024
        for pk in s.encode(f):
            out.mux(pk)
    for pk in s.encode():
        out.mux(pk)
    out.close()
    return path


def _write_no_frames(path: Path) -> Path:
    out = av.open(str(path), "w")
    s = out.add_stream("libx264", rate=25)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    out.close()
    return path


def _truncated(src: Path, dst: Path, frac: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * frac)])
    return dst


def test_bad_inputs_are_skipped_with_a_reason(tmp_path, ctx):
    long_pts = range(0, 20000, 100)
    mp4 = write_video(tmp_path / "ok.mp4", long_pts, lambda p: solid((30, 70, 225), seed=p))
    mkv = write_video(tmp_path / "ok.mkv", long_pts, lambda p: solid((30, 70, 225), seed=p))
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "garbage.mkv").write_bytes(b"\x1a\x45\xdf\xa3" + np.random.default_rng(0).bytes(4000))
    cases = {
        "empty.mp4": "empty",
        "garbage.mkv": "",
        "cut.mp4": "",
        "cut.mkv": "truncated",
        "audio.m4a": "no video stream",
        "noframes.mkv": "",
    }
    _truncated(mp4, tmp_path / "cut.mp4", 0.5)
    _truncated(mkv, tmp_path / "cut.mkv", 0.4)
    _write_audio_only(tmp_path / "audio.m4a")
    _write_no_frames(tmp_path / "noframes.mkv")
    for name, words in cases.items():
        path = tmp_path / name
        with pytest.raises(SkipFile) as ei:
            VideoIndexer().extract(path, FakeEncoder(), ctx)
        assert str(path) in ei.value.reason and words in ei.value.reason, ei.value.reason


def test_accepts_by_magic_bytes(tmp_path):
    idx = VideoIndexer()
    mp4 = write_video(tmp_path / "a.mp4", range(0, 500, 100), lambda p: solid((0, 0, 0)))
    mkv = write_video(tmp_path / "a.mkv", range(0, 500, 100), lambda p: solid((0, 0, 0)))
    avi = write_video(tmp_path / "a.avi", range(0, 500, 100), lambda p: solid((0, 0, 0)), codec="mpeg4")
    for p in (mp4, mkv, avi):
        assert idx.accepts(p, p.read_bytes()[:64])
    # content wins over the name
    assert idx.accepts(tmp_path / "clip.bin", mkv.read_bytes()[:64])
    assert not idx.accepts(tmp_path / "fake.mp4", b"\x89PNG\r\n\x1a\n" + b"\0" * 56)
    assert not idx.accepts(tmp_path / "x.heic", b"\x00\x00\x00\x18ftypheic" + b"\0" * 52)


# ---------------------------------------------------------------- pure helpers


def test_pool_frames_is_normalised_mean():
    v = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    np.testing.assert_allclose(pool_frames(v), [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_frames(v, "median-of-means")


def test_default_fps_and_windows():
    assert default_fps(60.0) == 2.0 and default_fps(600.0) == 1.0 and default_fps(60.0, {"fps": 4}) == 4.0
    spans = window_spans(10.0, (4, 8, 32))
    assert [(a, b) for a, b, w in spans if w == 4] == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert [(a, b) for a, b, w in spans if w == 8] == [(0, 8), (4, 10)]
    assert not [s for s in spans if s[2] == 32]


def test_build_records_windows_are_pooled_frames():
    times = np.arange(0, 10, 0.5)
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(len(times), 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    recs = build_records(times, vecs, [4.0], 10.0, 2.0, shot_thumbs=["a.jpg", "b.jpg"])
    win = next(r for r in recs if r.kind == "video_window" and r.extra["scale"] == 2 and r.t_start == 4.0)
    np.testing.assert_allclose(win.vector, pool_frames(vecs[(times >= 4) & (times < 6)]), atol=1e-6)
    assert win.thumb == "b.jpg"
    shot = [r for r in recs if r.kind == "video_window" and r.extra["scale"] == "shot"]
    assert [(r.t_start, r.t_end) for r in shot] == [(0.0, 4.0), (4.0, 10.0)] or any(
        "shot" in r.extra.get("also", []) for r in recs if r.kind == "video_window")
    ids = {r.locator() for r in recs}
    assert len(ids) == len(recs)
    assert path_bytes("x")  # records module import sanity
