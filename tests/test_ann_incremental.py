"""The saved ANN index follows the table incrementally (`ann.update_saved`), and readers see
every write at once through the exact delta (`ann_live.LiveAnn`) without building anything."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import faiss
import numpy as np
import pytest

from clipsearch.ann import POINTER, AnnIndex, update_saved
from clipsearch.ann_live import LiveAnn
from clipsearch.records import Record
from clipsearch.store import SourceRows, Store

DIM = 16
THRESHOLD = 500  # exact below, IVF from here: small enough for a test


def _unit(v):
    v = np.atleast_2d(np.asarray(v, np.float32))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _clustered(rng, n, centres):
    return _unit(centres[rng.integers(0, len(centres), n)] + 0.25 * rng.normal(size=(n, DIM)))


def _image(i: int, vec, h: str = "h") -> SourceRows:
    return SourceRows(f"/p/{i}.jpg".encode(), 1.0, 10, h, [Record(kind="image", vector=vec)])


def _fill(store: Store, vecs, start: int = 0) -> None:
    store.replace_sources([_image(start + i, v) for i, v in enumerate(vecs)])


def _reader(store: Store, ann_dir) -> LiveAnn:
    """What a searching process sees: the saved index as loaded from disk, plus the delta."""
    return LiveAnn(store, AnnIndex.load(ann_dir), ann_dir)


def _live_top(store: Store, ann: LiveAnn, q, k: int, **kw) -> list[str]:
    """Top k ids after hydration through the table, as `Searcher.search` does."""
    raw = ann.search(q, k, **kw)[0]
    alive = set(store.rows_by_id([i for i, _ in raw]).column("id").to_pylist())
    return [i for i, _ in raw if i in alive][:k]


def _exact_top(store: Store, queries, k: int) -> list[list[str]]:
    meta, vecs = store.vectors("kind = 'image'")
    ids = np.array(meta.column("id").to_pylist(), dtype=object)
    order = np.argsort(-(queries @ vecs.T), axis=1, kind="stable")[:, :k]
    return [list(ids[o]) for o in order]


def _recall(store: Store, ann, queries, k: int = 10) -> float:
    exact = _exact_top(store, queries, k)
    got = [_live_top(store, ann, q, k) for q in queries]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(exact, got, strict=True)]))


def _centroids(shard) -> np.ndarray:
    ivf = faiss.extract_index_ivf(shard.index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


@pytest.fixture
def flat(tmp_path):
    rng = np.random.default_rng(0)
    store = Store(tmp_path / "db", DIM)
    _fill(store, _unit(rng.normal(size=(40, DIM))))
    ann_dir = tmp_path / "ann"
    update_saved(store, ann_dir)
    return store, ann_dir, rng


def _id(store: Store, i: int) -> str:
    return store.scan(["id"], f"source = '/p/{i}.jpg'").column("id").to_pylist()[0]


# ---- readers -----------------------------------------------------------------------------------
def test_a_reader_sees_new_rows_at_once_and_saves_nothing(flat):
    store, ann_dir, rng = flat
    pointer = (ann_dir / POINTER).read_bytes()
    new = _unit(rng.normal(size=DIM))
    _fill(store, new, start=100)
    reader = _reader(store, ann_dir)
    assert reader.saved is not None and reader.saved.version < store.version
    assert _live_top(store, reader, new[0], 1) == [_id(store, 100)]
    assert (ann_dir / POINTER).read_bytes() == pointer  # a reader neither builds nor saves
    assert sorted(p.name for p in ann_dir.iterdir()) == [POINTER, f"v{reader.saved.version}"]


def test_deleted_rows_never_come_back_and_k_hits_still_come(flat):
    store, ann_dir, _ = flat
    _, vecs = store.vectors("kind = 'image'")
    q = vecs[0]
    nearest = _exact_top(store, q[None], 12)[0]
    gone = store.rows_by_id(nearest[:8]).column("source_raw").to_pylist()
    store.delete_sources(gone)
    got = _live_top(store, _reader(store, ann_dir), q, 5)
    assert len(got) == 5 and not set(got) & set(nearest[:8])
    assert got == _exact_top(store, q[None], 5)[0]


def test_a_replaced_files_new_vector_wins(flat):
    store, ann_dir, rng = flat
    _, vecs = store.vectors("kind = 'image'")
    old_vec = vecs[3]
    new_vec = _unit(rng.normal(size=DIM))[0]
    store.replace_sources([_image(3, new_vec, h="h2")])
    reader = _reader(store, ann_dir)
    rid = _id(store, 3)
    top = reader.search(new_vec, 3)[0]
    assert top[0][0] == rid and top[0][1] == pytest.approx(1.0, abs=1e-3)
    hits = reader.search(old_vec, 40)[0]
    assert [s for i, s in hits if i == rid] == [pytest.approx(float(new_vec @ old_vec), abs=1e-2)]


def test_without_a_saved_index_a_reader_searches_the_table_exactly(tmp_path, caplog):
    rng = np.random.default_rng(1)
    store = Store(tmp_path / "db", DIM)
    vecs = _unit(rng.normal(size=(30, DIM)))
    _fill(store, vecs)
    reader = _reader(store, tmp_path / "ann")
    assert reader.saved is None and not (tmp_path / "ann").exists()
    assert _live_top(store, reader, vecs[7], 5) == _exact_top(store, vecs[7][None], 5)[0]


# ---- the writer --------------------------------------------------------------------------------
@pytest.fixture
def ivf(tmp_path):
    rng = np.random.default_rng(2)
    centres = _unit(rng.normal(size=(12, DIM)))
    store = Store(tmp_path / "db", DIM)
    _fill(store, _clustered(rng, 600, centres))
    ann_dir = tmp_path / "ann"
    first = update_saved(store, ann_dir, exact_threshold=THRESHOLD)
    shard = first.shards["image"]
    assert not shard.exact and shard.trained == 600
    return store, ann_dir, rng, centres, _centroids(shard)


def test_an_ivf_shard_takes_new_rows_and_deletions_without_retraining(ivf):
    store, ann_dir, rng, centres, before = ivf
    _fill(store, _clustered(rng, 300, centres), start=1000)  # 900 rows: below 2x the 600 trained
    store.delete_sources([f"/p/{i}.jpg".encode() for i in range(50)])
    replaced = _clustered(rng, 1, centres)[0]
    store.replace_sources([_image(60, replaced, h="h2")])
    idx = update_saved(store, ann_dir, exact_threshold=THRESHOLD)
    shard = idx.shards["image"]
    assert shard.trained == 600 and np.array_equal(_centroids(shard), before)  # not retrained
    assert len(shard) == 901 and shard.live == 850 == store.count()  # 1 replaced: tombstone + add
    queries = _clustered(rng, 40, centres)
    reader = _reader(store, ann_dir)
    assert reader.saved.version == store.version and _recall(store, reader, queries) >= 0.95
    assert _live_top(store, reader, replaced, 1) == [_id(store, 60)]
    assert AnnIndex.problem(ann_dir, version=store.version, rows=store.count()) is None


def test_deletions_alone_keep_the_ivf_files_and_save_tombstones(ivf):
    store, ann_dir, *_ = ivf
    faiss_file = AnnIndex.load(ann_dir).shards.saved_entry("image").path("faiss")
    inode = faiss_file.stat().st_ino
    store.delete_sources([f"/p/{i}.jpg".encode() for i in range(10)])
    update_saved(store, ann_dir, exact_threshold=THRESHOLD)
    saved = AnnIndex.load(ann_dir)
    entry = saved.shards.saved_entry("image")
    assert entry.path("faiss").stat().st_ino == inode and entry.entry["dead"]["count"] == 10
    assert len(saved) == store.count() == 590
    gone = {f"/p/{i}.jpg" for i in range(10)}
    _, vecs = store.vectors()
    hits = saved.search(vecs[:20], 50, kinds=("image",))
    ids = {i for row in hits for i, _ in row}
    assert not gone & set(store.rows_by_id(list(ids)).column("source").to_pylist())
    assert len(ids) > 50 and saved.shards["image"].live == 590


def test_growth_past_twice_the_training_size_retrains(ivf):
    store, ann_dir, rng, centres, before = ivf
    _fill(store, _clustered(rng, 700, centres), start=1000)  # 1300 rows > 2 x 600
    shard = update_saved(store, ann_dir, exact_threshold=THRESHOLD).shards["image"]
    assert shard.trained == 1300 and len(shard) == 1300
    assert _centroids(shard).shape != before.shape or not np.array_equal(_centroids(shard), before)


def test_full_retrains_and_drops_tombstones(ivf):
    store, ann_dir, *_ = ivf
    store.delete_sources([f"/p/{i}.jpg".encode() for i in range(20)])
    update_saved(store, ann_dir, exact_threshold=THRESHOLD)
    assert AnnIndex.load(ann_dir).shards["image"].live == 580
    shard = update_saved(store, ann_dir, exact_threshold=THRESHOLD, full=True).shards["image"]
    assert len(shard.dead) == 0 and len(shard) == shard.trained == 580


def test_a_flat_shard_appends_and_removes_for_real(flat):
    store, ann_dir, rng = flat
    store.delete_sources([b"/p/0.jpg"])
    _fill(store, _unit(rng.normal(size=(5, DIM))), start=200)
    shard = update_saved(store, ann_dir).shards["image"]
    assert shard.exact and len(shard) == 44 and len(shard.dead) == 0
    assert "/p/0.jpg" not in set(shard.sources) and "/p/204.jpg" in set(shard.sources)


def test_crossing_the_exact_threshold_builds_an_ivf_shard(tmp_path):
    rng = np.random.default_rng(3)
    centres = _unit(rng.normal(size=(8, DIM)))
    store = Store(tmp_path / "db", DIM)
    _fill(store, _clustered(rng, 400, centres))
    assert update_saved(store, tmp_path / "ann", exact_threshold=THRESHOLD).shards["image"].exact
    _fill(store, _clustered(rng, 200, centres), start=1000)
    assert not update_saved(store, tmp_path / "ann", exact_threshold=THRESHOLD).shards["image"].exact


def test_a_compaction_is_retagged_without_rewriting_shards(ivf):
    """Compaction rewrites every fragment, so every row looks new to a reader until the writer
    re-tags the index; the re-tag links the shard files instead of rewriting them."""
    store, ann_dir, rng, centres, _ = ivf
    for start in (2000, 3000, 4000):  # small commits: fragments for compaction to merge
        _fill(store, _clustered(rng, 10, centres), start=start)
    update_saved(store, ann_dir, exact_threshold=THRESHOLD)
    inode = AnnIndex.load(ann_dir).shards.saved_entry("image").path("faiss").stat().st_ino
    store.table.optimize()
    assert _reader(store, ann_dir)._newer == store.count()  # before the re-tag: all in the delta
    update_saved(store, ann_dir, exact_threshold=THRESHOLD)
    reader = _reader(store, ann_dir)
    assert reader._newer == 0 and reader.saved.version == store.version
    assert reader.shards.saved_entry("image").path("faiss").stat().st_ino == inode


KILLED_UPDATE = textwrap.dedent("""
    import os, signal, sys
    import clipsearch.ann as ann
    from clipsearch.store import Store

    real = ann._write_shard
    def write_then_die(*args):
        real(*args)
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 with a shard written, no manifest yet
    ann._write_shard = write_then_die
    ann.update_saved(Store(sys.argv[1], int(sys.argv[3])), sys.argv[2], exact_threshold=int(sys.argv[4]))
