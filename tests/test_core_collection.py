"""Collection API end to end with the bundled model: retrieval quality, incremental updates."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from support import CLASSES, write_shapes

from clipsearch import Collection
from clipsearch.errors import CollectionNotFound, ModelMismatch, UsageError


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("core")
    photos = root / "photos"
    labels = write_shapes(photos)
    col = Collection.create(root / "db", model="clipsearch-tiny", device="cpu")
    report = col.add([photos])
    return col, photos, labels, report


def test_first_run_indexes_every_file(indexed):
    col, photos, labels, report = indexed
    assert report.indexed == len(labels)
    assert report.skipped == []
    info = col.info()
    assert info["items"] == len(labels) and info["sources"] == len(labels)
    assert info["model"] == "clipsearch-tiny" and info["dim"] == col.encoder.dim


def test_text_to_image_precision(indexed):
    col, _, labels, _ = indexed
    precisions = []
    for color, shape in CLASSES:
        hits = col.search(text=f"a {color} {shape}", k=4, kind="image")
        good = sum(labels[Path(h.source).name] == f"{color} {shape}" for h in hits)
        precisions.append(good / 4)
    assert np.mean(precisions) >= 0.8, precisions


def test_image_to_image_finds_same_class(indexed):
    col, photos, labels, _ = indexed
    precisions = []
    for color, shape in CLASSES:
        query = photos / f"{color}_{shape}_0.jpg"
        hits = col.search(image=query, k=4)
        assert hits[0].source == str(query) and hits[0].score > 0.99  # itself first
        precisions.append(sum(labels[Path(h.source).name] == f"{color} {shape}" for h in hits[1:]) / 3)
    assert np.mean(precisions) >= 0.5, precisions


def test_scores_are_cosines_sorted(indexed):
    col, *_ = indexed
    hits = col.search(text="a blue square", k=10)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 for s in scores)


def test_paging_is_consistent(indexed):
    col, *_ = indexed
    first = col.search(text="a green circle", k=6)
    page2 = col.search(text="a green circle", k=3, offset=3)
    assert [h.source for h in first[3:]] == [h.source for h in page2]


def test_faiss_matches_lancedb_exact_search(indexed):
    col, *_ = indexed
    vec = col.embed_text("a yellow star")
    faiss_ids = [i for i, _ in col.searcher.ann().search(vec, 10)[0]]
    lance = (col.store.table.search(vec.astype(np.float32)).distance_type("dot").limit(10)
             .select(["id"]).to_arrow())
    assert faiss_ids == lance.column("id").to_pylist()


def test_under_filter(indexed, tmp_path):
    col, photos, *_ = indexed
    hits = col.search(text="a red star", k=5, under=str(photos))
    assert hits and all(h.source.startswith(str(photos)) for h in hits)
    assert col.search(text="a red star", k=5, under=str(tmp_path)) == []


def test_bad_queries_are_usage_errors(indexed):
    col, *_ = indexed
    with pytest.raises(UsageError):
        col.search()
    with pytest.raises(UsageError):
        col.search(text="   ")
    with pytest.raises(UsageError):
        col.search(image="/nonexistent/q.jpg")
    with pytest.raises(UsageError):
        col.search(text="x", kind="nonsense")


def test_open_with_other_model_is_refused(indexed):
    col, *_ = indexed
    with pytest.raises(ModelMismatch):
        Collection.open(col.path, model="RN50")


def test_open_missing_collection(tmp_path):
    with pytest.raises(CollectionNotFound):
        Collection.open(tmp_path / "nothing")


def test_incremental_update(tmp_path):
    photos = tmp_path / "photos"
    labels = write_shapes(photos, per_class=1)
    col = Collection.create(tmp_path / "db", model="clipsearch-tiny", device="cpu")
    col.add([photos])
    n = len(labels)

    again = col.add([photos])
    assert (again.indexed, again.unchanged, again.removed) == (0, n, 0)

    # touched but identical content: re-hashed, not re-embedded
    os.utime(photos / "red_star_0.jpg", (1, 1))
    touched = col.add([photos])
    assert (touched.indexed, touched.unchanged) == (0, n)

    # changed content (now a byte copy of another photo): re-embedded, still one row
    shutil.copy(photos / "blue_circle_0.jpg", photos / "red_star_0.jpg")
    changed = col.add([photos])
    assert changed.indexed == 1 and changed.unchanged == n - 1
    hit = col.search(image=photos / "blue_circle_0.jpg", k=2)
    assert {Path(h.source).name for h in hit} == {"blue_circle_0.jpg", "red_star_0.jpg"}
    assert min(h.score for h in hit) > 0.999

    # deleted and new files
    (photos / "green_square_0.jpg").unlink()
    shutil.copy(photos / "yellow_star_0.jpg", photos / "copy.jpg")
    last = col.add([photos])
    assert (last.indexed, last.removed) == (1, 1)
    assert col.info()["items"] == n
    assert len(col.search(text="a green square", k=50, kind="image")) == n


def test_files_outside_the_run_roots_are_kept(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_shapes(a, per_class=1, seed=1)
    write_shapes(b, per_class=1, seed=2)
    col = Collection.create(tmp_path / "db", model="clipsearch-tiny", device="cpu")
    col.add([a, b])
    report = col.add([a])
    assert report.removed == 0
    assert col.info()["sources"] == 2 * len(CLASSES)


def test_adding_photos_does_not_rebuild_the_video_shards(tmp_path):
    """After an index run only the kinds whose files changed are re-indexed by FAISS: new photos
    rebuild the image shard, while the video shards are taken over, in this process and in a new one."""
    from support import solid, write_video

    photos = tmp_path / "media"
    labels = write_shapes(photos, per_class=1)
    write_video(photos / "clip.mp4", range(0, 4000, 40), lambda p: solid((200, 30, 30) if p < 2000
                                                                          else (30, 30, 200), seed=p))
    col = Collection.create(tmp_path / "db", model="clipsearch-tiny", device="cpu")
    col.add([photos])
    before = dict(col.searcher.ann().shards)
    assert {"image", "video_frame", "video_window"} <= set(before)
    shutil.copy(photos / "red_star_0.jpg", photos / "new.jpg")
    report = col.add([photos])
    assert report.indexed == 1
    after = col.searcher.ann().shards
    video_kinds = [k for k in before if k.startswith("video")]
    assert all(after[k] is before[k] for k in video_kinds)
    assert after["image"] is not before["image"] and len(after["image"]) == len(labels) + 1
    hits = col.search(image=photos / "new.jpg", k=2, kind="image")
    assert {Path(h.source).name for h in hits} == {"new.jpg", "red_star_0.jpg"}
    # a new process (only the saved index on disk): the video shards' files are taken over
    # (hard-linked into the new version, same inode), the image shard's file is new
    inodes = {k: after[k].saved.stat().st_ino for k in after}
    (photos / "new.jpg").unlink()
    fresh = Collection.open(tmp_path / "db", device="cpu")
    assert fresh.add([photos]).removed == 1
    shards = fresh.searcher.ann().shards
    assert all(shards[k].saved.stat().st_ino == inodes[k] for k in video_kinds)
    assert shards["image"].saved.stat().st_ino != inodes["image"]
    assert len(shards["image"]) == len(labels)
