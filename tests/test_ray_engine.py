"""The Ray engine against the local engine, on a real local Ray runtime (one per module).

Same files in, same collection out: rows, vectors (float16 tolerance), skip reasons and top-10
results. Fault injection kills embedding actors mid-run (`os._exit`) to show that retried or
failed batches neither lose nor duplicate rows, and that a re-run completes the collection.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the Ray engine needs ray[data]: pip install 'ray[data]'")
pytest.importorskip("ray.data", reason="the Ray engine needs ray[data]: pip install 'ray[data]'")

from clipsearch.collection import Collection  # noqa: E402
from clipsearch.engines.ray_engine import Embedder, index_with_ray  # noqa: E402
from clipsearch.model_registry import tiny_files  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not tiny_files()[1].is_file(), reason="clipsearch-tiny weights are not installed"),
]

N_IMAGES = 300
QUERIES = ["a red circle", "a blue square", "a small green triangle", "a yellow star at the top",
           "a purple shape", "an orange hexagon on the left"]


@pytest.fixture(scope="module")
def ray_runtime():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=300 * 1024 * 1024)
    # pytest's log capture keeps every record, and Ray Data logs actor failures with their
    # tracebacks, whose frames hold actor handles: that would keep a crashed pool's restarted
    # actor (and its CPU) alive after the run. Keep Ray's records out of the capture.
    ray_logger = logging.getLogger("ray")
    old_propagate, ray_logger.propagate = ray_logger.propagate, False
    # Embedder subclasses below are defined in this test module, which workers cannot import.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray_logger.propagate = old_propagate
    ray.shutdown()


def _make_images(root: Path, n: int, seed: int) -> None:
    from clipsearch.tiny.synth import random_spec, render_shape

    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / f"d{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        im = render_shape(random_spec(rng), rng, size=int(rng.choice([64, 80, 96])))
        im.save(d / f"img{i:04d}.{'png' if i % 3 else 'jpg'}")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    _make_images(root, N_IMAGES, seed=1)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.md").write_text("# Shapes\n\nA red circle next to a blue square.\n")
    return root


@pytest.fixture(scope="module")
def local_col(files, tmp_path_factory) -> Collection:
    col = Collection.create(tmp_path_factory.mktemp("local") / "db", model="clipsearch-tiny", device="cpu")
    col.add([files])
    return col


@pytest.fixture(scope="module")
def ray_col(ray_runtime, files, tmp_path_factory):
    col = Collection.create(tmp_path_factory.mktemp("ray") / "db", model="clipsearch-tiny", device="cpu")
    report = index_with_ray(col, [files], batch_size=32, workers=1)
    return col, report


def _rows(col: Collection) -> dict[str, tuple]:
    meta, vecs = col.store.vectors()
    cols = [meta.column(c).to_pylist() for c in ("id", "source", "kind", "mtime", "size", "content_hash")]
    return {r[0]: (r[1:], v) for *r, v in zip(*cols, vecs, strict=True)}


def _assert_same_collection(a: Collection, b: Collection) -> None:
    ra, rb = _rows(a), _rows(b)
    assert set(ra) == set(rb)
    for rid, (meta, vec) in ra.items():
        assert rb[rid][0] == meta
        np.testing.assert_allclose(rb[rid][1], vec, atol=2e-3)  # both stored as float16


def _assert_no_duplicates(col: Collection) -> None:
    t = col.store.scan(["id", "source"])
    ids = t.column("id").to_pylist()
    assert len(ids) == len(set(ids))
    assert len(set(t.column("source").to_pylist())) == len(ids)  # one row per image here


def test_ray_matches_local_engine(local_col, ray_col, files):
    col, report = ray_col
    assert report.indexed == N_IMAGES + 1  # + notes.md (a document: one page-less text item)
    assert col.store.count() == local_col.store.count()
    _assert_same_collection(local_col, col)
    skipped = dict(report.skipped)
    assert set(skipped) == {str(files / "broken.jpg"), str(files / "empty.png")}
    assert skipped == _local_skips(local_col)


def _local_skips(col: Collection) -> dict[str, str]:
    lines = (col.path / "skipped.log").read_text().splitlines()[1:]
    return dict(line.split("\t", 1) for line in lines)


def test_ray_top10_identical_to_local(local_col, ray_col, files):
    col, _ = ray_col
    for q in QUERIES:
        assert [h.id for h in col.search(text=q, k=10)] == [h.id for h in local_col.search(text=q, k=10)], q
    query_image = files / "d2" / "img0002.png"
    a = [h.id for h in col.search(image=query_image, k=10)]
    assert a == [h.id for h in local_col.search(image=query_image, k=10)]


def test_ray_rerun_is_incremental(ray_runtime, files, tmp_path):
    root = tmp_path / "inc"
    shutil.copytree(files / "d0", root)
    col = Collection.create(tmp_path / "db", model="clipsearch-tiny", device="cpu")
    first = index_with_ray(col, [root], batch_size=16, workers=1, fit_transforms=False)
    n = first.indexed
    again = index_with_ray(col, [root], batch_size=16, workers=1, fit_transforms=False)
    assert (again.indexed, again.unchanged, again.removed) == (0, n, 0)

    victims = sorted(root.iterdir())
    victims[0].unlink()
    donors = sorted((files / "d1").iterdir())
    shutil.copy(donors[0], victims[1])  # same name, new content
    os.utime(victims[1], (1e9, 1e9))
    shutil.copy(donors[1], root / f"new{donors[1].suffix}")
    third = index_with_ray(col, [root], batch_size=16, workers=1, fit_transforms=False)
    assert (third.indexed, third.unchanged, third.removed) == (2, n - 2, 1)
    assert col.store.count() == n
    _assert_no_duplicates(col)


class RefuseToEmbed(Embedder):
    """An embedder that must not be reached: the files' rows are already in the collection."""

    def __call__(self, batch):
        raise RuntimeError("embedded a file whose rows the collection holds")


