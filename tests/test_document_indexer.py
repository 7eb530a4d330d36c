"""DocumentIndexer: page rows, text chunks with page numbers and spans, and every bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
import pytest
from clipsearch.indexers.base import IndexContext
from clipsearch.indexers.document import DocumentIndexer, letterbox, read_text_file, render_scale, tile_boxes
from PIL import Image
from reportlab.lib import pdfencrypt
from support import FakeEncoder, make_pdf, page_words

from clipsearch.errors import SkipFile


@pytest.fixture
def ctx(tmp_path: Path) -> IndexContext:
    return IndexContext(thumb_dir=tmp_path / "thumbs", options={"page_size": 256, "page_tiles": 0})


def _minimal_pdf(objects: list[str]) -> bytes:
    """A hand-built PDF: reportlab always writes at least one page."""
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{obj}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def test_pdf_gives_one_page_row_per_page_with_thumbnails(tmp_path: Path, ctx: IndexContext) -> None:
    pdf = make_pdf(tmp_path / "report.pdf", pages=4)
    enc = FakeEncoder()
    records = DocumentIndexer().extract(pdf, enc, ctx)
    pages = [r for r in records if r.kind == "doc_page"]
    assert [r.page for r in pages] == [1, 2, 3, 4]
    for r in pages:
        assert r.vector.dtype == np.float32 and r.vector.shape == (enc.dim,)
        assert np.linalg.norm(r.vector) == pytest.approx(1.0, abs=1e-5)
        thumb = Path(r.thumb)
        assert thumb.is_absolute() and thumb.parent == ctx.thumb_dir
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and max(im.size) == 256
    assert len({r.thumb for r in pages}) == 4
    # the encoder sees the whole page letterboxed to its square input size
    assert set(enc.image_sizes) == {(enc.image_size, enc.image_size)}


def test_text_chunks_carry_their_page_and_span(tmp_path: Path, ctx: IndexContext) -> None:
    pdf = make_pdf(tmp_path / "paper.pdf", pages=3)
    records = DocumentIndexer().extract(pdf, FakeEncoder(), ctx)
    chunks = [r for r in records if r.kind == "doc_text"]
    doc = pdfium.PdfDocument(str(pdf))
    page_texts = {i + 1: doc[i].get_textpage().get_text_range() for i in range(len(doc))}
    for page, text in page_texts.items():
        mine = [r for r in chunks if r.page == page]
        assert len(mine) > 1, "30 words cannot fit a 24-token context"
        assert [r.extra["chunk"] for r in mine] == list(range(len(mine)))
        for r in mine:
            start, end = r.extra["span"]
            assert text[start:end] == r.text
            assert set(re.findall(r"marker(\d+)x", r.text)) == {str(page)}
        assert {w for r in mine for w in r.text.split()} == set(page_words(page).split())


def test_scanned_pdf_without_text_layer_still_gives_page_rows(tmp_path: Path, ctx: IndexContext) -> None:
    pdf = make_pdf(tmp_path / "scan.pdf", pages=2, text=False, image=True)
    records = DocumentIndexer().extract(pdf, FakeEncoder(), ctx)
    assert [(r.kind, r.page) for r in records] == [("doc_page", 1), ("doc_page", 2)]
    red = records[0].vector[:3] / records[0].vector[3]  # mean colour: white page, red figure
    assert red[0] > red[1] + 20


def test_encrypted_pdf_is_skipped_with_a_reason(tmp_path: Path, ctx: IndexContext) -> None:
    pdf = make_pdf(tmp_path / "secret.pdf", 1, encrypt=pdfencrypt.StandardEncryption("pw", ownerPassword="o"))
    with pytest.raises(SkipFile, match=r"secret\.pdf.*encrypted"):
        DocumentIndexer().extract(pdf, FakeEncoder(), ctx)


def test_owner_password_only_pdf_is_indexed(tmp_path: Path, ctx: IndexContext) -> None:
    pdf = make_pdf(tmp_path / "open.pdf", 1, encrypt=pdfencrypt.StandardEncryption("", ownerPassword="o"))
    records = DocumentIndexer().extract(pdf, FakeEncoder(), ctx)
    assert any(r.kind == "doc_text" and "marker1x0" in r.text for r in records)


def test_corrupt_bytes_are_skipped_with_a_reason(tmp_path: Path, ctx: IndexContext) -> None:
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 20)
    with pytest.raises(SkipFile, match=r"broken\.pdf.*not a readable PDF"):
        DocumentIndexer().extract(bad, FakeEncoder(), ctx)
    truncated = tmp_path / "truncated.pdf"
    truncated.write_bytes(make_pdf(tmp_path / "whole.pdf", 2).read_bytes()[:300])
    with pytest.raises(SkipFile, match="truncated.pdf"):
        DocumentIndexer().extract(truncated, FakeEncoder(), ctx)


def test_zero_page_pdf_is_skipped_with_a_reason(tmp_path: Path, ctx: IndexContext) -> None:
    # PDFium leaves a stale error code for empty page trees; fail once first to prove it is ignored.
    (tmp_path / "junk.pdf").write_bytes(b"%PDF-1.4 junk")
    with pytest.raises(SkipFile):
        DocumentIndexer().extract(tmp_path / "junk.pdf", FakeEncoder(), ctx)
    empty = tmp_path / "empty.pdf"
    tree = ["<< /Type /Catalog /Pages 2 0 R >>", "<< /Type /Pages /Kids [] /Count 0 >>"]
    empty.write_bytes(_minimal_pdf(tree))
    with pytest.raises(SkipFile, match=r"empty\.pdf.*no pages"):
        DocumentIndexer().extract(empty, FakeEncoder(), ctx)


def test_absurd_page_size_is_capped_not_skipped(tmp_path: Path, ctx: IndexContext) -> None:
    huge = make_pdf(tmp_path / "huge.pdf", 1, pagesize=(200_000, 200_000))  # ~70 m square
    sliver = make_pdf(tmp_path / "sliver.pdf", 1, pagesize=(14_400, 3))
    for pdf in (huge, sliver):
        records = DocumentIndexer().extract(pdf, FakeEncoder(), ctx)
        page = next(r for r in records if r.kind == "doc_page")
        with Image.open(page.thumb) as im:
            assert max(im.size) <= 256 and min(im.size) >= 1
    tight = IndexContext(thumb_dir=ctx.thumb_dir, max_pixels=10_000, options={"page_size": 4096})
    page = next(r for r in DocumentIndexer().extract(huge, FakeEncoder(), tight) if r.kind == "doc_page")
    with Image.open(page.thumb) as im:
        assert im.size[0] * im.size[1] <= 10_000


def test_render_scale_bounds_the_bitmap() -> None:
    for w, h in [(612, 792), (200_000, 200_000), (1, 14_400), (0.01, 0.01)]:
        s = render_scale(w, h, 1024, 1024 * 1024)
        assert max(w, h) * s <= 1024 + 1e-6 and w * h * s * s <= 1024 * 1024 + 1e-3
    assert render_scale(0, 792, 1024, 10**6) is None
    assert render_scale(float("nan"), 792, 1024, 10**6) is None


def test_letterbox_keeps_the_whole_page() -> None:
    page = Image.new("RGB", (100, 300), (0, 0, 0))
    square = letterbox(page, 60)
    assert square.size == (60, 60)
    arr = np.asarray(square)
    assert arr[0, 30].tolist() == [0, 0, 0] and arr[59, 30].tolist() == [0, 0, 0]  # top and bottom kept
    assert arr[30, 0].tolist() == [255, 255, 255]  # white bars at the sides


def test_text_and_markdown_files_are_chunked(tmp_path: Path, ctx: IndexContext) -> None:
    lines = [f"line {i} says something about topic{i}." for i in range(40)]
    md = tmp_path / "notes.md"
    md.write_text("# Title\n\n" + "\n".join(lines) + "\n", encoding="utf-8")
    records = DocumentIndexer().extract(md, FakeEncoder(), ctx)
    text = md.read_text(encoding="utf-8")
    assert records and all(r.kind == "doc_text" and r.page is None for r in records)
    for r in records:
        start, end = r.extra["span"]
        assert text[start:end] == r.text
        first, last = r.extra["lines"]
        spanned = "\n".join(text.splitlines()[first - 1 : last])
        assert r.text in spanned
        assert r.text.split()[0] in text.splitlines()[first - 1]
        assert r.text.split()[-1] in text.splitlines()[last - 1]
    assert [r.extra["chunk"] for r in records] == list(range(len(records)))


def test_text_decoding_and_binary_files(tmp_path: Path, ctx: IndexContext) -> None:
    (tmp_path / "bom.txt").write_bytes("\ufeffcafé au lait".encode())
    assert read_text_file(tmp_path / "bom.txt") == "café au lait"
    (tmp_path / "latin.txt").write_bytes("naïve café".encode("cp1252"))
    assert read_text_file(tmp_path / "latin.txt") == "naïve café"
    (tmp_path / "wide.txt").write_bytes("wide text".encode("utf-16"))
    assert read_text_file(tmp_path / "wide.txt") == "wide text"
    binary = tmp_path / "image.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8)
    with pytest.raises(SkipFile, match=r"image\.txt.*binary"):
        DocumentIndexer().extract(binary, FakeEncoder(), ctx)
    controls = tmp_path / "controls.md"
    controls.write_bytes(bytes([1, 2, 3, 4, 5, 6, 7, 8] * 50) + b"text")
    with pytest.raises(SkipFile, match="binary"):
        DocumentIndexer().extract(controls, FakeEncoder(), ctx)
    blank = tmp_path / "blank.txt"
    blank.write_text("   \n\n", encoding="utf-8")
    with pytest.raises(SkipFile, match=r"blank\.txt.*empty"):
        DocumentIndexer().extract(blank, FakeEncoder(), ctx)


def test_accepts_pdf_by_content_and_text_by_extension(tmp_path: Path) -> None:
    ix = DocumentIndexer()
    assert ix.medium == "document"
    assert ix.accepts(Path("scan.bin"), b"%PDF-1.7\n%\xe2\xe3\xcf\xd3")
    assert ix.accepts(Path("README.md"), b"# hello")
    assert ix.accepts(Path("notes.TXT"), b"hello")
    assert not ix.accepts(Path("photo.jpg"), b"\xff\xd8\xff\xe0\x00\x10JFIF")
    assert not ix.accepts(Path("clip.mp4"), b"\x00\x00\x00\x18ftypmp42")
    # a PDF with a .txt name is indexed as a PDF
    pdf = make_pdf(tmp_path / "really_a_pdf.txt", 1)
    records = ix.extract(pdf, FakeEncoder(), IndexContext(thumb_dir=tmp_path / "t"))
    assert any(r.kind == "doc_page" for r in records)


def test_page_tiles_are_extra_rows_of_the_same_page(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "tiled.pdf", pages=2, text=False, image=True)  # a figure low on the page
    ctx = IndexContext(thumb_dir=tmp_path / "thumbs", options={"page_size": 256, "page_tiles": 0.6})
    records = DocumentIndexer().extract(pdf, FakeEncoder(), ctx)
    pages = [r for r in records if r.kind == "doc_page"]
    for num in (1, 2):
        mine = [r for r in pages if r.page == num]
        assert "region" not in mine[0].extra  # the whole page comes first
        tiles = mine[1:]
        assert 2 <= len(tiles) < 6  # of a 2 x 3 grid over a portrait page, the blank ones are dropped
        assert [r.extra["chunk"] for r in tiles] == list(range(1, len(tiles) + 1))
        assert len({r.locator() for r in mine}) == len(mine)  # distinct ids in the store
        assert len({r.thumb for r in mine}) == 1
        for r in tiles:
            x0, y0, x1, y1 = r.extra["region"]
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    assert max(len(tile_boxes(612, 792, 0.6)), len(tile_boxes(792, 612, 0.6))) == 6
