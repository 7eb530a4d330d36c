"""Unit tests for the store (atomic replace, file states) and the FAISS accelerator (IVF, filters)."""

from __future__ import annotations

import faiss
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
    def column(ids, name):
        return store.rows_by_id([i for i, _ in ids]).column(name).to_pylist()

    images = idx.search(q, 10, kinds=("image",))[0]
    assert len(images) == 2 and set(column(images, "kind")) == {"image"}
    frames_and_images = idx.search(q, 10, kinds=("image", "video_frame"))[0]
    assert len(frames_and_images) == 6
    assert [s for _, s in frames_and_images] == sorted((s for _, s in frames_and_images), reverse=True)
    under = idx.search(q, 10, under="/p/a")[0]
    assert len(under) == 5
    assert all(s.startswith("/p/a/") for s in column(under, "source"))
    assert idx.search(q, 10, under="/p/ab")[0] == []  # a prefix of a name is not a folder


def test_save_load_roundtrip(ann, tmp_path):
    store, idx = ann
    idx.save(tmp_path / "ann")
    loaded = AnnIndex.load(tmp_path / "ann")
    q = np.ones(DIM, np.float32) / np.sqrt(DIM)
    assert loaded.version == store.version
    assert loaded.search(q, 3) == idx.search(q, 3)
    assert AnnIndex.load(tmp_path / "missing") is None


def test_streaming_build_matches_in_memory_build(tmp_path):
    """A shard built from the table in small batches (k-means on a sample taken by position,
    with other kinds' rows and a deleted source interleaved) equals one built from all vectors
    in memory: same ids, same vectors, same search results."""
    rng = np.random.default_rng(5)
    centres = _unit(rng, 20)
    store = Store(tmp_path, DIM)
    for v in range(12):
        frames = centres[rng.integers(0, 20, 150)] + 0.2 * rng.normal(size=(150, DIM)).astype(np.float32)
        frames /= np.linalg.norm(frames, axis=1, keepdims=True)
        store.replace_sources([_rows(f"/v/{v}.mp4".encode(), frames, "video_window"),
                               _rows(f"/i/{v}.jpg".encode(), _unit(rng, 3))])
    store.delete_sources([b"/v/3.mp4"])
    idx = AnnIndex.build(store, exact_threshold=1000, batch_rows=97)
    assert set(idx.shards) == {"image", "video_window"}
    shard = idx.shards["video_window"]
    assert type(shard.index).__name__ == "IndexRefine" and len(shard) == 11 * 150
    meta, vecs = store.vectors("kind = 'video_window'")
    assert list(shard.ids) == meta.column("id").to_pylist()
    stored = shard.index.refine_index.reconstruct_n(0, len(shard))  # the fp16 copies, exact
    assert np.allclose(stored, vecs, atol=1e-3)
    queries = vecs[rng.choice(len(vecs), 30, replace=False)]
    _, exact = build_faiss(vecs, exact_threshold=10**9).search(queries, 10)
    _, got = shard.index.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, got, strict=True)])
    assert recall >= 0.9
    only = AnnIndex.build(store, kinds=["video_window"])
    assert set(only.shards) == {"video_window"} and len(only) == 11 * 150


def test_an_index_saved_before_shards_is_rebuilt_not_misread(tmp_path):
    """Collections indexed by an older clipsearch have `v{N}/index.faiss` and no shard list:
    load() says "no usable index", so the searcher rebuilds from the table (the truth)."""
    old = tmp_path / "ann" / "v3"
    old.mkdir(parents=True)
    faiss.write_index(faiss.IndexFlatIP(DIM), str(old / "index.faiss"))
    np.savez(old / "meta.npz", ids=np.array([], str), kinds=np.array([], str), sources=np.array([], str))
    (tmp_path / "ann" / "current.json").write_text('{"version": 3}')
    assert AnnIndex.load(tmp_path / "ann") is None


