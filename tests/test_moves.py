"""Renames, moves and copies are recognised by content: rows follow the file, nothing is
embedded again (the encoder is made to fail), and nothing of the old path stays behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from support import tiny_model_args, write_pdf, write_segments_video, write_shapes

from clipsearch.collection import Collection
from clipsearch.encoders import Encoder
from clipsearch.records import Record, item_id


def _refuse(*_args, **_kwargs):
    raise AssertionError("the encoder ran for a file whose rows the collection already holds")


@contextlib.contextmanager
def no_encoding() -> Iterator[None]:
    """A block in which any embedding fails the test."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("encode_pixels", "encode_images", "encode_texts"):
            mp.setattr(Encoder, name, _refuse)
        yield


class CommitCounter(contextlib.AbstractContextManager):
    """Counts `Store.replace_sources` commits made inside the block."""

    def __enter__(self):
        from clipsearch.store import Store

        self.n, self._mp = 0, pytest.MonkeyPatch()
        real = Store.replace_sources

        def counted(store, items, delete=()):
            self.n += 1
            return real(store, items, delete)

        self._mp.setattr(Store, "replace_sources", counted)
        return self

    def __exit__(self, *exc):
        self._mp.undo()


def _col(tmp_path: Path, roots: list[Path]) -> Collection:
    col = Collection.create(tmp_path / "db", device="cpu", **tiny_model_args())
    col.add(roots, workers=2)
    return col


def _rows(col: Collection) -> dict[str, list[dict]]:
    """Per source, its rows (vector as float32) ordered by locator fields."""
    meta, vecs = col.store.vectors()
    out: dict[str, list[dict]] = {}
    for row, v in zip(meta.to_pylist(), vecs, strict=True):
        row["vector"] = v
        out.setdefault(row["source"], []).append(row)
    for rows in out.values():
        rows.sort(key=lambda r: (r["kind"], r["t_start"] or 0, r["t_end"] or 0, r["page"] or 0,
                                 r["text"] or ""))
    return out


def _locator(row: dict) -> str:
    extra = json.loads(row["extra"]) if row["extra"] else {}
    rec = Record(row["kind"], row["vector"], row["t_start"], row["t_end"], row["page"], extra=extra)
    return rec.locator()


def assert_followed(before: dict, after: dict, old: Path, new: Path, thumb_base: Path) -> None:
    """The rows of `old` are now those of `new`: same vectors, text, locators; new ids and
    path; thumbnails that exist under new names; nothing left at `old`."""
    assert str(old) not in after
    was, now = before[str(old)], after[str(new)]
    assert len(now) == len(was) > 0
    for a, b in zip(was, now, strict=True):
        assert np.array_equal(a["vector"], b["vector"])
        assert (a["kind"], a["t_start"], a["t_end"], a["page"], a["text"], a["extra"], a["content_hash"]) == \
               (b["kind"], b["t_start"], b["t_end"], b["page"], b["text"], b["extra"], b["content_hash"])
        assert b["source_raw"] == os.fsencode(new)
        assert b["id"] == item_id(os.fsencode(new), _locator(b))
        assert b["mtime"] == os.stat(new).st_mtime
        if a["thumb"]:
            assert b["thumb"] != a["thumb"] and not os.path.isabs(b["thumb"])
            assert (thumb_base / b["thumb"]).is_file()
            assert not (thumb_base / a["thumb"]).exists()  # the old name is nobody's now


def _image_hit_sources(col: Collection, image: Path, k: int = 3) -> list[str]:
    return [h.source for h in col.search(image=str(image), k=k, kind="image")]


def test_a_renamed_image_keeps_its_rows_and_is_not_embedded(tmp_path) -> None:
    lib = tmp_path / "lib"
    write_shapes(lib, per_class=1)
    col = _col(tmp_path, [lib])
    before = _rows(col)
    old = sorted(lib.iterdir())[0]
    new = old.with_name("renamed.jpg")
    old.rename(new)
    with no_encoding():
        report = col.add([lib])
    assert (report.moved, report.indexed, report.removed) == (1, 0, 0)
    assert "1 moved" in report.summary()
    after = _rows(col)
    assert_followed(before, after, old, new, col.path)
    assert set(after) == set(before) - {str(old)} | {str(new)}
    assert (col.path / "skipped.log").read_text().count("1 moved") == 1


def test_a_file_moved_to_another_folder_and_a_renamed_folder(tmp_path) -> None:
    lib = tmp_path / "lib"
    write_shapes(lib / "a", per_class=1)
    col = _col(tmp_path, [lib])
    before = _rows(col)
    files = sorted((lib / "a").iterdir())
    (lib / "b").mkdir()
    moved = lib / "b" / files[0].name
    files[0].rename(moved)
    (lib / "a").rename(lib / "c")
    with no_encoding():
        report = col.add([lib])
    assert (report.moved, report.indexed, report.removed) == (len(files), 0, 0)
    after = _rows(col)
    assert_followed(before, after, files[0], moved, col.path)
    for f in files[1:]:
        assert_followed(before, after, f, lib / "c" / f.name, col.path)
    assert len(after) == len(before)
    col.add([lib])  # and the next run finds everything unchanged
    assert _rows(col).keys() == after.keys()
    hits = _image_hit_sources(col, moved)
    assert hits[0] == str(moved)


