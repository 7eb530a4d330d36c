"""Document indexer: PDF pages as images and as text chunks; .txt/.md files as text chunks.

Rows produced per PDF page (page numbers are 1-based):
- one `doc_page` row: the rendered page, letterboxed onto a white square so the encoder's
  centre crop keeps the whole page, embedded with the image tower; `thumb` is a JPEG of the
  page (longest side `page_size`, default 1024).
- with `page_tiles` = f > 0 (default 1.0), more `doc_page` rows of the same page: squares of
  side f x the page's short side covering it (top and bottom of a portrait page at f = 1),
  `extra = {"chunk": i, "region": [x0, y0, x1, y1]}` (fractions of the page); blank ones
  are skipped. In the whole-page view a figure is a few pixels wide at CLIP's input size;
  in a full-width square it has the resolution a centre crop would give, and search keeps
  the best view per page. With the tiny model this lifts page-image figure retrieval a little
  (benchmarks/RESULTS.md). Set 0 to embed the whole page only (a third the cost).
- `doc_text` rows: the page's text layer cut into token-limited, overlapping chunks
  (`clipsearch.chunking`), embedded with the text tower; `text` is the chunk,
  `extra = {"chunk": i, "span": [start, end]}` with offsets into the page text as pdfium
  extracts it and `i` counting chunks within the page.

Plain-text files (.txt, .md, .markdown) have no pages: their `doc_text` rows have
`page = None`, the span is into the whole decoded file and `extra["lines"]` gives the
1-based first and last line of the chunk, which is what an editor can jump to.

Memory stays bounded on long PDFs: pages are opened, rendered, reduced to the encoder's
input size and closed one by one, and encoded in small batches; only vectors and chunk
text are kept. PDFium is not thread-safe, so every PDFium call holds one module lock.
"""

from __future__ import annotations

import bisect
import io
import math
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pypdfium2 as pdfium
from PIL import Image, ImageStat

from clipsearch.chunking import Chunk, chunk_text
from clipsearch.errors import SkipFile
from clipsearch.records import Record, item_id, path_bytes

if TYPE_CHECKING:
    from clipsearch.indexers.base import IndexContext

    from clipsearch.encoders import Encoder

PDF_SUFFIXES = (".pdf",)
TEXT_SUFFIXES = (".txt", ".md", ".markdown")
DEFAULT_PAGE_SIZE = 1024
DEFAULT_PAGE_BATCH = 8
DEFAULT_PAGE_TILES = 1.0  # whole page + full-width squares (top/bottom of a portrait page)
BLANK_STDDEV = 2.0  # grey-level spread below which a tile is empty paper
THUMB_QUALITY = 85
_PDF_MAGIC = b"%PDF-"
# Bytes that never occur in text but do in binaries; NUL alone catches most binary formats.
_CONTROL = {c for c in range(32) if chr(c) not in "\t\n\r\f\v\x1b"} | {127}
_PDFIUM_LOCK = threading.RLock()


class DocumentIndexer:
    """The `document` medium: PDF, plain text and Markdown files."""

    medium = "document"

    def accepts(self, path: Path, head: bytes) -> bool:
        """PDF by its magic bytes, wherever it lives; otherwise by extension."""
        if _PDF_MAGIC in head:
            return True
        return Path(path).suffix.lower() in PDF_SUFFIXES + TEXT_SUFFIXES

    def extract(self, path: Path, encoder: Encoder, ctx: IndexContext) -> list[Record]:
        """All rows of one document; raises SkipFile with a reason for files it cannot read."""
        path = Path(path)
        with open(path, "rb") as fh:
            head = fh.read(1024)
        if _PDF_MAGIC in head or path.suffix.lower() in PDF_SUFFIXES:
            return extract_pdf(path, encoder, ctx)
        return extract_text_file(path, encoder, ctx)


# --- PDF ---------------------------------------------------------------------------------


