"""Trust: no silent model mix, and derived state that heals itself.

Each case damages one part of a small collection (photos and a text file) the way the issue
found it, then checks that readers go on (one warning, correct results) and that the next index
run, with nothing changed on disk, rebuilds the part from the table.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from support import write_shapes

from clipsearch import Collection
from clipsearch.ann import MANIFEST, POINTER, AnnIndex
from clipsearch.cli import main
from clipsearch.collection import META_FILE, REFRESH_MARKER
from clipsearch.docsearch import fts_problem, keyword_search
from clipsearch.errors import ModelMismatch, StorageError, TransformError
from clipsearch.model_registry import resolve, tiny_files
from clipsearch.records import Record
from clipsearch.store import SourceRows, Store

DOC_WORD = "quasimodo"
MEDIA: list[Path] = []


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("heal")
    media = root / "media"
    write_shapes(media, per_class=2, size=64)
    (media / "notes.txt").write_text(f"Meeting notes about {DOC_WORD} and the bell tower.\n" * 3)
    col = Collection.create(root / "db", model="clipsearch-tiny", device="cpu")
    col.add([media])
    MEDIA[:] = [media]
    assert {"image", "doc_text"} <= set(col.info()["kinds"])
    return root


@pytest.fixture
def db(base, tmp_path) -> Path:
    d = tmp_path / "db"
    shutil.copytree(base / "db", d)
    return d


def media(db: Path) -> Path:
    """The indexed folder (every copy of the base collection indexed the same one)."""
    return MEDIA[0]


def manifest(db: Path) -> tuple[Path, dict]:
    pointer = json.loads((db / "ann" / POINTER).read_text())
    d = db / "ann" / pointer["dir"]
    return d, json.loads((d / MANIFEST).read_text())


def shard_file(db: Path, kind: str, suffix: str) -> Path:
    d, m = manifest(db)
    return d / (next(e["file"] for e in m["shards"] if e["kind"] == kind) + suffix)


def healthy(db: Path) -> bool:
    col = Collection.open(db, device="cpu")
    return col.maintainer.derived_problems() == [] and not (db / REFRESH_MARKER).exists()


def rerun(db: Path):
    """The next writer: an index run over the same, unchanged files."""
    report = Collection.open(db, device="cpu").add([media(db)])
    assert report.indexed == 0 and report.removed == 0
    return report


def warnings(caplog, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and needle in r.getMessage()]


# ---- no silent model mix ------------------------------------------------------------------------
def perturbed_tiny(dst: Path) -> Path:
    """A copy of clipsearch-tiny with one float tensor (the first in the file) perturbed."""
    config, weights = tiny_files()
    dst.mkdir()
    shutil.copy(config, dst / config.name)
    raw = bytearray(weights.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    dtypes = {"F32": np.float32, "F16": np.float16}
    name, info = min(((k, v) for k, v in header.items() if k != "__metadata__" and v["dtype"] in dtypes),
                     key=lambda kv: kv[1]["data_offsets"][0])
    a, b = (8 + n + o for o in info["data_offsets"])
    tensor = np.frombuffer(bytes(raw[a:b]), dtype=dtypes[info["dtype"]]).copy()
    raw[a:b] = (tensor * 1.5 + 0.01).astype(tensor.dtype).tobytes()
    (dst / weights.name).write_bytes(bytes(raw))
    return dst


def test_the_table_records_its_model(db):
    meta = json.loads((db / META_FILE).read_text())
    recorded = Store.open_existing(db).recorded_meta()
    assert recorded["model_id"] == meta["model_id"] and recorded["dim"] == meta["dim"]


def test_a_lost_clipsearch_json_is_rebuilt_from_the_table(db, caplog):
    before = json.loads((db / META_FILE).read_text())
    (db / META_FILE).unlink()
    assert Collection.exists(db)
    with caplog.at_level(logging.WARNING):
        col = Collection.open(db, device="cpu")
    assert warnings(caplog, "rebuilt from the table")
    assert col.meta["model_id"] == before["model_id"]
    assert json.loads((db / META_FILE).read_text())["model_id"] == before["model_id"]
    assert col.search(text="a red star", k=3)


def test_other_weights_of_the_same_size_are_refused_without_clipsearch_json(db, tmp_path, monkeypatch):
    (db / META_FILE).unlink()
    recorded = Store.open_existing(db).recorded_meta()["model_id"]
    monkeypatch.setenv("CLIPSEARCH_TINY_DIR", str(perturbed_tiny(tmp_path / "tiny2")))
    assert resolve("clipsearch-tiny").model_id() != recorded  # different weights, same dim
    with pytest.raises(ModelMismatch):
        Collection.open_or_create(db, model="clipsearch-tiny", device="cpu")
    (db / META_FILE).unlink(missing_ok=True)
    rows = Store.open_existing(db).count()
    r = CliRunner().invoke(main, ["index", str(media(db)), "--db", str(db), "--model", "clipsearch-tiny",
                                  "-q"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert "error:" in r.stderr and "hint:" in r.stderr and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["index", str(media(db)), "--db", str(db), "-q"])  # nothing to embed:
    assert r.exit_code == 0 and "unchanged" in r.output, r.output  # the weights are not even loaded
    new = tmp_path / "new"
    write_shapes(new, per_class=1)
    r = CliRunner().invoke(main, ["index", str(media(db)), str(new), "--db", str(db), "-q"])  # embeds: no
    assert r.exit_code == 1 and "weights" in r.stderr, r.output
    store = Store.open_existing(db)
    assert store.count() == rows and store.recorded_meta()["model_id"] == recorded


def test_a_replaced_clipsearch_json_loses_to_the_table(db, caplog):
    own = json.loads((db / META_FILE).read_text())
    foreign = {**own, "model_id": "ViT-B-32/other", "model_name": "ViT-B-32/other",
               "model": {"arch": "ViT-B-32", "pretrained": "other", "checkpoint": None, "pooling": "mean"}}
    (db / META_FILE).write_text(json.dumps(foreign))
    with caplog.at_level(logging.WARNING):
        col = Collection.open(db, device="cpu")
    assert warnings(caplog, "the table's record wins")
    assert col.meta["model_id"] == own["model_id"] and col.meta["model"] == own["model"]
    with pytest.raises(ModelMismatch):
        Collection.open(db, model="ViT-B-32/other")


def test_a_table_that_records_no_model_is_not_adopted(tmp_path):
    """A table from before tables recorded their model, and no clipsearch.json: refused."""
    store = Store(tmp_path / "old", 128)
    store.replace_sources([SourceRows(b"/x.jpg", 1.0, 1, "h", [Record(kind="image", vector=np.ones(128))])])
    with pytest.raises(ModelMismatch, match="does not record"):
        Collection.open(tmp_path / "old")
    with pytest.raises(ModelMismatch):
        Collection.create(tmp_path / "old", model="clipsearch-tiny", device="cpu")


# ---- the ANN index ------------------------------------------------------------------------------
def test_a_truncated_ids_file_is_skipped_by_readers_and_rebuilt_by_the_next_run(db, caplog):
    ids_file = shard_file(db, "image", ".arrow")
    ids_file.write_bytes(ids_file.read_bytes()[: ids_file.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        reader = Collection.open(db, device="cpu")
        hits = reader.search(text="a red star", k=3)
        info = reader.info()
        assert CliRunner().invoke(main, ["info", "--db", str(db)]).exit_code == 0
    assert len(hits) == 3 and info["ann"]["rows"] == info["items"]
    assert len(warnings(caplog, "is damaged")) == 1  # once per process, not per query
    assert not healthy(db)
    rerun(db)
    assert healthy(db) and AnnIndex.load(db / "ann") is not None


def test_a_garbage_faiss_shard_is_replaced_on_disk(db, caplog):
    faiss_file = shard_file(db, "image", ".faiss")
    garbage = os.urandom(faiss_file.stat().st_size)
    faiss_file.write_bytes(garbage)
    with caplog.at_level(logging.WARNING):
        hits = Collection.open(db, device="cpu").search(text="a blue circle", k=2)
    assert len(hits) == 2 and warnings(caplog, "not the file its manifest names")
    rerun(db)
    assert shard_file(db, "image", ".faiss").read_bytes() != garbage
    assert healthy(db)
    assert len(AnnIndex.load(db / "ann").shards["image"]) == 24


def test_a_reordered_shards_json_is_detected(db):
    """Kinds swapped between shard files (the manifest's checksum then fails): readers must not
    serve document rows as images or images as documents."""
    d, m = manifest(db)
    kinds = [e["kind"] for e in m["shards"]]
    for e, k in zip(m["shards"], kinds[1:] + kinds[:1], strict=True):
        e["kind"] = k
    (d / MANIFEST).write_text(json.dumps(m))
    assert "checksum" in AnnIndex.problem(db / "ann")
    reader = Collection.open(db, device="cpu")
    hits = reader.search(text="a red star", k=10)
    assert hits and {h.kind for h in hits} <= {"image", "video_frame", "doc_page"}
    docs = reader.search(text=f"notes about {DOC_WORD}", kind="doc", k=3)
    assert [Path(h.source).name for h in docs] == ["notes.txt"]
    rerun(db)
    assert healthy(db)


def test_an_index_from_another_table_is_foreign(db, tmp_path, base):
    """A whole ann folder copied from another collection of the same table version."""
    other = tmp_path / "other"
    col = Collection.create(other, model="clipsearch-tiny", device="cpu")
    photos = tmp_path / "few"
    write_shapes(photos, per_class=1, size=64)
    col.add([photos])
    shutil.rmtree(db / "ann")
    shutil.copytree(other / "ann", db / "ann")
    problem = Collection.open(db, device="cpu").maintainer.derived_problems()
    assert problem and "ANN" in problem[0]
    rerun(db)
    assert healthy(db)


# ---- the full-text index ------------------------------------------------------------------------
def test_a_deleted_full_text_index_is_detected_and_rebuilt(db, caplog):
    for d in (db / "items.lance" / "_indices").iterdir():
        shutil.rmtree(d)
    reader = Collection.open(db, device="cpu")
    assert "full-text index" in fts_problem(reader.store.table)
    with caplog.at_level(logging.WARNING):
        docs = reader.search(text=f"notes about {DOC_WORD}", kind="doc", k=3)
        reader.search(text=DOC_WORD, kind="doc", k=3)
    assert [Path(h.source).name for h in docs] == ["notes.txt"]  # the vector legs still answer
    assert len(warnings(caplog, "keyword matches")) == 1
    rerun(db)
    assert healthy(db)
    rows = keyword_search(Collection.open(db).store.table, DOC_WORD, 5)
    assert rows and Path(rows[0]["source"]).name == "notes.txt"


def test_a_dropped_full_text_index_is_rebuilt(db):
    store = Store.open_existing(db)
    for ix in store.table.list_indices():
        store.table.drop_index(ix.name)
    assert "missing" in fts_problem(store.table)
    rerun(db)
    assert healthy(db)


# ---- transforms ---------------------------------------------------------------------------------
def test_corrupt_transforms_are_skipped_and_refitted(db):
    path = db / "transforms.npz"
    path.write_bytes(path.read_bytes()[:100])
    reader = Collection.open(db, device="cpu")
    assert reader.info()["transforms"] is None
    with pytest.raises(TransformError, match="corrupt"):
        reader.search(text="a red star", center=True)
    rerun(db)
    assert healthy(db) and Collection.open(db).searcher.transforms().image_mean is not None


# ---- leftovers and interrupted refreshes --------------------------------------------------------
def test_leftover_temporary_files_are_cleaned_by_the_next_writer(db):
    dead = 999_999_999  # above any pid_max: no such process
    left = [db / "ann" / f".v7.tmp-{dead}-", db / f".{META_FILE}.tmp-{dead}-", db / "thumbs" / "p.jpg.tmp",
            db / f".transforms.npz.tmp-{dead}-abc"]
    left[0].mkdir()
    (left[0] / "shard0.faiss").write_bytes(b"partial")
    for p in left[1:]:
        p.write_bytes(b"partial")
    live = db / "ann" / f".v8.tmp-{os.getppid()}-"  # a live process's write in progress stays
    live.mkdir()
    rerun(db)
    assert not any(p.exists() for p in left) and live.exists()


def test_a_failed_ann_save_leaves_nothing_behind_and_is_redone(db, monkeypatch):
    import clipsearch.ann as ann_mod

    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ann_mod.faiss, "write_index", full)
    monkeypatch.setattr(ann_mod, "_write_arrow", full)  # a new file's rows go to an Arrow segment
    extra = media(db) / "new.jpg"
    shutil.copy(media(db) / "red_star_0.jpg", extra)
    try:
        with pytest.raises(StorageError, match="disk is full"):
            Collection.open(db, device="cpu").add([media(db)])
    finally:
        extra.unlink()
    assert not [p for p in (db / "ann").iterdir() if ".tmp" in p.name]
    assert (db / REFRESH_MARKER).exists()
    assert AnnIndex.load(db / "ann") is not None  # the previous index is still whole
    monkeypatch.undo()
    report = Collection.open(db, device="cpu").add([media(db)])
    assert report.removed == 1 and healthy(db)


def test_a_refresh_cut_short_is_finished_by_the_next_unchanged_run(db, monkeypatch):
    from clipsearch.maintainer import Maintainer

    (db / "transforms.npz").unlink()
    real = Maintainer.update_transforms

    def killed(self, fit_transforms=True):
        raise KeyboardInterrupt  # what a kill between the ANN save and the transforms looks like

    monkeypatch.setattr(Maintainer, "update_transforms", killed)
    with pytest.raises(KeyboardInterrupt):
        Collection.open(db, device="cpu").refresh()
    assert (db / REFRESH_MARKER).exists() and not (db / "transforms.npz").exists()
    monkeypatch.setattr(Maintainer, "update_transforms", real)
    rerun(db)
    assert (db / "transforms.npz").exists() and healthy(db)


def test_an_unchanged_healthy_run_rebuilds_nothing(db):
    pointer = db / "ann" / POINTER
    before = pointer.read_bytes(), pointer.stat().st_mtime_ns
    rerun(db)
    assert (pointer.read_bytes(), pointer.stat().st_mtime_ns) == before
