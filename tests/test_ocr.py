"""Words in pictures (OCR): read once, found by their words, fused with visual search.

A small version of benchmarks/words.py: phrases rendered on images (fonts, sizes, rotations,
backdrops, shape photos with a caption), screenshots and a scanned PDF (pages that are pictures
only), among shape photos without words. Needs the `ocr` extra (part of `test`).
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image, ImageDraw
from support import ServerThread, tiny_model_args

from clipsearch import ocr
from clipsearch.collection import Collection
from clipsearch.tiny.synth.shapes import random_spec, render_shape
from clipsearch.tiny.words import font, make_world, phrase_image, visual_queries

pytestmark = pytest.mark.skipif(not ocr.installed(), reason="the ocr extra is not installed")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The world indexed without OCR, then with it (the incremental path), image tower barred."""
    root = tmp_path_factory.mktemp("words")
    w = make_world(root / "files", images=8, screens=2, pages=2, plain=10, seed=3)
    col = Collection.create(root / "db", device="cpu", **tiny_model_args())
    first = col.add([root / "files"], ocr="off", workers=2)
    assert col.store.count("kind = 'ocr'") == 0
    enc = col.encoder

    def barred(*a, **k):
        raise AssertionError("the image tower ran while only words were read")

    saved = enc.encode_images, enc.encode_batch
    enc.encode_images = enc.encode_batch = barred
    try:
        second = col.add([root / "files"], ocr="on", workers=2)
    finally:
        enc.encode_images, enc.encode_batch = saved
    return w, col, first, second


def _rank(hits, path, page=None):
    for i, h in enumerate(hits):
        if (h.source, h.page) == (path, page):
            return i
    return None


def test_turning_ocr_on_reads_only_what_lacks_it(world):
    w, col, first, second = world
    assert first.indexed == 21 and second.indexed == 0
    assert second.ocr_files == 21 and second.ocr_rows > 0  # 8 + 2 images, the PDF, 10 plain
    assert "OCR read" in second.summary()
    third = col.add(ocr="on")
    assert third.ocr_files == 0 and third.indexed == 0  # nothing is read twice


@pytest.mark.parametrize("medium, floor", [("images", 0.85), ("screens", 1.0), ("scans", 1.0)])
def test_phrase_queries_find_their_picture(world, medium, floor):
    w, col, _, _ = world
    ranks = [_rank(col.search(text, k=5), path, page) for text, (path, page) in w.phrases[medium].items()]
    r1 = np.mean([r == 0 for r in ranks])
    assert r1 >= floor, (medium, ranks)


def test_hits_found_by_words_carry_them(world):
    w, col, _, _ = world
    text, (path, _) = next(iter(w.phrases["images"].items()))
    top = col.search(text, k=3)[0]
    assert top.source == path and top.kind == "image"
    assert top.extra["matched"] in ("words", "both") and text.split()[0] in top.text.lower()
    x0, y0, x1, y1 = top.extra["box"]
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    scan_text, (scan, page) = next(iter(w.phrases["scans"].items()))
    hit = col.search(scan_text, k=3)[0]
    assert (hit.source, hit.page, hit.kind) == (scan, page, "doc_page")


def test_kind_ocr_and_words_only(world):
    w, col, _, _ = world
    text, (path, _) = list(w.phrases["screens"].items())[1]
    hits = col.search(text, kind="ocr", k=3)
    assert hits[0].kind == "ocr" and hits[0].source == path and "box" in hits[0].extra
    assert {h.kind for h in hits} == {"ocr"}
    only = col.search(text, words_only=True, k=3)
    assert only[0].source == path
    from clipsearch.errors import UsageError

    with pytest.raises(UsageError, match="words-only"):
        col.search(text, words_only=True, kind="image")
    visual = col.search(text, visual_only=True, k=3)
    assert all("matched" not in h.extra for h in visual)


def test_visual_queries_lose_nothing(world):
    """A query about what a plain picture shows ranks as the vectors alone rank it."""
    w, col, _, _ = world
    queries = visual_queries(w)
    assert queries
    for q, _ in queries:
        fused = [(h.source, h.page) for h in col.search(q, k=5)]
        alone = [(h.source, h.page) for h in col.search(q, k=5, visual_only=True)]
        assert fused == alone, q