def extract_pdf(path: Path, encoder: Encoder, ctx: IndexContext) -> list[Record]:
    """Page-image rows and text-chunk rows for every page of a PDF, one page at a time."""
    opts = ctx.options
    page_size = int(opts.get("page_size", DEFAULT_PAGE_SIZE))
    batch = max(1, int(opts.get("page_batch", DEFAULT_PAGE_BATCH)))
    tile_frac = float(opts.get("page_tiles", DEFAULT_PAGE_TILES))
    max_tokens, overlap = _chunk_budget(encoder, opts)
    pixel_cap = min(int(ctx.max_pixels), page_size * page_size)
    thumb_dir = Path(ctx.thumb_dir)
    thumb_dir.mkdir(parents=True, exist_ok=True)
    source = path_bytes(os.path.abspath(path))

    records: list[Record] = []
    pending_pages: list[tuple[int, Image.Image, str, dict[str, Any]]] = []
    pending_chunks: list[Chunk] = []

    def flush() -> None:
        if pending_pages:
            vecs = encoder.encode_images([img for _, img, _, _ in pending_pages])
            for (num, _, thumb, extra), v in zip(pending_pages, vecs, strict=True):
                records.append(Record("doc_page", _f32(v), page=num, thumb=thumb, extra=extra))
            pending_pages.clear()
        if pending_chunks:
            vecs = encoder.encode_texts([c.text for c in pending_chunks])
            records.extend(_text_records(pending_chunks, vecs))
            pending_chunks.clear()

    with open(path, "rb") as fh:
        pdf = _open_pdf(fh, path)
        try:
            with _PDFIUM_LOCK:
                n_pages = len(pdf)
            if n_pages == 0:
                raise SkipFile(f"{path}: PDF has no pages")
            for index in range(n_pages):
                loaded = _load_page(pdf, index, pixel_cap, page_size)
                if loaded is None:
                    continue  # an unreadable or zero-area page; the rest of the document still counts
                image, text = loaded
                num = index + 1
                thumb = thumb_dir / f"{item_id(source, f'doc_page:p{num}')}.jpg"
                _save_jpeg(image, thumb)
                for tile, (region, view) in enumerate(page_views(image, encoder.image_size, tile_frac)):
                    # tiles are zoomed-in squares of the page: own rows (chunk = tile number), same page
                    extra: dict[str, Any] = {"pages": n_pages}
                    if region is not None:
                        extra.update(chunk=tile, region=region)
                    pending_pages.append((num, view, str(thumb), extra))
                image.close()
                pending_chunks.extend(chunk_text(text, encoder.count_tokens, max_tokens, overlap, page=num))
                if len(pending_pages) >= batch:
                    flush()
            flush()
        finally:
            with _PDFIUM_LOCK:
                pdf.close()
    if not records:
        raise SkipFile(f"{path}: none of its {n_pages} PDF pages could be rendered")
    return records


def _open_pdf(fh: io.BufferedReader, path: Path) -> pdfium.PdfDocument:
    """Open from a file handle (works for any path bytes); map PDFium errors to skip reasons."""
    try:
        with _PDFIUM_LOCK:
            return pdfium.PdfDocument(fh)
    except pdfium.PdfiumError as e:
        # PDFium refuses an empty page tree without setting an error code, so the code it
        # reports then is stale (left by an earlier failure): look at the bytes first.
        fh.seek(0)
        if _looks_pageless(fh.read(1 << 20)):
            raise SkipFile(f"{path}: PDF has no pages") from e
        code = getattr(e, "err_code", None)
        if code == pdfium.raw.FPDF_ERR_PASSWORD:
            raise SkipFile(f"{path}: PDF is encrypted and needs a password") from e
        if code == pdfium.raw.FPDF_ERR_SECURITY:
            raise SkipFile(f"{path}: PDF uses an unsupported security handler") from e
        raise SkipFile(f"{path}: not a readable PDF (corrupt or truncated: {e})") from e


def _looks_pageless(head: bytes) -> bool:
    """A page tree with /Count 0 and no page object: an empty PDF, not a corrupt one."""
    empty_tree = re.search(rb"/Count\s+0(?![0-9])", head)
    return bool(empty_tree) and not re.search(rb"/Type\s*/Page(?![a-zA-Z])", head)


def _load_page(
    pdf: pdfium.PdfDocument, index: int, pixel_cap: int, page_size: int
) -> tuple[Image.Image, str] | None:
    """Render one page (white background, RGB) and extract its text; None if unusable."""
    with _PDFIUM_LOCK:
        try:
            page = pdf[index]
        except pdfium.PdfiumError:
            return None
        try:
            width, height = page.get_size()
            scale = render_scale(width, height, page_size, pixel_cap)
            if scale is None:
                return None
            bitmap = page.render(scale=scale, fill_color=(255, 255, 255, 255))
            try:
                image = bitmap.to_pil().convert("RGB")  # convert copies out of PDFium's buffer
            finally:
                bitmap.close()
            textpage = page.get_textpage()
            try:
                text = textpage.get_text_range()
            finally:
                textpage.close()
        except pdfium.PdfiumError:
            return None
        finally:
            page.close()
    return image, text


def render_scale(width: float, height: float, page_size: int, pixel_cap: int) -> float | None:
    """Pixels per PDF unit: longest side `page_size`, and never more than `pixel_cap` pixels.

    Pages can claim any size (200000 pt squares, 1 pt slivers); the scale follows from the
    page size so the bitmap is bounded whatever the page says. None for zero or invalid sizes.
    """
    if not (math.isfinite(width) and math.isfinite(height)) or width <= 0 or height <= 0:
        return None
    scale = page_size / max(width, height)
    if width * height * scale * scale > pixel_cap:
        scale = math.sqrt(pixel_cap / (width * height))
    return scale


