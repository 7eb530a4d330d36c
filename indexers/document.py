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

Memory follows the work in flight, not the file size: `extract_parts` yields a file's rows a
few pages (PDF) or a few hundred chunks (text) at a time, and the pipeline commits them as
they come. PDF pages are opened, rendered, reduced to the encoder's input size and closed one
by one; a text file is decoded and chunked a megabyte at a time (`chunking.stream_chunks`).
Text rows per file are capped (`max_text_chunks`, default 20,000), so one huge file cannot
swamp the collection or slow every query; the part that stops there carries a note saying so.
PDFium is not thread-safe, so every PDFium call holds one module lock.
"""

from __future__ import annotations

import codecs
import io
import math
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pypdfium2 as pdfium
from clipsearch.indexers.base import Part
from PIL import Image, ImageStat

from clipsearch.chunking import Chunk, chunk_text, stream_chunks
from clipsearch.errors import SkipFile
from clipsearch.fsutil import write_atomic
from clipsearch.records import Record, item_id, path_bytes

if TYPE_CHECKING:
    from clipsearch.indexers.base import IndexContext

    from clipsearch.backends import AnyEncoder

PDF_SUFFIXES = (".pdf",)
TEXT_SUFFIXES = (".txt", ".md", ".markdown")
DEFAULT_PAGE_SIZE = 1024
DEFAULT_PAGE_BATCH = 8
DEFAULT_PAGE_TILES = 1.0  # whole page + full-width squares (top/bottom of a portrait page)
BLANK_STDDEV = 2.0  # grey-level spread below which a tile is empty paper
THUMB_QUALITY = 85
DEFAULT_MAX_TEXT_CHUNKS = 20_000  # text rows per file; 0 = no cap
TEXT_BLOCK = 1 << 18  # bytes of a text file decoded and chunked at a time
TEXT_PART = 256  # text chunks encoded and handed on together
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

    def extract(self, path: Path, encoder: AnyEncoder, ctx: IndexContext) -> list[Record]:
        """All rows of one document; raises SkipFile with a reason for files it cannot read."""
        return [r for part in self.extract_parts(path, encoder, ctx) for r in part.records]

    def extract_parts(self, path: Path, encoder: AnyEncoder, ctx: IndexContext) -> Iterator[Part]:
        """The rows of one document a few pages or chunks at a time (see the module docstring)."""
        path = Path(path)
        with open(path, "rb") as fh:
            head = fh.read(1024)
        if _PDF_MAGIC in head or path.suffix.lower() in PDF_SUFFIXES:
            return pdf_parts(path, encoder, ctx)
        return text_file_parts(path, encoder, ctx)


def max_text_chunks(opts: dict[str, Any]) -> int:
    """The per-file cap on text rows from the run's options; 0 means none."""
    cap = opts.get("max_text_chunks")
    return DEFAULT_MAX_TEXT_CHUNKS if cap is None else max(0, int(cap))


def _cap_note(cap: int, where: str) -> str:
    return (f"only the first {cap:,} text chunks were indexed ({where}); "
            "raise --max-text-chunks to index more")


# --- PDF ---------------------------------------------------------------------------------


def pdf_parts(path: Path, encoder: AnyEncoder, ctx: IndexContext) -> Iterator[Part]:
    """Page-image rows and text-chunk rows of a PDF, one page at a time, a part per few pages."""
    opts = ctx.options
    page_size = int(opts.get("page_size", DEFAULT_PAGE_SIZE))
    batch = max(1, int(opts.get("page_batch", DEFAULT_PAGE_BATCH)))
    tile_frac = float(opts.get("page_tiles", DEFAULT_PAGE_TILES))
    max_tokens, overlap = chunk_budget(encoder, opts)
    cap = max_text_chunks(opts)
    pixel_cap = min(int(ctx.max_pixels), page_size * page_size)
    thumb_dir = Path(ctx.thumb_dir)
    thumb_dir.mkdir(parents=True, exist_ok=True)
    source = path_bytes(os.path.abspath(path))

    produced, kept_chunks, cut_page = 0, 0, None
    pending_pages: list[tuple[int, Image.Image, str, dict[str, Any]]] = []
    pending_chunks: list[Chunk] = []

    def encode_pending() -> list[Record]:
        records: list[Record] = []
        if pending_pages:
            vecs = encoder.encode_images([img for _, img, _, _ in pending_pages])
            for (num, _, thumb, extra), v in zip(pending_pages, vecs, strict=True):
                records.append(Record("doc_page", _f32(v), page=num, thumb=thumb, extra=extra))
            pending_pages.clear()
        if pending_chunks:
            vecs = encoder.encode_texts([c.text for c in pending_chunks])
            records.extend(_text_records(pending_chunks, vecs))
            pending_chunks.clear()
        return records

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
                    if opts.get("ocr") and text.strip():
                        extra["ocr"] = "text"  # its text layer is read: no OCR needed (ocr_index)
                    if region is not None:
                        extra.update(chunk=tile, region=region)
                    pending_pages.append((num, view, str(thumb), extra))
                image.close()
                chunks = chunk_text(text, encoder.count_tokens, max_tokens, overlap, page=num)
                if cap and kept_chunks + len(chunks) > cap:
                    cut_page = cut_page or num
                    chunks = chunks[: cap - kept_chunks]
                kept_chunks += len(chunks)
                pending_chunks.extend(chunks)
                if len(pending_pages) >= batch:
                    records = encode_pending()
                    produced += len(records)
                    yield Part(records, done=num, total=n_pages, unit="pages")
            records = encode_pending()
            produced += len(records)
            note = None if cut_page is None else _cap_note(cap, f"the text stops on page {cut_page} "
                                                                f"of {n_pages}; every page's image is in")
            if records or note:
                yield Part(records, done=n_pages, total=n_pages, unit="pages", note=note)
        finally:
            with _PDFIUM_LOCK:
                pdf.close()
    if not produced:
        raise SkipFile(f"{path}: none of its {n_pages} PDF pages could be rendered")


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


