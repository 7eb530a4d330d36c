"""The collection's human name: set at `index --name` (or `Collection.create(name=)`), kept
across runs, by default the folder name of the first indexed root; shown by `info`, /api/info
and the UI's status line."""

from __future__ import annotations

import json

import httpx
import pytest
from support import ServerThread, tiny_model_args, write_shapes
from test_cli import run

from clipsearch.collection import Collection
from clipsearch.errors import UsageError


def test_default_is_the_first_roots_folder_and_a_set_name_is_kept(tmp_path):
    write_shapes(tmp_path / "Holiday", per_class=1)
    write_shapes(tmp_path / "Archive", per_class=1)
    col = Collection.create(tmp_path / "db", device="cpu", **tiny_model_args())
    assert col.name == tmp_path.name  # nothing indexed yet: the folder above its generic "db"
    col.add([tmp_path / "Holiday"], workers=1)
    assert col.name == "Holiday"
    col.add([tmp_path / "Archive"], workers=1)  # a later root does not rename it
    assert Collection.open(tmp_path / "db", device="cpu").name == "Holiday"

    col.name = "  Summer   2024 "
    again = Collection.open(tmp_path / "db", device="cpu")
    assert again.name == "Summer 2024" and again.info()["name"] == "Summer 2024"
    again.add(workers=1)  # a plain re-run keeps it
    assert Collection.open(tmp_path / "db", device="cpu").name == "Summer 2024"
    for bad in ("", "   ", "a\x00b", "x" * 500):
        with pytest.raises(UsageError):
            again.name = bad
    assert Collection.open(tmp_path / "db", device="cpu").name == "Summer 2024"


def test_create_with_a_name_and_a_bad_name_creates_nothing(tmp_path):
    col = Collection.create(tmp_path / "db", device="cpu", name="Family photos", **tiny_model_args())
    assert Collection.open(tmp_path / "db", device="cpu").name == "Family photos" == col.name
    with pytest.raises(UsageError):
        Collection.create(tmp_path / "other", device="cpu", name="\x07", **tiny_model_args())
    assert not Collection.exists(tmp_path / "other")


def test_cli_index_name_info_and_the_server(tmp_path):
    from clipsearch.ui.server import build_app

    write_shapes(tmp_path / "photos", per_class=1)
    db = str(tmp_path / "db")
    run("index", str(tmp_path / "photos"), "--db", db, "--model", "clipsearch-tiny", "-q",
        "--name", "Holiday 2024", check=True)
    run("index", "--db", db, "-q", check=True)  # a re-run without --name keeps it
    p = run("info", "--db", db, check=True)
    assert "name        Holiday 2024" in p.stdout.splitlines()
    assert json.loads(run("info", "--db", db, "--json", check=True).stdout)["name"] == "Holiday 2024"

    p = run("index", "--db", db, "-q", "--name", " ")
    assert p.returncode == 2 and "the collection name is empty" in p.stderr
    p = run("serve", "--db", db, "--name", "Other")  # serving without --watch writes nothing
    assert p.returncode == 2 and "--watch" in p.stderr
    assert Collection.open(db, device="cpu").name == "Holiday 2024"

    with ServerThread(build_app(db, device="cpu")) as srv:
        assert httpx.get(srv.url + "/api/info", timeout=60).json()["name"] == "Holiday 2024"
    from clipsearch.ui.api import SearchService

    assert "collection **Holiday 2024**" in SearchService(db, device="cpu").status_line()


def test_watch_and_serve_watch_take_a_name(tmp_path, monkeypatch):
    """`watch --name` and `serve --watch --name` name the collection they keep current (the
    watcher and the server themselves are stubbed: this is about the option)."""
    from click.testing import CliRunner
    from clipsearch.ui import server

    from clipsearch import watch as watch_module
    from clipsearch.cli import main

    write_shapes(tmp_path / "photos", per_class=1)
    col = Collection.create(tmp_path / "db", device="cpu", **tiny_model_args())
    col.add([tmp_path / "photos"], workers=1)
    monkeypatch.setattr(watch_module.Watcher, "run", lambda self, stop: None)
    monkeypatch.setattr(server, "serve", lambda *a, **k: None)
    db = str(tmp_path / "db")
    r = CliRunner().invoke(main, ["watch", "--db", db, "--name", "Watched"])
    assert r.exit_code == 0, r.output
    assert Collection.open(db, device="cpu").name == "Watched"
    r = CliRunner().invoke(main, ["serve", "--watch", "--db", db, "--name", "Served"])
    assert r.exit_code == 0, r.output
    assert Collection.open(db, device="cpu").name == "Served"
