"""The table catalog (clipsearch/catalog.py) is derived state: while the table is as recorded it
says what the table says; after any change, or when damaged, it is not used, and the next
writer records it again. It must never give an answer the table would not."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from support import tiny_model_args, write_shapes

from clipsearch import catalog
from clipsearch.collection import Collection


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(photo folder, collection) indexed once with clipsearch-tiny."""
    base = tmp_path_factory.mktemp("catalog")
    photos = base / "photos"
    write_shapes(photos, per_class=1)
    col = Collection.create(base / "db", device="cpu", **tiny_model_args())
    col.add([photos], workers=2)
    return photos, base / "db"


@pytest.fixture
def copy(built, tmp_path) -> tuple[Path, Collection]:
    """A fresh copy of the photos and a collection of them, so each test may change both."""
    photos, _ = built
    pics = tmp_path / "photos"
    shutil.copytree(photos, pics)
    col = Collection.create(tmp_path / "db", device="cpu", **tiny_model_args())
    col.add([pics], workers=2)
    return pics, col


def table_truth(col: Collection) -> dict:
    store = col.store
    kinds: dict[str, int] = {}
    for kd in store.scan(["kind"]).column("kind").to_pylist():
        kinds[kd] = kinds.get(kd, 0) + 1
    return {"version": store.version, "rows": store.count(), "kinds": kinds,
            "states": store.file_states()}


def test_a_fresh_catalog_says_what_the_table_says(built):
    _, db = built
    col = Collection.open(db, device="cpu")
    facts = catalog.fresh(db)
    assert facts is not None
    truth = table_truth(col)
    assert (facts.version, facts.rows, facts.kinds) == (truth["version"], truth["rows"], truth["kinds"])
    assert facts.file_states() == truth["states"] and facts.sources == len(truth["states"])
    assert facts.recorded_meta == col.store.recorded_meta() and facts.fts_ok


def test_a_commit_makes_it_stale_and_info_reads_the_table(copy):
    pics, col = copy
    victim = os.fsencode(sorted(pics.iterdir())[0])
    col.store.delete_sources([victim])  # a commit the maintainer has not seen
    assert catalog.fresh(col.path) is None
    again = Collection.open(col.path, device="cpu")
    info = again.info()
    assert info["items"] == 11 == again.store.count() and info["table_version"] == again.store.version


def test_a_damaged_catalog_is_not_used_and_the_next_run_writes_it_again(copy):
    pics, col = copy
    path = col.path / catalog.CATALOG
    data = json.loads(path.read_text())
    data["rows"] = 99  # edited: fails its checksum
    path.write_text(json.dumps(data))
    assert catalog.fresh(col.path) is None
    assert Collection.open(col.path, device="cpu").info()["items"] == 12
    path.write_text("{garbage")
    assert catalog.fresh(col.path) is None
    report = Collection.open(col.path, device="cpu").add()
    assert report.unchanged == 12 and report.indexed == 0
    facts = catalog.fresh(col.path)
    assert facts is not None and facts.rows == 12


def test_damaged_file_states_are_read_from_the_table_and_rewritten(copy):
    pics, col = copy
    states = col.path / catalog.FILE_STATES
    states.write_bytes(states.read_bytes()[:40])  # truncated
    facts = catalog.fresh(col.path)
    assert facts is not None and facts.file_states() is None and not facts.states_intact()
    report = Collection.open(col.path, device="cpu").add()
    assert report.unchanged == 12 and report.indexed == 0 and report.removed == 0
    facts = catalog.fresh(col.path)
    assert facts is not None and facts.file_states() == col.store.file_states()


def test_a_changed_index_file_makes_it_stale(copy):
    _, col = copy
    indices = col.path / "items.lance" / "_indices"
    files = [p for p in indices.rglob("*") if p.is_file()]
    assert files, "the full-text index has files"
    with open(files[0], "ab") as f:
        f.write(b"garbage")
    assert catalog.fresh(col.path) is None


def test_a_file_gone_from_disk_is_removed_through_the_catalog_states(copy):
    pics, col = copy
    assert catalog.fresh(col.path) is not None
    sorted(pics.iterdir())[0].unlink()
    report = Collection.open(col.path, device="cpu").add()
    assert report.removed == 1 and report.unchanged == 11
    reopened = Collection.open(col.path, device="cpu")
    assert reopened.store.count() == 11
    facts = catalog.fresh(col.path)
    assert facts is not None and facts.rows == 11 and reopened.info()["sources"] == 11


def test_manifest_names_of_both_lance_schemes():
    assert catalog.manifest_version("7.manifest") == 7
    assert catalog.manifest_version("18446744073709551599.manifest") == 16