""")


def test_a_kill_during_the_update_leaves_a_searchable_index_repaired_by_the_next(ivf):
    store, ann_dir, rng, centres, before = ivf
    new = _clustered(rng, 100, centres)
    _fill(store, new, start=5000)
    store.delete_sources([f"/p/{i}.jpg".encode() for i in range(30)])
    pointer = (ann_dir / POINTER).read_bytes()
    child = subprocess.run([sys.executable, "-c", KILLED_UPDATE, store.db_dir, str(ann_dir), str(DIM),
                            str(THRESHOLD)], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert child.returncode == -9, child.stderr
    assert (ann_dir / POINTER).read_bytes() == pointer  # the old index is still the one in use
    assert [p for p in ann_dir.iterdir() if ".tmp-" in p.name]  # the killed writer's partial folder
    queries = _clustered(rng, 30, centres)
    reader = _reader(store, ann_dir)
    assert reader.saved.version < store.version and _recall(store, reader, queries) >= 0.95
    assert _live_top(store, reader, new[0], 1) == [_id(store, 5000)]
    update_saved(store, ann_dir, exact_threshold=THRESHOLD)
    assert AnnIndex.problem(ann_dir, version=store.version, rows=store.count()) is None
    after = _reader(store, ann_dir)
    assert after._newer == 0 and _recall(store, after, queries) >= 0.95
    assert np.array_equal(_centroids(after.shards["image"]), before)


def test_a_query_reads_only_the_shards_of_its_kinds_and_a_damaged_one_is_searched_exactly(flat, caplog):
    store, ann_dir, rng = flat
    frames = _unit(rng.normal(size=(6, DIM)))
    records = [Record(kind="video_frame", vector=v, t_start=float(i), t_end=float(i))
               for i, v in enumerate(frames)]
    store.replace_sources([SourceRows(b"/p/v.mp4", 1.0, 10, "hv", records)])
    update_saved(store, ann_dir)
    reader = _reader(store, ann_dir)
    _, vecs = store.vectors("kind = 'image'")
    assert reader.search(vecs[0], 1, kinds=("image",))[0][0][1] == pytest.approx(1.0, abs=1e-3)
    assert reader.shards.loaded("image") is not None and reader.shards.loaded("video_frame") is None
    video = reader.shards.saved_entry("video_frame").path("faiss")
    video.write_bytes(os.urandom(video.stat().st_size))  # same size: only the CRC can tell
    fresh = _reader(store, ann_dir)
    top = fresh.search(frames[2], 1, kinds=("video_frame",))[0]
    assert top[0][1] == pytest.approx(1.0, abs=1e-3)  # found exactly, from the table
    assert any("not the file its manifest names" in r.getMessage() for r in caplog.records)
    assert "not the file" in AnnIndex.problem(ann_dir)
    update_saved(store, ann_dir)  # the writer replaces the damaged shard
    assert AnnIndex.problem(ann_dir, version=store.version, rows=store.count()) is None


def test_a_collection_reader_finds_rows_written_after_the_save(tmp_path):
    """Through `Collection.search`: rows another writer committed (no refresh yet) are found,
    and a deleted file's rows are not, while the saved index stays as it was."""
    from support import add_rows, tiny_model_args, write_shapes

    from clipsearch import Collection

    if not tiny_model_args():
        pytest.skip("clipsearch-tiny is not installed")
    photos = tmp_path / "photos"
    write_shapes(photos, per_class=1, size=64)
    col = Collection.create(tmp_path / "db", model="clipsearch-tiny", device="cpu")
    col.add([photos])
    pointer = (tmp_path / "db" / "ann" / POINTER).read_bytes()
    reader = Collection.open(tmp_path / "db", device="cpu")
    probe = reader.embed_text("a red star")
    extra = photos / "written_later.jpg"
    extra.write_bytes(b"")
    add_rows(col, extra, "image", probe)
    victim = next(h for h in reader.search(text="a blue circle", k=3) if h.source != str(extra))
    col.store.delete_sources([os.fsencode(victim.source)])
    hits = reader.search(text="a red star", k=3)
    assert hits[0].source == str(extra)
    assert victim.source not in {h.source for h in reader.search(text="a blue circle", k=30)}
    assert (tmp_path / "db" / "ann" / POINTER).read_bytes() == pointer


