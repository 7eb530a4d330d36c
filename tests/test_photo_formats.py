"""Phone and camera photo formats (HEIC, AVIF, JPEG XL, RAW, animated GIF/WebP) and Live Photos.

Every fixture is written here: HEIC with pillow-heif, AVIF and JPEG XL with Pillow (and its
plugins), DNG files with pidng (sensor data only: the half-size demosaic path) and tifffile (an
RGB preview in IFD0 and the sensor data in a SubIFD, as cameras write them: the preview path).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from clipsearch.indexers.image import ImageIndexer, TooManyPixels, image_format, load_image
from PIL import Image
from support import build_collection, write_video

from clipsearch.errors import SkipFile
from clipsearch.tiny.synth.shapes import ShapeSpec, render_shape

pillow_heif = pytest.importorskip("pillow_heif")
rawpy = pytest.importorskip("rawpy")

SIZE = 160


def shape(color: str, kind: str = "circle", seed: int = 0) -> Image.Image:
    return render_shape(ShapeSpec(kind, color, "large", "center"), np.random.default_rng(seed), size=SIZE,
                        background="plain", jitter=False)


def halves(size=(80, 40), left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[:, : size[0] // 2] = left
    a[:, size[0] // 2:] = right
    return Image.fromarray(a)


def rotated_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    return exif.tobytes()


def save_heic(im: Image.Image, path: Path, **kw) -> Path:
    pillow_heif.register_heif_opener()
    im.save(path, "HEIF", quality=90, **kw)
    return path


def bayer(im: Image.Image, white: int = 4095) -> np.ndarray:
    """An RGGB sensor mosaic of `im` (12-bit values)."""
    a = np.asarray(im.convert("RGB"), np.float32) * (white / 255.0)
    out = np.zeros(a.shape[:2], np.uint16)
    out[0::2, 0::2] = a[0::2, 0::2, 0]
    out[0::2, 1::2] = a[0::2, 1::2, 1]
    out[1::2, 0::2] = a[1::2, 0::2, 1]
    out[1::2, 1::2] = a[1::2, 1::2, 2]
    return out


def write_pidng(path: Path, im: Image.Image, orientation: int = 1) -> Path:
    """A DNG holding sensor data only (no preview), written by pidng."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import CalibrationIlluminant, CFAPattern, DNGVersion, PhotometricInterpretation

    w, h = im.size
    t = DNGTags()
    for tag, value in [(Tag.ImageWidth, w), (Tag.ImageLength, h), (Tag.TileWidth, w), (Tag.TileLength, h),
                       (Tag.Orientation, orientation), (Tag.SamplesPerPixel, 1), (Tag.BitsPerSample, 16),
                       (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
                       (Tag.CFARepeatPatternDim, [2, 2]), (Tag.CFAPattern, CFAPattern.RGGB),
                       (Tag.BlackLevel, 0), (Tag.WhiteLevel, 4095),
                       (Tag.ColorMatrix1, [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1],
                                           [1, 1]]),
                       (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65),
                       (Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]), (Tag.Make, "Test"),
                       (Tag.Model, "Sensor"), (Tag.DNGVersion, DNGVersion.V1_4),
                       (Tag.DNGBackwardVersion, DNGVersion.V1_2)]:
        t.set(tag, value)
    writer = RAW2DNG()
    writer.options(t, path=str(path.parent), compress=False)
    written = writer.convert(bayer(im), filename=path.stem + "_pidng")  # it names the file NAME.dng
    return Path(written).rename(path)


def write_preview_dng(path: Path, preview: Image.Image, orientation: int = 1) -> Path:
    """A DNG as cameras write it: an RGB preview in IFD0, the (flat grey) sensor data in a SubIFD."""
    import tifffile

    prev = np.asarray(preview.convert("RGB"))
    h, w = prev.shape[:2]
    ifd0 = [(50706, "B", 4, (1, 4, 0, 0), True), (50707, "B", 4, (1, 1, 0, 0), True),
            (271, "s", 0, "Test", True), (272, "s", 0, "Preview", True), (274, "H", 1, orientation, True)]
    cfa = [(33421, "H", 2, (2, 2), True), (33422, "B", 4, (0, 1, 1, 2), True), (50717, "H", 1, 4095, True),
           (50721, "2i", 9, (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1), True),
           (50778, "H", 1, 21, True)]
    with tifffile.TiffWriter(path) as t:
        t.write(prev, photometric="rgb", subfiletype=1, subifds=1, extratags=ifd0)
        t.write(np.full((h, w), 1000, np.uint16), photometric=32803, subfiletype=0, extratags=cfa)
    return path


