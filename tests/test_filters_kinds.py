"""Metadata filters apply to every kind of search: moments, whole videos, document pages and the
default search over all kinds rank only the files the filters keep (a prefilter: k hits when k
match), through the Python API, the CLI and the HTTP API. Videos carry a creation_time tag
(PyAV) and PDFs a CreationDate; the ground truth is which files were made in August 2024."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from reportlab.lib.utils import ImageReader
from reportlab.pdfgen import canvas
from support import tiny_model_args

from clipsearch.tiny.synth.shapes import ShapeSpec, render_shape

AUGUST = {"after": "2024-08", "before": "2024-08"}
QUERY = "a red circle"  # what the videos and PDFs made outside August show
# name -> (creation time, what it shows); only the August files do not show the query
VIDEOS = {"old_red.mp4": ("2023-03-01T10:00:00Z", ShapeSpec("circle", "red")),
          "old_red2.mp4": ("2023-05-01T10:00:00Z", ShapeSpec("circle", "red")),
          "aug_blue.mp4": ("2024-08-05T10:00:00Z", ShapeSpec("square", "blue")),
          "aug_green.mp4": ("2024-08-20T10:00:00Z", ShapeSpec("triangle", "green"))}
# name -> (CreationDate, pages, what its pages show, words only it has)
PDFS = {"old.pdf": ("D:20220110120000+00'00'", 2, ShapeSpec("circle", "red"), "zebracrossing"),
        "aug.pdf": ("D:20240812120000+00'00'", 3, ShapeSpec("square", "blue"), "quarterly"),
        "aug2.pdf": ("D:20240830120000+00'00'", 2, ShapeSpec("triangle", "green"), "minutes")}
IMAGES = {"old.png": (datetime(2021, 6, 1, tzinfo=UTC), ShapeSpec("circle", "red")),
          "aug.png": (datetime(2024, 8, 10, tzinfo=UTC), ShapeSpec("star", "yellow"))}


def _video(path: Path, creation_time: str, spec: ShapeSpec, seconds: int = 6, fps: int = 5) -> None:
    frame = np.asarray(render_shape(spec, np.random.default_rng(1), size=96, background="plain"))
    with av.open(str(path), "w") as out:
        out.metadata["creation_time"] = creation_time
        s = out.add_stream("libx264", rate=fps)
        s.width = s.height = 96
        s.pix_fmt = "yuv420p"
        for i in range(seconds * fps):
            f = av.VideoFrame.from_ndarray(frame, format="rgb24")
            f.pts, f.time_base = i, Fraction(1, fps)
            for pk in s.encode(f):
                out.mux(pk)
        for pk in s.encode():
            out.mux(pk)


def _pdf(path: Path, created: str, pages: int, spec: ShapeSpec, words: str) -> None:
    """Reportlab writes a fixed CreationDate with `invariant`; the same-length date replaces it,
    so the cross-reference offsets stay right."""
    c = canvas.Canvas(str(path), pagesize=(300, 300), invariant=1)
    picture = render_shape(spec, np.random.default_rng(2), size=200, background="plain")
    for p in range(1, pages + 1):
        c.drawImage(ImageReader(picture), 50, 60, width=200, height=200)
        c.drawString(20, 30, f"Page {p} {words}")
        c.showPage()
    c.save()
    fixed = b"D:20000101000000+00'00'"
    data = path.read_bytes()
    assert data.count(fixed) == 2 and len(created) == len(fixed)  # CreationDate and ModDate
    path.write_bytes(data.replace(fixed, created.encode()))


@pytest.fixture(scope="module")
def dated(tmp_path_factory):
    """(collection, library folder) with the dated videos, PDFs and images above."""
    from clipsearch.collection import Collection

    args = tiny_model_args()
    base = tmp_path_factory.mktemp("filters_kinds")
    lib = base / "library"
    lib.mkdir()
    for name, (when, spec) in VIDEOS.items():
        _video(lib / name, when, spec)
    for name, (when, pages, spec, words) in PDFS.items():
        _pdf(lib / name, when, pages, spec, words)
    for name, (when, spec) in IMAGES.items():
        render_shape(spec, np.random.default_rng(3), size=128, background="plain").save(lib / name)
        os.utime(lib / name, (when.timestamp(), when.timestamp()))
    col = Collection.create(base / "db", device="cpu", **args)
    col.add([lib], workers=1)
    return col, lib


def _in_august(col, lib: Path) -> set[str]:
    """The sources the table dates to August 2024 (checked against the fixture's dates)."""
    rows = col.store.scan(["source", "taken_at"]).to_pylist()
    got = {r["source"] for r in rows
           if r["taken_at"] and (r["taken_at"].year, r["taken_at"].month) == (2024, 8)}
    assert got == {str(lib / n) for n in [*VIDEOS, *PDFS, *IMAGES] if n.startswith("aug")}
    return got


def _pages_of(names) -> set[tuple[str, int]]:
    return {(n, p) for n in names for p in range(1, PDFS[n][1] + 1)}


def test_unfiltered_the_query_finds_what_was_made_outside_august(dated):
    """The filters below must change what ranks first: unfiltered, the query's own videos and
    pages (made outside August) come first."""
    col, lib = dated
    assert col.search(QUERY, k=1, kind="video")[0].source in {str(lib / n) for n in VIDEOS if "old" in n}
    assert Path(col.search(QUERY, k=1, kind="doc")[0].source).name == "old.pdf"


def test_filtered_moments_come_from_every_matching_video_and_no_other(dated):
    col, lib = dated
    august = _in_august(col, lib)
    moments = col.moments(QUERY, k=10, **AUGUST)
    assert moments and {h.source for h in moments} == {str(lib / n) for n in VIDEOS if "aug" in n}
    assert all(h.kind == "moment" and h.t_end > h.t_start for h in moments)
    assert all(h.source in august and h.extra["taken_at"].startswith("2024-08") for h in moments)
    assert col.moments(QUERY, k=10, after="2030") == []


def test_filtered_videos_are_k_of_the_matching_ones(dated):
    col, lib = dated
    videos = col.search(QUERY, k=5, kind="video", **AUGUST)
    assert sorted(Path(h.source).name for h in videos) == ["aug_blue.mp4", "aug_green.mp4"]
    one = col.search(QUERY, k=1, kind="video", **AUGUST)
    assert len(one) == 1 and Path(one[0].source).name.startswith("aug")
    early = col.search(QUERY, k=5, kind="video", before="2023-04")
    assert [Path(h.source).name for h in early] == ["old_red.mp4"]


@pytest.mark.parametrize("order", ["date", "-date"])
def test_videos_and_pages_sort_by_date(dated, order):
    col, _ = dated
    videos = [Path(h.source).name for h in col.search(QUERY, k=4, kind="video", sort=order)]
    by_date = sorted(VIDEOS, key=lambda n: VIDEOS[n][0], reverse=order == "-date")
    assert videos == by_date
    pages = col.search(QUERY, k=7, kind="doc", sort=order)
    stamps = [h.extra["taken_at"] for h in pages]
    assert len(pages) == 7 and stamps == sorted(stamps, reverse=order == "-date")


def test_filtered_document_search_returns_exactly_the_matching_pages(dated):
    """Every page of the August PDFs when k covers them, none of the other PDF, even for a word
    only that PDF holds (the keyword ranking is prefiltered too)."""
    col, _ = dated
    for query in (QUERY, "zebracrossing"):
        hits = col.search(query, k=20, kind="doc", **AUGUST)
        assert {(Path(h.source).name, h.page) for h in hits} == _pages_of(["aug.pdf", "aug2.pdf"])
    top = col.search("quarterly", k=2, kind="doc", after="2024-08-01", format="pdf")
    assert len(top) == 2 and {Path(h.source).name for h in top} <= {"aug.pdf", "aug2.pdf"}
    assert all(h.extra.get("pages") == PDFS[Path(h.source).name][1] for h in top)
    old = col.search("quarterly", k=20, kind="doc", before="2023")
    assert {(Path(h.source).name, h.page) for h in old} == _pages_of(["old.pdf"])


def test_search_over_all_kinds_keeps_only_the_matching_files(dated):
    col, lib = dated
    august = _in_august(col, lib)
    for query in (QUERY, "zebracrossing"):
        hits = col.search(query, k=30, **AUGUST)
        # one hit per video, per page, per image: k covers them all
        got = {(Path(h.source).name, h.page) for h in hits}
        assert got == {("aug_blue.mp4", None), ("aug_green.mp4", None), ("aug.png", None),
                       *_pages_of(["aug.pdf", "aug2.pdf"])}
        assert all(h.source in august for h in hits)
    for hybrid in (False, True):
        assert {h.source for h in col.search("old", k=30, hybrid=hybrid, **AUGUST)} <= august


def test_cli_filters_moments_and_documents(dated):
    from click.testing import CliRunner

    from clipsearch.cli import main

    col, lib = dated
    base = ["search", QUERY, "--db", str(col.path), "--after", "2024-08", "--before", "2024-08",
            "--json", "--device", "cpu"]
    out = CliRunner().invoke(main, [*base, "--moments"])
    assert out.exit_code == 0, out.output
    moments = json.loads(out.output)
    assert moments and {Path(h["source"]).name for h in moments} == {"aug_blue.mp4", "aug_green.mp4"}
    assert all(h["taken_at"].startswith("2024-08") for h in moments)
    out = CliRunner().invoke(main, [*base, "--kind", "doc", "-k", "20"])
    assert out.exit_code == 0, out.output
    assert {(Path(h["source"]).name, h["page"]) for h in json.loads(out.output)} == _pages_of(
        ["aug.pdf", "aug2.pdf"])
    text = CliRunner().invoke(main, ["search", QUERY, "--db", str(col.path), "--kind", "video",
                                     "--before", "2023-04", "--device", "cpu"])
    assert text.exit_code == 0 and "old_red.mp4" in text.output and "2023-03-01" in text.output


def test_http_filters_moments_videos_and_pages(dated):
    from clipsearch.ui.api import SearchService, rest_router
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    col, _ = dated
    app = FastAPI()
    app.include_router(rest_router(SearchService(col.path, device="cpu")))
    client = TestClient(app)

    def names(path: str, **params) -> set:
        r = client.get(path, params={"q": QUERY, "min_relevance": "off", **params})
        assert r.status_code == 200, r.text
        return {(Path(h["source"]).name, h.get("page")) for h in r.json()["hits"]}

    videos = {("aug_blue.mp4", None), ("aug_green.mp4", None)}
    assert names("/api/moments", k=10, **AUGUST) == videos
    assert names("/api/search", kind="moment", k=10, **AUGUST) == videos
    assert names("/api/search", kind="video", k=10, **AUGUST) == videos
    assert names("/api/search", kind="doc", k=20, **AUGUST) == _pages_of(["aug.pdf", "aug2.pdf"])
    assert names("/api/moments", after="2030") == set()
    bad = client.get("/api/moments", params={"q": QUERY, "where": "nosuch = 1"})
    assert bad.status_code == 400 and "--where" in bad.json()["error"]
