"""Browsing without a query, by typicality: outliers planted among shapes come first.

`search --sort typicality` only reorders a query's nearest neighbours, so it cannot find what
does not belong; `browse` ranks the whole collection.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from clipsearch import Collection
from clipsearch.errors import TransformError, UsageError
from clipsearch.model_registry import tiny_files
from clipsearch.tiny.synth.shapes import random_spec, render_shape

pytestmark = pytest.mark.skipif(not all(p.is_file() for p in tiny_files()),
                                reason="clipsearch-tiny is not installed")
SHAPES = 170  # enough image vectors for a (reduced) whitening fit with clipsearch-tiny


def write_outliers(folder: Path) -> set[str]:
    """Three pictures that are not shapes: a page of text, stripes, noise."""
    folder.mkdir(parents=True, exist_ok=True)
    text = Image.new("RGB", (96, 96), "white")
    draw = ImageDraw.Draw(text)
    for y in range(4, 92, 10):
        draw.text((4, y), "lorem ipsum dolor sit", fill="black")
    text.save(folder / "text.png")
    stripes = np.zeros((96, 96, 3), np.uint8)
    stripes[::6], stripes[1::6] = (255, 0, 255), (0, 255, 0)
    Image.fromarray(stripes).save(folder / "stripes.png")
    noise = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "noise.png")
    return {str(folder / n) for n in ("text.png", "stripes.png", "noise.png")}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """(collection, paths of the planted outliers, shapes folder)."""
    root = tmp_path_factory.mktemp("browse")
    rng = np.random.default_rng(0)
    shapes = root / "lib" / "shapes"
    shapes.mkdir(parents=True)
    for i in range(SHAPES):
        render_shape(random_spec(rng), rng, size=96).save(shapes / f"s{i:03d}.png")
    outliers = write_outliers(root / "lib" / "other")
    col = Collection.create(root / "db", model="clipsearch-tiny", device="cpu")
    col.add([root / "lib"], workers=2)
    return col, outliers, shapes


def test_atypical_first_finds_the_planted_outliers(planted):
    col, outliers, _ = planted
    hits = col.browse(k=len(outliers))
    assert {h.source for h in hits} == outliers
    scores = [h.score for h in col.browse(k=10)]
    assert scores == sorted(scores, reverse=True)
    assert all(h.extra["typicality"] == h.score for h in hits)


def test_a_query_sorted_by_typicality_does_not_reach_them(planted):
    """What browse adds: --sort typicality only reorders what the query found."""
    col, outliers, _ = planted
    hits = col.search(text="a red circle", k=len(outliers), sort="typicality")
    assert not {h.source for h in hits} & outliers


def test_typical_order_paging_and_filters(planted):
    col, outliers, shapes = planted
    typical = col.browse("typical", k=10)
    assert not {h.source for h in typical} & outliers
    assert [h.score for h in typical] == sorted(h.score for h in typical)
    assert [h.id for h in col.browse("typical", k=4, offset=6)] == [h.id for h in typical[6:]]
    inside = col.browse(k=5, under=str(shapes))
    assert len(inside) == 5 and all(h.source.startswith(str(shapes) + os.sep) for h in inside)
    assert {h.source for h in col.browse(kind="image", k=3)} == outliers
    assert col.browse(kind="video", k=3) == []  # no videos here


def test_bad_arguments_are_usage_errors(planted):
    col, _, _ = planted
    with pytest.raises(UsageError, match="order"):
        col.browse("weird")
    with pytest.raises(UsageError, match="moment"):
        col.browse(kind="moment")
    with pytest.raises(UsageError, match="k must be positive"):
        col.browse(k=0)


def test_browse_needs_whitening(tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "few").mkdir()
    for i in range(12):
        render_shape(random_spec(rng), rng, size=64).save(tmp_path / "few" / f"{i}.png")
    col = Collection.create(tmp_path / "db", model="clipsearch-tiny", device="cpu")
    col.add([tmp_path / "few"])
    with pytest.raises(TransformError, match="needs the whitening transform") as err:
        col.browse()
    assert "fit-transforms" in err.value.hint


def test_cli_browse(planted):
    col, outliers, _ = planted
    env = {**os.environ, "CLIPSEARCH_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "clipsearch.cli", "browse", "--db", str(col.path), "--kind", "image",
           "-k", "3"]
    p = subprocess.run([*cmd, "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert {h["source"] for h in json.loads(p.stdout)} == outliers
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 3
    assert {line.split()[-1] for line in p.stdout.splitlines()} == outliers


def test_http_browse(planted):
    from clipsearch.ui.api import SearchService, rest_router
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    col, outliers, _ = planted
    app = FastAPI()
    app.include_router(rest_router(SearchService(col.path, device="cpu")))
    client = TestClient(app)
    r = client.get("/api/browse", params={"k": 3, "kind": "Images"})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert {h["source"] for h in hits} == outliers and all(h["media_url"] for h in hits)
    typical = client.get("/api/browse", params={"order": "typical", "k": 3}).json()["hits"]
    assert not {h["source"] for h in typical} & outliers
    bad = client.get("/api/browse", params={"order": "sideways"})
    assert bad.status_code == 400 and "hint" in bad.json()


# ---- by date -------------------------------------------------------------------------------
MONTHS = {"2024-05": 3, "2023-11": 2, "2022-01": 4}  # files per month


@pytest.fixture(scope="module")
def dated(tmp_path_factory):
    """(collection, {path: its mtime}) of shapes whose only date is their mtime, in three months."""
    from datetime import UTC, datetime

    root = tmp_path_factory.mktemp("dated")
    rng = np.random.default_rng(3)
    when: dict[str, float] = {}
    for month, n in MONTHS.items():
        folder = root / "lib" / month
        folder.mkdir(parents=True)
        y, m = map(int, month.split("-"))
        for day in range(1, n + 1):
            p = folder / f"d{day}.png"
            render_shape(random_spec(rng), rng, size=64).save(p)
            t = datetime(y, m, day * 3, 12, tzinfo=UTC).timestamp()
            os.utime(p, (t, t))
            when[str(p)] = t
    col = Collection.create(root / "db", model="clipsearch-tiny", device="cpu")
    col.add([root / "lib"])
    return col, when


def test_by_date_newest_first_grouped_by_month(dated):
    col, when = dated
    hits = col.browse_by_date(k=50)
    assert [h.source for h in hits] == sorted(when, key=when.get, reverse=True)
    months = [h.extra["month"] for h in hits]
    assert list(dict.fromkeys(months)) == list(MONTHS)  # newest month first, each once (grouped)
    assert [months.count(m) for m in MONTHS] == list(MONTHS.values())
    assert all(h.extra["date"][:7] == h.extra["month"] for h in hits)


def test_by_date_pages_kinds_and_folders(dated):
    col, when = dated
    everything = [h.id for h in col.browse_by_date(k=50)]
    pages = [h.id for off in range(0, len(when), 4) for h in col.browse_by_date(k=4, offset=off)]
    assert pages == everything and len(set(pages)) == len(when)
    assert col.browse_by_date(k=4, offset=len(when)) == []
    inside = col.browse_by_date(k=50, under=str(next(iter(when)).rsplit(os.sep, 1)[0]))
    assert len(inside) == MONTHS["2024-05"] and {h.extra["month"] for h in inside} == {"2024-05"}
    assert col.browse_by_date(kind="video", k=5) == []
    with pytest.raises(UsageError, match="by date"):
        col.browse_by_date(kind="moment")
    with pytest.raises(UsageError, match="k must be positive"):
        col.browse_by_date(k=0)


def test_by_date_follows_changes(dated, tmp_path):
    """A new file shows up first: the cached order is keyed by the table version."""
    col, when = dated
    first = col.browse_by_date(k=1)[0]
    newer = tmp_path / "newest.png"
    rng = np.random.default_rng(9)
    render_shape(random_spec(rng), rng, size=64).save(newer)
    col.add([tmp_path])
    try:
        assert col.browse_by_date(k=1)[0].source == str(newer)
        assert col.browse_by_date(k=2)[1].id == first.id
    finally:
        col.remove([str(newer)])
    assert col.browse_by_date(k=1)[0].id == first.id


def test_cli_browse_by_date(dated):
    col, when = dated
    env = {**os.environ, "CLIPSEARCH_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "clipsearch.cli", "browse", "--db", str(col.path), "--by", "date", "-k", "4"]
    p = subprocess.run([*cmd, "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    newest = sorted(when, key=when.get, reverse=True)[:4]
    assert [h["source"] for h in json.loads(p.stdout)] == newest
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "May 2024" and lines[4] == "November 2023"  # 3 in May, then November's first
    assert [line.split()[-1] for line in lines if line.startswith("  ")] == newest


def test_http_browse_by_date(dated):
    from clipsearch.ui.api import SearchService, rest_router
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    col, when = dated
    app = FastAPI()
    app.include_router(rest_router(SearchService(col.path, device="cpu")))
    client = TestClient(app)
    whole = client.get("/api/browse", params={"by": "date", "k": 50}).json()
    r = client.get("/api/browse", params={"by": "date", "k": 4, "page": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [h["id"] for h in body["hits"]] == [h["id"] for h in whole["hits"][4:8]]
    assert all(h["media_url"] and h["month"] for h in body["hits"])
    assert sum(m["count"] for m in body["months"]) == 4
    assert [(m["label"], m["count"]) for m in whole["months"]] == [
        ("May 2024", 3), ("November 2023", 2), ("January 2022", 4)]
    bad = client.get("/api/browse", params={"by": "sideways"})
    assert bad.status_code == 400 and "hint" in bad.json()
    bad = client.get("/api/browse", params={"by": "date", "page": -1})
    assert bad.status_code in (400, 422)
