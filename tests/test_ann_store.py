"""Unit tests for the store (atomic replace, file states) and the FAISS accelerator (IVF, filters)."""

from __future__ import annotations

import numpy as np
import pytest

from clipsearch.ann import AnnIndex, build_faiss
from clipsearch.records import Record
from clipsearch.store import SourceRows, Store

DIM = 16


def _unit(rng, n):
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _rows(path: bytes, vecs, kind="image", h="h"):
    return SourceRows(path, 1.0, 10, h, [Record(kind=kind, vector=v, t_start=float(i) if kind != "image"
                                                else None) for i, v in enumerate(vecs)])


def test_replace_sources_is_exact_and_float16(tmp_path):
    rng = np.random.default_rng(0)
    store = Store(tmp_path, DIM)
    store.replace_sources([_rows(b"/a/v.mp4", _unit(rng, 5), "video_frame"),
                           _rows(b"/a/x.jpg", _unit(rng, 1))])
    assert store.count() == 6
    store.replace_sources([_rows(b"/a/v.mp4", _unit(rng, 2), "video_frame", h="h2")])  # shorter video
    assert store.count("source = '/a/v.mp4'") == 2 and store.count() == 3
    assert store.file_states()[b"/a/v.mp4"].content_hash == "h2"
    assert store.table.schema.field("vector").type.value_type == "halffloat"
    store.delete_sources([b"/a/v.mp4"])
    assert set(store.file_states()) == {b"/a/x.jpg"}


def test_quotes_in_paths(tmp_path):
    store = Store(tmp_path, DIM)
    store.replace_sources([_rows(b"/it's/a'b.jpg", _unit(np.random.default_rng(1), 1))])
    store.replace_sources([_rows(b"/it's/a'b.jpg", _unit(np.random.default_rng(2), 1))])
    assert store.count() == 1


def test_ivf_recall_on_clustered_data():
    rng = np.random.default_rng(3)
    centres = _unit(rng, 50)
    data = centres[rng.integers(0, 50, 4000)] + 0.15 * rng.normal(size=(4000, DIM)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = data[rng.choice(4000, 50, replace=False)]
    exact = build_faiss(data, exact_threshold=10**9)
    approx = build_faiss(data, exact_threshold=1000)
    assert type(approx).__name__ != type(exact).__name__
    _, gt = exact.search(queries, 10)
    _, got = approx.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(gt, got, strict=True)])
    assert recall >= 0.9


@pytest.fixture
def ann(tmp_path):
    rng = np.random.default_rng(4)
    store = Store(tmp_path, DIM)
    store.replace_sources([_rows(b"/p/a/1.jpg", _unit(rng, 1)), _rows(b"/p/b/2.jpg", _unit(rng, 1)),
                           _rows(b"/p/a/v.mp4", _unit(rng, 4), "video_frame")])
    return store, AnnIndex.build(store)


def test_filters_by_kind_and_folder(ann):
    store, idx = ann
    q = np.ones(DIM, np.float32) / np.sqrt(DIM)
    kinds = {idx.kinds[list(idx.ids).index(i)] for i, _ in idx.search(q, 10, kinds=("image",))[0]}
    assert kinds == {"image"}
    under = idx.search(q, 10, under="/p/a")[0]
    assert len(under) == 5
    assert all(idx.sources[list(idx.ids).index(i)].startswith("/p/a/") for i, _ in under)
    assert idx.search(q, 10, under="/p/ab")[0] == []  # a prefix of a name is not a folder


def test_save_load_roundtrip(ann, tmp_path):
    store, idx = ann
    idx.save(tmp_path / "ann")
    loaded = AnnIndex.load(tmp_path / "ann")
    q = np.ones(DIM, np.float32) / np.sqrt(DIM)
    assert loaded.version == store.version
    assert loaded.search(q, 3) == idx.search(q, 3)
    assert AnnIndex.load(tmp_path / "missing") is None
