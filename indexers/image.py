"""Images: detected by magic bytes, decoded cheaply (JPEG draft), upright (EXIF), bomb-guarded.

Phone and camera formats (HEIF/HEIC, AVIF, JPEG XL, RAW) are detected and decoded by
`photo_formats`; an animated GIF, WebP or PNG is indexed by its first frame.

`prepare` does all the CPU work of one file (decode + preprocess) so the pipeline can run it in
worker threads while the encoder runs batches; `extract` is the one-file path of the protocol.

Every decode passes its own pixel limit (`open_image`), checked from the header before any
pixel is decoded. Pillow's process-wide `MAX_IMAGE_PIXELS` is left as Pillow ships it: the web
server shares this process-wide setting with Gradio and any other decoder in its process.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading
import warnings
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
from clipsearch.indexers.base import IndexContext
from clipsearch.indexers.photo_formats import ensure_openers, is_raw_tiff, load_raw, photo_format, require
from PIL import Image, ImageOps, UnidentifiedImageError

from clipsearch.errors import SkipFile
from clipsearch.records import Record

if TYPE_CHECKING:
    import torch

    from clipsearch.backends import AnyEncoder

# Pillow warns between its limit and twice it; our own limit (checked next) decides instead.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
_PILLOW_REFUSES_ABOVE = 2 * (Image.MAX_IMAGE_PIXELS or 0)
_PILLOW_LIMIT_LOCK = threading.Lock()


def image_format(head: bytes) -> str | None:
    """The image format named by a file's first bytes, or None. A TIFF may be a camera RAW
    (DNG, NEF, ARW): `load_image` tells them apart."""
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
    found = photo_format(head)
    if found is not None:
        return found
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


class TooManyPixels(SkipFile):
    """An image over the pixel limit (a possible decompression bomb), known from its header.
    `pixels` is its pixel count when known (Pillow's own refusal names no width and height)."""

    def __init__(self, width: int | None, height: int | None, max_pixels: int,
                 pixels: int | None = None) -> None:
        self.width, self.height, self.max_pixels = width, height, max_pixels
        self.pixels = width * height if width and height else pixels
        if width and height:
            size = f"{width}x{height} = {self.pixels:,} pixels"
        else:
            size = f"{self.pixels:,} pixels" if self.pixels else "too many pixels"
        self.size = size
        super().__init__(f"image of {size} exceeds the limit of {max_pixels:,} "
                         "(possible decompression bomb; raise --max-pixels to allow)")

    @classmethod
    def from_pillow(cls, error: Exception, max_pixels: int) -> TooManyPixels:
        """From Pillow's DecompressionBombError, whose message holds the pixel count."""
        found = re.search(r"\((\d+) pixels\)", str(error))
        return cls(None, None, max_pixels, int(found.group(1)) if found else None)


def check_pixels(w: int, h: int, max_pixels: int) -> None:
    """TooManyPixels for an image over the pixel limit, decided from its header before decoding."""
    if w * h > max_pixels:
        raise TooManyPixels(w, h, max_pixels)


def open_image(fp: IO[bytes], max_pixels: int, formats: tuple[str, ...] | None = None) -> Image.Image:
    """`Image.open` (header only) with `max_pixels` deciding; nothing is decoded yet.

    Pillow refuses on its own above twice its default limit. A larger `max_pixels` lifts that
    only while this header is read, under a lock, and puts Pillow's value back.
    """
    ensure_openers()
    try:
        if max_pixels > _PILLOW_REFUSES_ABOVE > 0:
            with _PILLOW_LIMIT_LOCK:
                saved = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = max_pixels
                try:
                    im = Image.open(fp, formats=formats)
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
        else:
            im = Image.open(fp, formats=formats)
    except Image.DecompressionBombError as e:
        raise TooManyPixels.from_pillow(e, max_pixels) from None
    check_pixels(*im.size, max_pixels)
    return im


def load_image(src: str | os.PathLike[str] | bytes | IO[bytes], max_pixels: int, min_side: int = 224,
               formats: tuple[str, ...] | None = None) -> Image.Image:
    """Decode an image (a path or an open binary file) upright and in RGB, at no more
    resolution than `min_side` needs; an animated image by its first frame. `formats`
    restricts the Pillow formats tried (a camera RAW only opens with "RAW" among them)."""
    name: str | bytes | None = None if hasattr(src, "read") else os.fspath(src)
    fmt: str | None = None
    try:
        with (contextlib.nullcontext(src) if name is None else open(name, "rb")) as opened:
            f = _seekable(opened)  # type: ignore[arg-type]  # hasattr(read) decided it
            head = f.read(64)
            f.seek(0)
            fmt = image_format(head)
            raw_ok = formats is None or "RAW" in formats
            raw_src: str | bytes | IO[bytes] = f if name is None else name
            if fmt in ("heif", "avif", "jxl"):
                require(fmt)
            if raw_ok and (fmt == "raw" or (fmt == "tiff" and is_raw_tiff(os.fsdecode(name or b"")))):
                return load_raw(raw_src, max_pixels, min_side)
            im = open_image(f, max_pixels, formats)
            if fmt == "tiff" and raw_ok and is_raw_tiff(None, im):  # a DNG under another name
                f.seek(0)
                return load_raw(raw_src, max_pixels, min_side)
            if im.format in ("JPEG", "HEIF"):  # HEIF: an embedded thumbnail when one is large enough
                im.draft("RGB", (min_side, min_side))
            im = ImageOps.exif_transpose(im)
            im.load()
            return _to_rgb(im)
    except SkipFile:
        raise
    except UnidentifiedImageError:
        if fmt is not None and formats is None:  # its first bytes say what it is: the rest is damaged
            raise SkipFile(f"truncated or corrupt {fmt.upper()} image (its header cannot be read)") from None
        raise SkipFile("not a readable image (unknown or corrupt format)") from None
    except Image.DecompressionBombError as e:  # a frame or tile larger than the header said
        raise TooManyPixels.from_pillow(e, max_pixels) from None
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError) as e:
        raise SkipFile(f"truncated or corrupt image: {e}") from None


def _seekable(f: IO[bytes]) -> IO[bytes]:
    """`f` itself when it can seek back to its start, else its content in memory."""
    try:
        if f.seekable():
            return f
    except (AttributeError, OSError, ValueError):
        pass
    return io.BytesIO(f.read())


class ImageIndexer:
    medium = "image"

    def accepts(self, path: Path, head: bytes) -> bool:
        return image_format(head) is not None

    def prepare(self, path: Path, preprocess, ctx: IndexContext, min_side: int) -> torch.Tensor:
        """Decode and preprocess one file (runs in a worker thread)."""
        return preprocess(load_image(path, ctx.max_pixels, min_side))

    def prepare_gated(self, path: Path, preprocess, ctx: IndexContext, min_side: int
                      ) -> tuple[torch.Tensor, bool]:
        """`prepare`, and whether the picture may hold print (`clipsearch.ocr.maybe_text`, the
        OCR pass's cheap first look, done here on the pixels already decoded)."""
        from clipsearch import ocr

        im = load_image(path, ctx.max_pixels, min_side)
        return preprocess(im), ocr.maybe_text(im)

    def extract(self, path: Path, encoder: AnyEncoder, ctx: IndexContext) -> list[Record]:
        im = load_image(path, ctx.max_pixels, encoder.image_size)
        return [Record(kind="image", vector=encoder.encode_images([im])[0])]
