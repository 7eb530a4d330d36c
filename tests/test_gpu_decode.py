"""The GPU JPEG path (clipsearch.gpu_decode), exercised on CPU: torchvision decodes with libjpeg
there, so the same code that runs on nvJPEG is checked against the PIL path without a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from clipsearch.indexers.image import load_image
from PIL import Image, ImageOps
from support import CLASSES, write_shapes

from clipsearch import Collection, gpu_decode
from clipsearch.encoders import Encoder
from clipsearch.errors import SkipFile, UsageError
from clipsearch.gpu_decode import JpegDecoder, TensorPreprocess, decode_batch, read_jpeg


@pytest.fixture(scope="module")
def tiny() -> Encoder:
    return Encoder.load("clipsearch-tiny", device="cpu")


def _asymmetric(path: Path, orientation: int) -> None:
    arr = np.zeros((40, 64, 3), np.uint8)
    arr[:20, :16] = (250, 20, 20)  # a red block in the top-left corner only
    arr[20:, 40:] = (20, 20, 250)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(tmp_path, orientation):
    p = tmp_path / f"o{orientation}.jpg"
    _asymmetric(p, orientation)
    raw = read_jpeg(p, max_pixels=10**6)
    assert raw is not None and raw.orientation == orientation
    (img,) = decode_batch([raw], "cpu")
    ours = img.permute(1, 2, 0).numpy().astype(np.int16)
    with Image.open(p) as im:
        pil = np.asarray(ImageOps.exif_transpose(im).convert("RGB")).astype(np.int16)
    assert ours.shape == pil.shape
    assert np.abs(ours - pil).mean() < 3.0  # same pixels up to IDCT rounding


def test_standard_transforms_are_parsed_and_others_refused(tiny):
    tp = TensorPreprocess.from_transforms(tiny.preprocess.transforms)
    assert tp is not None and tp.crop == (tiny.image_size, tiny.image_size)
    from torchvision.transforms import Compose, Normalize, RandomCrop, ToTensor

    odd = Compose([RandomCrop(8), ToTensor(), Normalize((0.5,) * 3, (0.5,) * 3)])
    assert TensorPreprocess.from_transforms(odd.transforms) is None


def test_tensor_path_embeds_like_the_pil_path(tmp_path, tiny):
    """Same images through both paths: embeddings nearly identical, so mixed collections rank alike."""
    labels = write_shapes(tmp_path, per_class=1, size=300)
    paths = sorted(tmp_path.glob("*.jpg"))
    decoder = JpegDecoder(TensorPreprocess.from_transforms(tiny.preprocess.transforms), "cpu")
    ours = tiny.encode_pixels(torch.stack(decoder([read_jpeg(p, 10**7) for p in paths])))
    pil = tiny.encode_pixels(torch.stack([tiny.preprocess(load_image(p, 10**7, tiny.image_size))
                                          for p in paths]))
    cos = (ours * pil).sum(1)
    assert cos.min() > 0.97, dict(zip([p.name for p in paths], cos.round(3), strict=True))
    assert len(labels) == len(paths)


def test_non_jpeg_and_cmyk_take_the_pil_path(tmp_path):
    png, cmyk = tmp_path / "a.png", tmp_path / "c.jpg"
    Image.new("RGB", (20, 20), (1, 2, 3)).save(png)
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(cmyk)
    assert read_jpeg(png, 10**6) is None
    assert read_jpeg(cmyk, 10**6) is None


def test_pixel_limit_holds_before_decoding(tmp_path):
    p = tmp_path / "big.jpg"
    Image.new("RGB", (300, 200)).save(p)
    with pytest.raises(SkipFile, match="exceeds the limit"):
        read_jpeg(p, max_pixels=300 * 200 - 1)


def test_corrupt_jpeg_in_a_batch_costs_only_itself(tmp_path):
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(good)
    data = good.read_bytes()
    sos = data.index(b"\xff\xda")
    bad.write_bytes(data[:sos + 20] + b"\xff\x00" * 4)  # headers intact, scan data cut short
    raws = [read_jpeg(good, 10**6), read_jpeg(bad, 10**6), read_jpeg(good, 10**6)]
    assert all(r is not None for r in raws)
    out = decode_batch(raws, "cpu")
    assert out[0] is not None and out[2] is not None and tuple(out[0].shape) == (3, 48, 64)


def test_modes(tiny):
    assert JpegDecoder.for_encoder(tiny, "auto") is None  # CPU encoder: PIL path
    assert JpegDecoder.for_encoder(tiny, "cpu") is None
    with pytest.raises(UsageError, match="CUDA"):
        JpegDecoder.for_encoder(tiny, "gpu")
    with pytest.raises(UsageError, match="unknown"):
        JpegDecoder.for_encoder(tiny, "fast")


def test_indexing_through_the_tensor_path_keeps_quality_and_skips_bad_files(tmp_path, monkeypatch):
    """The pipeline's GPU branch, forced onto the CPU: retrieval as good as the PIL path, a CMYK JPEG
    falls back to PIL, and a corrupt JPEG is skipped with a reason while the rest is indexed."""
    photos = tmp_path / "photos"
    labels = write_shapes(photos)
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(photos / "cmyk.jpg")
    good = (photos / next(iter(labels))).read_bytes()
    (photos / "corrupt.jpg").write_bytes(good[:120] + b"\xff\xd9")
    used = []

    def forced(encoder, mode="auto"):
        used.append(mode)
        return JpegDecoder(TensorPreprocess.from_transforms(encoder.preprocess.transforms), "cpu")

    monkeypatch.setattr(gpu_decode.JpegDecoder, "for_encoder", staticmethod(forced))
    col = Collection.create(tmp_path / "db", model="clipsearch-tiny", device="cpu")
    report = col.add([photos], decode="gpu")
    assert used == ["gpu"]
    assert report.indexed == len(labels) + 1  # every shape + the CMYK file
    assert [Path(p).name for p, _ in report.skipped] == ["corrupt.jpg"]
    precisions = []
    for color, shape in CLASSES:
        hits = col.search(text=f"a {color} {shape}", k=4, kind="image")
        precisions.append(sum(labels.get(Path(h.source).name) == f"{color} {shape}" for h in hits) / 4)
    assert np.mean(precisions) >= 0.8, precisions


def test_a_file_the_gpu_cannot_resize_comes_back_as_none(tmp_path):
    """Out of GPU memory while resizing one huge image: that file alone is handed back (None) for
    the PIL path; the batch's other files are decoded."""
    small, huge = tmp_path / "s.jpg", tmp_path / "h.jpg"
    Image.new("RGB", (40, 30), (0, 200, 0)).save(small)
    Image.new("RGB", (400, 300), (0, 0, 200)).save(huge)

    def preprocess(img: torch.Tensor) -> torch.Tensor:
        if img.shape[-1] > 100:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return img.float()

    out = JpegDecoder(preprocess, "cpu")([read_jpeg(small, 10**6), read_jpeg(huge, 10**6)])
    assert out[0] is not None and tuple(out[0].shape) == (3, 30, 40)
    assert out[1] is None