# ---- the saved layout: a base plus appended segments ------------------------------------------
def _files(ann_dir) -> dict[str, tuple[int, int]]:
    """Current version's files: name -> (inode, mtime_ns)."""
    d = AnnIndex.load(ann_dir).shards.saved_entry("image").folder
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in d.iterdir()}


def _base_files(entry) -> list[str]:
    return [entry.path("faiss").name, entry.path("meta").name]


def test_new_rows_are_appended_as_a_small_segment_and_the_base_is_untouched(ivf):
    store, ann_dir, rng, centres, before = ivf
    base = AnnIndex.load(ann_dir).shards.saved_entry("image")
    old = _files(ann_dir)
    new = _clustered(rng, 20, centres)  # 20 rows: under SEGMENT_MERGE_SHARE of the 600 in the base
    _fill(store, new, start=7000)
    store.delete_sources([b"/p/3.jpg"])
    update_saved(store, ann_dir, exact_threshold=THRESHOLD)
    entry = AnnIndex.load(ann_dir).shards.saved_entry("image")
    now = _files(ann_dir)
    for name in _base_files(base):  # the base's files: linked, same inode and mtime
        assert now[name] == old[name]
    assert [g["rows"] for g in entry.segments] == [20] and entry.entry["dead"]["count"] == 1
    seg = entry.folder / entry.segments[0]["file"]
    assert seg.stat().st_size < entry.path("faiss").stat().st_size / 5  # 20 rows against 600
    # readers see base + segment: the new rows by their own vectors, the deleted one never
    reader = _reader(store, ann_dir)
    assert reader._newer == 0 and len(reader.shards["image"]) == 620
    assert _live_top(store, reader, new[5], 1) == [_id(store, 7005)]
    assert _recall(store, reader, _clustered(rng, 30, centres)) >= 0.95
    assert np.array_equal(_centroids(reader.shards["image"]), before)
    assert AnnIndex.problem(ann_dir, version=store.version, rows=store.count()) is None