def test_ray_moves_rows_of_renamed_files_without_embedding(ray_runtime, files, tmp_path):
    root = tmp_path / "mv"
    shutil.copytree(files / "d2", root / "a")
    col = Collection.create(tmp_path / "db", model="clipsearch-tiny", device="cpu")
    index_with_ray(col, [root], batch_size=16, workers=1, fit_transforms=False)
    before = {s: v for s, v in zip(*_sources_and_vectors(col), strict=True)}
    (root / "a").rename(root / "b")
    report = index_with_ray(col, [root], batch_size=16, workers=1, fit_transforms=False,
                            embedder_cls=RefuseToEmbed)
    assert (report.moved, report.indexed, report.removed, report.skipped) == (len(before), 0, 0, [])
    after = {s: v for s, v in zip(*_sources_and_vectors(col), strict=True)}
    assert set(after) == {s.replace(f"{os.sep}a{os.sep}", f"{os.sep}b{os.sep}") for s in before}
    for s, v in before.items():
        np.testing.assert_array_equal(after[s.replace(f"{os.sep}a{os.sep}", f"{os.sep}b{os.sep}")], v)
    _assert_no_duplicates(col)


def _sources_and_vectors(col: Collection) -> tuple[list[str], np.ndarray]:
    meta, vecs = col.store.vectors()
    return meta.column("source").to_pylist(), vecs


# ---- fault injection ------------------------------------------------------------------------
class CrashOnce(Embedder):
    """Kills its own worker process the first time it sees the marked file (a flag file on
    disk makes "first" survive the restart), like a node lost mid-batch."""

    flag = ""  # set by the test; travels with the pickled class

    def __call__(self, batch):
        flag = self.flag
        if flag and any(os.path.basename(bytes(p)) == b"marked.png" for p in batch["path"]):
            try:
                os.rename(flag, flag + ".used")  # atomic: exactly one attempt crashes
            except FileNotFoundError:
                pass
            else:
                os._exit(1)
        return super().__call__(batch)


class AlwaysCrash(Embedder):
    """A file that kills every worker that touches it (a poison input)."""

    def __call__(self, batch):
        if any(os.path.basename(bytes(p)) == b"poison.png" for p in batch["path"]):
            os._exit(1)
        return super().__call__(batch)


@pytest.fixture
def small_tree(files, tmp_path) -> Path:
    root = tmp_path / "small"
    for src in sorted((files / "d3").iterdir())[:48]:
        root.mkdir(exist_ok=True)
        shutil.copy(src, root / src.name)
    return root