# ---- exact search on the GPU (clipsearch.ann.Shard.matrix), exercised on the CPU -----------------
def test_index_matrix_rebuilds_flat_and_refine_vectors():
    import torch

    from clipsearch.ann import index_matrix

    rng = np.random.default_rng(5)
    data = _unit(rng, 3000).astype(np.float16).astype(np.float32)  # the table stores float16
    for threshold in (10**9, 1000):  # flat, then IVF-PQ fast-scan with its float16 refine copy
        index = build_faiss(data, exact_threshold=threshold)
        m = index_matrix(index, "cpu", torch.float32, chunk=700)
        assert m.shape == data.shape
        assert np.abs(m.numpy() - data).max() < 1e-3, type(index).__name__


def test_matrix_shards_answer_like_faiss(ann, monkeypatch):
    """With every shard held as a matrix (what a CUDA machine gets), the hits, scores, kind and
    folder filters are the same as FAISS's exact search."""
    import torch

    from clipsearch import ann as ann_mod

    store, cpu_idx = ann
    monkeypatch.setattr(ann_mod, "gpu_search_wanted", lambda: True)
    monkeypatch.setattr(ann_mod, "_fits_on_gpu", lambda nbytes, share=0.5: True)
    real = ann_mod.index_matrix
    monkeypatch.setattr(ann_mod, "index_matrix", lambda index, device: real(index, "cpu", torch.float32))
    gpu_idx = AnnIndex.build(store)
    assert all(s.matrix is not None for s in gpu_idx.shards.values())
    assert "exact on GPU" in gpu_idx.describe()
    q = np.random.default_rng(6).normal(size=(3, DIM)).astype(np.float32)
    cases = ({}, {"kinds": ("image",)}, {"under": "/p/a"}, {"under": "/p/ab"},
             {"kinds": ("video_frame",), "under": "/p/b"})
    for kwargs in cases:
        want, got = cpu_idx.search(q, 4, **kwargs), gpu_idx.search(q, 4, **kwargs)
        assert [[i for i, _ in row] for row in got] == [[i for i, _ in row] for row in want], kwargs
        assert np.allclose([[s for _, s in row] for row in got], [[s for _, s in row] for row in want],
                           atol=1e-5), kwargs


def test_faiss_gpu_that_cannot_run_leaves_search_on_cpu(monkeypatch, caplog):
    """faiss-gpu wheels without kernels for the GPU abort the process on first use (seen on an H100),
    so a child process probes first; a failing probe keeps FAISS on the CPU with a warning."""
    from clipsearch import ann as ann_mod

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(ann_mod, "_GPU_PROBE", "import sys; sys.exit('no kernel image is available')")
    ann_mod.gpu_available.cache_clear()
    try:
        with caplog.at_level("WARNING"):
            assert ann_mod.gpu_available() is False
        index = build_faiss(_unit(np.random.default_rng(7), 10))
        assert ann_mod.to_gpu(index) is index
    finally:
        ann_mod.gpu_available.cache_clear()
    assert "no kernel image" in caplog.text and "searches on the CPU" in caplog.text


def test_folder_filter_by_sorted_paths_matches_prefix_test():
    """Shard.positions_under (two binary searches over paths sorted once) selects exactly the rows
    a per-path prefix test selects, for nested, sibling-prefix and non-ASCII folders."""
    from clipsearch.ann import Shard

    rng = np.random.default_rng(8)
    folders = ["/p/a", "/p/ab", "/p/a/b", "/p/a b", "/p/ä", "/p/ä/ö", "/q", "/p/a-", "/p/a/b/c"]
    sources = np.array([f"{folders[i]}/{j}.jpg" for j, i in enumerate(rng.integers(0, len(folders), 500))],
                       dtype=object)
    shard = Shard(build_faiss(_unit(rng, 500)), np.arange(500).astype(str).astype(object), sources)
    for under in folders + ["/p", "/p/", "/nothing", "/p/a/b/c/"]:
        prefix = under.rstrip("/") + "/"
        want = [i for i, s in enumerate(sources) if s.startswith(prefix)]
        assert shard.positions_under(under).tolist() == want, under


