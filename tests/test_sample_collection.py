"""The quick start's sample collection, indexed through the CLI path, answers its ground truth,
on each encoder backend."""

from __future__ import annotations

import pytest

from clipsearch import Collection
from clipsearch.tiny.sample import make_sample
from clipsearch.video_metrics import temporal_iou


@pytest.fixture(scope="module", params=["torch", "onnx", "openvino"])
def sample(request, tmp_path_factory):
    """The sample indexed with each backend: every quality floor below holds on each."""
    if request.param != "torch":
        from clipsearch.backends import runtime

        if not runtime.installed(request.param):
            pytest.skip(f"{runtime.MODULES[request.param]} is not installed")
    root = tmp_path_factory.mktemp("sample")
    manifest = make_sample(root / "files", seed=0)
    col = Collection.create(root / "db", model="clipsearch-tiny", device="cpu", backend=request.param)
    report = col.add([root / "files"])
    assert col.encoder.backend == request.param
    return col, manifest, report


def test_everything_indexed(sample):
    col, manifest, report = sample
    assert report.skipped == [] and report.indexed == len(manifest["images"]) + 3
    kinds = col.info()["kinds"]
    assert kinds["image"] == len(manifest["images"])
    assert kinds["video"] == 2 and kinds["video_frame"] > 0 and kinds["video_window"] > 0
    assert kinds["doc_page"] >= 5 and kinds["doc_text"] >= 5


def test_text_to_image_top1(sample):
    col, manifest, _ = sample
    queries = sorted({row["query"] for row in manifest["images"]})
    right = 0
    for q in queries:
        top = col.search(text=q, k=1, kind="image")[0]
        right += any(r["file"] == top.source and r["query"] == q for r in manifest["images"])
    assert right / len(queries) >= 0.75, f"{right}/{len(queries)}"


def test_moments_match_segments(sample):
    col, manifest, _ = sample
    ious = []
    for video, segments in manifest["videos"].items():
        for seg in segments:
            top = col.moments(seg["query"], k=1)[0]
            ious.append(temporal_iou((top.t_start, top.t_end), (seg["t_start"], seg["t_end"]))
                        if top.source == video else 0.0)
    assert sum(i >= 0.5 for i in ious) / len(ious) >= 0.7, ious


def test_document_text_query_finds_its_page(sample):
    col, manifest, _ = sample
    (pdf, pages), = manifest["docs"].items()
    found = [col.search(text=p["text"][:40], kind="doc", k=1)[0] for p in pages]
    assert all(h.source == pdf for h in found)
    assert sum(h.page == p["page"] for h, p in zip(found, pages, strict=True)) >= len(pages) - 1


def test_document_figure_query_finds_its_page(sample):
    col, manifest, _ = sample
    (pdf, pages), = manifest["docs"].items()
    found = [col.search(text=p["query"], kind="doc", k=1)[0] for p in pages]  # "a green triangle"
    assert sum(h.page == p["page"] for h, p in zip(found, pages, strict=True)) >= len(pages) - 1, \
        [(h.page, p["query"]) for h, p in zip(found, pages, strict=True)]


def test_moment_queries_agree_with_and_without_the_video_catalog(sample):
    """A long-lived searcher answers from its in-memory catalog from the second video query on,
    with exactly the moments the per-query reads give."""
    from clipsearch.moments import VideoCatalog, find_moments

    col, manifest, _ = sample
    queries = [seg["query"] for segs in manifest["videos"].values() for seg in segs]
    col.moments(queries[0], k=3)
    col.moments(queries[0], k=3)
    assert col.searcher.video_catalog() is not None
    table, catalog = col.store.table, VideoCatalog.build(col.store.table)
    for q in queries:
        vec = col.encoder.encode_texts([q])[0]
        plain = find_moments(vec, table, k=3, ann_search=col.searcher.ann_search)
        cached = find_moments(vec, table, k=3, ann_search=col.searcher.ann_search, catalog=catalog)
        assert plain == cached and plain, q
