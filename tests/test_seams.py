"""The public seams between modules (index runs, the indexer protocol, the server's service) and
the pipeline's handling of bugs and of files whose re-index fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from clipsearch.indexers.base import default_indexers, indexer_for, is_batched, is_streaming
from clipsearch.indexers.image import ImageIndexer
from support import write_shapes

from clipsearch import Collection, pipeline
from clipsearch.cli import main

CLI = [sys.executable, "-m", "clipsearch.cli"]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLIPSEARCH_OFFLINE": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    write_shapes(tmp_path / "photos", per_class=1)
    return tmp_path / "photos"


def test_the_protocol_says_which_indexers_are_batched():
    kinds = {ix.medium: (is_batched(ix), is_streaming(ix)) for ix in default_indexers()}
    assert kinds["image"] == (True, False)
    assert kinds["video"][0] is False and kinds["document"][0] is False
    assert kinds["document"][1] is True
    assert indexer_for("video").medium == "video"
    with pytest.raises(ValueError):
        indexer_for("hologram")


def test_an_engine_indexes_through_the_public_index_run(tmp_path, photos):
    col = Collection.create(tmp_path / "db", model="clipsearch-tiny", device="cpu")
    with col.index_run([photos]) as run:
        assert run.roots == [os.fsencode(str(photos))]
        committer = run.committer(8)
        assert isinstance(committer, pipeline.Committer) and committer.thumb_dir == run.ctx.thumb_dir
        run.report = pipeline.run(run.store, col.encoder, run.roots, run.ctx, default_indexers(),
                                  rules=run.rules, progress=False)
    assert run.report.indexed == len(os.listdir(photos))
    assert (col.path / "skipped.log").is_file()  # the run's end happened on exit
    assert col.roots == [os.path.realpath(photos)]
    assert col.search(text="a red circle", k=1)  # derived state refreshed


def test_search_service_takes_an_open_collection(tmp_path, photos):
    from clipsearch.ui.api import SearchService

    col = Collection.create(tmp_path / "db", model="clipsearch-tiny", device="cpu")
    service = SearchService(col.path, device="cpu", collection=col)
    assert service.col is col


def test_a_bug_is_counted_apart_and_fails_the_cli(tmp_path, photos, monkeypatch):
    real = ImageIndexer.prepare

    def buggy(self, path, *args, **kwargs):
        if path.name == sorted(os.listdir(photos))[0]:
            raise ZeroDivisionError("a bug")
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(ImageIndexer, "prepare", buggy)
    r = CliRunner().invoke(main, ["index", str(photos), "--db", str(tmp_path / "db"),
                                  "--model", "clipsearch-tiny", "--device", "cpu", "-q"])
    assert r.exit_code == 1, r.output
    assert "1 of the skipped hit an unexpected error" in r.output
    assert "error: 1 file(s) skipped on an unexpected error" in r.output
    assert "hint:" in r.output and "--verbose" in r.output
    assert "ZeroDivisionError" in (tmp_path / "db" / "skipped.log").read_text()


def test_a_changed_file_that_fails_loses_its_old_rows(tmp_path, photos):
    col = Collection.create(tmp_path / "db", model="clipsearch-tiny", device="cpu")
    first, second = sorted(photos.iterdir())[:2]
    assert col.add([photos]).indexed == len(os.listdir(photos))
    first.write_bytes(b"\xff\xd8\xff\xe0 now a broken jpeg, fails to decode")  # pipeline skip
    second.write_bytes(b"plain words, no image any more")  # planner skip: not media inside
    report = col.add([photos])
    assert len(report.skipped) == 2 and report.removed == 2
    states = col.store.file_states()
    assert os.fsencode(str(first)) not in states and os.fsencode(str(second)) not in states
    hits = col.search(text="a shape", k=50)
    assert {h.source for h in hits}.isdisjoint({str(first), str(second)})


def test_a_typo_leaves_no_empty_collection(tmp_path):
    p = cli("index", str(tmp_path / "no_such_folder"), "--db", str(tmp_path / "db"),
            "--model", "clipsearch-tiny")
    assert p.returncode == 2 and "no such file or directory" in p.stderr
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize("meta", [{"schema_version": 1}, [1, 2], {"model": "x", "model_name": "x",
                                                                   "model_id": "x", "dim": 4}])
def test_a_damaged_clipsearch_json_is_one_line(tmp_path, meta):
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "clipsearch.json").write_text(json.dumps(meta))
    p = cli("info", "--db", str(tmp_path / "db"))
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert "clipsearch.json is damaged" in p.stderr and "hint:" in p.stderr


def test_one_containment_rule_for_str_and_bytes():
    from clipsearch.fsutil import folder_prefix, is_within

    assert is_within(b"/a/b/c", b"/a/b") and is_within("/a/b", "/a/b/") and is_within("/x", "/")
    assert not is_within(b"/a/bc", b"/a/b") and not is_within("/a", "/a/b")
    assert folder_prefix("/a/b/") == "/a/b/" and folder_prefix("/") == "/"


def test_write_atomic_replaces_whole_and_leaves_no_temp(tmp_path):
    from clipsearch.fsutil import write_atomic

    target = tmp_path / "f.json"
    target.write_text("old")
    write_atomic(target, "new")
    write_atomic(tmp_path / "g.bin", b"\x00\x01")
    assert target.read_text() == "new" and (tmp_path / "g.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "g.bin"]


def test_sql_in_quotes_every_value():
    from clipsearch.store import sql_in

    assert sql_in("kind", ("image", "it's")) == "kind IN ('image','it''s')"