def test_video_captions_are_found_where_they_are_shown(tmp_path):
    import av

    files = tmp_path / "files"
    files.mkdir()
    out = av.open(str(files / "talk.mp4"), "w")
    stream = out.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
    captions = (((30, 60, 120), "orchid summit"), ((120, 40, 40), "cobalt prairie"), ((40, 120, 40), ""))
    for colour, caption in captions:
        im = Image.new("RGB", (320, 240), colour)
        ImageDraw.Draw(im).text((10, 100), caption, fill="white", font=font("DejaVuSans-Bold.ttf", 24))
        for _ in range(40):  # 4 s a caption
            for packet in stream.encode(av.VideoFrame.from_image(im)):
                out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    col = Collection.create(tmp_path / "db", device="cpu", **tiny_model_args())
    assert col.add([files], ocr="on", workers=2).ocr_rows == 2
    hit = col.search("cobalt prairie", kind="ocr", k=1)[0]
    assert hit.text == "cobalt prairie" and 3.5 <= hit.t_start <= 4.5 and 7.5 <= hit.t_end <= 8.5
    top = col.search("cobalt prairie", k=1)[0]
    assert top.kind == "video_frame" and top.extra["matched"] in ("words", "both")
    assert 3.5 <= top.t_start < 8.0


def test_gate_passes_print_and_not_plain_shapes():
    rng = np.random.default_rng(11)
    plain = [render_shape(random_spec(rng), rng, size=256, background=bg)
             for bg in ("plain", "gradient", "textured") for _ in range(10)]
    assert not any(ocr.maybe_text(im) for im in plain)
    worded = [phrase_image("harbour lantern festival", rng) for _ in range(10)]
    assert sum(ocr.maybe_text(im) for im in worded) >= 9


