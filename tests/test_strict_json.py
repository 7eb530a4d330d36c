"""Every JSON clipsearch prints or serves is strict JSON: no NaN or Infinity, ever.

A hybrid query whose path keywords match a row the vector search did not return (here the
other tiles of a PDF page, by the file name) has no cosine for it; that used to print NaN.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from clipsearch.jsonsafe import dumps, finite
from clipsearch.search import Hit


def strict_loads(text: str):
    """json.loads that refuses NaN/Infinity, as every non-Python parser does."""
    def refuse(name):
        raise ValueError(f"invalid JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_hit_to_dict_maps_non_finite_numbers_to_null():
    h = Hit(source="/a.jpg", kind="image", score=0.5, extra={"cosine": float("nan"), "t": float("inf")})
    d = h.to_dict()
    assert d["cosine"] is None and d["t"] is None and d["score"] == 0.5
    assert strict_loads(json.dumps(d, allow_nan=False)) == d


def test_dumps_is_strict_for_nested_and_numpy_values():
    np = pytest.importorskip("numpy")
    obj = {"a": [np.float32("nan"), np.float64(1.5), np.int64(2)], "b": (float("-inf"),)}
    assert finite(obj) == {"a": [None, 1.5, 2], "b": [None]}
    assert strict_loads(dumps(obj)) == {"a": [None, 1.5, 2], "b": [None]}


def test_cli_hybrid_json_is_strict(sample_collection):
    _, _, db = sample_collection
    env = {**os.environ, "CLIPSEARCH_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "clipsearch.cli", "search", "annual report", "--hybrid",
                        "--json", "--db", str(db)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    hits = strict_loads(p.stdout)
    assert hits and any(h["source"].endswith("annual_report.pdf") for h in hits)
    assert any(h.get("cosine", 0) is None for h in hits)  # keyword-only matches: no cosine


def test_http_hybrid_search_is_strict_json(sample_collection):
    from clipsearch.ui.api import SearchService, rest_router
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    _, _, db = sample_collection
    app = FastAPI()
    app.include_router(rest_router(SearchService(db, device="cpu")))
    r = TestClient(app).get("/api/search", params={"q": "annual report", "hybrid": "true", "k": 10,
                                                   "min_relevance": "off"})
    assert r.status_code == 200, r.text
    hits = strict_loads(r.text)["hits"]
    assert any(h["source"].endswith("annual_report.pdf") for h in hits)
