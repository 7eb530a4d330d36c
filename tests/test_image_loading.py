"""Image decoding: content detection, EXIF orientation, cheap decode of large JPEGs."""

from __future__ import annotations

import numpy as np
import pytest
from clipsearch.indexers.image import ImageIndexer, image_format, load_image
from PIL import Image

from clipsearch.errors import SkipFile


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("BMP", "bmp"),
                                     ("GIF", "gif"), ("TIFF", "tiff")])
def test_formats_are_detected_by_content(tmp_path, fmt, ext):
    p = tmp_path / f"x.{ext}"
    Image.new("RGB", (32, 24), (10, 200, 30)).save(p, fmt)
    head = p.read_bytes()[:64]
    assert image_format(head) == {"jpg": "jpeg"}.get(ext, ext)
    assert ImageIndexer().accepts(p, head)
    im = load_image(p, max_pixels=10**6)
    assert im.mode == "RGB" and im.size == (32, 24)


def test_wrong_extension_still_an_image(tmp_path):
    p = tmp_path / "really_a_png.jpg"
    Image.new("RGB", (8, 8)).save(p, "PNG")
    assert image_format(p.read_bytes()[:64]) == "png"


def test_exif_orientation_is_applied(tmp_path):
    p = tmp_path / "rotated.jpg"
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(arr).save(p, exif=exif.tobytes())
    im = load_image(p, max_pixels=10**6)
    assert im.size == (40, 80)  # upright: portrait
    top = np.asarray(im)[5, 20]
    assert top[0] > 200 and top[1] < 60  # the red half is now on top


def test_large_jpeg_decoded_in_draft_mode(tmp_path):
    p = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), np.uint8)).save(p)
    im = load_image(p, max_pixels=10**9, min_side=224)
    assert min(im.size) >= 224
    assert im.size[0] <= 4000 // 8 + 1  # decoded at 1/8 scale, never full 12 MP


def test_transparent_png_composited_on_white(tmp_path):
    p = tmp_path / "alpha.png"
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(p)
    assert np.asarray(load_image(p, max_pixels=10**6)).min() == 255


def test_16bit_png(tmp_path):
    p = tmp_path / "deep.png"
    Image.fromarray(np.arange(100 * 100, dtype=np.uint16).reshape(100, 100)).save(p)
    assert load_image(p, max_pixels=10**6).mode == "RGB"


def test_truncated_is_skipfile(tmp_path):
    p = tmp_path / "t.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 200, 3), np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(SkipFile, match="truncated or corrupt"):
        load_image(p, max_pixels=10**6)


def test_no_process_wide_pixel_limit_is_lifted():
    """Importing the indexer leaves Pillow's own bomb guard on for everything else in the process."""
    import clipsearch.indexers.image  # noqa: F401

    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS > 0


def test_pixel_limit_is_per_decode(tmp_path, monkeypatch):
    from clipsearch.indexers import image as image_mod
    from clipsearch.indexers.image import TooManyPixels

    p = tmp_path / "wide.png"
    Image.new("1", (200, 100)).save(p)
    with pytest.raises(TooManyPixels, match="200x100 = 20,000 pixels exceeds the limit of 19,999"):
        load_image(p, max_pixels=19_999)
    # A limit above Pillow's own refusal threshold is honoured for this decode only.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    monkeypatch.setattr(image_mod, "_PILLOW_REFUSES_ABOVE", 2_000)
    assert load_image(p, max_pixels=50_000).size == (200, 100)
    assert Image.MAX_IMAGE_PIXELS == 1_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(p)  # everyone else still gets Pillow's guard
    with pytest.raises(TooManyPixels):
        load_image(p, max_pixels=1_500)


def test_formats_can_be_restricted(tmp_path):
    import io

    p = tmp_path / "x.gif"
    Image.new("RGB", (8, 8)).save(p, "GIF")
    with pytest.raises(SkipFile, match="not a readable image"):
        load_image(p, max_pixels=10**6, formats=("PNG",))
    assert load_image(io.BytesIO(p.read_bytes()), max_pixels=10**6, formats=("GIF",)).size == (8, 8)
