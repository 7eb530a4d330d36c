"""Phone and camera photo formats: HEIF/HEIC, AVIF, JPEG XL and RAW, told apart by content.

Pillow decodes HEIF through pillow-heif's opener, AVIF itself (when built with libavif) and
JPEG XL through pillow-jxl-plugin when that is installed. The openers are registered once,
lazily, the first time an image is opened (`ensure_openers`), so importing clipsearch loads
no codec library.

RAW files go through rawpy (LibRaw), which reads the sensor size and the embedded preview
without demosaicing: the pixel limit is checked on the sensor size first, then the preview
JPEG is used when its short side is at least what the model needs (a camera's preview is the
camera's own rendering, and it costs a JPEG decode), else a half-size demosaic. The result
is upright: the preview's EXIF orientation when it has one, else LibRaw's `flip`.
"""

from __future__ import annotations

import io
import os
import threading
from typing import IO, Any, BinaryIO, cast

from PIL import Image, ImageOps

from clipsearch.errors import SkipFile

RAW_EXTENSIONS = frozenset({".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf"})
HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
AVIF_BRANDS = frozenset({b"avif", b"avis"})
RAW_BRANDS = frozenset({b"crx "})  # Canon CR3
# ISO-BMFF brands of still images (and their sequences): never a video.
STILL_BRANDS = HEIF_BRANDS | AVIF_BRANDS | RAW_BRANDS
DNG_VERSION_TAG = 50706
# LibRaw's `flip` as the Pillow transpose that makes the picture upright.
_FLIP = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}
# What to install for a format whose decoder is missing here.
INSTALL = {"heif": "pillow-heif", "avif": "a Pillow built with AVIF (the PyPI wheels are)",
           "jxl": "pillow-jxl-plugin", "raw": "rawpy"}

_openers_lock = threading.Lock()
_openers: dict[str, bool] | None = None


def ftyp_brands(head: bytes) -> tuple[bytes, list[bytes]]:
    """(major brand, compatible brands) of an ISO-BMFF file's `ftyp` box, as far as `head` holds
    it; (b"", []) when `head` does not start with one."""
    if head[4:8] != b"ftyp" or len(head) < 12:
        return b"", []
    size = int.from_bytes(head[:4], "big")
    end = min(size if size >= 16 else len(head), len(head))
    return head[8:12], [head[i:i + 4] for i in range(16, end - 3, 4)]


def photo_format(head: bytes) -> str | None:
    """'heif', 'avif', 'jxl' or 'raw' from a file's first bytes; None for anything else
    (including plain TIFF, which some RAW formats also are: see `is_raw_tiff`)."""
    major, compatible = ftyp_brands(head)
    if major:
        if major in AVIF_BRANDS or (major in (b"mif1", b"msf1") and AVIF_BRANDS & set(compatible)):
            return "avif"
        if major in HEIF_BRANDS:
            return "heif"
        if major in RAW_BRANDS:
            return "raw"
        return None
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n"):
        return "jxl"
    if head.startswith(b"II*\x00") and head[8:10] == b"CR":  # Canon CR2
        return "raw"
    if head[:4] in (b"IIRO", b"IIRS", b"MMOR", b"IIU\x00") or head.startswith(b"FUJIFILMCCD-RAW"):
        return "raw"  # Olympus ORF, Panasonic RW2, Fujifilm RAF
    return None


def is_raw_tiff(name: str | None, im: Image.Image | None = None) -> bool:
    """Whether a TIFF-structured file is a camera RAW: a DNG says so in its tags (DNGVersion);
    NEF, ARW and the others are TIFF inside and are told apart by their extension."""
    if name and os.path.splitext(name)[1].lower() in RAW_EXTENSIONS:
        return True
    tags = getattr(im, "tag_v2", None)
    return tags is not None and DNG_VERSION_TAG in tags


def ensure_openers() -> dict[str, bool]:
    """Register the HEIF, AVIF and JPEG XL openers with Pillow (once); which formats open here."""
    global _openers
    if _openers is not None:
        return _openers
    with _openers_lock:
        if _openers is None:
            from PIL import features

            found = {"heif": False, "avif": bool(features.check("avif")), "jxl": False}
            try:
                import pillow_heif

                pillow_heif.register_heif_opener()
                found["heif"] = True
                if not found["avif"] and hasattr(pillow_heif, "register_avif_opener"):  # pillow-heif < 1
                    pillow_heif.register_avif_opener()
                    found["avif"] = True
            except ImportError:
                pass
            try:
                import pillow_jxl  # noqa: F401  (registers the JXL opener on import)

                found["jxl"] = True
            except ImportError:
                pass
            try:
                import rawpy  # noqa: F401

                found["raw"] = True
            except ImportError:
                found["raw"] = False
            _openers = found
    return _openers


def require(fmt: str) -> None:
    """SkipFile naming the package to install when `fmt` has no decoder here."""
    if not ensure_openers().get(fmt, True):
        label = {"heif": "HEIF/HEIC", "avif": "AVIF", "jxl": "JPEG XL", "raw": "camera RAW"}[fmt]
        raise SkipFile(f"{label} image, but no decoder is installed (pip install {INSTALL[fmt]})")


def load_raw(src: str | bytes | os.PathLike[str] | IO[bytes], max_pixels: int, min_side: int) -> Image.Image:
    """A camera RAW file (a path or an open binary file), upright, in RGB: the embedded preview
    when its short side is >= `min_side`, else a half-size demosaic. SkipFile on bad input."""
    require("raw")
    import rawpy
    from clipsearch.indexers.image import check_pixels

    raw = rawpy.RawPy()
    try:
        if isinstance(src, str | bytes | os.PathLike):
            raw.open_file(os.fsdecode(src))
        else:
            raw.open_buffer(cast(BinaryIO, src))
        sizes = raw.sizes
        check_pixels(sizes.raw_width, sizes.raw_height, max_pixels)
        preview = _preview(raw, rawpy, sizes.flip, max_pixels, min_side)
        if preview is not None:
            return preview
        raw.unpack()
        rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
        return Image.fromarray(rgb).convert("RGB")
    except rawpy.LibRawError as e:
        raise SkipFile(f"camera RAW decoder failed: {_message(e)}") from None
    except MemoryError:
        raise SkipFile("camera RAW decoder ran out of memory") from None
    finally:
        raw.close()


def _preview(raw: Any, rawpy: Any, flip: int, max_pixels: int, min_side: int) -> Image.Image | None:
    """The embedded preview, upright, when it is large enough for the model; else None."""
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    from clipsearch.indexers.image import open_image

    if thumb.format == rawpy.ThumbFormat.JPEG:
        try:
            im = open_image(io.BytesIO(thumb.data), max_pixels, ("JPEG",))
            if min(im.size) < min_side:
                return None
            im.draft("RGB", (min_side, min_side))
            oriented = im.getexif().get(0x0112, 1) not in (0, 1)
            im = ImageOps.exif_transpose(im) if oriented else im
            im.load()
        except (OSError, SyntaxError, ValueError, EOFError):  # a damaged preview: demosaic instead
            return None
    else:
        im = Image.fromarray(thumb.data)
        oriented = False
        if min(im.size) < min_side:
            return None
    if not oriented and flip in _FLIP:
        im = im.transpose(_FLIP[flip])
    return im.convert("RGB")


def _message(e: Exception) -> str:
    text = e.args[0] if e.args else type(e).__name__
    text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    return text.rstrip(".") or type(e).__name__
