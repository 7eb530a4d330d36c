"""`Collection.reload_meta`: a long-lived reader (the HTTP server, `serve --watch`, a watcher)
takes the clipsearch.json another process saved (roots, walk options, last run) without
reopening, whole or not at all."""

from __future__ import annotations

import json
import logging
import os

import pytest
from support import build_collection, tiny_model_args, write_shapes

from clipsearch.collection import Collection


@pytest.fixture
def two_folders(tmp_path):
    """(collection indexed from folder a, folder a, folder b not indexed yet)."""
    tiny_model_args()
    a, b = tmp_path / "a", tmp_path / "b"
    write_shapes(a, per_class=1, size=64)
    write_shapes(b, per_class=1, size=64, seed=11)
    return build_collection(tmp_path / "db", [a]), a, b


def test_a_reader_takes_roots_and_options_another_process_saved(two_folders):
    col, a, b = two_folders
    reader = Collection.open(col.path, device="cpu")
    assert reader.roots == [os.path.realpath(a)] and not reader.reload_meta()
    before = reader.meta

    other = Collection.open(col.path, device="cpu")
    other.add([b])
    other.set_scan_options(exclude=["*.tmp"])

    assert reader.reload_meta()
    assert reader.roots == sorted([os.path.realpath(a), os.path.realpath(b)])
    assert reader.scan_options()["excludes"] == ["*.tmp"]
    assert reader.meta["last_run"]["summary"].startswith("indexed 12 files")
    assert before["roots"] == [os.path.realpath(a)]  # swapped whole, not edited in place
    assert not reader.reload_meta()  # nothing new since


def test_damaged_or_foreign_metadata_is_not_taken(two_folders, caplog):
    col, a, _ = two_folders
    reader = Collection.open(col.path, device="cpu")
    meta_file = col.path / "clipsearch.json"
    good = json.loads(meta_file.read_text())

    meta_file.write_text('{"roots": ["/elsewhere"')  # cut short
    with caplog.at_level(logging.WARNING):
        assert not reader.reload_meta()
    assert reader.roots == [os.path.realpath(a)]
    assert "clipsearch.json changed but is not taken" in caplog.text

    meta_file.write_text(json.dumps({**good, "model_id": "another-model", "roots": ["/elsewhere"]}))
    assert not reader.reload_meta()
    assert reader.roots == [os.path.realpath(a)] and reader.meta["model_id"] == good["model_id"]


def test_a_long_lived_writer_does_not_bring_back_a_root_removed_elsewhere(two_folders):
    """A watcher's Collection stays open for days; `clipsearch remove` in another process
    drops a root meanwhile. The writer's next run (under the writer lock) starts from the
    saved metadata, so it neither re-indexes nor re-saves the dropped root."""
    col, a, b = two_folders
    col.add([b])
    assert len(col.roots) == 2
    other = Collection.open(col.path, device="cpu")
    assert other.remove([b]) == 12

    report = col.add()  # every saved root
    assert report.indexed == 0 and col.roots == [os.path.realpath(a)]
    assert json.loads((col.path / "clipsearch.json").read_text())["roots"] == [os.path.realpath(a)]
    assert not any(s.startswith(os.fsencode(os.path.realpath(b))) for s in col.store.file_states())


def test_the_server_shows_roots_indexed_by_another_process(two_folders):
    pytest.importorskip("fastapi")
    from clipsearch.ui.api import SearchService

    col, a, b = two_folders
    service = SearchService(col.path, device="cpu")
    assert service.info()["roots"] == [os.path.realpath(a)]
    Collection.open(col.path, device="cpu").add([b])
    assert service.roots() == sorted([os.path.realpath(a), os.path.realpath(b)])
    info = service.info()
    assert info["roots"] == service.roots() and info["items"] == 24
    assert service.guard.source_allowed(os.fsencode(os.path.realpath(next(b.iterdir()))))
