"""A collection on S3: index, search from a second "machine", re-index incrementally, delete.

The S3 server is moto's, started by the test on 127.0.0.1; nothing leaves the machine. The
table goes through LanceDB's storage options and the metadata through pyarrow's S3 client,
both configured from the same AWS_* variables a user would set.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

moto_server = pytest.importorskip("moto.server", reason="S3 tests need moto: pip install 'moto[server]'")
boto3 = pytest.importorskip("boto3", reason="S3 tests need boto3 (comes with moto)")

from clipsearch.collection import Collection  # noqa: E402
from clipsearch.errors import CollectionNotFound, UsageError  # noqa: E402
from clipsearch.model_registry import tiny_files  # noqa: E402
from clipsearch.objectstore import (  # noqa: E402
    Location,
    is_remote,
    open_collection,
    storage_options_from_env,
)
from clipsearch.storage import ObjectStorage  # noqa: E402

needs_tiny = pytest.mark.skipif(not tiny_files()[1].is_file(),
                                reason="clipsearch-tiny weights are not installed")
BUCKET = "clipsearch-test"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free local port, and the env vars that point clients at it."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield client
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache-a"
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(d))
    return d


def _images(root: Path, n: int, seed: int) -> None:
    from clipsearch.tiny.synth import random_spec, render_shape

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sub = root / f"s{i % 2}"
        sub.mkdir(exist_ok=True)
        render_shape(random_spec(rng), rng, size=72).save(sub / f"im{i:03d}.png")


def _keys(client, prefix: str) -> list[str]:
    out = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for o in out.get("Contents", [])]


def test_uri_helpers():
    assert is_remote("s3://b/p") and is_remote("gs://b/p") and not is_remote("/tmp/db")
    assert not is_remote("file:///tmp/db") and not is_remote(None)
    opts = storage_options_from_env("s3://b/p", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
                                                 "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                                                 "AWS_DEFAULT_REGION": "eu-west-1"})
    assert opts == {"aws_endpoint": "http://127.0.0.1:9000", "allow_http": "true",
                    "aws_access_key_id": "k", "aws_secret_access_key": "s", "aws_region": "eu-west-1"}
    assert storage_options_from_env("gs://b/p", {"AWS_ACCESS_KEY_ID": "k"}) == {}
    with pytest.raises(UsageError):
        Location("/not/a/uri")
    a, b = Location("s3://b/one", {}), Location("s3://b/two", {})
    assert a.cache_dir != b.cache_dir and a.cache_dir == Location("s3://b/one/", {}).cache_dir


def test_storage_is_chosen_by_uri(tmp_path, monkeypatch):
    from clipsearch.storage import LocalStorage, storage_for

    monkeypatch.setenv("CLIPSEARCH_CACHE", str(tmp_path / "cache"))
    remote = storage_for("s3://b/photos", {})
    assert isinstance(remote, ObjectStorage) and remote.remote and remote.uri == "s3://b/photos"
    assert remote.cache_dir.is_relative_to(tmp_path / "cache")
    local = storage_for(tmp_path / "db")
    assert isinstance(local, LocalStorage) and not local.remote
    assert local.cache_dir == tmp_path / "db" and local.uri == str(tmp_path / "db")
    assert storage_for(local) is local


def test_missing_remote_collection_is_a_clear_error(s3, cache):
    with pytest.raises(CollectionNotFound, match="no collection at s3://"):
        open_collection(f"s3://{BUCKET}/nothing-here")


@needs_tiny
def test_index_search_reindex_delete_on_s3(s3, cache, tmp_path, monkeypatch):
    uri = f"s3://{BUCKET}/photos"
    root = tmp_path / "pics"
    _images(root, 40, seed=3)

    col = Collection.create(uri, model="clipsearch-tiny", device="cpu")
    first = col.add([root])
    assert (first.indexed, first.skipped) == (40, [])
    keys = _keys(s3, "photos/")
    assert "photos/clipsearch.json" in keys and "photos/skipped.log" in keys  # mirrored
    assert any(k.startswith("photos/items.lance/") for k in keys)
    assert not any((cache / "remote").rglob("*.lance"))  # the table is not on local disk
    meta = json.loads(s3.get_object(Bucket=BUCKET, Key="photos/clipsearch.json")["Body"].read())
    assert meta["model_name"] == "clipsearch-tiny" and meta["roots"] == [str(root)]
    assert meta["last_run"]["summary"].startswith("indexed 40 files")

    query = root / "s1" / "im011.png"
    here = col.search(image=query, k=10)
    assert here[0].source == str(query)
    text_hits = [h.id for h in col.search(text="a red circle", k=10)]

    # A second machine: nothing cached locally, same answers.
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(tmp_path / "cache-b"))
    other = Collection.open(uri, device="cpu")
    assert isinstance(other.storage, ObjectStorage) and other.path != col.path
    assert [h.id for h in other.search(image=query, k=10)] == [h.id for h in here]
    assert [h.id for h in other.search(text="a red circle", k=10)] == text_hits
    info = other.info()
    assert info["path"] == uri and info["items"] == 40 and info["disk_bytes"] > 0
    assert info["cache_dir"] == str(other.path) and not other.path.is_relative_to(col.path)

    # Incremental: one changed, one new, one deleted.
    files = sorted((root / "s0").iterdir())
    files[0].unlink()
    shutil.copy(root / "s1" / "im001.png", files[1])
    os.utime(files[1], (1e9, 1e9))
    shutil.copy(root / "s1" / "im003.png", root / "s0" / "extra.png")
    again = other.add([root])
    assert (again.indexed, again.unchanged, again.removed) == (2, 38, 1)
    assert other.store.count() == 40
    assert col.store.count() == 40  # the first handle sees the other machine's commits
    other.set_scan_options(exclude=["*.tmp"])  # and, on reload, its metadata
    assert col.reload_meta() and col.scan_options()["excludes"] == ["*.tmp"]
    assert col.meta["last_run"]["summary"] == other.meta["last_run"]["summary"]
    assert not col.reload_meta()

    # Delete a folder.
    assert other.remove([root / "s1"]) == 20
    assert other.store.count() == 20
    assert all(h.source.startswith(str(root / "s0")) for h in other.search(text="a red circle", k=30))


@needs_tiny
def test_lance_ivf_pq_index_serves_remote_search(s3, cache, tmp_path, monkeypatch):
    """Large collections search through LanceDB's own IVF-PQ index (threshold lowered here)."""
    from clipsearch.engines import lance_ann

    uri = f"s3://{BUCKET}/large"
    root = tmp_path / "pics"
    _images(root, 300, seed=5)
    monkeypatch.setattr(lance_ann, "LANCE_INDEX_MIN_ROWS", 256)
    col = Collection.create(uri, model="clipsearch-tiny", device="cpu")
    col.add([root], fit_transforms=False)
    assert lance_ann.has_vector_index(col.store)
    assert col.info()["ann"]["type"] == "lance IVF_PQ"
    assert any(k.startswith("large/items.lance/_indices/") for k in _keys(s3, "large/"))
    for name in ("s0/im000.png", "s1/im101.png", "s0/im250.png"):
        hits = col.search(image=root / name, k=5)
        assert hits[0].source == str(root / name)
        assert hits[0].score == pytest.approx(1.0, abs=0.02)

    # Incremental run: new rows are folded into the existing index (optimize, no retraining)
    # and are searchable at once.
    _images(tmp_path / "more", 6, seed=9)
    shutil.copytree(tmp_path / "more", root / "more")
    again = col.add([root], fit_transforms=False)
    assert (again.indexed, again.unchanged) == (6, 300)
    assert lance_ann.has_vector_index(col.store)
    new = root / "more" / "s1" / "im003.png"
    assert col.search(image=new, k=5)[0].source == str(new)


