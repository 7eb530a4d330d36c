"""kill -9 mid-index loses nothing committed; searching works while another process indexes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import write_shapes

from clipsearch import Collection

N_PER_CLASS = 30  # 360 files: enough that a fast machine can't finish before the kill


def _index_cmd(photos: Path, db: Path) -> list[str]:
    return [sys.executable, "-m", "clipsearch.cli", "index", str(photos), "--db", str(db),
            "--model", "clipsearch-tiny", "-q", "--commit-every", "8", "--batch-size", "8"]


def _start_index(photos: Path, db: Path) -> subprocess.Popen:
    return subprocess.Popen(_index_cmd(photos, db), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "CLIPSEARCH_OFFLINE": "1"})


def _rows(db: Path) -> int:
    if not Collection.exists(db):
        return 0
    try:
        return Collection.open(db).store.count()
    except Exception:
        return 0


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    p = tmp_path_factory.mktemp("many") / "photos"
    write_shapes(p, per_class=N_PER_CLASS, size=96)
    return p


def test_kill_9_then_resume(photos, tmp_path):
    db = tmp_path / "db"
    proc = _start_index(photos, db)
    deadline = time.time() + 300
    while _rows(db) < 8 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)  # kill right after the first commit lands
    assert proc.poll() is None, "indexing finished before it could be killed; make the corpus bigger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    col = Collection.open(db)
    committed = col.store.count()
    assert 0 < committed < 12 * N_PER_CLASS
    states = col.store.file_states()
    assert len(states) == committed  # one row per file, no partial duplicates

    done = subprocess.run(_index_cmd(photos, db), capture_output=True, text=True,
                          env={**os.environ, "CLIPSEARCH_OFFLINE": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{committed} unchanged" in done.stdout  # nothing committed was re-embedded
    col = Collection.open(db)
    t = col.store.scan(["source", "id"])
    sources = t.column("source").to_pylist()
    assert len(sources) == 12 * N_PER_CLASS == len(set(sources))
    assert len(set(t.column("id").to_pylist())) == len(sources)


def test_search_while_indexing(photos, tmp_path):
    db = tmp_path / "db"
    seed = tmp_path / "seed"
    write_shapes(seed, per_class=1, seed=3)
    Collection.create(db, model="clipsearch-tiny", device="cpu").add([seed])
    reader = Collection.open(db, device="cpu")
    proc = _start_index(photos, db)
    seen_counts = []
    try:
        while proc.poll() is None:
            hits = reader.search(text="a red star", k=5)
            assert hits, "search returned nothing while indexing"
            seen_counts.append(reader.info()["items"])
            time.sleep(0.05)
    finally:
        proc.wait(timeout=600)
    assert proc.returncode == 0, proc.stderr.read()
    final = reader.search(text="a red star", k=500, kind="image")
    assert len(final) == 12 + 12 * N_PER_CLASS  # the reader sees the writer's rows, no restart
    assert len(set(seen_counts)) > 1  # it saw the collection grow while the writer ran
