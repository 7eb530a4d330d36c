"""The REST API's one error shape, the long-query warning on every surface, and queries that
run concurrently (an --invert query does not hold up the others) with the same results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support import ServerThread, build_collection, tiny_model_args, write_shapes

httpx = pytest.importorskip("httpx")

LONG_QUERY = " ".join(["a small red star on a plain background"] * 12)
TEXTS = [f"a {c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("star", "circle", "square")]
WAIT = 120  # generous bound for anything that should be quick; no test depends on timing


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, Path]:
    """(collection directory, photos folder) of 24 labelled shape images."""
    tiny_model_args()
    root = tmp_path_factory.mktemp("queries")
    write_shapes(root / "photos", per_class=2)
    build_collection(root / "db", [root / "photos"])
    return root / "db", root / "photos"


@pytest.fixture(scope="module")
def server(shapes):
    from clipsearch.ui.server import build_app

    with ServerThread(build_app(shapes[0], device="cpu")) as srv:
        yield srv.url


def ranking(hits) -> list[tuple[str, float]]:
    return [(h.source, round(float(h.score), 5)) for h in hits]


# ---- one error shape -------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "params", "param"), [
    ("/api/search", {"q": "a star", "k": "many"}, "k"),
    ("/api/search", {"k": "5"}, "q"),
    ("/api/search", {"q": "a star", "offset": "-3"}, "offset"),
    ("/api/moments", {"q": "a star", "k": "1.5"}, "k"),
])
def test_bad_parameters_answer_400_with_error_and_hint(server, path, params, param):
    r = httpx.get(server + path, params=params, timeout=WAIT)
    assert r.status_code == 400, r.text
    body = r.json()
    assert set(body) == {"error", "hint"}
    assert body["error"].startswith(f"{param}: ")


def test_a_missing_upload_answers_400_naming_the_field(server):
    r = httpx.post(server + "/api/search/image", data={"q": "x"}, timeout=WAIT)
    assert r.status_code == 400 and r.json()["error"].startswith("file: ")


def test_unknown_endpoints_and_methods_answer_in_the_same_shape(server):
    r = httpx.get(server + "/api/nothing-here", timeout=WAIT)
    assert r.status_code == 404 and "/api/nothing-here" in r.json()["error"] and r.json()["hint"]
    r = httpx.post(server + "/api/info", timeout=WAIT)
    assert r.status_code == 405 and r.headers["allow"] == "GET" and "POST" in r.json()["error"]
    assert httpx.get(server + "/api/openapi.json", timeout=WAIT).status_code == 200


def test_usage_errors_keep_their_shape(server):
    r = httpx.get(server + "/api/search", params={"q": "a star", "kind": "sculpture"}, timeout=WAIT)
    assert r.status_code == 400 and "sculpture" in r.json()["error"] and r.json()["hint"]


# ---- the long-query warning --------------------------------------------------------------------
def test_a_long_query_is_searched_and_the_caller_told(server):
    res = httpx.get(server + "/api/search", params={"q": LONG_QUERY, "k": 3, "min_relevance": "off"},
                    timeout=WAIT).json()
    assert res["hits"]
    assert len(res["warnings"]) == 1 and "tokens" in res["warnings"][0] and "32" in res["warnings"][0]
    short = httpx.get(server + "/api/search", params={"q": "a red star", "k": 3, "min_relevance": "off"},
                      timeout=WAIT).json()
    assert short["warnings"] == []


def test_python_api_hits_carry_the_warning(shapes):
    from clipsearch.collection import Collection

    col = Collection.open(shapes[0], device="cpu")
    hits = col.search(LONG_QUERY, k=3)
    assert len(hits) == 3 and len(hits.warnings) == 1 and "ignored" in hits.warnings[0]
    assert col.search("a red star", k=3).warnings == []
    assert col.search(image=next(shapes[1].glob("*.jpg")), k=3).warnings == []


def test_cli_prints_the_warning_on_stderr_and_keeps_stdout_json(shapes):
    env = {**os.environ, "CLIPSEARCH_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "clipsearch.cli", "search", LONG_QUERY, "--db", str(shapes[0]),
                        "-k", "2", "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    assert len(json.loads(p.stdout)) == 2
    assert [line for line in p.stderr.splitlines() if line.startswith("warning: the query is")]


# ---- concurrency -----------------------------------------------------------------------------
def test_concurrent_text_queries_equal_sequential_ones(shapes):
    from clipsearch.collection import Collection

    sequential = [ranking(Collection.open(shapes[0], device="cpu").search(t, k=5)) for t in TEXTS]
    col = Collection.open(shapes[0], device="cpu")  # fresh: the lazy loads race too
    with ThreadPoolExecutor(6) as pool:
        concurrent = list(pool.map(lambda t: ranking(col.search(t, k=5)), TEXTS * 2))
    assert concurrent == sequential * 2


def test_plain_queries_finish_while_an_invert_query_runs(server, shapes, monkeypatch):
    """The --invert query is held inside OTI until the plain queries are done; with one lock
    around every query they could not finish first."""
    import clipsearch.inversion as inversion

    real = inversion.invert_images
    started, release = threading.Event(), threading.Event()

    def held(*args, **kwargs):
        started.set()
        release.wait(WAIT)
        return real(*args, **kwargs)

    monkeypatch.setattr(inversion, "invert_images", held)
    photo = next(shapes[1].glob("*.jpg"))
    inverted: dict = {}

    def invert_query():
        r = httpx.post(server + "/api/search/image", files={"file": photo.read_bytes()},
                       data={"invert": "true", "k": "3", "min_relevance": "off"}, timeout=WAIT * 2)
        inverted.update(status=r.status_code, body=r.json(), at=time.monotonic())

    slow = threading.Thread(target=invert_query)
    slow.start()
    try:
        assert started.wait(WAIT), "the invert query never reached OTI"
        done: list[tuple[int, float]] = []

        def plain(text: str) -> None:
            r = httpx.get(server + "/api/search", params={"q": text, "k": 3, "min_relevance": "off"},
                          timeout=WAIT)
            done.append((r.status_code, time.monotonic()))

        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(plain, t) for t in TEXTS[:6]]
            for f in futures:
                f.result(timeout=WAIT)
        assert not inverted and [s for s, _ in done] == [200] * 6
    finally:
        release.set()
        slow.join(WAIT * 2)
    assert inverted["status"] == 200 and len(inverted["body"]["hits"]) == 3
    assert max(t for _, t in done) < inverted["at"]


def test_real_oti_beside_text_queries_changes_nothing_they_see(shapes):
    """OTI optimising in one thread while others encode text with the same model: the text
    results equal sequential ones and the model's flags never change."""
    from clipsearch.collection import Collection

    col = Collection.open(shapes[0], device="cpu")
    photo = next(shapes[1].glob("*.jpg"))
    sequential = [ranking(col.search(t, k=5)) for t in TEXTS]
    inverted_alone = ranking(col.search(image=photo, k=5, invert=True))
    model = col.encoder.model
    flags_seen: set[tuple[bool, bool]] = set()
    stop = threading.Event()

    def invert_loop() -> list:
        out = []
        while not stop.is_set() and len(out) < 20:
            out.append(ranking(col.search(image=photo, k=5, invert=True)))
        return out

    def text(t: str):
        flags_seen.add((model.training, any(p.requires_grad for p in model.parameters())))
        return ranking(col.search(t, k=5))

    with ThreadPoolExecutor(4) as pool:
        inverting = pool.submit(invert_loop)
        concurrent = list(pool.map(text, TEXTS * 2))
        stop.set()
        inverted = inverting.result(timeout=WAIT * 5)
    assert concurrent == sequential * 2
    assert flags_seen == {(False, False)}
    assert inverted and all(r == inverted_alone for r in inverted)
