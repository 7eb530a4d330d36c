"""The CLI through a real subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import write_shapes

CLI = [sys.executable, "-m", "clipsearch.cli"]


def run(*args: str, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    e = {**os.environ, "CLIPSEARCH_OFFLINE": "1", **(env or {})}
    p = subprocess.run([*CLI, *args], capture_output=True, text=True, env=e, timeout=600)
    if check and p.returncode:
        raise AssertionError(f"{args} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_shapes(root / "photos", per_class=2)
    (root / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    p = run("index", str(root / "photos"), "--db", str(root / "db"), "--model", "clipsearch-tiny",
            "-q", check=True)
    return root, p


def test_index_summary_counts(db):
    _, p = db
    assert "indexed 24 files" in p.stdout and "1 skipped" in p.stdout


def test_search_json(db):
    root, _ = db
    p = run("search", "a red star", "--db", str(root / "db"), "-k", "3", "--json", check=True)
    hits = json.loads(p.stdout)
    assert len(hits) == 3
    assert {"source", "kind", "score"} <= set(hits[0])
    assert any("red_star" in Path(h["source"]).name for h in hits)


def test_search_by_image_and_kind(db):
    root, _ = db
    q = root / "photos" / "blue_square_1.jpg"
    p = run("search", "--image", str(q), "--db", str(root / "db"), "--kind", "image", "--json", check=True)
    assert json.loads(p.stdout)[0]["source"] == str(q)


def test_info_json(db):
    root, _ = db
    info = json.loads(run("info", "--db", str(root / "db"), "--json", check=True).stdout)
    assert info["items"] == 24 and info["sources"] == 24
    assert info["model"] == "clipsearch-tiny" and info["dim"] > 0


def test_db_from_environment(db):
    root, _ = db
    p = run("info", "--json", env={"CLIPSEARCH_DB": str(root / "db")}, check=True)
    assert json.loads(p.stdout)["items"] == 24


def test_strict_turns_skips_into_failure(db):
    root, _ = db
    assert run("index", str(root / "photos"), "--db", str(root / "db"), "-q").returncode == 0
    assert run("index", str(root / "photos"), "--db", str(root / "db"), "-q", "--strict").returncode == 1


def test_errors_are_one_line_with_hint(tmp_path):
    p = run("search", "x", "--db", str(tmp_path / "none"))
    assert p.returncode == 1
    assert p.stderr.startswith("error: no collection") and "hint:" in p.stderr
    assert "Traceback" not in p.stderr


def test_usage_error_exit_code_2(db):
    root, _ = db
    p = run("search", "--db", str(root / "db"))
    assert p.returncode == 2 and "Traceback" not in p.stderr


def test_default_model_offline_names_the_ways_forward(tmp_path):
    (tmp_path / "in").mkdir()
    p = run("index", str(tmp_path / "in"), "--db", str(tmp_path / "db"))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "ViT-B-32/laion2b_s34b_b79k" in p.stderr
    assert "clipsearch-tiny" in p.stderr and "--checkpoint" in p.stderr
    assert not (tmp_path / "db" / "clipsearch.json").exists()  # nothing half-created


def test_models_lists_presets():
    p = run("models", "--json", check=True)
    rows = {r["name"]: r for r in json.loads(p.stdout)}
    assert rows["tiny"]["weights"] == "local"
    assert rows["balanced"]["weights"] in ("missing", "local")
    assert "retrieval" in rows and "long-text" in rows


def test_help_is_helpful():
    p = run("index", "--help", check=True)
    for flag in ("--db", "--model", "--checkpoint", "--device", "--batch-size", "--workers", "--strict"):
        assert flag in p.stdout


def test_decode_gpu_without_cuda_is_a_clear_usage_error(tmp_path):
    """--decode gpu on a CPU model (and with the Ray engine) fails up front, naming the fix, and
    leaves no half-made collection behind."""
    write_shapes(tmp_path / "in", per_class=1)
    p = run("index", str(tmp_path / "in"), "--db", str(tmp_path / "db"), "--model", "clipsearch-tiny",
            "--device", "cpu", "--decode", "gpu")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "--decode gpu needs the encoder on a CUDA device" in p.stderr and "--decode cpu" in p.stderr
    assert not (tmp_path / "db").exists()
    p = run("index", str(tmp_path / "in"), "--db", str(tmp_path / "db2"), "--engine", "ray",
            "--decode", "gpu")
    assert p.returncode == 2 and "--engine local" in p.stderr
    assert not (tmp_path / "db2").exists()


def test_index_counts_a_renamed_file_as_moved(tmp_path):
    photos, db = tmp_path / "photos", str(tmp_path / "db")
    write_shapes(photos, per_class=1)
    run("index", str(photos), "--db", db, "--model", "clipsearch-tiny", "-q", check=True)
    first = sorted(photos.iterdir())[0]
    first.rename(photos / "renamed.jpg")
    p = run("index", "--db", db, "-q", check=True)
    assert "indexed 0 files" in p.stdout and "1 moved, 0 removed" in p.stdout, p.stdout


def test_the_summary_says_how_busy_the_encoder_was():
    """The encoder's share of the image phase: the figure that says whether decoding keeps up."""
    from clipsearch.pipeline import IndexReport

    r = IndexReport(indexed=300, items=300, image_seconds=40.0, encode_seconds=36.0)
    assert r.encoder_busy == pytest.approx(0.9)
    assert "encoder busy 90% of 40.0 s of images" in r.summary()
    quick = IndexReport(indexed=1, items=1, image_seconds=0.2, encode_seconds=0.1)
    assert quick.encoder_busy is None and "encoder busy" not in quick.summary()  # too short to mean much