@needs_tiny
def test_fit_transforms_is_mirrored_next_to_the_table(s3, cache, tmp_path, monkeypatch):
    """`fit-transforms` on a remote collection reaches other machines (they pull on open)."""
    uri = f"s3://{BUCKET}/fitted"
    _images(tmp_path / "pics", 12, seed=4)
    col = Collection.create(uri, model="clipsearch-tiny", device="cpu")
    col.add([tmp_path / "pics"], fit_transforms=False)
    assert "fitted/transforms.npz" not in _keys(s3, "fitted/")
    ts = col.fit_transforms(strict=False)
    assert "center" in ts.available
    body = s3.get_object(Bucket=BUCKET, Key="fitted/transforms.npz")["Body"].read()
    assert body == (col.path / "transforms.npz").read_bytes()
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(tmp_path / "cache-b"))
    assert open_collection(uri, device="cpu").searcher.transforms().image_mean is not None


@needs_tiny
def test_serve_a_collection_on_s3(s3, cache, tmp_path):
    """`clipsearch serve --db s3://...` serves the remote collection: info, search, media."""
    import subprocess
    import sys
    import time

    import httpx
    from support import free_port

    uri = f"s3://{BUCKET}/served"
    root = tmp_path / "pics"
    _images(root, 12, seed=6)
    Collection.create(uri, model="clipsearch-tiny", device="cpu").add([root])
    port = free_port()
    env = {**os.environ, "CLIPSEARCH_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "clipsearch.cli", "serve", "--db", uri, "--port",
                             str(port), "--device", "cpu"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the server did not start"
            try:
                info = httpx.get(base + "/api/info", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert info.status_code == 200, info.text
        assert info.json()["items"] == 12 and info.json()["db"] == uri and info.json()["name"] == root.name
        found = httpx.get(base + "/api/search", params={"q": "a red circle", "k": 3, "min_relevance": "off"},
                          timeout=60)
        hits = found.json()["hits"]
        assert len(hits) == 3 and all(h["source"].startswith(str(root)) for h in hits)
        media = httpx.get(base + hits[0]["media_url"], timeout=30)
        assert media.status_code == 200 and media.content == open(hits[0]["source"], "rb").read()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