def page_views(
    image: Image.Image, size: int, tile_frac: float = 0.0
) -> list[tuple[list[float] | None, Image.Image]]:
    """What the image tower sees of one page, each `size`x`size`: the whole page letterboxed,
    then (if `tile_frac` > 0) overlapping square tiles of side `tile_frac` x the short side,
    so a figure that is a speck in the whole-page view fills a good part of some tile.
    Regions are [x0, y0, x1, y1] as fractions of the page."""
    views: list[tuple[list[float] | None, Image.Image]] = [(None, letterbox(image, size))]
    if tile_frac <= 0:
        return views
    w, h = image.size
    for box in tile_boxes(w, h, tile_frac):
        region = [box[0] / w, box[1] / h, box[2] / w, box[3] / h]
        tile = image.crop(box).resize((size, size), Image.Resampling.BICUBIC)
        if ImageStat.Stat(tile.convert("L")).stddev[0] >= BLANK_STDDEV:  # blank margins say nothing
            views.append(([round(v, 4) for v in region], tile))
    return views


def tile_boxes(w: int, h: int, frac: float, overlap: float = 0.25) -> list[tuple[int, int, int, int]]:
    """Square boxes of side `frac` x min(w, h), evenly spaced to cover the page, overlapping
    by at least `overlap` of a side."""
    side = max(1, round(min(frac, 1.0) * min(w, h)))
    stride = side * (1 - overlap)

    def starts(extent: int) -> list[int]:
        n = 1 if extent <= side else math.ceil((extent - side) / stride) + 1
        return [round(i * (extent - side) / max(n - 1, 1)) for i in range(n)]

    return [(x, y, x + side, y + side) for y in starts(h) for x in starts(w)]


def letterbox(image: Image.Image, size: int) -> Image.Image:
    """Fit the whole image into a white `size`x`size` square (no cropping of tall pages)."""
    w, h = image.size
    s = size / max(w, h)
    resized = image.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC)
    square = Image.new("RGB", (size, size), (255, 255, 255))
    square.paste(resized, ((size - resized.width) // 2, (size - resized.height) // 2))
    return square


def _save_jpeg(image: Image.Image, dest: Path) -> None:
    """Write atomically so a crash never leaves a truncated thumbnail behind."""
    tmp = dest.with_name(dest.name + ".tmp")
    image.save(tmp, format="JPEG", quality=THUMB_QUALITY)
    os.replace(tmp, dest)


# --- plain text --------------------------------------------------------------------------


def extract_text_file(path: Path, encoder: Encoder, ctx: IndexContext) -> list[Record]:
    """Text-chunk rows for a .txt/.md file (page None; line range in extra)."""
    text = read_text_file(path)
    max_tokens, overlap = _chunk_budget(encoder, ctx.options)
    chunks = chunk_text(text, encoder.count_tokens, max_tokens, overlap)
    if not chunks:
        raise SkipFile(f"{path}: text file is empty")
    records = _text_records(chunks, encoder.encode_texts([c.text for c in chunks]))
    newlines = [m.start() for m in re.finditer("\n", text)]
    for rec, c in zip(records, chunks, strict=True):
        first, last = bisect.bisect_left(newlines, c.start), bisect.bisect_left(newlines, c.end - 1)
        rec.extra["lines"] = [first + 1, last + 1]
    return records


def read_text_file(path: Path) -> str:
    """Decode a text file: UTF-8 (with or without BOM), UTF-16 with a BOM, else Windows-1252.

    Files that look binary (NUL bytes, many control characters) or decode under none of
    these are skipped with a reason rather than indexed as garbage.
    """
    data = Path(path).read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        candidates = ["utf-16"]
    elif b"\x00" in data:
        raise SkipFile(f"{path}: binary content (NUL bytes), not a text file")
    else:
        candidates = ["utf-8-sig", "cp1252"]
    for encoding in candidates:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        sample = text[:65536]
        if sample and sum(ord(ch) in _CONTROL for ch in sample) > 0.01 * len(sample):
            raise SkipFile(f"{path}: binary content (control characters), not a text file")
        return text
    raise SkipFile(f"{path}: text is neither UTF-8, UTF-16 nor Windows-1252")


# --- shared ------------------------------------------------------------------------------


def _chunk_budget(encoder: Encoder, opts: dict[str, Any]) -> tuple[int, int]:
    """(max tokens incl. markers, overlap tokens): the whole context, a quarter overlap."""
    max_tokens = min(int(opts.get("chunk_tokens", encoder.context_length)), encoder.context_length)
    overlap = int(opts.get("chunk_overlap", max(0, (max_tokens - 2) // 4)))
    return max_tokens, overlap


def _text_records(chunks: list[Chunk], vectors: np.ndarray) -> list[Record]:
    return [
        Record(
            "doc_text", _f32(v), page=c.page, text=c.text, extra={"chunk": c.index, "span": [c.start, c.end]}
        )
        for c, v in zip(chunks, vectors, strict=True)
    ]


def _f32(v: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(v, dtype=np.float32)
