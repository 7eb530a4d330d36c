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


def test_center_while_another_process_writes_fits_in_memory_only(col):
    """The text mean is saved by the maintainer under the writer lock; a query that cannot take
    it (an index run elsewhere) fits it for itself and writes nothing."""
    import fcntl

    reader = Collection.open(col.path, device="cpu")
    saved = (col.path / "transforms.npz").read_bytes()
    with open(col.path / ".writer.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another process's index run holds it
        hits = reader.search(text="a red star", k=3, center=True)
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert hits and reader.searcher.transforms().text_mean is not None
    assert (col.path / "transforms.npz").read_bytes() == saved
    assert not (col.path / "builtin_text_vectors.npy").exists()


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


def _cli(*args: str):
    import os
    import subprocess
    import sys

    env = {**os.environ, "CLIPSEARCH_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "clipsearch.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _write_pdf(path, pages: list[str]) -> None:
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=(400, 300))
    for text in pages:
        c.drawString(20, 150, text)
        c.showPage()
    c.save()


def test_failed_fit_transforms_keeps_the_saved_ones(tmp_path):
    """fit-transforms decides before it writes: a fit that yields nothing leaves the old file."""
    photos = tmp_path / "photos"
    write_shapes(photos, per_class=1)  # 12 images: enough for centering, fitted after index
    c = Collection.create(tmp_path / "db", model="clipsearch-tiny", device="cpu")
    c.add([photos])
    saved = (c.path / "transforms.npz").read_bytes()
    c.remove(sorted(photos.glob("*.jpg"))[:6])  # 6 left: too few for any transform
    p = _cli("fit-transforms", "--db", str(c.path))
    assert p.returncode == 1 and "no transform could be fitted" in p.stderr, p.stderr
    assert (c.path / "transforms.npz").read_bytes() == saved
    assert Collection.open(c.path, device="cpu").searcher.transforms().image_mean is not None


def test_collection_text_source_too_small_falls_back_to_builtin_captions(tmp_path):
    write_shapes(tmp_path / "files", per_class=1)
    _write_pdf(tmp_path / "files" / "memo.pdf", ["The budget meeting moves to Tuesday.",
                                                 "Bring the quarterly figures."])
    c = Collection.create(tmp_path / "db", model="clipsearch-tiny", device="cpu")
    c.add([tmp_path / "files"])
    assert 0 < c.store.count("kind = 'doc_text'") < 10
    p = _cli("fit-transforms", "--db", str(c.path), "--text-source", "collection")
    assert p.returncode == 0, p.stderr
    assert "center(text=builtin)" in p.stdout and "center skipped" not in p.stdout
    assert "using the built-in captions" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    ts = Collection.open(c.path, device="cpu").searcher.transforms()
    assert ts.image_mean is not None and ts.text_mean is not None
    assert "using the built-in captions" in ts.params["center"]["note"]
