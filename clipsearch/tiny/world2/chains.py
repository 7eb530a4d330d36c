"""Compression and resizing chains an image goes through before it is indexed: a phone's
JPEG, a low-bitrate H.264 frame, 2x and 0.5x resampling, blur and sensor noise."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
from PIL import Image, ImageFilter

CHAINS = ("none", "phone_jpeg", "h264", "down_up", "up_down", "blur_noise_jpeg")
CHAIN_WEIGHTS = (0.25, 0.25, 0.12, 0.14, 0.1, 0.14)


def phone_jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Sharpen a little, then JPEG with 4:2:0 chroma at the qualities phones and chat apps use."""
    img = img.filter(ImageFilter.UnsharpMask(radius=1.2, percent=int(rng.integers(40, 110)), threshold=2))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(45, 86)), subsampling=2)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def h264_frame(img: Image.Image, crf: int) -> Image.Image:
    """The image as one intra frame of a low-bitrate H.264 stream, decoded back."""
    import av

    w, h = (img.width // 2) * 2, (img.height // 2) * 2
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=1)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": str(crf)}
        f = av.VideoFrame.from_image(img.crop((0, 0, w, h)))
        f.pts, f.time_base = 0, Fraction(1, 1)
        for pk in (*s.encode(f), *s.encode()):
            out.mux(pk)
    buf.seek(0)
    with av.open(buf) as inp:
        frame = next(inp.decode(video=0)).to_image()
    return frame.resize(img.size, Image.Resampling.BILINEAR) if frame.size != img.size else frame


def resample(img: Image.Image, factor: float) -> Image.Image:
    """Resize by ``factor`` and back (a thumbnail blown up, or an upscaled copy shrunk)."""
    w, h = img.size
    mid = (max(8, round(w * factor)), max(8, round(h * factor)))
    down = Image.Resampling.BILINEAR if factor < 1 else Image.Resampling.BICUBIC
    return img.resize(mid, down).resize((w, h), Image.Resampling.BICUBIC)


def apply_chain(img: Image.Image, chain: str, rng: np.random.Generator) -> Image.Image:
    """Run one named chain on ``img`` (same size out)."""
    img = img.convert("RGB")
    if chain == "phone_jpeg":
        return phone_jpeg(img, rng)
    if chain == "h264":
        return h264_frame(img, int(rng.integers(30, 39)))
    if chain == "down_up":
        return phone_jpeg(resample(img, 0.5), rng)
    if chain == "up_down":
        return resample(img, 2.0)
    if chain == "blur_noise_jpeg":
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.4, 1.4)) * min(img.size) / 160))
        noise = rng.normal(0, float(rng.uniform(3, 10)), (img.height, img.width, 3))
        arr = np.asarray(img, np.float32) + noise
        return phone_jpeg(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), rng)
    return img


def random_chain(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One chain drawn with CHAIN_WEIGHTS."""
    p = np.asarray(CHAIN_WEIGHTS) / sum(CHAIN_WEIGHTS)
    return apply_chain(img, CHAINS[int(rng.choice(len(CHAINS), p=p))], rng)