# ---- shard reuse: a kind whose rows did not change is not rebuilt ----------------------------------
def _hits(idx, vec, kinds=None):
    return [i for i, _ in idx.search(vec, 3, kinds=kinds)[0]]


def test_unchanged_kinds_keep_their_shards_and_changed_ones_are_rebuilt(tmp_path):
    rng = np.random.default_rng(9)
    store = Store(tmp_path, DIM)
    store.replace_sources([_rows(b"/p/1.jpg", _unit(rng, 1)),
                           _rows(b"/p/v.mp4", _unit(rng, 6), "video_frame")])
    first = AnnIndex.build(store)
    first.save(tmp_path / "ann")
    # a new photo: the image shard is rebuilt and finds it; the video shard is the same object
    new = _unit(rng, 1)
    store.replace_sources([_rows(b"/p/2.jpg", new)])
    second = AnnIndex.build(store, reuse=first)
    assert second.shards["video_frame"] is first.shards["video_frame"]
    assert second.shards["image"] is not first.shards["image"] and len(second.shards["image"]) == 2
    top_id = _hits(second, new[0], ("image",))[0]
    assert store.rows_by_id([top_id]).column("source").to_pylist() == ["/p/2.jpg"]
    # the video changed in place (same path, so the same row ids, new content): rebuilt, new vectors
    moved = _unit(rng, 6)
    store.replace_sources([_rows(b"/p/v.mp4", moved, "video_frame", h="h2")])
    third = AnnIndex.build(store, reuse=second)
    assert third.shards["video_frame"] is not second.shards["video_frame"]
    assert third.shards["image"] is second.shards["image"]
    top = third.search(moved[3], 1, kinds=("video_frame",))[0][0]
    assert top[1] > 0.99
    # a removed video: its kind disappears, nothing stale is served
    store.delete_sources([b"/p/v.mp4"])
    fourth = AnnIndex.build(store, reuse=third)
    assert set(fourth.shards) == {"image"} and fourth.search(moved[3], 5, kinds=("video_frame",))[0] == []


def test_shards_are_reused_from_disk_and_linked_not_rewritten(tmp_path):
    import os

    rng = np.random.default_rng(10)
    store = Store(tmp_path / "db", DIM)
    store.replace_sources([_rows(b"/p/1.jpg", _unit(rng, 1)),
                           _rows(b"/p/v.mp4", _unit(rng, 6), "video_frame")])
    ann_dir = tmp_path / "ann"
    first = AnnIndex.build(store)
    first.save(ann_dir)
    kinds = list(first.shards)
    video_file = ann_dir / f"v{first.version}" / f"shard{kinds.index('video_frame')}.faiss"
    inode = video_file.stat().st_ino
    store.replace_sources([_rows(b"/p/2.jpg", _unit(rng, 1))])
    second = AnnIndex.build(store, reuse=ann_dir)  # a new process: only the directory is known
    assert second.shards["video_frame"].saved == video_file
    second.save(ann_dir)
    assert not video_file.exists()  # the old version's folder is gone ...
    relinked = ann_dir / f"v{second.version}" / f"shard{list(second.shards).index('video_frame')}.faiss"
    assert relinked.stat().st_ino == inode  # ... but its shard file lives on, linked, not rewritten
    loaded = AnnIndex.load(ann_dir)
    q = _unit(rng, 1)[0]
    assert loaded.search(q, 4) == second.search(q, 4)
    assert loaded.fingerprints == second.fingerprints and set(loaded.fingerprints) == {"image", "video_frame"}
    assert os.path.exists(relinked.with_suffix(".arrow"))


def test_an_index_saved_without_fingerprints_is_not_reused(tmp_path):
    rng = np.random.default_rng(11)
    store = Store(tmp_path / "db", DIM)
    store.replace_sources([_rows(b"/p/1.jpg", _unit(rng, 2))])
    idx = AnnIndex.build(store)
    idx.fingerprints = {}  # as saved by the previous release
    idx.save(tmp_path / "ann")
    again = AnnIndex.build(store, reuse=tmp_path / "ann")
    assert again.shards["image"].saved is None  # built, not taken over
