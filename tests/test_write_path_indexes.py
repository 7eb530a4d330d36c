"""The write path follows the change: scalar indexes the writer keeps (and heals), file states
one row per source, and a catalog updated by the sources a run changed.

Each damage case breaks one index file the way a bad disk would, then checks that a reader
still answers correctly, that the next run drops and rebuilds the index, and that its writes
land (nothing stale, nothing lost).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest
from support import shapes_collection

from clipsearch import Collection, catalog, scalar_index
from clipsearch.file_states import FileStates


@pytest.fixture
def copy(tmp_path) -> tuple[Path, Path]:
    """A small collection of its own (the rows name its own files, which a test may change)."""
    return shapes_collection(tmp_path, per_class=1, size=64)


def index_files(db: Path, name: str) -> list[Path]:
    col = Collection.open(db, device="cpu")
    uuids = scalar_index.ours(col.store.dataset)[name]
    return [p for u in uuids for p in (db / "items.lance" / "_indices" / u).rglob("*") if p.is_file()]


def sources(db: Path) -> set[str]:
    col = Collection.open(db, device="cpu")
    return set(col.store.scan(["source"]).column("source").to_pylist())


def test_a_run_builds_and_records_both_indexes(copy):
    db, _ = copy
    col = Collection.open(db, device="cpu")
    assert set(scalar_index.ours(col.store.dataset)) == set(scalar_index.INDEXES)
    assert not scalar_index.missing(db)
    assert scalar_index.problems(db, col.store) == {}


@pytest.mark.parametrize("name", sorted(scalar_index.INDEXES))
def test_a_damaged_index_is_read_around_then_dropped_and_rebuilt(copy, name, caplog):
    db, media = copy
    victim = max(index_files(db, name), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 3: len(data) // 3 + 64] = b"\xff" * 64
    victim.write_bytes(bytes(data))
    # a reader: the rows of a file by name and by id, right despite the damage
    col = Collection.open(db, device="cpu")
    some = sorted(sources(db))[0]
    raw = os.fsencode(some)
    rows = col.store.records_at(col.store.snapshot(), [raw])[raw]
    assert rows, "the reader lost a file's rows to the damaged index"
    ids = col.store.scan(["id"]).column("id").to_pylist()[:3]
    assert sorted(col.store.rows_by_id(ids).column("id").to_pylist()) == sorted(ids)
    assert scalar_index.problems(db, col.store).keys() == {name}
    # the next run changes files: its writes must not use the damaged index
    gone = sorted(media.iterdir())[0]
    gone.unlink()
    (media / "copy.jpg").write_bytes(sorted(media.iterdir())[0].read_bytes())
    report = Collection.open(db, device="cpu").add([media], ocr="off")
    assert report.removed == 1
    assert str(gone) not in sources(db)
    assert str(media / "copy.jpg") in sources(db)
    col = Collection.open(db, device="cpu")
    assert set(scalar_index.ours(col.store.dataset)) == set(scalar_index.INDEXES)
    assert scalar_index.problems(db, col.store) == {}, "the index was not rebuilt"
    assert any("unusable" in r.getMessage() for r in caplog.records)


def test_an_unrecorded_index_is_not_trusted(copy):
    db, media = copy
    (db / scalar_index.RECORD).unlink()
    col = Collection.open(db, device="cpu")
    assert set(scalar_index.problems(db, col.store)) == set(scalar_index.INDEXES)
    report = Collection.open(db, device="cpu").add([media], ocr="off")  # unchanged: heals it
    assert report.indexed == 0
    assert not scalar_index.missing(db)
    assert scalar_index.problems(db, Collection.open(db, device="cpu").store) == {}


def test_the_catalog_updated_by_the_change_equals_one_read_whole(copy):
    db, media = copy
    files = sorted(media.iterdir())
    files[0].unlink()
    os.rename(files[1], media / "renamed.jpg")
    later = files[2].stat().st_mtime + 10
    os.utime(files[2], (later, later))
    (media / "new.jpg").write_bytes(files[3].read_bytes()[:-10] + b"0123456789")
    col = Collection.open(db, device="cpu")
    col.add([media], ocr="off")
    facts = catalog.fresh(db)
    assert facts is not None
    got = facts.file_states()
    assert got is not None
    whole = FileStates(col.store.scan(got.table.column_names)).table
    assert got.table.equals(whole)
    assert facts.sources == whole.num_rows
    assert str(media / "renamed.jpg").encode() in got and str(files[1]).encode() not in got
    assert got[str(files[2]).encode()].mtime == later


def test_file_states_answer_like_a_map_of_the_last_rows():
    raws = [b"/a/x", b"/a/y", b"/b/z", b"/a/x", b"/a0", b"/a", b"/a/\xff"]
    t = pa.table({"source_raw": pa.array(raws, pa.binary()), "mtime": [1.0, 2, 3, 4, 5, 6, 7],
                  "size": [1, 2, 3, 4, 5, 6, 7], "content_hash": list("abcdefg")})
    states = FileStates(t)
    assert sorted(states) == sorted(set(raws)) and len(states) == 6
    assert states[b"/a/x"].content_hash == "d"  # the last row wins
    assert states.get(b"/nope") is None and b"/a/y" in states
    assert sorted(states.under([b"/a"])) == [b"/a", b"/a/x", b"/a/y", b"/a/\xff"]
    fresh = FileStates(pa.table({"source_raw": pa.array([b"/a/w", b"/c"], pa.binary()), "mtime": [8.0, 9],
                                 "size": [8, 9], "content_hash": ["h", "i"]})).table
    replaced = states.replaced({b"/a/x", b"/b/z"}, fresh)
    assert list(replaced) == [b"/a", b"/a/w", b"/a/y", b"/a/\xff", b"/a0", b"/c"]
    assert replaced[b"/c"].size == 9


def test_the_ann_update_follows_the_writers_log_and_agrees_with_the_table(copy, monkeypatch):
    from clipsearch import ann

    db, media = copy
    taken: list[object] = []
    real = ann._update_by_change

    def spy(*a, **kw):
        out = real(*a, **kw)
        taken.append(out)
        return out

    monkeypatch.setattr(ann, "_update_by_change", spy)
    files = sorted(media.iterdir())
    files[0].unlink()
    os.rename(files[1], media / "renamed.jpg")
    col = Collection.open(db, device="cpu")
    col.add([media], ocr="off")
    assert taken and taken[-1] is not None, "the ANN update diffed the whole table"
    reader = Collection.open(db, device="cpu")
    index = reader.searcher.ann()
    assert index.version == reader.store.version
    table_ids = set(reader.store.scan(["id"]).column("id").to_pylist())
    vec = reader.store.vectors()[1]
    hits = {i for v in vec for i, _ in index.search(v, len(table_ids) + 5, kinds=("image",))[0]}
    assert hits == table_ids  # every row found, none stale (the deleted file's, the old path's)
