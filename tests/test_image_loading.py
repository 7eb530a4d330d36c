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
