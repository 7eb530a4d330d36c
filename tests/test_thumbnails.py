"""Thumbnails are named relative to the collection, so a collection copied or moved elsewhere
still shows them (through the HTTP API too); older absolute names still resolve and are
rewritten; thumbnails no row names are swept away."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from support import ServerThread, tiny_model_args, write_pdf, write_segments_video, write_shapes

from clipsearch import thumbs
from clipsearch.collection import Collection

httpx = pytest.importorskip("httpx")
OLD = time.time() - 2 * thumbs.SWEEP_MIN_AGE  # an mtime the sweep takes as settled


@pytest.fixture
def library(tmp_path) -> Path:
    lib = tmp_path / "lib"
    write_shapes(lib / "pics", per_class=1)
    (lib / "media").mkdir(parents=True)
    write_segments_video(lib / "media" / "clip.mp4")
    write_pdf(lib / "media" / "report.pdf")
    return lib


def _build(db: Path, lib: Path) -> Collection:
    col = Collection.create(db, device="cpu", **tiny_model_args())
    col.add([lib], workers=2)
    return col


def _thumb_column(col: Collection) -> list[str]:
    return col.store.thumb_column()


def test_rows_name_thumbnails_relative_to_the_collection(tmp_path, library) -> None:
    col = _build(tmp_path / "db", library)
    named = _thumb_column(col)
    assert named and all(t.startswith("thumbs/") and not os.path.isabs(t) for t in named)
    assert all((col.path / t).is_file() for t in named)
    hits = col.search(text="a red circle", k=5, kind="video") + col.search(text="a red star", k=3, kind="doc")
    assert hits and all(h.thumb and os.path.isabs(h.thumb) and Path(h.thumb).is_file() for h in hits)


def test_a_collection_moved_elsewhere_serves_its_thumbnails(tmp_path, library) -> None:
    from clipsearch.ui.server import build_app

    old = tmp_path / "first" / "db"
    _build(old, library)
    new = tmp_path / "second" / "place"
    shutil.copytree(old, new)
    shutil.rmtree(old.parent)
    col = Collection.open(new, device="cpu")
    for kind in ("video", "doc"):
        hit = col.search(text="a red star", k=1, kind=kind)[0]
        assert hit.thumb and Path(hit.thumb).is_file() and Path(hit.thumb).parent == new / "thumbs"
    with ServerThread(build_app(new, device="cpu")) as srv:
        for kind in ("video", "doc"):
            res = httpx.get(srv.url + "/api/search", params={"q": "a red star", "k": 1, "kind": kind,
                                                                     "min_relevance": "off"},
                            timeout=120).json()
            url = res["hits"][0]["thumb_url"]
            assert url and url.startswith("/files/thumb/"), res
            r = httpx.get(srv.url + url, timeout=60)
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
            assert r.content[:2] == b"\xff\xd8"


def test_absolute_names_of_an_older_collection_resolve_and_are_rewritten(tmp_path, library) -> None:
    from clipsearch.ui.api import SearchService

    col = _build(tmp_path / "db", library)
    col.store.table.update(where="thumb IS NOT NULL", values_sql={"thumb": "concat('/gone/db/', thumb)"})
    assert all(t.startswith("/gone/db/thumbs/") for t in _thumb_column(col))
    col = Collection.open(col.path, device="cpu")
    hit = col.search(text="a red star", k=1, kind="doc")[0]
    assert hit.thumb == str(col.path / "thumbs" / os.path.basename(hit.thumb)) and Path(hit.thumb).is_file()
    service = SearchService(col.path, device="cpu", collection=col)
    row_id = col.store.scan(["id"], "thumb IS NOT NULL").column("id")[0].as_py()
    assert Path(service.item_thumb(row_id)).parent == (col.path / "thumbs").resolve()
    before = col.store.version
    col.add()  # nothing changed on disk: the rewrite is the run's one commit to the table
    assert all(t.startswith("thumbs/") for t in _thumb_column(col))
    assert col.store.version > before


def test_thumbnails_no_row_names_are_swept(tmp_path, library) -> None:
    col = _build(tmp_path / "db", library)
    video = library / "media" / "clip.mp4"
    mine = col.store.thumbs_of([os.fsencode(video)])
    assert mine and all((col.path / t).is_file() for t in mine)
    stray, fresh = col.thumb_dir / "stray.jpg", col.thumb_dir / "fresh.jpg"
    stray.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stray, (OLD, OLD))
    video.unlink()
    report = col.add()
    assert report.removed == 1
    assert not any((col.path / t).exists() for t in mine)
    assert not stray.exists() and fresh.exists()  # a young file may be a writer's before its commit
    left = {p.name for p in col.thumb_dir.iterdir()} - {"fresh.jpg"}
    assert left == {os.path.basename(t) for t in _thumb_column(col)}


def test_sweep_keeps_named_and_young_files(tmp_path) -> None:
    folder = tmp_path / thumbs.FOLDER
    folder.mkdir()
    for name in ("named.jpg", "old.jpg", "young.jpg"):
        (folder / name).write_bytes(b"x")
    for name in ("named.jpg", "old.jpg"):
        os.utime(folder / name, (OLD, OLD))
    (folder / "sub").mkdir()
    assert thumbs.sweep(tmp_path, ["thumbs/named.jpg", None]) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["named.jpg", "sub", "young.jpg"]
    assert thumbs.sweep(tmp_path / "nowhere", []) == 0


@pytest.mark.parametrize("planted", ["thumbs/../clipsearch.json", "thumbs/../../secret.txt",
                                     "/elsewhere/thumbs/../../secret.txt", "../secret.txt"])
def test_a_tampered_thumbnail_name_serves_nothing_outside_the_thumbnails(tmp_path, library,
                                                                         planted) -> None:
    """An attacker who can write the table (a shared or restored collection) names a file
    outside the thumbnail cache, relative or absolute: through real HTTP, no hit links to it
    and no /files/thumb URL serves its bytes."""
    from clipsearch.ui.server import build_app

    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-THUMB-9c1e")
    col = _build(tmp_path / "db", library)
    col.store.table.update(where="thumb IS NOT NULL", values={"thumb": planted})
    meta_bytes = (col.path / "clipsearch.json").read_bytes()
    probed = 0
    with ServerThread(build_app(col.path, device="cpu")) as srv:
        for kind in ("video", "doc"):
            res = httpx.get(srv.url + "/api/search", params={"q": "a red star", "k": 3, "kind": kind,
                                                                     "min_relevance": "off"},
                            timeout=120)
            assert res.status_code == 200
            hits = res.json()["hits"]
            assert hits
            for hit in hits:
                url = hit.get("thumb_url")
                if not url:
                    continue
                r = httpx.get(srv.url + url, timeout=60)
                assert r.status_code in (403, 404), (planted, url, r.status_code)
                assert b"TOP-SECRET" not in r.content and r.content != meta_bytes
                probed += 1
    assert probed  # the hits did link their (planted) thumbnails: the refusal was exercised