def test_segments_merge_into_the_base_once_they_grow(ivf):
    store, ann_dir, rng, centres, before = ivf
    base = _base_files(AnnIndex.load(ann_dir).shards.saved_entry("image"))
    for start in (8000, 8100):  # 2 x 40 rows: the second takes the segments past 10% of 600
        _fill(store, _clustered(rng, 40, centres), start=start)
        update_saved(store, ann_dir, exact_threshold=THRESHOLD)
        entry = AnnIndex.load(ann_dir).shards.saved_entry("image")
        if start == 8000:
            assert [g["rows"] for g in entry.segments] == [40]
            first = _files(ann_dir)
    assert entry.segments == [] and entry.entry["base_rows"] == 680 == store.count()
    assert _files(ann_dir)[base[0]] != first[base[0]]  # a new base was written
    shard = AnnIndex.load(ann_dir).shards["image"]
    assert shard.trained == 600 and np.array_equal(_centroids(shard), before)
    assert _recall(store, _reader(store, ann_dir), _clustered(rng, 30, centres)) >= 0.95


def test_a_damaged_segment_is_searched_exactly_and_the_next_run_adds_its_rows_again(ivf, caplog):
    store, ann_dir, rng, centres, _ = ivf
    new = _clustered(rng, 20, centres)
    _fill(store, new, start=9000)
    update_saved(store, ann_dir, exact_threshold=THRESHOLD)
    entry = AnnIndex.load(ann_dir).shards.saved_entry("image")
    base = _base_files(entry)
    seg = entry.folder / entry.segments[0]["file"]
    seg.write_bytes(os.urandom(seg.stat().st_size))  # same size: only the CRC can tell
    assert "not the file" in AnnIndex.problem(ann_dir)
    reader = _reader(store, ann_dir)
    assert _live_top(store, reader, new[7], 1) == [_id(store, 9007)]  # exactly, from the table
    old = _files(ann_dir)
    update_saved(store, ann_dir, exact_threshold=THRESHOLD)
    assert any("segment 0 is damaged" in r.getMessage() for r in caplog.records)
    assert AnnIndex.problem(ann_dir, version=store.version, rows=store.count()) is None
    entry = AnnIndex.load(ann_dir).shards.saved_entry("image")
    assert [g["rows"] for g in entry.segments] == [20]
    assert all(_files(ann_dir)[name] == old[name] for name in base)  # the base was not rebuilt
    after = _reader(store, ann_dir)
    assert after._newer == 0 and _live_top(store, after, new[7], 1) == [_id(store, 9007)]


