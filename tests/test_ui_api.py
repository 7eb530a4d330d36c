"""HTTP API: plain REST and the named Gradio endpoints, over a served sample collection."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support import (
    PDF_PAGES,
    QUERY_TARGETS,
    SEGMENT_SECONDS,
    VIDEO_SEGMENTS,
    ServerThread,
    build_collection,
)

from clipsearch.tiny.synth.shapes import ShapeSpec, canonical_query, render_shape

httpx = pytest.importorskip("httpx")


def get(server: str, path: str, **params) -> httpx.Response:
    return httpx.get(server + path, params=params, timeout=120)


def test_info_reports_the_collection(server, sample):
    data, db = sample
    info = get(server, "/api/info").json()
    assert info["name"] == data.root.name  # by default: the folder name of the first indexed root
    assert info["kinds"]["image"] == len(data.images) + len(data.dups)
    assert info["kinds"]["video"] == 1
    assert info["pages"] == len(PDF_PAGES) and info["documents"] == 1
    assert info["device"] == "cpu"
    assert str(data.root) in info["roots"]
    table = info["table"]  # what maintenance left: versions kept, fragments (no write action here)
    assert table["versions"] >= 1 and table["fragments"] >= 1 and table["bytes"] > 0
    assert set(info) >= {"transforms", "transforms_fit"}


def test_text_search_finds_the_described_image(server, sample):
    data, _ = sample
    for i in range(len(QUERY_TARGETS)):
        query, expected = data.unique_query(i)
        res = get(server, "/api/search", q=query, k=5, kind="image").json()
        assert res["hits"][0]["source"] == str(expected), query
        assert all(h["kind"] == "image" for h in res["hits"])
        r = httpx.get(server + res["hits"][0]["thumb_url"], timeout=60)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"


def test_offset_pages_through_the_same_ranking(server):
    whole = get(server, "/api/search", q="a shape", k=10, min_relevance="off").json()["hits"]
    first = get(server, "/api/search", q="a shape", k=5, min_relevance="off").json()
    second = get(server, "/api/search", q="a shape", k=5, offset=5, min_relevance="off").json()
    assert first["more"] is True
    assert [h["source"] for h in first["hits"] + second["hits"]] == [h["source"] for h in whole]
    assert [h["rank"] for h in second["hits"]] == list(range(5, 10))


def test_image_upload_returns_near_duplicates_first(server, sample):
    data, _ = sample
    r = httpx.post(server + "/api/search/image", timeout=120, data={"k": "8", "kind": "image"},
                   files={"file": ("query.jpg", data.dup_query, "image/jpeg")})
    assert r.status_code == 200, r.text
    top = [h["source"] for h in r.json()["hits"][: len(data.dups)]]
    assert sorted(top) == sorted(str(p) for p in data.dups)


def test_moments_locate_each_video_segment(server, sample):
    for j, spec in enumerate(VIDEO_SEGMENTS):
        hits = get(server, "/api/moments", q=canonical_query(spec), k=3).json()["hits"]
        assert hits and hits[0]["kind"] == "moment"
        lo, hi = j * SEGMENT_SECONDS, (j + 1) * SEGMENT_SECONDS
        mid = (hits[0]["t_start"] + hits[0]["t_end"]) / 2
        assert lo <= mid <= hi, (spec, hits[0])
        assert hits[0]["media_url"].startswith("/files/item/")


def test_document_search_names_the_page(server, sample):
    for j, spec in enumerate(PDF_PAGES):
        hits = get(server, "/api/search", q=canonical_query(spec), k=3, kind="doc").json()["hits"]
        assert hits[0]["page"] == j + 1 and hits[0]["kind"] == "doc"
        assert hits[0]["thumb_url"].startswith("/files/thumb/")


def test_bad_requests_get_clear_errors(server):
    r = get(server, "/api/search", q="  ")
    assert r.status_code == 400 and r.json()["hint"]
    r = get(server, "/api/search", q="a star", kind="sculpture")
    assert r.status_code == 400 and "unknown kind" in r.json()["error"]
    r = get(server, "/api/search", q="a star", k=0)
    assert r.status_code == 400
    r = get(server, "/api/search", q="a star", under="/nowhere/at/all")
    assert r.status_code == 200 and r.json()["hits"] == [] and "Nothing matched" in r.json()["message"]


def test_gradio_client_named_endpoints(server, sample):
    from gradio_client import Client, handle_file

    data, _ = sample
    client = Client(server + "/", verbose=False)
    query, expected = data.unique_query(0)
    res = client.predict(q=query, k=3, kind="image", api_name="/search")
    assert res["hits"][0]["source"] == str(expected)
    assert client.predict(api_name="/info")["items"] > 0
    spec = VIDEO_SEGMENTS[1]
    moments = client.predict(q=canonical_query(spec), k=2, api_name="/moments")["hits"]
    assert moments[0]["kind"] == "moment" and moments[0]["t_end"] > moments[0]["t_start"]

    upload = Path(data.root).parent / "client_query.jpg"
    upload.write_bytes(data.dup_query)
    res = client.predict(image=handle_file(str(upload)), q="", k=len(data.dups), kind="image",
                         offset=0, under="", api_name="/search_image")
    assert sorted(h["source"] for h in res["hits"]) == sorted(str(p) for p in data.dups)
    bad = Path(data.root).parent / "not_an_image.png"
    bad.write_text("hello")
    with pytest.raises(Exception, match="not an image"):
        client.predict(image=handle_file(str(bad)), q="", k=3, kind="all", offset=0, under="",
                       api_name="/search_image")


def test_missing_and_empty_collections_answer_politely(tmp_path):
    from clipsearch.ui.server import build_app
    from fastapi.testclient import TestClient
    from support import tiny_model_args

    from clipsearch.collection import Collection

    missing = TestClient(build_app(tmp_path / "nothing-here", device="cpu"), base_url="http://127.0.0.1")
    r = missing.get("/api/info")
    assert r.status_code == 404 and "clipsearch index" in r.json()["hint"]
    assert missing.get("/api/search", params={"q": "x"}).status_code == 404

    Collection.create(tmp_path / "empty", device="cpu", **tiny_model_args())
    empty = TestClient(build_app(tmp_path / "empty", device="cpu"), base_url="http://127.0.0.1")
    r = empty.get("/api/search", params={"q": "a red star"})
    assert r.status_code == 200 and r.json()["hits"] == [] and "empty" in r.json()["message"]


@pytest.mark.slow
def test_server_keeps_answering_while_another_process_indexes(tmp_path):
    """`clipsearch index` in a subprocess adds to a served collection; no restart needed."""
    from clipsearch.ui.server import build_app

    first, later = tmp_path / "first", tmp_path / "later"
    first.mkdir()
    later.mkdir()
    rng = np.random.default_rng(3)
    for shape in ("circle", "square", "triangle"):
        render_shape(ShapeSpec(shape, "black"), rng, size=96, background="plain").save(first / f"{shape}.png")
    new = ShapeSpec("diamond", "white")
    for i in range(12):
        render_shape(ShapeSpec("cross", "red") if i else new, rng, size=96,
                     background="plain").save(later / f"later_{i:02d}.png")
    db = tmp_path / "db"
    build_collection(db, [first])

    env = dict(os.environ, CLIPSEARCH_DB=str(db))
    cmd = [sys.executable, "-m", "clipsearch.cli", "index", str(later), "--db", str(db), "-q",
           "--workers", "1", "--batch-size", "2"]
    with ServerThread(build_app(db, device="cpu")) as srv:
        before = get(srv.url, "/api/info").json()["items"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        answers = 0
        while proc.poll() is None:
            r = get(srv.url, "/api/search", q="a black circle", k=3, min_relevance="off")
            assert r.status_code == 200 and r.json()["hits"]
            answers += 1
            time.sleep(0.2)
        out = proc.stdout.read().decode()
        assert proc.returncode == 0, out
        assert answers >= 1
        info = get(srv.url, "/api/info").json()
        assert info["items"] == before + 12
        assert str(later) in info["roots"]
        hits = get(srv.url, "/api/search", q=canonical_query(new), k=20, kind="image",
                   min_relevance="off").json()["hits"]
        assert any(h["source"] == str(later / "later_00.png") for h in hits)
        new_hit = next(h for h in hits if h["source"].startswith(str(later)))
        assert httpx.get(srv.url + new_hit["media_url"], timeout=60).status_code == 200
