"""Browsing without a query by topic: clusters of clipsearch-tiny shapes are pure (their items
share a colour) and labelled with the colour they share; the topics persist per table version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from clipsearch import Collection, browse_topics
from clipsearch.browse_vocabulary import VOCABULARY, collection_words, words_of
from clipsearch.errors import UsageError
from clipsearch.model_registry import tiny_files
from clipsearch.tiny.synth.shapes import SHAPES, ShapeSpec, render_shape

pytestmark = pytest.mark.skipif(not all(p.is_file() for p in tiny_files()),
                                reason="clipsearch-tiny is not installed")
COLOURS = ("red", "green", "blue", "yellow")
PER_COLOUR = 16  # 64 items: 4 topics (about sqrt(n) / 2)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """(collection, {file name: its spec}) of shapes in four colours, random shape each."""
    root = tmp_path_factory.mktemp("topics")
    rng = np.random.default_rng(5)
    lib = root / "lib"
    lib.mkdir()
    specs: dict[str, ShapeSpec] = {}
    for colour in COLOURS:
        for _ in range(PER_COLOUR):
            spec = ShapeSpec(SHAPES[int(rng.integers(len(SHAPES)))], colour, None, None)
            name = f"item{len(specs):03d}.png"
            render_shape(spec, rng, size=96).save(lib / name)
            specs[name] = spec
    col = Collection.create(root / "db", model="clipsearch-tiny", device="cpu")
    col.add([lib], workers=2)
    return col, specs


def _members(col, topic) -> list[str]:
    return [Path(h.source).name for h in col.browse_topic(topic.id, k=1000)]


def test_topics_are_pure_and_named_for_their_colour(shapes):
    col, specs = shapes
    topics = col.browse_topics()
    assert len(topics) == browse_topics.topic_count(len(specs)) == len(COLOURS)
    assert [t.id for t in topics] == list(range(len(topics)))
    assert [t.size for t in topics] == sorted((t.size for t in topics), reverse=True)
    assert sum(t.size for t in topics) == len(specs)  # every item in exactly one topic
    agree = named = 0
    for t in topics:
        names = _members(col, t)
        assert len(names) == t.size == len(set(names))
        colour, n = Counter(specs[n].color for n in names).most_common(1)[0]
        agree += n  # items sharing their topic's colour
        named += colour in t.words
        assert len(t.words) == 3 and t.label == ", ".join(t.words)
    # random topics would share a colour with about a third of their items
    assert agree >= 0.75 * len(specs) and named >= 3, [(t.label, t.size) for t in topics]


def test_topic_items_page_and_examples(shapes):
    col, _ = shapes
    topic = col.browse_topics()[0]
    everything = col.browse_topic(topic.id, k=1000)
    assert [h.id for h in everything[:len(topic.examples)]] == list(topic.examples)
    scores = [h.score for h in everything]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1.0001
    assert all(h.extra["topic"] == topic.id and h.extra["topic_label"] == topic.label for h in everything)
    pages = [h.id for p in range(0, topic.size // 5 + 1) for h in col.browse_topic(topic.id, p, k=5)]
    assert pages == [h.id for h in everything]
    assert col.browse_topic(topic.id, 1000, k=5) == []
    assert [h.id for h in col.items(list(topic.examples))] == list(topic.examples)
    with pytest.raises(UsageError, match="no topic 99"):
        col.browse_topic(99)
    with pytest.raises(UsageError, match="k must be positive"):
        col.browse_topic(0, k=0)
    with pytest.raises(UsageError, match="kind 'moment'"):
        col.browse_topics(kind="moment")
    assert col.browse_topics(kind="video") == []


def test_topics_persist_and_heal(shapes, monkeypatch, caplog):
    col, _ = shapes
    first = col.browse_topics()
    path = next(col.path.glob("topics.image+*.npz"))
    assert (col.path / "topics.vocabulary.npz").is_file()
    browse_topics._cache.clear()

    def no_clustering(*a, **kw):
        raise AssertionError("the persisted topics should have been read")

    monkeypatch.setattr(browse_topics, "cluster", no_clustering)
    assert Collection.open(col.path, device="cpu").browse_topics() == first
    monkeypatch.undo()
    path.write_bytes(b"not an npz at all")
    browse_topics._cache.clear()
    with caplog.at_level("WARNING", logger="clipsearch.browse_topics"):
        assert Collection.open(col.path, device="cpu").browse_topics() == first  # same seed, same topics
    assert "unreadable" in caplog.text
    assert np.load(path)["offsets"][-1] == sum(t.size for t in first)  # written again, whole


def test_topics_follow_new_items(shapes, tmp_path):
    col, specs = shapes
    rng = np.random.default_rng(11)
    extra = tmp_path / "more"
    extra.mkdir()
    render_shape(ShapeSpec("circle", "red", None, None), rng, size=96).save(extra / "new.png")
    col.add([extra])
    try:
        topics = col.browse_topics()
        assert sum(t.size for t in topics) == len(specs) + 1
        assert any(str(extra / "new.png") in {h.source for h in col.browse_topic(t.id, k=1000)}
                   for t in topics)
    finally:
        col.remove([str(extra / "new.png")])
    assert sum(t.size for t in col.browse_topics()) == len(specs)


def test_collection_words_are_claimed_by_the_topics_that_hold_them():
    assert words_of("IMG_2041_beachHoliday-final.jpg") == ["beach", "holiday"]
    assert collection_words([{"tomato", "beach"}, {"tomato"}, {"beach"}, {"once"}]) == ["tomato"]
    assert set(collection_words([{"circle"}, {"circle"}])) == set()  # already in the vocabulary
    assert "circle" in VOCABULARY and "red" in VOCABULARY
    by_source = {f"r{i}": frozenset({"tomato"}) for i in range(5)} | {f"b{i}": frozenset() for i in range(5)}
    claim = browse_topics.claimed([[f"r{i}" for i in range(5)], [f"b{i}" for i in range(5)]],
                                  ["tomato"], by_source)
    assert claim.tolist() == [[True], [False]]


def test_labels_say_what_sets_a_topic_apart():
    """A word every centre matches alike loses to one that matches this centre more."""
    centres = np.eye(3, dtype=np.float32)
    words = ["generic", "first", "second"]
    vectors = np.array([[0.7, 0.7, 0.7], [0.6, 0.0, 0.0], [0.0, 0.6, 0.0]], np.float32)
    labels = browse_topics.label_words(centres, words, vectors, n=1)
    assert labels[0] == ("first",) and labels[1] == ("second",)


def test_cli_browse_by_topics(shapes):
    col, _ = shapes
    env = {**os.environ, "CLIPSEARCH_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "clipsearch.cli", "browse", "--db", str(col.path), "--by", "topics"]
    p = subprocess.run([*cmd, "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    topics = json.loads(p.stdout)
    assert [t["id"] for t in topics] == [t.id for t in col.browse_topics()]
    assert [t["label"] for t in topics] == [t.label for t in col.browse_topics()]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    first = p.stdout.splitlines()[0].split()
    assert first[:3] == ["0", str(topics[0]["size"]), "items"]
    p = subprocess.run([*cmd, "--topic", "1", "-k", "3", "--json"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert [h["id"] for h in json.loads(p.stdout)] == [h.id for h in col.browse_topic(1, k=3)]
    p = subprocess.run([*cmd[:-2], "--topic", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode != 0 and "--topic needs --by topics" in p.stderr


def test_http_browse_by_topics(shapes):
    from clipsearch.ui.api import SearchService, rest_router
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    col, _ = shapes
    app = FastAPI()
    app.include_router(rest_router(SearchService(col.path, device="cpu")))
    client = TestClient(app)
    r = client.get("/api/browse", params={"by": "topics"})
    assert r.status_code == 200, r.text
    topics = r.json()["topics"]
    assert [(t["label"], t["size"]) for t in topics] == [(t.label, t.size) for t in col.browse_topics()]
    assert all(e["thumb_url"] and e["media_url"] for t in topics for e in t["examples"])
    assert [e["id"] for e in topics[0]["examples"]] == list(col.browse_topics()[0].examples)
    r = client.get("/api/browse", params={"by": "topics", "topic": 0, "k": 4, "page": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [h["id"] for h in body["hits"]] == [h.id for h in col.browse_topic(0, 1, k=4)]
    assert body["topic"]["label"] == topics[0]["label"] and body["more"]
    bad = client.get("/api/browse", params={"by": "topics", "topic": 999})
    assert bad.status_code == 400 and "hint" in bad.json()
    bad = client.get("/api/browse", params={"by": "date", "topic": 0})
    assert bad.status_code == 400


def test_one_item_per_video_and_per_page():
    import pyarrow as pa

    kinds = pa.array(["video_frame", "video_frame", "doc_page", "doc_page", "doc_page", "image", "image"])
    ids = pa.array([f"{i:032x}" for i in range(7)])
    sources = pa.array(["/v.mp4", "/v.mp4", "/d.pdf", "/d.pdf", "/d.pdf", "/a.jpg", "/b.jpg"])
    pages = pa.array([None, None, 1, 1, 2, None, None], pa.int32())
    codes = browse_topics.group_codes(kinds, ids, sources, pages)
    assert codes[0] == codes[1] and codes[2] == codes[3] != codes[4] and codes[5] != codes[6]
    assert len(set(codes.tolist())) == 5
    rows = np.array([3, 1, 0, 2, 6, 4])  # ordered by closeness
    assert browse_topics.first_of_each(rows, codes).tolist() == [3, 1, 6, 4]