def test_an_index_saved_in_the_previous_format_is_rebuilt_not_misread(ivf, caplog):
    import json

    from clipsearch.ann import MANIFEST, _self_checksum

    store, ann_dir, *_ = ivf
    d = AnnIndex.load(ann_dir).shards.saved_entry("image").folder
    manifest = json.loads((d / MANIFEST).read_text())
    manifest["format"] = 3
    manifest["checksum"] = _self_checksum(manifest)
    (d / MANIFEST).write_text(json.dumps(manifest))
    assert "older one" in AnnIndex.problem(ann_dir)
    assert AnnIndex.load(ann_dir) is None  # readers search the table exactly
    update_saved(store, ann_dir, exact_threshold=THRESHOLD)
    assert AnnIndex.problem(ann_dir, version=store.version, rows=store.count()) is None


def test_rows_added_before_a_compaction_are_read_by_id_not_by_a_whole_table_scan(ivf, monkeypatch):
    """A compaction rewrites every fragment, so the watermark no longer tells the new rows
    apart; they are found by id, and no scan of every row's vector (`gather_rows`) is made."""
    import clipsearch.ann as ann

    store, ann_dir, rng, centres, _ = ivf
    new = _clustered(rng, 15, centres)
    for start in (9500, 9600, 9700):  # small commits for compaction to merge
        _fill(store, new[(start - 9500) // 20:(start - 9500) // 20 + 5], start=start)
    store.table.optimize()

    def whole_table_scan(*_a, **_k):
        raise AssertionError("the new rows were read by a scan of the whole table")

    monkeypatch.setattr(ann, "gather_rows", whole_table_scan)
    monkeypatch.setattr(ann, "BUILD_BATCH_ROWS", 0)  # as at scale: the rewritten fragments are many rows
    update_saved(store, ann_dir, exact_threshold=THRESHOLD)
    entry = AnnIndex.load(ann_dir).shards.saved_entry("image")
    assert [g["rows"] for g in entry.segments] == [15]
    reader = _reader(store, ann_dir)
    assert reader._newer == 0 and _live_top(store, reader, new[12], 1) == [_id(store, 9702)]


def _crc_reads(monkeypatch) -> list[str]:
    """The paths of the saved files read whole to compute their CRC, from now on."""
    from clipsearch import ann

    read: list[str] = []
    real = ann.file_check

    def spy(path):
        read.append(str(path))
        return real(path)

    monkeypatch.setattr(ann, "file_check", spy)
    return read


def test_a_copied_index_is_proved_once_by_its_crc_then_trusted_by_its_stat(ivf, tmp_path, monkeypatch):
    import shutil

    store, ann_dir, rng, centres, _ = ivf
    copied = tmp_path / "copied"
    shutil.copytree(ann_dir, copied)  # new inodes: the recorded stats no longer match
    read = _crc_reads(monkeypatch)
    store.clear_changes()  # the writer's log starts at the saved version, as after a run
    _fill(store, _clustered(rng, 5, centres), start=8000)
    update_saved(store, copied, exact_threshold=THRESHOLD)
    assert any(n.endswith(".faiss") for n in read), "a copied FAISS file was trusted unread"
    read.clear()
    store.clear_changes()
    saved = {str(p) for p in AnnIndex.load(copied).shards.saved_entry("image").folder.iterdir()}
    _fill(store, _clustered(rng, 5, centres), start=8100)
    update_saved(store, copied, exact_threshold=THRESHOLD)
    assert not set(read) & saved, "a file proved by its CRC in the previous run was read again"
    assert read, "the new segment's CRC was not computed as it was written"
    reader = _reader(store, copied)
    assert len(reader.shards["image"]) == 610
    assert _recall(store, reader, _clustered(rng, 20, centres)) >= 0.95


def test_the_writer_records_a_copied_index_stat_and_never_a_damaged_file(ivf, tmp_path, monkeypatch):
    import shutil

    store, ann_dir, _, _, _ = ivf
    version, rows = store.version, store.count()
    good, bad = tmp_path / "good", tmp_path / "bad"
    shutil.copytree(ann_dir, good)
    shutil.copytree(ann_dir, bad)
    faiss_file = next(bad.glob("v*/*.faiss"))
    data = bytearray(faiss_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    faiss_file.write_bytes(bytes(data))
    read = _crc_reads(monkeypatch)
    assert AnnIndex.problem(good, version=version, rows=rows, restat=True) is None
    assert read, "the copied files were not proved"
    read.clear()
    assert AnnIndex.problem(good, version=version, rows=rows) is None
    assert read == [], "the stats proved by CRC were not recorded"
    manifest = next(bad.glob("v*/shards.json")).read_text()
    assert "damaged" in (AnnIndex.problem(bad, version=version, rows=rows, restat=True) or "")
    assert next(bad.glob("v*/shards.json")).read_text() == manifest, "a damaged file's stat was recorded"
    assert "damaged" in (AnnIndex.problem(bad, version=version, rows=rows) or "")


def test_a_copied_collection_is_proved_by_its_next_run_and_trusted_by_the_one_after(tmp_path, monkeypatch):
    import shutil

    from support import shapes_collection

    from clipsearch import Collection

    _, media = shapes_collection(tmp_path)
    shutil.copytree(tmp_path / "db", tmp_path / "copy")  # a restored backup: every inode new
    read = _crc_reads(monkeypatch)
    report = Collection.open(tmp_path / "copy", device="cpu").add([media], ocr="off")
    assert report.indexed == 0 and any(p.endswith(".faiss") for p in read)
    saved = {str(p) for p in (tmp_path / "copy" / "ann").rglob("*") if p.is_file()}
    read.clear()
    files = sorted(media.iterdir())
    (media / "new.jpg").write_bytes(files[0].read_bytes()[:-10] + b"0123456789")
    report = Collection.open(tmp_path / "copy", device="cpu").add([media], ocr="off")
    assert report.indexed == 1
    assert not set(read) & saved, "a run read a proved file again"
    col = Collection.open(tmp_path / "copy", device="cpu")
    assert str(media / "new.jpg") in {h.source for h in col.search(image=media / "new.jpg", k=3)}
