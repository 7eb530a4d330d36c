"""The maintainer (write side): touched files in one commit, the full-text index updated in
place, transforms refitted only when the collection changed by a large factor, compaction and
version cleanup with a retention that readers can rely on, and kill -9 in every maintenance step."""

from __future__ import annotations

import os
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from support import kill_9_at_pause, tiny_model_args

from clipsearch import Collection
from clipsearch.cli import main
from clipsearch.collection import REFRESH_MARKER
from clipsearch.docsearch import FTS_MAX_SEGMENTS, keyword_search
from clipsearch.errors import UsageError
from clipsearch.maintainer import KEEP_VERSIONS_ENV, keep_versions, refit_reason
from clipsearch.testpoints import STEPS

WORD = "quasimodo"


@pytest.fixture(autouse=True)
def _tiny():
    tiny_model_args()  # skips when clipsearch-tiny is not installed


def new_collection(tmp_path: Path) -> Collection:
    return Collection.create(tmp_path / "db", model="clipsearch-tiny", device="cpu")


def write_solids(folder: Path, n: int, start: int = 0) -> list[Path]:
    """n distinct small PNGs (one colour each): cheap files that are all indexed."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        p = folder / f"solid_{i:04d}.png"
        Image.new("RGB", (16, 16), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)).save(p)
        out.append(p)
    return out


def data_files(db: Path) -> int:
    return sum(1 for _ in (db / "items.lance" / "data").iterdir())


def test_touched_files_are_written_in_one_commit_per_batch(tmp_path):
    files = write_solids(tmp_path / "pics", 300)
    col = new_collection(tmp_path)
    col.add([tmp_path / "pics"], fit_transforms=False)
    before = col.store.version
    for i, p in enumerate(files):  # new mtime, same bytes
        os.utime(p, (1_600_000_000 + i, 1_600_000_000 + i))
    report = Collection.open(col.path, device="cpu").add([tmp_path / "pics"], fit_transforms=False)
    assert report.indexed == 0 and report.unchanged == 300
    # one commit for the 300 touches, then at most the index and compaction commits of the refresh
    assert col.store.version - before <= 4, col.store.version - before
    states = col.store.file_states()
    assert {states[os.fsencode(p)].mtime for p in files} == {p.stat().st_mtime for p in files}
    again = Collection.open(col.path, device="cpu").add([tmp_path / "pics"], fit_transforms=False)
    assert again.unchanged == 300 and col.store.version == Collection.open(col.path).store.version


def test_touches_find_their_rows_in_one_scan_and_commit_per_batch(tmp_path, monkeypatch):
    """The rows of every touched file are found by one filtered scan of the table (not one per
    batch: each scan reads the whole `source_raw` column), then written batch by batch."""
    from clipsearch.records import Record
    from clipsearch.store import SourceRows, Store

    store = Store(tmp_path / "db", 4)
    vec = np.ones(4, np.float32) / 2
    store.replace_sources([SourceRows(f"/p/{i}.jpg".encode(), 1.0, 10, f"h{i}",
                                      [Record(kind="image", vector=vec)]) for i in range(5)])
    scans = []
    real = Store.scan
    monkeypatch.setattr(Store, "scan", lambda self, *a, **k: scans.append(a) or real(self, *a, **k))
    before = store.version
    store.touch_many([(f"/p/{i}.jpg".encode(), 100.0 + i) for i in (4, 0, 2)] + [(b"/p/gone.jpg", 9.0)],
                     batch=2)
    assert len(scans) == 1 and store.version - before == 2  # batches (4, 0) and (2, gone)
    t = real(store, ["source", "mtime"])
    assert dict(zip(t.column("source").to_pylist(), t.column("mtime").to_pylist(), strict=True)) == {
        "/p/0.jpg": 100.0, "/p/1.jpg": 1.0, "/p/2.jpg": 102.0, "/p/3.jpg": 1.0, "/p/4.jpg": 104.0}


def test_the_full_text_index_takes_new_rows_in_and_never_returns_deleted_ones(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Minutes of the meeting about the bell tower.\n" * 3)
    col = new_collection(tmp_path)
    col.add([docs], fit_transforms=False)
    table = col.store.table
    created = {ix.name: ix.created_at for ix in table.list_indices()}
    assert not keyword_search(table, WORD, 10, column="text")

    (docs / "b.txt").write_text(f"A note on {WORD} and the cathedral.\n" * 3)
    Collection.open(col.path, device="cpu").add([docs], fit_transforms=False)
    hits = keyword_search(table, WORD, 10, column="text")
    assert hits and all(h["source"].endswith("b.txt") for h in hits)
    assert table.index_stats("text_idx").num_unindexed_rows == 0  # folded into the index
    assert {ix.name: ix.created_at for ix in table.list_indices()} == created  # not rebuilt

    (docs / "b.txt").unlink()
    Collection.open(col.path, device="cpu").add([docs], fit_transforms=False)
    assert not keyword_search(table, WORD, 10, column="text")


def test_transforms_are_refitted_only_when_the_collection_doubled(tmp_path, monkeypatch):
    import clipsearch.maintainer as maintainer

    monkeypatch.setattr(maintainer, "TRANSFORM_SAMPLE_ROWS", 10)
    pics = tmp_path / "pics"
    write_solids(pics, 12)
    col = new_collection(tmp_path)
    col.add([pics])
    fit = col.info()["transforms_fit"]
    assert fit["rows"] == 12 and fit["sample"] == 10 and fit["reason"].startswith("first fit")

    write_solids(pics, 6, start=12)  # 18 rows: less than twice the fitted 12
    col = Collection.open(col.path, device="cpu")
    col.add([pics])
    assert col.info()["transforms_fit"] == fit

    write_solids(pics, 6, start=18)  # 24 rows: twice
    col = Collection.open(col.path, device="cpu")
    col.add([pics])
    refit = col.info()["transforms_fit"]
    assert refit["rows"] == 24 and refit["sample"] == 10 and refit["reason"].startswith("grew")

    out = CliRunner().invoke(main, ["info", "--db", str(col.path)])
    assert out.exit_code == 0 and "fitted on 10 of 24 image-like rows: grew" in out.output


def test_refit_reason_is_a_large_factor_either_way():
    assert refit_reason(None, 50).startswith("first fit")
    assert refit_reason({"rows": 100}, 150) is None
    assert refit_reason({"rows": 100}, 60) is None
    assert "grew" in refit_reason({"rows": 100}, 200)
    assert "shrank" in refit_reason({"rows": 100}, 50)


def test_the_fit_holds_no_float64_copy_of_its_input():
    from clipsearch.transforms import TransformSet

    x = np.random.default_rng(0).standard_normal((200_000, 64)).astype(np.float32)
    tracemalloc.start()
    try:
        ts = TransformSet.fit(x, model_id="m", dim=64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ts.whitening is not None and ts.image_mean is not None
    assert peak < x.nbytes, f"peak {peak} bytes for a {x.nbytes}-byte input"  # float64 would be 2x


def test_single_file_runs_keep_versions_and_data_files_bounded(tmp_path, monkeypatch):
    monkeypatch.setenv(KEEP_VERSIONS_ENV, "0")
    pics = tmp_path / "pics"
    col = new_collection(tmp_path)
    for i in range(40):  # 40 runs that each add one file, with their whole refresh
        write_solids(pics, 1, start=i)
        col.add([pics], fit_transforms=False)
    assert col.store.count() == 40
    versions, files = len(col.store.snapshot().versions()), data_files(col.path)
    assert versions <= 3 and files <= 20, (versions, files)
    segments = {ix.name: ix.num_segments for ix in col.store.table.list_indices()}
    assert 1 <= segments["source_idx"] <= FTS_MAX_SEGMENTS, segments  # merged now and then
    assert col.search(image=pics / "solid_0031.png", k=1)[0].source.endswith("solid_0031.png")
    # the same as end-of-run upkeep for 300 single-row commits: bounded, whatever their number
    from clipsearch.records import Record
    from clipsearch.store import SourceRows

    for i in range(300):
        raw = os.fsencode(str(tmp_path / f"row{i}.png"))
        rec = Record(kind="image", vector=np.ones(int(col.meta["dim"]), np.float32))
        col.store.replace_sources([SourceRows(raw, 0.0, 1, "h", [rec])])
        col.maintainer.compact()
        col.maintainer.cleanup()
    assert col.store.count() == 340
    versions, files = len(col.store.snapshot().versions()), data_files(col.path)
    assert versions <= 3 and files <= 20, (versions, files)


def test_a_reader_of_an_old_version_keeps_reading_within_the_retention(tmp_path, monkeypatch):
    monkeypatch.setenv(KEEP_VERSIONS_ENV, "0.03")  # 1.8 s
    pics = tmp_path / "pics"
    write_solids(pics, 20)
    col = new_collection(tmp_path)
    col.add([pics], fit_transforms=False)
    reader = col.store.snapshot()  # pinned at this version, as a searching process holds it
    n = reader.count_rows()
    time.sleep(2.5)  # the version itself is now older than the retention, but still the latest
    for p in sorted(pics.iterdir())[:10]:
        p.unlink()
    writer = Collection.open(col.path, device="cpu")
    writer.add([pics], fit_transforms=False)
    writer.optimize()  # compacts and cleans up: the reader's version was superseded just now
    assert reader.to_table(columns=["id", "vector"]).num_rows == n
    assert writer.store.count() == 10

    time.sleep(2.5)  # superseded longer ago than the retention: its files go
    writer.optimize()
    assert len(writer.store.snapshot().versions()) <= 3  # those superseded by this optimize stay
    with pytest.raises(Exception):  # noqa: B017 - lance raises OSError or its own errors
        reader.to_table(columns=["id", "vector"])


def test_a_bad_retention_is_one_line_naming_the_variable(tmp_path, monkeypatch):
    pics = tmp_path / "pics"
    write_solids(pics, 3)
    col = new_collection(tmp_path)
    col.add([pics], fit_transforms=False)
    version = col.store.version
    monkeypatch.setenv(KEEP_VERSIONS_ENV, "ten")
    with pytest.raises(UsageError, match=KEEP_VERSIONS_ENV):
        keep_versions()
    for args in (["optimize"], ["index", str(pics)]):
        out = CliRunner().invoke(main, [*args, "--db", str(col.path)])
        assert out.exit_code == 2 and f"${KEEP_VERSIONS_ENV}='ten'" in out.output, out.output
    assert col.store.version == version  # nothing was written
    monkeypatch.setenv(KEEP_VERSIONS_ENV, "2.5")
    assert keep_versions().total_seconds() == 150


def test_optimize_compacts_and_reports(tmp_path, monkeypatch):
    monkeypatch.setenv(KEEP_VERSIONS_ENV, "0")
    pics = tmp_path / "pics"
    col = new_collection(tmp_path)
    write_solids(pics, 4)
    col.add([pics], fit_transforms=False)
    for i in range(4, 10):  # small fragments, fewer than compaction waits for in a run
        write_solids(pics, 1, start=i)
        col.add([pics], fit_transforms=False)
    before = col.info()["table"]
    assert before["fragments"] > 1
    out = CliRunner().invoke(main, ["optimize", "--db", str(col.path)])
    assert out.exit_code == 0, out.output
    assert f"fragments {before['fragments']} -> 1" in out.output and "versions" in out.output
    after = Collection.open(col.path, device="cpu")
    assert after.info()["table"]["fragments"] == 1 and after.maintainer.derived_problems() == []
    hits = after.search(image=pics / "solid_0007.png", k=1)
    assert hits[0].source.endswith("solid_0007.png")


KILLED_RUN = textwrap.dedent("""
    import sys
    import clipsearch.store as store
    store.TOUCH_BATCH = 1  # one commit per touched file, so the touch pause stands between two
    from clipsearch import Collection
    Collection.open(sys.argv[1], device="cpu").add([sys.argv[2]])
