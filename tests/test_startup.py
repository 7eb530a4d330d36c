"""Commands that need no model import neither torch nor open_clip (seconds and a GB of start-up).

Each command runs in a fresh interpreter that drives click's `main` and then reports which of
the heavy modules ended up in `sys.modules`; a run that does embed is the control that shows
the probe can see them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support import run_cli_fresh, tiny_model_args, write_shapes

HEAVY = ("torch", "open_clip", "lancedb", "lance", "pandas", "faiss")
NO_MODEL = {"torch", "open_clip"}
NO_TABLE = {"lancedb", "lance", "pandas"}  # a fresh catalog answers instead (clipsearch.catalog)


def run_cli(*args: str) -> tuple[int, list[str], str]:
    """(exit code, heavy modules loaded, output) of one command in a fresh interpreter."""
    p = run_cli_fresh(list(args), HEAVY)
    return p.code, p.loaded, p.stdout + p.stderr


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> tuple[Path, Path]:
    """(photo folder, collection) indexed once with clipsearch-tiny."""
    from clipsearch.collection import Collection

    args = tiny_model_args()
    base = tmp_path_factory.mktemp("startup")
    photos = base / "photos"
    write_shapes(photos, per_class=1)
    col = Collection.create(base / "db", device="cpu", **args)
    col.add([photos], workers=2)
    return photos, base / "db"


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["models"], ["index", "--help"]])
def test_commands_without_a_collection_load_no_model(args):
    code, loaded, out = run_cli(*args)
    assert code == 0, out
    assert "torch" not in loaded and "open_clip" not in loaded, out


def test_info_loads_no_model_no_table_and_no_faiss(indexed):
    _, db = indexed
    code, loaded, out = run_cli("info", "--db", str(db))
    assert code == 0, out
    assert loaded == [], out
    assert "items       12" in out and "image: IndexFlatIP" in out


def test_an_unchanged_index_run_loads_no_model_no_table_and_no_faiss(indexed):
    photos, db = indexed
    code, loaded, out = run_cli("index", "-q", "--db", str(db))
    assert code == 0, out
    assert "12 unchanged" in out
    assert loaded == [], out


def test_a_stale_catalog_is_not_used_and_the_unchanged_run_writes_it_again(indexed, tmp_path):
    """Without a catalog that matches the table, the table is read (lance imported); the
    unchanged run records it again, and the next run needs no table."""
    photos, db = indexed
    copy = tmp_path / "db"
    shutil.copytree(db, copy)  # a copy: new inodes and mtimes, so the catalog no longer matches
    code, loaded, out = run_cli("info", "--db", str(copy))
    assert code == 0 and "items       12" in out, out
    assert "lance" in loaded and not NO_MODEL & set(loaded), out
    code, loaded, out = run_cli("index", "-q", "--db", str(copy))
    assert code == 0 and "12 unchanged" in out, out
    assert "lance" in loaded, out
    code, loaded, out = run_cli("index", "-q", "--db", str(copy))
    assert code == 0 and "12 unchanged" in out, out
    assert loaded == [], out


def test_a_changed_file_is_seen_through_the_catalog(indexed, tmp_path):
    """The catalog's file states say what the table holds: a touched file's new mtime is
    noticed (and recorded) without the table being read first."""
    import os

    photos, db = indexed
    copy, pics = tmp_path / "db", tmp_path / "photos"
    shutil.copytree(photos, pics)
    model = tiny_model_args()["model"]
    code, _, out = run_cli("index", "-q", str(pics), "--db", str(copy), "--model", model, "--device", "cpu")
    assert code == 0 and "indexed 12 files" in out, out
    victim = sorted(pics.iterdir())[0]
    os.utime(victim, (1_000_000, 1_000_000))
    code, loaded, out = run_cli("index", "-q", "--db", str(copy))
    assert code == 0 and "12 unchanged" in out, out
    assert "lance" in loaded, out  # the new mtime is written to the table
    code, loaded, out = run_cli("index", "-q", "--db", str(copy))
    assert code == 0 and "12 unchanged" in out and loaded == [], out


def test_remove_loads_no_model(indexed, tmp_path):
    photos, db = indexed
    copy = tmp_path / "db"
    shutil.copytree(db, copy)
    victim = sorted(photos.iterdir())[0]
    code, loaded, out = run_cli("remove", str(victim), "--db", str(copy))
    assert code == 0, out
    assert "removed 1 files" in out
    assert not NO_MODEL & set(loaded), out


def test_a_run_with_a_new_file_does_load_the_model(indexed, tmp_path):
    """The control: the probe sees the model when a file needs embedding."""
    photos, db = indexed
    copy = tmp_path / "db"
    shutil.copytree(db, copy)
    extra = tmp_path / "more"
    write_shapes(extra, per_class=1, seed=99)
    code, loaded, out = run_cli("index", "-q", str(photos), str(extra), "--db", str(copy))
    assert code == 0, out
    assert "indexed 12 files" in out
    assert "open_clip" in loaded and "torch" in loaded, out


def test_the_presets_name_the_hub_files_open_clip_loads():
    """`models` checks presets' weights without open_clip: their hub files must be open_clip's."""
    import open_clip

    from clipsearch.model_registry import PRESETS

    known = [p for p in PRESETS.values() if p.hub_file]
    assert known
    for p in known:
        arch, tag = p.model.split("/", 1)
        assert p.hub_file == open_clip.get_pretrained_cfg(arch, tag).get("hf_hub"), p.name
