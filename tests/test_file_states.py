"""File states as a base plus a small delta (clipsearch/file_states.py, catalog.py): lookups,
ranges and sizes answer as one map of the table's last rows would; the catalog writes only the
delta until it outgrows its share of the base, then folds it in; a damaged delta or base is
read around and healed; a writer killed while it writes a new base leaves a collection that
searches and is repaired by the next run."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pyarrow as pa
import pytest
from support import shapes_collection

from clipsearch import Collection, catalog
from clipsearch.file_states import FileState, FileStates


def states_table(rows: dict[bytes, tuple[float, int, str]]) -> pa.Table:
    names = list(rows)
    return pa.table({"source_raw": pa.array(names, pa.binary()),
                     "mtime": pa.array([rows[r][0] for r in names], pa.float64()),
                     "size": pa.array([rows[r][1] for r in names], pa.int64()),
                     "content_hash": pa.array([rows[r][2] for r in names], pa.string())})


def assert_same(states: FileStates, model: dict[bytes, tuple[float, int, str]]) -> None:
    assert len(states) == len(model)
    assert list(states) == sorted(model)
    for raw, (mtime, size, h) in model.items():
        assert raw in states and states[raw] == FileState(mtime, size, h)
    assert states.get(b"/never/there") is None and b"/never/there" not in states
    for prefix in (b"/a", b"/a/", b"/b", b"/a/d1", b"/", b"/c"):
        want = sorted(r for r in model if r == prefix.rstrip(b"/") or r.startswith(prefix.rstrip(b"/") + b"/")
                      or prefix == b"/")
        assert sorted(states.under([prefix])) == want, prefix
    sizes = {model[r][1] for r in list(model)[:3]}
    assert sorted(states.with_sizes(sizes)) == sorted(
        (r, FileState(*v)) for r, v in model.items() if v[1] in sizes)
    assert states.table.equals(FileStates(states_table(model)).table)


def test_a_delta_over_a_base_answers_like_one_map():
    rng = random.Random(3)
    names = [f"/{'ab'[i % 2]}/d{i % 5}/f{i:03d}.jpg".encode() for i in range(300)]
    names += [b"/a", b"/a0", b"/a/\xff.jpg"]  # a file named like the folder, a sibling, a non-UTF-8 name
    model = {r: (float(i), 100 + i % 7, f"h{i}") for i, r in enumerate(names)}
    states = FileStates(states_table(model))
    assert states.delta_rows == 0
    for step in range(6):  # several runs' changes stacked in one delta
        changed = set(rng.sample(sorted(model), 25)) | {f"/c/new{step}-{j}".encode() for j in range(5)}
        fresh = {}
        for r in changed:
            if rng.random() < 0.4 and r in model:
                del model[r]  # gone
            else:
                model[r] = fresh[r] = (1000.0 + step, 100 + rng.randrange(7), f"n{step}")
        states = states.replaced(changed, FileStates(states_table(fresh)).base)
        assert len(states.base) == len(names)  # the base is kept as it is
        assert_same(states, model)
    merged = states.merged()
    assert merged.delta_rows == 0 and len(merged.base) == len(model)
    assert_same(merged, model)


def test_a_source_gone_and_back_and_a_source_new_then_gone():
    base = {b"/a/x": (1.0, 1, "a"), b"/a/y": (2.0, 2, "b")}
    states = FileStates(states_table(base))
    states = states.replaced({b"/a/x", b"/a/z"}, FileStates(states_table({b"/a/z": (3.0, 3, "c")})).base)
    assert set(states) == {b"/a/y", b"/a/z"} and b"/a/x" not in states
    states = states.replaced({b"/a/x", b"/a/z"}, FileStates(states_table({b"/a/x": (4.0, 4, "d")})).base)
    assert set(states) == {b"/a/x", b"/a/y"} and states[b"/a/x"].mtime == 4.0
    assert states.delta_rows == 1  # a new source gone again leaves no marker; x replaced in place
    assert states.under([b"/a"]) == [b"/a/x", b"/a/y"]


def test_the_summary_of_a_delta_over_a_base_is_that_of_the_merged_states():
    from datetime import UTC, datetime

    def table(rows):
        names = sorted(rows)
        return pa.table({"source_raw": pa.array(names, pa.binary()), "mtime": [1.0] * len(names),
                         "size": pa.array([rows[r][0] for r in names], pa.int64()),
                         "content_hash": ["h"] * len(names),
                         "taken_at": pa.array([rows[r][1] for r in names], pa.timestamp("us", tz="UTC")),
                         "taken_at_source": [None if rows[r][1] is None else "exif" for r in names],
                         "place": [rows[r][2] for r in names], "camera": [None] * len(names)})

    day = [datetime(2020, 1, d, tzinfo=UTC) for d in range(1, 8)]
    base = {b"/a": (1, day[0], "Oslo"), b"/b": (2, day[3], "Oslo"), b"/c": (3, day[6], "Rome"),
            b"/d": (4, None, None), b"/e": (5, day[2], "Rome")}
    states = FileStates(table(base))
    fresh = {b"/c": (3, day[4], "Oslo"), b"/f": (6, None, None)}  # the latest date replaced; /a gone
    layered = states.replaced({b"/a", b"/c", b"/f"}, FileStates(table(fresh)).base)
    merged = FileStates(layered.table, prepared=True)
    assert layered.delta_rows and not merged.delta_rows
    taken, unread = catalog._summary(layered)
    assert (taken, unread) == catalog._summary(merged)
    assert unread == 2 and taken["first"] == day[2].isoformat() and taken["last"] == day[4].isoformat()
    assert taken["places"] == [["Oslo", 2], ["Rome", 1]]


# ---- the catalog's files ----------------------------------------------------------------------
@pytest.fixture
def copy(tmp_path) -> tuple[Path, Path]:
    """A small collection of its own (its rows name its own files, which a test changes)."""
    return shapes_collection(tmp_path)


def change_some(media: Path, tag: str) -> None:
    files = sorted(p for p in media.iterdir() if not p.name.startswith("new"))
    files[0].unlink()
    later = files[1].stat().st_mtime + 10
    os.utime(files[1], (later, later))
    (media / f"new{tag}.jpg").write_bytes(files[2].read_bytes()[:-10] + tag.encode().ljust(10, b"0"))


def assert_catalog_is_the_table(db: Path) -> catalog.Catalog:
    facts = catalog.fresh(db)
    assert facts is not None
    got = facts.file_states()
    assert got is not None
    col = Collection.open(db, device="cpu")
    whole = FileStates(col.store.scan(got.base.column_names)).table
    assert got.table.equals(whole) and facts.sources == whole.num_rows == len(got)
    assert facts.rows == col.store.count()
    assert facts.taken == col.store.file_summary()
    assert facts.unread_files == len(col.store.sources_without_file_meta())
    return facts


def test_a_run_writes_only_the_delta_until_it_is_due_to_be_folded_in(copy, monkeypatch):
    db, media = copy
    base = db / catalog.FILE_STATES
    before = base.stat()
    monkeypatch.setattr(catalog, "DELTA_SHARE", 1.0)  # a delta up to the base's size
    for tag in ("1", "2"):
        change_some(media, tag)
        Collection.open(db, device="cpu").add([media], ocr="off")
        facts = assert_catalog_is_the_table(db)
        states = facts.file_states()
        assert states is not None and states.delta_rows > 0
        after = base.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "base rewritten"
    monkeypatch.setattr(catalog, "DELTA_SHARE", 0.0)  # any delta is due
    change_some(media, "3")
    Collection.open(db, device="cpu").add([media], ocr="off")
    facts = assert_catalog_is_the_table(db)
    states = facts.file_states()
    assert states is not None and states.delta_rows == 0, "the delta was not folded into the base"
    assert base.stat().st_ino != before.st_ino


@pytest.mark.parametrize("damaged", [catalog.FILE_STATES, catalog.FILE_STATES_DELTA])
def test_a_damaged_state_file_is_read_around_and_healed(copy, monkeypatch, damaged):
    db, media = copy
    monkeypatch.setattr(catalog, "DELTA_SHARE", 1.0)
    change_some(media, "1")
    Collection.open(db, device="cpu").add([media], ocr="off")
    assert_catalog_is_the_table(db)
    victim = db / damaged
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size
    victim.write_bytes(bytes(data))
    facts = catalog.fresh(db)
    assert facts is not None and facts.file_states() is None and not facts.states_intact()
    change_some(media, "2")  # a run that changes files, planned from the table itself
    report = Collection.open(db, device="cpu").add([media], ocr="off")
    assert report.indexed == 1 and report.removed == 1
    facts = assert_catalog_is_the_table(db)
    assert facts.states_intact()


def test_kill_9_while_a_new_base_is_written_leaves_a_collection_that_searches_and_is_repaired(copy, tmp_path):
    from test_maintenance import kill_9_at

    db, media = copy
    change_some(media, "1")  # a delta past its share at this size: the run writes a new base
    on_disk = {str(p) for p in media.iterdir()}
    kill_9_at("catalog", db, media, tmp_path)
    assert catalog.fresh(db) is None, "a catalog names state files it was not written with"
    reader = Collection.open(db, device="cpu")
    assert {os.fsdecode(r) for r in reader.store.file_states()} == on_disk
    for q in sorted(media.iterdir())[:4]:
        assert {h.source for h in reader.search(image=q, k=5)} <= on_disk
    report = Collection.open(db, device="cpu").add([media], ocr="off")
    assert report.indexed == 0 and report.removed == 0
    assert_catalog_is_the_table(db)
    assert Collection.open(db, device="cpu").maintainer.derived_problems() == []


def test_a_missing_delta_file_makes_the_states_be_read_whole(copy):
    db, media = copy
    (db / catalog.FILE_STATES_DELTA).unlink()
    facts = catalog.last(db)
    assert facts is not None and facts.file_states() is None  # a state file missing: not used
    change_some(media, "1")
    Collection.open(db, device="cpu").add([media], ocr="off")
    assert_catalog_is_the_table(db)
