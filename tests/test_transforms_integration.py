"""Transforms through the Collection: auto-fit after index, lazy text mean, --center/--whiten."""

from __future__ import annotations

import pytest
from support import write_shapes

from clipsearch import Collection
from clipsearch.errors import TransformError, UsageError


@pytest.fixture(scope="module")
def col(tmp_path_factory):
    root = tmp_path_factory.mktemp("tx")
    write_shapes(root / "photos", per_class=2)
    c = Collection.create(root / "db", model="clipsearch-tiny", device="cpu")
    c.add([root / "photos"])
    return c


def test_auto_fit_does_not_embed_captions(col):
    assert not (col.path / "builtin_text_vectors.npy").exists()
    ts = col.searcher.transforms()
    assert ts.image_mean is not None and ts.text_mean is None


def test_center_fits_text_mean_on_first_use(col):
    hits = col.search(text="a red star", k=3, center=True)
    assert hits and (col.path / "builtin_text_vectors.npy").exists()
    assert col.searcher.transforms().text_mean is not None
    assert [h.source for h in col.search(text="a red star", k=3, center=True)] == [h.source for h in hits]


def test_whiten_needs_enough_items_and_an_image_query(col):
    with pytest.raises(UsageError):
        col.search(text="a red star", whiten=True)
    with pytest.raises(TransformError, match="whitening"):
        col.search(image=next(col.path.parent.glob("photos/*.jpg")), whiten=True)


def test_unchanged_rerun_skips_the_refresh(col):
    ann = col.path / "ann" / "current.json"
    before = ann.stat().st_mtime_ns
    report = col.add([col.path.parent / "photos"])
    assert report.indexed == 0 and ann.stat().st_mtime_ns == before