def test_killed_worker_is_retried_without_loss_or_duplicates(ray_runtime, small_tree, tmp_path):
    shutil.copy(small_tree / sorted(os.listdir(small_tree))[5], small_tree / "marked.png")
    flag = tmp_path / "crash.flag"
    flag.write_text("crash once")
    CrashOnce.flag = str(flag)
    col = Collection.create(tmp_path / "db", model="clipsearch-tiny", device="cpu")
    report = index_with_ray(col, [small_tree], batch_size=8, workers=1, retries=2,
                            embedder_cls=CrashOnce, fit_transforms=False)
    assert not flag.exists() and (tmp_path / "crash.flag.used").exists()  # it did crash
    n = len(os.listdir(small_tree))
    assert report.indexed == n and report.skipped == []
    assert col.store.count() == n
    _assert_no_duplicates(col)
    ref = Collection.create(tmp_path / "ref", model="clipsearch-tiny", device="cpu")
    ref.add([small_tree], fit_transforms=False)
    _assert_same_collection(ref, col)


def test_poison_file_is_reported_and_rerun_completes(ray_runtime, small_tree, tmp_path):
    poison = small_tree / "poison.png"
    shutil.copy(small_tree / sorted(os.listdir(small_tree))[3], poison)
    n = len(os.listdir(small_tree))
    col = Collection.create(tmp_path / "db", model="clipsearch-tiny", device="cpu")
    report = index_with_ray(col, [small_tree], batch_size=8, workers=1, retries=1,
                            embedder_cls=AlwaysCrash, fit_transforms=False)
    reasons = dict(report.skipped)
    assert list(reasons) == [str(poison)]  # only the poison file: its batch-mates were retried alone
    assert "Ray worker failed" in reasons[str(poison)]
    assert report.indexed == n - 1 and col.store.count() == n - 1
    _assert_no_duplicates(col)

    rerun = index_with_ray(col, [small_tree], batch_size=8, workers=1, fit_transforms=False)
    assert (rerun.indexed, rerun.unchanged, rerun.skipped) == (1, n - 1, [])
    assert col.store.count() == n
    _assert_no_duplicates(col)


def test_ray_engine_into_s3(ray_runtime, files, tmp_path, monkeypatch):
    """The headline path: `index --engine ray --db s3://…` then search from a fresh cache."""
    moto_server = pytest.importorskip("moto.server", reason="needs moto: pip install 'moto[server]'")
    boto3 = pytest.importorskip("boto3", reason="needs boto3 (comes with moto)")
    from clipsearch.storage import ObjectStorage

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for k, v in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                     "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                     "CLIPSEARCH_CACHE": str(tmp_path / "cache-a")}.items():
            monkeypatch.setenv(k, v)
        boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="bkt")
        root = files / "d4"
        report = index_with_ray("s3://bkt/col", [root], model="clipsearch-tiny", batch_size=16,
                                workers=1, fit_transforms=False)
        n = report.indexed
        assert n == len(os.listdir(root)) and report.skipped == []

        monkeypatch.setenv("CLIPSEARCH_CACHE", str(tmp_path / "cache-b"))
        col = Collection.open("s3://bkt/col", device="cpu")
        assert isinstance(col.storage, ObjectStorage) and col.store.count() == n
        query = sorted(root.iterdir())[0]
        assert col.search(image=query, k=3)[0].source == str(query)
        again = index_with_ray(col, [root], batch_size=16, workers=1, fit_transforms=False)
        assert (again.indexed, again.unchanged) == (0, n)
    finally:
        server.stop()


def test_a_file_reached_through_two_roots_has_one_row_set(ray_runtime, tmp_path):
    """Issue #14 item 9: `index dir/v.mp4 dir` gives one set of rows per file in both engines."""
    from support import solid, write_video

    d = tmp_path / "dir"
    d.mkdir()
    write_video(d / "v.mp4", range(0, 3000, 40),
                lambda p: solid((200, 30, 30) if p < 1500 else (30, 30, 200)))
    _make_images(d, 6, seed=3)
    os.symlink(d / "d1", d / "d1_link")  # a folder link inside the root: walked once
    paths = [d / "v.mp4", d, d / "d1"]
    local = Collection.create(tmp_path / "local", model="clipsearch-tiny", device="cpu")
    local_report = local.add(paths, fit_transforms=False)
    col = Collection.create(tmp_path / "ray", model="clipsearch-tiny", device="cpu")
    report = index_with_ray(col, paths, batch_size=4, workers=1, fit_transforms=False)
    assert report.indexed == local_report.indexed == 7
    t = col.store.scan(["id", "source_raw"])
    assert len(set(t.column("id").to_pylist())) == t.num_rows
    assert len(set(t.column("source_raw").to_pylist())) == 7
    _assert_same_collection(local, col)
