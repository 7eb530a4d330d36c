"""The default search over all kinds gives the words of documents their say.

On the quick start's sample collection: a word that only one page holds ("turbines") finds
that page first without `--kind doc`, and visual queries rank exactly as before.
"""

from __future__ import annotations

import re

import pytest

from clipsearch.search import Searcher


def unique_words(pages: list[dict]) -> dict[str, int]:
    """Words (6+ letters) that occur on exactly one page: word -> page number."""
    seen: dict[str, set[int]] = {}
    for p in pages:
        for w in re.findall(r"[a-z]{6,}", p["text"].lower()):
            seen.setdefault(w, set()).add(p["page"])
    return {w: next(iter(ps)) for w, ps in seen.items() if len(ps) == 1}


@pytest.fixture
def no_document_text(monkeypatch):
    """Searches as before document text was fused into the all-kinds ranking."""
    monkeypatch.setattr(Searcher, "_has_document_text", lambda self: False)


def test_a_word_only_one_page_holds_finds_that_page_over_all_kinds(sample_collection):
    col, manifest, _ = sample_collection
    (pdf, pages), = manifest["docs"].items()
    top = col.search(text="turbines", k=5)[0]
    assert (top.source, top.page, top.kind) == (pdf, 2, "doc_page")
    assert "turbines" in top.text and top.score > 1  # singled out by its words (fusion tier 1)
    words = unique_words(pages)
    assert len(words) >= 20
    for word, page in words.items():
        top = col.search(text=word, k=3)[0]
        assert (top.source, top.page) == (pdf, page), word


def test_before_the_fusion_the_page_was_buried(sample_collection, no_document_text):
    """The failure this fixes: the all-kinds vector ranking alone puts other items first."""
    col, manifest, _ = sample_collection
    (pdf, _), = manifest["docs"].items()
    hits = col.search(text="turbines", k=5)
    assert (hits[0].source, hits[0].page) != (pdf, 2)


def test_visual_queries_rank_exactly_as_before(sample_collection, monkeypatch):
    col, manifest, _ = sample_collection
    queries = sorted({r["query"] for r in manifest["images"]} |
                     {p["query"] for ps in manifest["docs"].values() for p in ps})
    fused = {q: [(h.id, h.score) for h in col.search(text=q, k=10)] for q in queries}
    monkeypatch.setattr(Searcher, "_has_document_text", lambda self: False)
    plain = {q: [(h.id, h.score) for h in col.search(text=q, k=10)] for q in queries}
    assert fused == plain
    right = 0  # and the precision the retrieval tests expect still holds over all kinds
    for q in sorted({r["query"] for r in manifest["images"]}):
        top = col.search(text=q, k=1)[0]
        right += any(r["file"] == top.source and r["query"] == q for r in manifest["images"])
    assert right / 12 >= 0.5, right


def test_paging_over_all_kinds_with_document_text(sample_collection):
    col, _, _ = sample_collection
    first = col.search(text="turbines", k=6)
    page2 = col.search(text="turbines", k=3, offset=3)
    assert [h.id for h in first[3:]] == [h.id for h in page2]


def test_a_folder_filter_keeps_pages_out(sample_collection):
    col, manifest, _ = sample_collection
    images = str(next(iter(manifest["images"]))["file"]).rsplit("/", 1)[0]
    assert all(h.source.startswith(images) for h in col.search(text="turbines", k=5, under=images))
    # --hybrid's path keywords honour the filter too ("annual report" names the PDF)
    hits = col.search(text="annual report", k=10, under=images, hybrid=True)
    assert hits and all(h.source.startswith(images) for h in hits)


def test_http_search_without_kind_finds_the_page(sample_collection):
    from clipsearch.ui.api import SearchService, rest_router
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    _, manifest, db = sample_collection
    (pdf, _), = manifest["docs"].items()
    app = FastAPI()
    app.include_router(rest_router(SearchService(db, device="cpu")))
    hits = TestClient(app).get("/api/search", params={"q": "turbines"}).json()["hits"]
    assert (hits[0]["source"], hits[0]["page"]) == (pdf, 2)
    assert "turbines" in hits[0]["text"]


def test_a_page_must_hold_every_word_to_be_singled_out_over_all_kinds(sample_collection):
    """Across all kinds a page naming one word of a longer query does not outrank pictures
    (a visual query naming a word some report happens to use); `--kind doc` still finds it."""
    col, manifest, _ = sample_collection
    (pdf, _), = manifest["docs"].items()
    top = col.search(text="turbines in a thunderstorm", k=3)[0]
    assert (top.source, top.page) != (pdf, 2) and "cosine" not in top.extra
    assert col.search(text="turbines in a thunderstorm", kind="doc", k=1)[0].page == 2


def test_text_files_alone_are_found_over_all_kinds(tmp_path):
    """No pictures at all (nothing for the vector ranking): the words still find the file."""
    from clipsearch import Collection

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "plan.txt").write_text("Order new anemometers before the windfarm visit.\n")
    (tmp_path / "notes" / "other.md").write_text("# Groceries\n\nMilk, bread and apples.\n")
    col = Collection.create(tmp_path / "db", model="clipsearch-tiny", device="cpu")
    col.add([tmp_path / "notes"])
    hits = col.search(text="anemometers", k=3)
    assert hits and hits[0].source == str(tmp_path / "notes" / "plan.txt")
    assert hits[0].kind == "doc_text" and "anemometers" in hits[0].text