@pytest.mark.parametrize("commit_files", [256, 1])  # 1: the two halves of the swap in two commits
def test_two_files_that_swap_names(tmp_path, commit_files) -> None:
    lib = tmp_path / "lib"
    write_shapes(lib, per_class=1)
    col = _col(tmp_path, [lib])
    before = _rows(col)
    a, b = sorted(lib.iterdir())[:2]
    tmp = lib / "swap.tmp"
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    commits = CommitCounter()
    with no_encoding(), commits:
        report = col.add([lib], commit_files=commit_files)
    assert commits.n == (2 if commit_files == 1 else 1)
    assert (report.moved, report.indexed, report.removed) == (2, 0, 0)
    after = _rows(col)
    assert np.array_equal(after[str(a)][0]["vector"], before[str(b)][0]["vector"])
    assert np.array_equal(after[str(b)][0]["vector"], before[str(a)][0]["vector"])
    assert len(after[str(a)]) == len(after[str(b)]) == 1
    assert _image_hit_sources(col, a)[0] == str(a)


def test_a_copy_is_indexed_from_the_rows_it_shares_content_with(tmp_path) -> None:
    lib = tmp_path / "lib"
    write_shapes(lib, per_class=1)
    col = _col(tmp_path, [lib])
    before = _rows(col)
    src = sorted(lib.iterdir())[0]
    copy = lib / "copy.jpg"
    shutil.copyfile(src, copy)
    with no_encoding():
        report = col.add([lib])
    assert (report.moved, report.indexed, report.removed) == (0, 1, 0)
    after = _rows(col)
    assert str(src) in after and np.array_equal(after[str(copy)][0]["vector"], before[str(src)][0]["vector"])
    assert after[str(copy)][0]["id"] == item_id(os.fsencode(copy), "image")


def test_a_moved_video_and_pdf_keep_rows_and_thumbnails(tmp_path) -> None:
    lib = tmp_path / "lib"
    (lib / "in").mkdir(parents=True)
    video = write_segments_video(lib / "in" / "clip.mp4")
    pdf = write_pdf(lib / "in" / "report.pdf")
    col = _col(tmp_path, [lib])
    before = _rows(col)
    thumbs_before = {p.name for p in col.thumb_dir.iterdir()}
    assert any(r["thumb"] for r in before[str(video)]) and any(r["thumb"] for r in before[str(pdf)])
    (lib / "out").mkdir()
    new_video, new_pdf = lib / "out" / "film.mp4", lib / "out" / "report.pdf"
    video.rename(new_video)
    pdf.rename(new_pdf)
    with no_encoding():
        report = col.add([lib])
    assert (report.moved, report.indexed, report.removed) == (2, 0, 0)
    after = _rows(col)
    assert_followed(before, after, video, new_video, col.path)
    assert_followed(before, after, pdf, new_pdf, col.path)
    named = {os.path.basename(r["thumb"]) for rows in after.values() for r in rows if r["thumb"]}
    assert {p.name for p in col.thumb_dir.iterdir()} == named  # the old names went
    assert len(named) == len(thumbs_before)
    docs = col.search(text="a red star", k=3, kind="doc")  # full-text and page rows follow
    videos = col.search(text="a red circle", k=3, kind="video")
    assert {h.source for h in docs} == {str(new_pdf)} and {h.source for h in videos} == {str(new_video)}
    assert all(h.thumb and Path(h.thumb).is_file() for h in docs + videos)
    moments = col.moments("a blue square", k=3)
    assert moments and {h.source for h in moments} == {str(new_video)}
    # A new video at the old path gets thumbnails of its own; the moved one keeps its.
    write_segments_video(video, fps=12)
    col.add([lib])
    for r in _rows(col)[str(new_video)]:
        assert not r["thumb"] or (col.path / r["thumb"]).is_file()