""")


def kill_9_at(step: str, col_path: Path, pics: Path, tmp_path: Path) -> None:
    """Run `index` over `pics` in a child process, stop it at `step`'s pause point, kill -9."""
    kill_9_at_pause([sys.executable, "-c", KILLED_RUN, str(col_path), str(pics)], step,
                    tmp_path / f"paused-{step}", env={KEEP_VERSIONS_ENV: "0"})


def assert_searches_its_table(col: Collection, queries: list[Path]) -> set[str]:
    """Every hit names a row of the table (no stale hit), and each file with rows is its own
    nearest neighbour. Returns the table's sources."""
    sources = set(col.store.scan(["source"]).column("source").to_pylist())
    for q in queries:
        hits = col.search(image=q, k=5)
        assert {h.source for h in hits} <= sources, f"stale hit for {q.name}"
        if str(q) in sources:
            assert hits[0].source == str(q), f"{q.name} is not found by its own image"
    return sources


@pytest.mark.parametrize("step", STEPS)
def test_kill_9_in_a_maintenance_step_leaves_a_collection_that_searches_and_is_repaired(tmp_path, step):
    """A writer killed in the middle of each step (the touch commits of the scan, then the
    maintainer's full-text index, compaction, thumbnail sweep, ANN save, transforms fit and
    version cleanup): a new reader searches what the table holds, and the next index run
    repairs the rest, whatever the step."""
    pics = tmp_path / "pics"
    col = new_collection(tmp_path)
    old = write_solids(pics, 12)
    col.add([pics])  # transforms fitted at 12 rows: the killed run's 24 make them refit
    gone = tmp_path / "gone"
    gone.mkdir()
    for p in old[:4]:  # deleted (a copy kept to query with)
        os.replace(p, gone / p.name)
    later = time.time() + 5
    for p in old[4:7]:  # touched: new mtime, same bytes
        os.utime(p, (later, later))
    new = write_solids(pics, 16, start=100)
    on_disk = {str(p) for p in [*old[4:], *new]}
    queries = [*old[4:], *new, *(gone / p.name for p in old[:4])]

    kill_9_at(step, col.path, pics, tmp_path)

    reader = Collection.open(col.path, device="cpu")
    sources = assert_searches_its_table(reader, queries)
    if step == "touch":  # killed in the scan: nothing was indexed or removed yet
        assert sources == {str(p) for p in old}
    else:  # killed after the writes, in the maintainer: the table holds what is on disk
        assert sources == on_disk and (col.path / REFRESH_MARKER).exists()

    report = Collection.open(col.path, device="cpu").add([pics])
    assert report.indexed == (len(new) if step == "touch" else 0)
    assert not (col.path / REFRESH_MARKER).exists()
    healed = Collection.open(col.path, device="cpu")
    assert healed.maintainer.derived_problems() == []
    assert assert_searches_its_table(healed, queries) == on_disk
    assert healed.info()["items"] == len(on_disk)
    assert healed.searcher.transforms().params["fit"]["rows"] == len(on_disk)
