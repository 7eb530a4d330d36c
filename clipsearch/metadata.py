"""When, where and with what a file was made: header-only metadata for the table's file columns.

`read` opens a file's header (EXIF through Pillow, container tags through PyAV, the PDF info
dictionary through pypdfium2), never its pixels, so filling the columns of an indexed
collection costs no decoding and no encoder. Anything implausible (garbage EXIF, a date in
the year 0 or 9999, GPS out of range, an offset of +99:00) is left unknown (None): metadata
never stops indexing. `taken_at` falls back to the file's mtime, and `taken_at_source` says
which source gave it (exif, video, pdf, mtime).

Places come from `reverse_geocoder`'s offline table, loaded once per process on the first
file with GPS (a few seconds, ~180 MB): only the indexing process pays for it.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

log = logging.getLogger(__name__)

# The file columns: every row of a file carries its file's values (None = unknown).
FIELDS = ("taken_at", "taken_at_source", "width", "height", "camera", "lens", "gps_lat", "gps_lon",
          "place", "duration", "pages", "bytes", "format")
SOURCES = ("exif", "video", "pdf", "mtime")
EARLIEST_YEAR = 1826  # the oldest surviving photograph; earlier dates are garbage
LATEST_YEAR = 2200
MAX_OFFSET = timedelta(hours=14)  # the widest UTC offsets in use are -12:00 and +14:00

# EXIF tags (Pillow's ExifTags.Base values)
_MAKE, _MODEL, _ORIENTATION = 0x010F, 0x0110, 0x0112
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATE_ORIGINAL, _DATE_DIGITIZED, _OFFSET_ORIGINAL, _OFFSET = 0x9003, 0x9004, 0x9011, 0x9010
_LENS_MAKE, _LENS_MODEL = 0xA433, 0xA434


def read(path: str | bytes | os.PathLike[Any], media: str | None = None) -> dict[str, Any]:
    """The file columns of one file (`FIELDS`), from its header. `media`: image, video or
    document when the caller knows it; else guessed from the content. Never raises."""
    path = os.fsdecode(path)
    out: dict[str, Any] = dict.fromkeys(FIELDS)
    try:
        st = os.stat(path)
    except OSError:
        return out
    out["bytes"] = int(st.st_size)
    out["format"] = _format(path)
    media = media or _media_of(out["format"])
    try:
        if media == "image":
            out.update(_image(path))
        elif media == "video":
            out.update(_video(path))
        elif media == "document":
            out.update(_pdf(path))
    except Exception as e:  # a header no reader expected: what was read so far is kept
        log.info("metadata of %s: %s", path, e)
    if out["width"] is None and media == "image":
        out.update(_raw_size(path))
    if out["gps_lat"] is not None and out["gps_lon"] is not None:
        out["place"] = place_of(out["gps_lat"], out["gps_lon"])
    if out["taken_at"] is None:
        out["taken_at"] = plausible(datetime.fromtimestamp(st.st_mtime, UTC))
        out["taken_at_source"] = "mtime"
    return out


# ---- values ------------------------------------------------------------------------------------
def plausible(when: datetime | None) -> datetime | None:
    """`when` in UTC if it is a plausible capture time, else None."""
    if when is None or not EARLIEST_YEAR <= when.year <= LATEST_YEAR:
        return None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def offset_of(text: Any) -> timezone | None:
    """An EXIF OffsetTime ('+01:00', '-0530', 'Z') as a timezone; None if absent or out of range."""
    text = _text(text)
    if not text:
        return None
    if text.upper() == "Z":
        return UTC
    m = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", text)
    if not m:
        return None
    delta = timedelta(hours=int(m[2]), minutes=int(m[3]))
    if delta > MAX_OFFSET or int(m[3]) >= 60:
        return None
    return timezone(-delta if m[1] == "-" else delta)


def exif_time(stamp: Any, offset: Any = None) -> datetime | None:
    """EXIF 'YYYY:MM:DD HH:MM:SS' (+ OffsetTime) -> UTC. Without a usable offset the local
    time is taken as UTC (EXIF has no zone of its own)."""
    text = _text(stamp)
    if not text:
        return None
    try:
        naive = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    return plausible(naive.replace(tzinfo=offset_of(offset) or UTC))


def iso_time(text: Any) -> datetime | None:
    """An ISO 8601 time (a container's creation_time) -> UTC, or None."""
    text = _text(text)
    if not text:
        return None
    try:
        return plausible(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        return None


def pdf_time(text: Any) -> datetime | None:
    """A PDF date ("D:YYYYMMDDHHmmSS+HH'mm'", parts optional) -> UTC, or None."""
    text = _text(text)
    m = re.fullmatch(r"(?:D:)?(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?"
                     r"(?:(Z)|([+-])(\d{2})'?(\d{2})?'?)?.*", text or "")
    if not m:
        return None
    y, mo, d, h, mi, s = (int(m[i]) if m[i] else dflt for i, dflt in zip(range(1, 7), (0, 1, 1, 0, 0, 0),
                                                                           strict=True))
    tz: timezone | None = UTC
    if m[8]:
        tz = offset_of(f"{m[8]}{m[9]}:{m[10] or '00'}")
    try:
        return plausible(datetime(y, mo, d, h, mi, s, tzinfo=tz or UTC))
    except ValueError:
        return None


def coordinate(lat: Any, lon: Any) -> tuple[float, float] | None:
    """(lat, lon) if both are finite and on the globe (and not the 0,0 of an unset GPS)."""
    try:
        la, lo = float(lat), float(lon)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(la) and math.isfinite(lo)) or abs(la) > 90 or abs(lo) > 180 or la == lo == 0:
        return None
    return la, lo


def camera_name(make: Any, model: Any) -> str | None:
    """'Make Model' with the make dropped when the model already says it (Canon / Canon EOS R5)."""
    make, model = _text(make), _text(model)
    if make and model and model.lower().startswith(make.split()[0].lower()):
        return model
    return " ".join(p for p in (make, model) if p) or None


def _text(value: Any) -> str | None:
    """A printable, stripped string from an EXIF/tag value, or None (bytes, NULs, binary junk)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text = str(value).replace("\x00", " ").strip()
    if not text or len(text) > 200 or not text.isprintable() or "\ufffd" in text:
        return None
    return text


# ---- readers -----------------------------------------------------------------------------------
def _format(path: str) -> str | None:
    import filetype

    from clipsearch.indexers.photo_formats import RAW_EXTENSIONS

    try:
        kind = filetype.guess(path)
    except OSError:
        kind = None
    fmt = str(kind.extension) if kind is not None else None
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    if fmt in (None, "tif", "cr2") and f".{ext}" in RAW_EXTENSIONS:
        return ext  # camera RAW on a TIFF layout (DNG, NEF, ARW...): its name says which
    return fmt or ext or None


def _media_of(fmt: str | None) -> str | None:
    import filetype

    from clipsearch.indexers.photo_formats import RAW_EXTENSIONS

    if fmt == "pdf":
        return "document"
    if fmt in ("heic", "heif", "avif", "jxl") or (fmt and f".{fmt}" in RAW_EXTENSIONS):
        return "image"  # photo formats filetype may not know
    if fmt and filetype.is_extension_supported(fmt):
        if fmt in {t.extension for t in filetype.image_matchers}:
            return "image"
        if fmt in {t.extension for t in filetype.video_matchers}:
            return "video"
    return None


def _raw_size(path: str) -> dict[str, Any]:
    """A camera RAW's picture size from rawpy (no demosaic), when Pillow could not read one;
    {} for anything else."""
    from clipsearch.indexers.photo_formats import RAW_EXTENSIONS

    if os.path.splitext(path)[1].lower() not in RAW_EXTENSIONS:
        return {}
    try:
        import rawpy

        with rawpy.imread(path) as raw:
            w, h = int(raw.sizes.width), int(raw.sizes.height)
            if raw.sizes.flip in (5, 6):  # shown turned a quarter: as the indexer shows it
                w, h = h, w
    except Exception as e:  # not a RAW rawpy opens: the size stays unknown
        log.info("metadata of %s: %s", path, e)
        return {}
    return {"width": w, "height": h} if w > 0 and h > 0 else {}


def _image(path: str) -> dict[str, Any]:
    from PIL import Image

    from clipsearch.indexers.photo_formats import ensure_openers

    ensure_openers()  # HEIF, AVIF, JPEG XL headers, as the indexer opens them
    out: dict[str, Any] = {}
    with Image.open(path) as im:  # lazy: the header only
        width, height = im.size
        try:
            exif = im.getexif()
        except Exception:  # garbage EXIF: the size still counts
            exif = None
    if exif is not None and exif.get(_ORIENTATION) in (5, 6, 7, 8):
        width, height = height, width  # stored sideways, shown upright
    out["width"], out["height"] = int(width), int(height)
    if exif is None:
        return out
    sub = _ifd(exif, _EXIF_IFD)
    out["camera"] = camera_name(exif.get(_MAKE), exif.get(_MODEL))
    out["lens"] = camera_name(sub.get(_LENS_MAKE), sub.get(_LENS_MODEL))
    taken = (exif_time(sub.get(_DATE_ORIGINAL), sub.get(_OFFSET_ORIGINAL))
             or exif_time(sub.get(_DATE_DIGITIZED), sub.get(_OFFSET)))
    if taken is not None:
        out["taken_at"], out["taken_at_source"] = taken, "exif"
    gps = _gps(_ifd(exif, _GPS_IFD))
    if gps is not None:
        out["gps_lat"], out["gps_lon"] = gps
    return out


def _ifd(exif: Any, tag: int) -> dict[int, Any]:
    try:
        found = exif.get_ifd(tag)
    except Exception:
        return {}
    return found if isinstance(found, dict) else {}


def _gps(ifd: dict[int, Any]) -> tuple[float, float] | None:
    """GPS IFD (refs 1/3, degrees-minutes-seconds 2/4) -> (lat, lon), or None."""
    def degrees(dms: Any, ref: Any, negative: str) -> float | None:
        try:
            d, m, s = (float(x) for x in dms)
        except (TypeError, ValueError, ZeroDivisionError):
            return None
        if not all(math.isfinite(x) and x >= 0 for x in (d, m, s)) or m >= 60 or s >= 60:
            return None
        value = d + m / 60 + s / 3600
        return -value if (_text(ref) or "").upper().startswith(negative) else value

    if not ifd:
        return None
    return coordinate(degrees(ifd.get(2), ifd.get(1), "S"), degrees(ifd.get(4), ifd.get(3), "W"))


_ISO6709 = re.compile(r"([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)")


def _video(path: str) -> dict[str, Any]:
    import av

    out: dict[str, Any] = {}
    with av.open(path, metadata_errors="ignore") as c:
        tags = {k.lower(): v for k, v in c.metadata.items()}
        stream = c.streams.video[0] if c.streams.video else None
        if stream is not None:
            tags = {**{k.lower(): v for k, v in stream.metadata.items()}, **tags}
            out["width"], out["height"] = int(stream.codec_context.width), int(stream.codec_context.height)
            if c.duration is None and stream.duration is not None and stream.time_base is not None:
                out["duration"] = float(stream.duration * stream.time_base)
        if c.duration is not None:
            out["duration"] = c.duration / 1_000_000
    taken = iso_time(tags.get("com.apple.quicktime.creationdate")) or iso_time(tags.get("creation_time"))
    if taken is not None:
        out["taken_at"], out["taken_at_source"] = taken, "video"
    out["camera"] = camera_name(tags.get("com.apple.quicktime.make") or tags.get("make"),
                                tags.get("com.apple.quicktime.model") or tags.get("model"))
    where = tags.get("com.apple.quicktime.location.iso6709") or tags.get("location")
    m = _ISO6709.match(where or "")
    gps = coordinate(m[1], m[2]) if m else None
    if gps is not None:
        out["gps_lat"], out["gps_lon"] = gps
    return out


def _pdf(path: str) -> dict[str, Any]:
    import pypdfium2 as pdfium

    out: dict[str, Any] = {}
    pdf = pdfium.PdfDocument(path)
    try:
        out["pages"] = len(pdf)
        info = pdf.get_metadata_dict(skip_empty=True)
    finally:
        pdf.close()
    taken = pdf_time(info.get("CreationDate"))
    if taken is not None:
        out["taken_at"], out["taken_at_source"] = taken, "pdf"
    return out


# ---- places ------------------------------------------------------------------------------------
_GEO_LOCK = threading.Lock()
_geocoder: Any = None


def place_of(lat: float, lon: float) -> str | None:
    """'City, Region, CC' of the nearest populated place (reverse_geocoder's offline table);
    None when the geocoder is not installed or fails."""
    global _geocoder
    with _GEO_LOCK:
        if _geocoder is None:
            try:
                import reverse_geocoder

                _geocoder = reverse_geocoder.RGeocoder(mode=1, verbose=False)
            except Exception as e:  # not installed, or its data unreadable: places stay unknown
                log.warning("places are not looked up: reverse_geocoder failed to load (%s)", e)
                _geocoder = False
        if _geocoder is False:
            return None
        try:
            found = _geocoder.query([(lat, lon)])[0]
        except Exception:
            return None
    parts: list[str] = []
    for key in ("name", "admin1", "cc"):
        value = _text(found.get(key))
        if value and value not in parts:
            parts.append(value)
    return ", ".join(parts) or None
