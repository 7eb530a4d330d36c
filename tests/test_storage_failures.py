"""Every storage and network failure ends in one line and a hint, exit 1, committed work kept.

The CLI runs in this process (click's CliRunner) except where a server must die under a
running index, which runs as a subprocess.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from support import write_shapes

from clipsearch import Collection
from clipsearch.cli import main


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_one_line_failure(r, *needles: str) -> None:
    """Exit 1, `error: ...` and `hint: ...` lines, no traceback."""
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit), r.exception
    lines = r.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and any(ln.startswith("hint: ") for ln in lines), r.stderr
    assert "Traceback" not in r.output
    for n in needles:
        assert n in errors[0], errors[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("fail")
    write_shapes(root / "photos", per_class=2, size=64)
    r = cli("index", str(root / "photos"), "--db", str(root / "db"), "--model", "clipsearch-tiny", "-q")
    assert r.exit_code == 0, r.output
    return root


@pytest.fixture
def db(built, tmp_path) -> Path:
    shutil.copytree(built / "db", tmp_path / "db")
    return tmp_path / "db"


# ---- a damaged table ----------------------------------------------------------------------------
def _data_files(db: Path) -> list[Path]:
    return sorted((db / "items.lance" / "data").glob("*.lance"))


def _latest_manifest(db: Path) -> Path:
    manifests = sorted((db / "items.lance" / "_versions").glob("*.manifest"),
                       key=lambda p: p.stat().st_mtime_ns)
    return manifests[-1]


DAMAGE = {
    "truncated data file": lambda db: [os.truncate(p, 100) for p in _data_files(db)],
    "deleted data file": lambda db: [p.unlink() for p in _data_files(db)],
    "truncated manifest": lambda db: os.truncate(_latest_manifest(db), 50),
    "deleted manifests": lambda db: [p.unlink() for p in (db / "items.lance" / "_versions").iterdir()],
    "deleted table": lambda db: shutil.rmtree(db / "items.lance"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_table_is_one_line_for_every_command(db, built, damage):
    DAMAGE[damage](db)
    for args in (["info"], ["search", "a red star"], ["index", str(built / "photos"), "-q"]):
        r = cli(*args, "--db", str(db))
        assert_one_line_failure(r, str(db))
        assert "damaged" in r.stderr or "missing" in r.stderr, r.stderr


# ---- where --db cannot be -----------------------------------------------------------------------
def test_db_under_a_regular_file(built, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    r = cli("index", str(built / "photos"), "--db", str(tmp_path / "file" / "db"), "--model",
            "clipsearch-tiny", "-q")
    assert_one_line_failure(r, "regular file")


def test_db_in_proc(built):
    r = cli("index", str(built / "photos"), "--db", "/proc/clipsearch-db", "--model", "clipsearch-tiny", "-q")
    assert_one_line_failure(r, "/proc/clipsearch-db")


# ---- a full disk --------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True)
    if p.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_is_one_line_and_keeps_committed_work(built, small_disk, tmp_path):
    db = small_disk / "db"
    first, more = tmp_path / "first", tmp_path / "more"
    write_shapes(first, per_class=1, size=64)
    write_shapes(more, per_class=2, size=64, seed=11)
    assert cli("index", str(first), "--db", str(db), "--model", "clipsearch-tiny", "-q").exit_code == 0
    kept = Collection.open(db).store.count()
    filler = _fill(small_disk)
    r = cli("index", str(first), str(more), "--db", str(db), "-q")
    assert_one_line_failure(r, "disk is full")
    assert "free space" in r.stderr
    filler.unlink()
    r = cli("index", str(first), str(more), "--db", str(db), "-q")
    assert r.exit_code == 0, r.output
    assert f"{kept} unchanged" in r.stdout
    assert Collection.open(db).store.count() == kept + 24


# ---- an object store that goes away mid-run -----------------------------------------------------
class Proxy:
    """A TCP relay on 127.0.0.1 in front of the S3 server; `kill()` makes the server unreachable
    (open connections reset, new ones refused) while the server and its data live on."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.dead = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.dead.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def kill(self) -> None:
        self.dead.set()
        self.listener.close()
        for s in self.conns:  # shutdown first: it wakes the relay threads blocked in recv
            for step in (lambda s=s: s.shutdown(socket.SHUT_RDWR), s.close):
                try:
                    step()
                except OSError:
                    pass


def test_an_object_store_that_dies_mid_run_is_one_line_and_keeps_committed_work(tmp_path, monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_REGION": "us-east-1"}
        s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="dying")
        photos = tmp_path / "photos"
        write_shapes(photos, per_class=5, size=48)
        proxy = Proxy((host, port))
        env = {**os.environ, **creds, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}",
               "CLIPSEARCH_OFFLINE": "1", "CLIPSEARCH_CACHE": str(tmp_path / "cache")}
        uri = "s3://dying/col"
        cmd = [sys.executable, "-m", "clipsearch.cli", "index", str(photos), "--db", uri, "--model",
               "clipsearch-tiny", "-q", "--commit-every", "2", "--batch-size", "2"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def versions() -> int:
            out = s3.list_objects_v2(Bucket="dying", Prefix="col/items.lance/_versions/")
            return sum(1 for o in out.get("Contents", []) if o["Key"].endswith(".manifest"))

        deadline = time.time() + 300
        while versions() < 4 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)  # a few commits have landed
        assert proc.poll() is None, "indexing finished before the server could go away"
        proxy.kill()
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, (out, err)
        lines = err.strip().splitlines()
        assert "Traceback" not in err, err
        assert any(ln.startswith("error: ") and uri in ln and "cannot be reached" in ln for ln in lines), err
        assert any(ln.startswith("hint: ") for ln in lines), err

        # the server itself is fine: what was committed is there, and a re-run resumes
        for k, v in {**creds, "AWS_ENDPOINT_URL": f"http://{host}:{port}",
                     "CLIPSEARCH_CACHE": str(tmp_path / "cache2")}.items():
            monkeypatch.setenv(k, v)
        from clipsearch.objectstore import open_collection

        col = open_collection(uri, device="cpu")
        committed = col.store.count()
        assert committed >= 2
        report = col.add([photos])
        assert report.unchanged == committed and col.store.count() == 60
        # and a lost clipsearch.json is rebuilt from the table's record there too
        s3.delete_object(Bucket="dying", Key="col/clipsearch.json")
        again = open_collection(uri, device="cpu")
        assert again.meta["model_id"] == col.meta["model_id"]
        assert "clipsearch.json" in [o["Key"].split("/")[-1] for o in
                                     s3.list_objects_v2(Bucket="dying", Prefix="col/")["Contents"]]
    finally:
        server.stop()
