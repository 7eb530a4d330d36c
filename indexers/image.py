"""Images: detected by magic bytes, decoded cheaply (JPEG draft), upright (EXIF), bomb-guarded.

`prepare` does all the CPU work of one file (decode + preprocess) so the pipeline can run it in
worker threads while the encoder runs batches; `extract` is the one-file path of the protocol.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from clipsearch.indexers.base import IndexContext
from PIL import Image, ImageOps, UnidentifiedImageError

from clipsearch.errors import SkipFile
from clipsearch.records import Record

if TYPE_CHECKING:
    import torch

    from clipsearch.encoders import Encoder

Image.MAX_IMAGE_PIXELS = None  # we enforce our own, configurable limit before decoding
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def image_format(head: bytes) -> str | None:
    """The image format named by a file's first bytes, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I", "F"):
        a = np.asarray(im, dtype=np.float32)
        span = float(a.max() - a.min()) or 1.0
        im = Image.fromarray(((a - a.min()) * (255.0 / span)).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB")


def check_pixels(w: int, h: int, max_pixels: int) -> None:
    """SkipFile for an image over the pixel limit, decided from its header before decoding."""
    if w * h > max_pixels:
        raise SkipFile(f"image of {w}x{h} = {w * h:,} pixels exceeds the limit of "
                       f"{max_pixels:,} (possible decompression bomb; raise --max-pixels to allow)")


def load_image(path: str | Path | bytes, max_pixels: int, min_side: int = 224) -> Image.Image:
    """Decode an image upright and in RGB, at no more resolution than `min_side` needs."""
    try:
        with open(path, "rb") as f:
            im = Image.open(f)
            check_pixels(*im.size, max_pixels)
            if im.format == "JPEG":
                im.draft("RGB", (min_side, min_side))
            im = ImageOps.exif_transpose(im)
            im.load()
            return _to_rgb(im)
    except SkipFile:
        raise
    except UnidentifiedImageError:
        raise SkipFile("not a readable image (unknown or corrupt format)") from None
    except Image.DecompressionBombError as e:
        raise SkipFile(f"decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise SkipFile(f"truncated or corrupt image: {e}") from None


class ImageIndexer:
    medium = "image"

    def accepts(self, path: Path, head: bytes) -> bool:
        return image_format(head) is not None

    def prepare(self, path: Path, preprocess, ctx: IndexContext, min_side: int) -> torch.Tensor:
        """Decode and preprocess one file (runs in a worker thread)."""
        return preprocess(load_image(path, ctx.max_pixels, min_side))

    def extract(self, path: Path, encoder: Encoder, ctx: IndexContext) -> list[Record]:
        im = load_image(path, ctx.max_pixels, encoder.image_size)
        return [Record(kind="image", vector=encoder.encode_images([im])[0])]