def animated(path: Path, fmt: str) -> Path:
    frames = [shape("red", "star"), shape("blue", "star")]  # frame 0 red, frame 1 blue
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=200, loop=0)
    return path


def red_half_on_top(im: Image.Image) -> bool:
    a = np.asarray(im)
    top, bottom = a[3, im.size[0] // 2], a[-4, im.size[0] // 2]
    return bool(top[0] > 180 and top[2] < 90 and bottom[2] > 180 and bottom[0] < 90)


# ---- decoding, one file at a time --------------------------------------------------------------
@pytest.mark.parametrize("name,write,fmt", [
    ("x.heic", lambda im, p: save_heic(im, p), "heif"),
    ("x.avif", lambda im, p: im.save(p, "AVIF"), "avif"),
    ("x.jxl", lambda im, p: im.save(p, "JXL"), "jxl"),
    ("x.gif", lambda im, p: im.save(p, "GIF"), "gif"),
])
def test_formats_are_detected_by_content_whatever_the_name(tmp_path, name, write, fmt):
    if fmt == "jxl":
        pytest.importorskip("pillow_jxl")
    p = tmp_path / name
    write(shape("green"), p)
    renamed = p.rename(tmp_path / "no_extension")
    head = renamed.read_bytes()[:64]
    assert image_format(head) == fmt
    assert ImageIndexer().accepts(renamed, head)
    im = load_image(renamed, max_pixels=10**6)
    assert im.mode == "RGB" and im.size == (SIZE, SIZE)
    assert np.asarray(im)[SIZE // 2, SIZE // 2, 1] > 120  # the green circle, decoded


def test_heic_and_avif_brands_are_not_videos(tmp_path):
    from clipsearch.indexers.video import VideoIndexer

    heic = save_heic(shape("red"), tmp_path / "a.mp4")  # a still under a video's name
    avif = tmp_path / "b.mov"
    shape("red").save(avif, "AVIF")
    for p in (heic, avif):
        head = p.read_bytes()[:64]
        assert not VideoIndexer().accepts(p, head) and ImageIndexer().accepts(p, head)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_exif_orientation_is_applied(tmp_path, fmt):
    p = tmp_path / f"rotated.{fmt.lower()}"
    if fmt == "HEIF":
        save_heic(halves(), p, exif=rotated_exif())
    else:
        halves().save(p, fmt, exif=rotated_exif(), quality=95)
    im = load_image(p, max_pixels=10**6)
    assert im.size == (40, 80)  # upright: portrait
    assert red_half_on_top(im)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_an_animated_image_is_its_first_frame(tmp_path, fmt):
    im = load_image(animated(tmp_path / f"anim.{fmt.lower()}", fmt), max_pixels=10**6)
    r, _, b = np.asarray(im)[SIZE // 2, SIZE // 2]
    assert r > 200 and b < 60  # frame 0's red star, not frame 1's blue one


def test_raw_without_a_preview_is_demosaiced_at_half_size_and_upright(tmp_path):
    p = write_pidng(tmp_path / "sensor.dng", halves((96, 48)), orientation=6)
    with rawpy.imread(str(p)) as raw:  # the writer's file is one LibRaw reads
        assert (raw.sizes.raw_width, raw.sizes.raw_height) == (96, 48)
    im = load_image(p, max_pixels=10**6)
    assert im.size == (24, 48)  # half of 48 x 96 once turned upright
    a = np.asarray(im).astype(int)
    assert a[2, 12, 0] > a[-3, 12, 0] and a[-3, 12, 2] > a[2, 12, 2]  # the red half on top


def test_raw_preview_is_used_when_it_is_large_enough(tmp_path):
    p = write_preview_dng(tmp_path / "camera.dng", halves((384, 256)), orientation=6)
    im = load_image(p, max_pixels=10**6, min_side=224)
    assert im.size == (256, 384) and red_half_on_top(im)  # the preview, turned upright
    flat = load_image(p, max_pixels=10**6, min_side=300)  # too small a preview: the sensor data
    assert flat.size == (128, 192) and not red_half_on_top(flat)


def test_a_dng_under_a_tiff_name_is_read_as_raw(tmp_path):
    p = write_preview_dng(tmp_path / "camera.tif", halves((384, 256)))
    assert image_format(p.read_bytes()[:64]) == "tiff"
    assert load_image(p, max_pixels=10**6).size == (384, 256)


def test_pixel_limit_is_checked_before_a_heic_is_decoded(tmp_path, monkeypatch):
    from pillow_heif import as_plugin

    p = save_heic(Image.new("RGB", (1600, 1200), (0, 120, 0)), tmp_path / "big.heic")
    decoded = []
    monkeypatch.setattr(as_plugin.HeifImageFile, "load", lambda self: decoded.append(1))
    with pytest.raises(TooManyPixels, match="1600x1200"):
        load_image(p, max_pixels=1_000_000)
    assert decoded == []


def test_pixel_limit_is_checked_before_a_raw_is_demosaiced(tmp_path, monkeypatch):
    p = write_pidng(tmp_path / "sensor.dng", halves((96, 48)))
    class Watched(rawpy.RawPy):
        def unpack(self):
            pytest.fail("the sensor data was decoded")

    monkeypatch.setattr(rawpy, "RawPy", Watched)
    with pytest.raises(TooManyPixels, match="96x48"):
        load_image(p, max_pixels=1000)


@pytest.mark.parametrize("name,content,reason", [
    ("cut.heic", None, "truncated or corrupt"),
    ("garbage.cr2", b"II*\x00\x10\x00\x00\x00CR\x02\x00" + bytes(range(256)) * 4, "RAW decoder failed"),
    ("broken.nef", b"MM\x00*\x00\x00\x00\x08" + b"\x13" * 2000, "RAW decoder failed"),
])
def test_bad_files_are_skipfile_with_a_reason(tmp_path, name, content, reason):
    p = tmp_path / name
    if content is None:
        full = save_heic(shape("red"), tmp_path / "full.heic").read_bytes()
        content = full[: len(full) // 2]
    p.write_bytes(content)
    with pytest.raises(SkipFile, match=reason):
        load_image(p, max_pixels=10**6)


# ---- a collection of them ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    made: dict[str, tuple[Path, Image.Image | None]] = {}
    made["heic"] = (save_heic(shape("purple"), root / "heic_photo.heic"), shape("purple"))
    avif = root / "phone.avif"
    shape("green").save(avif, "AVIF", quality=90)
    made["avif"] = (avif, shape("green"))
    try:
        import pillow_jxl  # noqa: F401

        jxl = root / "modern.jxl"
        shape("orange").save(jxl, "JXL", quality=95)
        made["jxl"] = (jxl, shape("orange"))
    except ImportError:
        pass
    white = shape("white", "square")
    made["dng_preview"] = (write_preview_dng(root / "camera.dng", white.resize((384, 384))), white)
    made["dng_sensor"] = (write_pidng(root / "sensor.DNG", shape("black", "square").resize((256, 256))), None)
    made["gif"] = (animated(root / "anim.gif", "GIF"), None)
    made["webp"] = (animated(root / "anim.webp", "WEBP"), None)
    # A Live Photo: the still and its short video, same name, same folder.
    live = shape("yellow", "triangle")
    made["live"] = (save_heic(live, root / "IMG_0001.HEIC"), live)
    write_video(root / "IMG_0001.MOV", range(0, 1500, 100), lambda _: np.asarray(live), size=(SIZE, SIZE))
    # Bad files: the run goes on.
    cut = save_heic(shape("red"), root / "cut.heic")
    cut.write_bytes(cut.read_bytes()[:300])
    (root / "garbage.cr2").write_bytes(b"II*\x00\x10\x00\x00\x00CR\x02\x00" + bytes(range(256)) * 4)
    (root / "broken.nef").write_bytes(b"MM\x00*\x00\x00\x00\x08" + b"\x13" * 2000)
    db = tmp_path_factory.mktemp("db") / "col"
    col = build_collection(db, [root])
    return col, made, root


def test_each_format_is_indexed_and_found_by_its_picture(photos):
    col, made, _ = photos
    for name, (path, original) in made.items():
        if name in ("gif", "webp"):
            continue
        query = original if original is not None else path  # the sensor-only DNG: itself
        top = col.search(image=query, k=3, kind="image")
        assert top and top[0].source == str(path), (name, [h.source for h in top])


def test_animated_files_are_indexed_by_their_first_frame(photos):
    col, made, _ = photos
    enc = col.encoder
    red, blue = enc.encode_images([shape("red", "star"), shape("blue", "star")])
    for name in ("gif", "webp"):
        path = made[name][0]
        _, vecs = col.store.vectors(f"source = '{path}'")
        assert len(vecs) == 1
        assert float(vecs[0] @ red) > float(vecs[0] @ blue), name
        top = col.search(image=shape("red", "star"), k=2, kind="image")
        assert {h.source for h in top} == {str(made["gif"][0]), str(made["webp"][0])}


def test_bad_files_are_skipped_with_a_reason_and_the_run_goes_on(photos):
    col, made, root = photos
    skipped = dict(col.add([root], fit_transforms=False).skipped)  # nothing changed: the bad ones again
    by_name = {Path(k).name: v for k, v in skipped.items()}
    assert "truncated or corrupt" in by_name["cut.heic"]
    assert "RAW decoder failed" in by_name["garbage.cr2"]
    assert "RAW decoder failed" in by_name["broken.nef"]
    indexed = set(col.store.scan(["source"]).column("source").to_pylist())
    assert {str(p) for p, _ in made.values()} <= indexed


def test_live_photo_hits_name_each_other(photos):
    col, made, root = photos
    still, video = str(made["live"][0]), str(root / "IMG_0001.MOV")
    hits = col.search(image=made["live"][1], k=5)
    by_source = {h.source: h for h in hits}
    assert still in by_source and video in by_source, [h.source for h in hits]
    assert by_source[still].companion == video and by_source[video].companion == still
    assert by_source[still].to_dict()["companion"] == video
    others = [h for h in col.search(image=made["heic"][1], k=3, kind="image") if h.source != still]
    assert others and all(h.companion is None for h in others)


def test_live_photo_through_cli_and_http(photos):
    import subprocess
    import sys

    from clipsearch.ui.api import SearchService, rest_router
    from clipsearch.ui.app import render_detail
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    col, made, root = photos
    still, video = str(made["live"][0]), str(root / "IMG_0001.MOV")
    run = [sys.executable, "-m", "clipsearch", "search", "--db", str(col.path), "--image", still, "-k", "4"]
    js = subprocess.run([*run, "--json"], capture_output=True, text=True, timeout=300, check=True)
    hits = {h["source"]: h for h in json.loads(js.stdout)}
    assert hits[still]["companion"] == video and hits[video]["companion"] == still
    text = subprocess.run(run, capture_output=True, text=True, timeout=300, check=True).stdout
    assert f"Live Photo with {video}" in text and f"Live Photo with {still}" in text

    app = FastAPI()
    app.include_router(rest_router(SearchService(col.path, device="cpu", collection=col)))
    client = TestClient(app)
    with open(still, "rb") as f:
        got = client.post("/api/search/image", files={"file": ("q.heic", f, "image/heic")},
                          data={"min_relevance": "off"}).json()["hits"]
    hit = next(h for h in got if h["source"] == still)
    assert hit["companion"] == video
    assert client.get(hit["companion_url"]).content == Path(video).read_bytes()
    assert client.get(hit["view_url"]).headers["content-type"] == "image/jpeg"  # HEIC shown as JPEG
    assert "Live Photo" in render_detail(hit) and "IMG_0001.MOV" in render_detail(hit)


def test_each_format_gets_its_file_columns(photos):
    """#18's metadata for the formats themselves: what the header says, read without decoding."""
    col, made, _ = photos
    t = col.store.scan(["source", "format", "width", "height", "bytes", "taken_at", "taken_at_source"])
    rows = {r["source"]: r for r in t.to_pylist()}
    expected_format = {"heic": "heic", "avif": "avif", "jxl": "jxl", "dng_preview": "dng",
                       "dng_sensor": "dng", "gif": "gif", "webp": "webp", "live": "heic"}
    for name, (path, original) in made.items():
        row = rows[str(path)]
        assert row["format"] == expected_format[name], (name, row)
        assert row["bytes"] == path.stat().st_size, (name, row)
        assert row["taken_at"] is not None and row["taken_at_source"] in ("exif", "mtime"), (name, row)
        assert row["width"] and row["height"], (name, row)
        if original is not None and name != "dng_preview":
            assert (row["width"], row["height"]) == original.size, (name, row)