def _pattern(kind: str, period: int, angle: float, size: int = 256) -> Image.Image:
    """A backdrop that repeats (fine dots, checks, stripes) with a shape on it: no words."""
    y, x = np.mgrid[:size, :size].astype(np.float32)
    u = x * np.cos(np.radians(angle)) + y * np.sin(np.radians(angle))
    v = -x * np.sin(np.radians(angle)) + y * np.cos(np.radians(angle))
    if kind == "stripes":
        on = (u // (period / 2)) % 2 == 0
    elif kind == "checks":
        on = ((u // period) + (v // period)) % 2 == 0
    else:
        on = ((u % period - period / 2) ** 2 + (v % period - period / 2) ** 2) < (period / 3.5) ** 2
    arr = np.where(on[..., None], np.array([40, 170, 120]), np.array([230, 220, 90])).astype(np.uint8)
    im = Image.fromarray(arr)
    ImageDraw.Draw(im).polygon([(60, 200), (128, 60), (200, 190)], fill=(250, 200, 30), outline="black")
    return im


def test_gate_refuses_repeating_backdrops_and_passes_pages_of_lines():
    """A textured photo without words costs no engine call (each one is a second or more);
    a page of regular lines of print still passes (lines repeat across, not along)."""
    patterns = {(kind, period, angle): _pattern(kind, period, angle) for kind in ("dots", "checks", "stripes")
                for period in (6, 9, 14) for angle in (0, 30, 45)}
    passed = {key for key, im in patterns.items() if ocr.maybe_text(im)}
    # the first gate let all 27 through; what still passes is mostly coarse patterns where only
    # the shape's outline crossing them makes a few dense tiles
    assert len(passed) <= 11, sorted(passed)
    fine = {key for key in patterns if key[1] == 6 and key[2] != 0}  # patterns dense all over
    assert not passed & fine, sorted(passed & fine)
    page = Image.new("RGB", (900, 1200), "white")
    d = ImageDraw.Draw(page)
    for i in range(40):
        d.text((20, 10 + 29 * i), f"line {i} of the notice: amber lantern harbour falcon meadow",
               fill="black", font=font("DejaVuSans.ttf", 22))
    assert ocr.maybe_text(page) and ocr.maybe_text(page.rotate(90, expand=True))
    rng = np.random.default_rng(5)
    captions = [phrase_image("cobalt willow tango", rng) for _ in range(20)]
    assert sum(ocr.maybe_text(im) for im in captions) >= 19


def test_bad_input_and_a_missing_engine(tmp_path, monkeypatch):
    files = tmp_path / "files"
    files.mkdir()
    page = Image.new("RGB", (900, 1200), "white")  # an image that is all text
    d = ImageDraw.Draw(page)
    for i in range(40):
        d.text((20, 10 + 29 * i), f"line {i} of the notice: amber lantern harbour falcon meadow",
               fill="black", font=font("DejaVuSans.ttf", 22))
    page.save(files / "notice.png")
    (files / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    rng = np.random.default_rng(1)
    render_shape(random_spec(rng), rng, size=200).save(files / "s.png")
    col = Collection.create(tmp_path / "db", device="cpu", **tiny_model_args())

    monkeypatch.setattr(ocr, "installed", lambda: False)
    report = col.add([files], ocr="on", workers=2)
    assert report.indexed == 2 and len(report.skipped) == 1  # the rest of the job went on
    assert "not installed" in (report.ocr_problem or "") and "clipsearch[ocr]" in report.ocr_problem
    assert col.store.count("kind = 'ocr'") == 0
    assert col.add([files], ocr="auto").ocr_files == 0  # auto without the engine: no OCR, no noise

    monkeypatch.undo()
    report = col.add([files], ocr="on", workers=2)
    assert report.ocr_problem is None and report.ocr_files == 2
    rows = col.store.scan(["text"], "kind = 'ocr'").to_pylist()
    assert 0 < len(rows) <= 200
    assert col.search("the notice", kind="ocr", k=1)[0].source == str(files / "notice.png")


def test_http_search_returns_the_words(world):
    from clipsearch.ui.server import build_app

    w, col, _, _ = world
    text, (path, _) = next(iter(w.phrases["images"].items()))
    with ServerThread(build_app(col.path, device="cpu")) as srv:
        url = f"{srv.url}/api/search?" + urllib.parse.urlencode({"q": text, "k": 3})
        body = json.loads(urllib.request.urlopen(url, timeout=60).read())
        top = body["hits"][0]
        assert top["source"] == path and top["matched"] in ("words", "both")
        assert len(top["box"]) == 4 and text.split()[0] in top["text"].lower()
        url = f"{srv.url}/api/search?" + urllib.parse.urlencode({"q": text, "k": 3, "kind": "ocr"})
        body = json.loads(urllib.request.urlopen(url, timeout=60).read())
        assert body["hits"][0]["kind"] == "ocr" and body["hits"][0]["thumb_url"]
        url = f"{srv.url}/api/search?" + urllib.parse.urlencode({"q": text, "words_only": "true",
                                                                 "visual_only": "true"})
        try:
            urllib.request.urlopen(url, timeout=60)
            raise AssertionError("both switches were accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 400


def test_cli_ocr_flag(tmp_path):
    from click.testing import CliRunner

    from clipsearch.cli import main

    files = tmp_path / "files"
    shutil.copytree(make_world(tmp_path / "w", images=1, screens=0, pages=0, plain=0).root / "images", files)
    result = CliRunner().invoke(main, ["index", str(files), "--db", str(tmp_path / "db"), "--model",
                                       "clipsearch-tiny", "--device", "cpu", "-q", "--ocr", "on"])
    assert result.exit_code == 0, result.output
    assert "OCR read 1 pictures of 1 files" in result.output


def test_ui_cards_show_the_words_escaped():
    from clipsearch.ui.app import render_grid

    hit = {"kind": "image", "name": "a.png", "source": "/x/a.png", "score": 1.2, "thumb_url": None,
           "text": "<script>alert(1)</script> cafe nero", "words": "ocr", "matched": "words"}
    html = render_grid([hit, {**hit, "kind": "ocr"}])
    assert html.count("cafe nero") == 2 and "<script>" not in html and "&lt;script&gt;" in html
    from clipsearch.ui.app import render_detail

    detail = render_detail({**hit, "media_url": "/item/x", "box": [0.1, 0.2, 0.5, 0.4]})
    assert "cs-wordbox" in detail and "left:10.00%" in detail and "height:20.00%" in detail
    assert "cs-wordbox" not in render_detail({**hit, "media_url": "/item/x", "box": ["1;x", 0, 1, 1]})


def test_a_pass_cut_short_resumes_with_what_it_lacks(tmp_path, monkeypatch):
    from clipsearch import ocr_index

    files = tmp_path / "files"
    files.mkdir()
    rng = np.random.default_rng(5)
    for i, text in enumerate(("amber falcon", "copper meadow", "velvet glacier")):
        phrase_image(text, rng).save(files / f"p{i}.png")
    col = Collection.create(tmp_path / "db", device="cpu", **tiny_model_args())
    col.add([files], ocr="off", workers=2)
    monkeypatch.setattr(ocr_index, "BATCH_FILES", 1)
    real = ocr.Engine.read
    calls = []

    def read(self, image):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second file is read
        return real(self, image)

    monkeypatch.setattr(ocr.Engine, "read", read)
    report = col.add(ocr="on")
    assert report.interrupted and report.ocr_files == 1
    monkeypatch.setattr(ocr.Engine, "read", real)
    again = col.add(ocr="on")
    assert again.ocr_files == 2 and not again.interrupted  # the committed file is not read again
    assert col.store.count("kind = 'ocr'") == 3