def test_a_move_between_two_roots_of_one_collection(tmp_path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    write_shapes(one, per_class=1)
    two.mkdir()
    col = _col(tmp_path, [one, two])
    before = _rows(col)
    old = sorted(one.iterdir())[0]
    new = two / old.name
    shutil.move(old, new)
    with no_encoding():
        report = col.add()  # every saved root
    assert (report.moved, report.indexed, report.removed) == (1, 0, 0)
    assert_followed(before, _rows(col), old, new, col.path)


def test_a_move_cut_short_is_finished_by_the_next_run(tmp_path, monkeypatch) -> None:
    """A crash after the first batch's commit (as a kill would leave it): the next run moves
    the rest, and no row is lost, doubled or left at an old path."""
    from clipsearch.store import Store

    lib = tmp_path / "lib"
    write_shapes(lib / "a", per_class=1)
    col = _col(tmp_path, [lib])
    before = _rows(col)
    (lib / "a").rename(lib / "b")
    real = Store.replace_sources
    calls = []

    def crash_after_one(self, items, delete=()):
        if calls:
            raise RuntimeError("killed")
        calls.append(len(items))
        return real(self, items, delete)

    with no_encoding(), monkeypatch.context() as mp:
        mp.setattr(Store, "replace_sources", crash_after_one)
        with pytest.raises(RuntimeError):
            col.add([lib], commit_files=2)
    assert calls == [2]
    half = _rows(col)
    assert len(half) == len(before) and sum(s.startswith(str(lib / "b")) for s in half) == 2
    with no_encoding():
        report = col.add([lib])
    assert (report.moved, report.indexed, report.removed) == (len(before) - 2, 0, 0)
    after = _rows(col)
    for old in before:
        assert_followed(before, after, Path(old), lib / "b" / Path(old).name, col.path)
    ids = col.store.scan(["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == len(before)


# ---- the decision alone (no model, no table) ------------------------------------------------
def _job(path: bytes, size: int, content: str | None = None, replaces: bool = False):
    from clipsearch.pipeline import Job

    return Job(path, 1.0, size, indexer=None, content_hash=content, replaces=replaces)  # type: ignore[arg-type]


def test_only_files_of_a_stored_size_are_hashed() -> None:
    from clipsearch.moves import find
    from clipsearch.store import FileState

    states = {b"/r/a.jpg": FileState(1.0, 100, "h100"), b"/r/b.jpg": FileState(1.0, 200, "h200")}
    hashed: list[bytes] = []

    def hash_file(path: bytes, size: int) -> str:
        hashed.append(path)
        return {b"/r/new.jpg": "h100", b"/r/other.jpg": "zzz"}[path]

    jobs = [_job(b"/r/new.jpg", 100), _job(b"/r/odd.jpg", 123), _job(b"/r/other.jpg", 200)]
    kept, gone, carries = find(jobs, [b"/r/a.jpg"], states, hash_file)
    assert sorted(hashed) == [b"/r/new.jpg", b"/r/other.jpg"]  # odd.jpg: no stored file of its size
    assert [j.path for j in kept] == [b"/r/odd.jpg", b"/r/other.jpg"] and gone == []
    assert [(c.path, c.donor, c.moved, c.donor_gone) for c in carries] == \
        [(b"/r/new.jpg", b"/r/a.jpg", True, True)]
    assert find([], [b"/r/a.jpg"], states, hash_file) == ([], [b"/r/a.jpg"], [])


def test_same_content_in_several_places_pairs_by_name_then_copies() -> None:
    from clipsearch.moves import find
    from clipsearch.store import FileState

    same = FileState(1.0, 10, "h")
    states = {b"/a/x.jpg": same, b"/a/y.jpg": same, b"/keep/z.jpg": same}
    jobs = [_job(b"/b/y.jpg", 10, "h"), _job(b"/b/x.jpg", 10, "h"), _job(b"/b/w.jpg", 10, "h")]
    kept, gone, carries = find(jobs, [b"/a/x.jpg", b"/a/y.jpg"], states, lambda p, s: "h")
    assert kept == [] and gone == []
    got = {c.path: (c.donor, c.moved) for c in carries}
    assert got[b"/b/y.jpg"] == (b"/a/y.jpg", True) and got[b"/b/x.jpg"] == (b"/a/x.jpg", True)
    assert got[b"/b/w.jpg"][1] is False  # a third file of that content is a copy


def test_a_new_video_at_a_moved_videos_old_path_leaves_its_thumbnails_alone(tmp_path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    video = write_segments_video(lib / "clip.mp4")
    col = _col(tmp_path, [lib])
    shots = {(r["t_start"], r["t_end"]): (col.path / r["thumb"]).read_bytes()
             for r in _rows(col)[str(video)] if r["kind"] == "video_frame" and r["thumb"]}
    assert shots
    moved = lib / "moved.mp4"
    video.rename(moved)
    write_segments_video(video, size=96)  # same name and frame times, other content, same run
    report = col.add([lib])
    assert (report.moved, report.indexed) == (1, 1)
    rows = _rows(col)
    for r in rows[str(moved)]:
        if r["kind"] == "video_frame" and r["thumb"]:
            assert (col.path / r["thumb"]).read_bytes() == shots[(r["t_start"], r["t_end"])]
    assert all((col.path / r["thumb"]).is_file() for r in rows[str(video)] if r["thumb"])