def render_page(path: Path, page: int, side: int) -> Image.Image | None:
    """Page `page` (1-based) of a PDF rendered at longest side `side` (white background, RGB),
    for reading its words (`clipsearch.ocr_index`); None if the page cannot be rendered."""
    with open(path, "rb") as fh:
        pdf = _open_pdf(fh, path)
        try:
            loaded = _load_page(pdf, page - 1, side * side, side)
        finally:
            with _PDFIUM_LOCK:
                pdf.close()
    return loaded[0] if loaded else None


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
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=THUMB_QUALITY)
    write_atomic(dest, buf.getvalue())


# --- plain text --------------------------------------------------------------------------


def text_file_parts(path: Path, encoder: AnyEncoder, ctx: IndexContext) -> Iterator[Part]:
    """Text-chunk rows of a .txt/.md file (page None; line range in extra), a part per few
    hundred chunks, reading the file a block at a time; stops at the `max_text_chunks` cap."""
    pieces = TextPieces(path, text_encoding(path))
    max_tokens, overlap = chunk_budget(encoder, ctx.options)
    cap = max_text_chunks(ctx.options)
    total = round(os.path.getsize(path) / 2**20, 1)
    chunks = stream_chunks(pieces, encoder.count_tokens, max_tokens, overlap)
    batch: list[Chunk] = []
    kept, last_line, note = 0, 0, None

    def part(note: str | None = None) -> Part:
        records = _text_records(batch, encoder.encode_texts([c.text for c in batch])) if batch else []
        return Part(records, done=round(pieces.bytes_read / 2**20, 1), total=total, unit="MB", note=note)

    try:
        for c in chunks:
            if cap and kept == cap:  # there is more text than the cap lets in
                note = _cap_note(cap, f"lines 1-{last_line} of the file")
                break
            batch.append(c)
            kept, last_line = kept + 1, c.lines[1] if c.lines else last_line
            if len(batch) == TEXT_PART:
                yield part()
                batch = []
    finally:
        chunks.close()
    if not kept:
        raise SkipFile(f"{path}: text file is empty")
    if batch or note:
        yield part(note)


class TextPieces:
    """The decoded text of a file, a block at a time (`read_text_file` for the rules);
    `bytes_read` says how far into the file it has got."""

    def __init__(self, path: Path, encoding: str) -> None:
        self.path, self.encoding, self.bytes_read = Path(path), encoding, 0

    def __iter__(self) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder(self.encoding)()
        with open(self.path, "rb") as fh:
            for block in iter(lambda: fh.read(TEXT_BLOCK), b""):
                self.bytes_read += len(block)
                yield decoder.decode(block)
        yield decoder.decode(b"", final=True)


def read_text_file(path: Path) -> str:
    """Decode a whole text file (see `text_encoding`); `TextPieces` for one too big to hold."""
    return "".join(TextPieces(path, text_encoding(path)))


def text_encoding(path: Path) -> str:
    """How to decode a text file: UTF-8 (with or without BOM), UTF-16 with a BOM, else Windows-1252.

    Files that look binary (NUL bytes, many control characters) or decode under none of
    these are skipped with a reason rather than indexed as garbage. The check reads the file a
    block at a time, so it costs a pass over the bytes but no memory.
    """
    with open(path, "rb") as fh:
        bom = fh.read(2) in (b"\xff\xfe", b"\xfe\xff")
        for encoding in ["utf-16"] if bom else ["utf-8-sig", "cp1252"]:
            fh.seek(0)
            decoder = codecs.getincrementaldecoder(encoding)()
            sample = ""
            try:
                for block in iter(lambda: fh.read(TEXT_BLOCK), b""):
                    if not bom and b"\x00" in block:
                        raise SkipFile(f"{path}: binary content (NUL bytes), not a text file")
                    text = decoder.decode(block)
                    sample += text[: 65536 - len(sample)]
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                continue
            if sample and sum(ord(ch) in _CONTROL for ch in sample) > 0.01 * len(sample):
                raise SkipFile(f"{path}: binary content (control characters), not a text file")
            return encoding
    raise SkipFile(f"{path}: text is neither UTF-8, UTF-16 nor Windows-1252")


# --- shared ------------------------------------------------------------------------------


def chunk_budget(encoder: AnyEncoder, opts: dict[str, Any]) -> tuple[int, int]:
    """(max tokens incl. markers, overlap tokens): the whole context, a quarter overlap."""
    max_tokens = min(int(opts.get("chunk_tokens", encoder.context_length)), encoder.context_length)
    overlap = int(opts.get("chunk_overlap", max(0, (max_tokens - 2) // 4)))
    return max_tokens, overlap


def _text_records(chunks: list[Chunk], vectors: np.ndarray) -> list[Record]:
    records = []
    for c, v in zip(chunks, vectors, strict=True):
        extra: dict[str, Any] = {"chunk": c.index, "span": [c.start, c.end]}
        if c.lines is not None:
            extra["lines"] = list(c.lines)
        records.append(Record("doc_text", _f32(v), page=c.page, text=c.text, extra=extra))
    return records


def _f32(v: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(v, dtype=np.float32)
