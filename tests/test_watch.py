"""Watch mode (`clipsearch watch`, `serve --watch`, `Collection.watch`, `Watcher`) against the real
watcher: files created, edited, renamed and deleted while it runs; the walk rules; the fall-back
to rescans at the watch limit; catching up after a restart; waiting for another writer."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from clipsearch.indexers.scanner import Admission, ScanRules
from PIL import Image
from support import (
    ServerThread,
    build_collection,
    save_solid,
    solid,
    tiny_model_args,
    wait_until,
    write_shapes,
)

from clipsearch.collection import Collection
from clipsearch.watch import Watcher, is_watch_limit

FAST = {"quiet": 0.3, "max_wait": 2.0, "rescan_every": 600.0}  # short batches; no timed rescans


def real(p: Path) -> bytes:
    return os.fsencode(os.path.realpath(p))


def states(reader: Collection) -> dict:
    return reader.store.file_states()


@contextlib.contextmanager
def running(watcher: Watcher):
    watcher.start()
    try:
        yield watcher
    finally:
        assert watcher.stop(timeout=120), "the watcher did not stop"


@pytest.fixture
def library(tmp_path):
    """(root folder of 12 shape images, collection indexed from it, kept inside the root)."""
    tiny_model_args()
    root = tmp_path / "photos"
    write_shapes(root, per_class=1, size=64)
    col = build_collection(root / "db", [root])
    return root, col


def test_created_edited_renamed_and_deleted_files_are_followed(library, tmp_path):
    root, col = library
    reader = Collection.open(col.path, device="cpu")
    reports = []
    with running(Watcher(col, on_run=reports.append, **FAST)) as w:
        wait_until(lambda: w.status.runs >= 1, what="the catch-up run")
        assert reports[0].indexed == 0 and reports[0].removed == 0  # nothing changed since the build
        # the status turns to "events" just after the catch-up run is counted: wait for it, not race it
        wait_until(lambda: w.status.mode == "events", what="watching events after the catch-up")
        assert w.status.watching

        new = save_solid(root / "new.png", (240, 20, 20))
        wait_until(lambda: real(new) in states(reader), what="the new file to be indexed")
        assert reader.search(image=new, k=1)[0].source == os.path.realpath(new)

        before = states(reader)[real(new)].content_hash
        save_solid(new, (20, 20, 240), seed=1)  # edited in place
        wait_until(lambda: states(reader).get(real(new)) and states(reader)[real(new)].content_hash != before,
                   what="the edit to be indexed")

        moved = root / "sub" / "moved.png"
        moved.parent.mkdir()
        os.rename(new, moved)
        wait_until(lambda: real(moved) in states(reader) and real(new) not in states(reader),
                   what="the rename to be followed")

        query = save_solid(tmp_path / "query.png", (20, 20, 240), seed=1)  # outside the root
        assert reader.search(image=query, k=1)[0].source == os.path.realpath(moved)
        moved.unlink()
        wait_until(lambda: real(moved) not in states(reader), what="the deleted file to be removed")
        assert os.path.realpath(moved) not in [h.source for h in reader.search(image=query, k=50)]
        assert w.status.error is None and w.status.last_run is not None


@pytest.mark.slow
def test_a_steady_stream_is_batched_and_capped(library):
    """New files every 0.2 s never leave `quiet` seconds of calm: batches close at `max_wait`,
    so runs happen while the stream goes on, far fewer of them than files."""
    root, col = library
    files: list[Path] = []
    done = threading.Event()

    def stream() -> None:
        for i in range(50):
            files.append(save_solid(root / "burst" / f"b{i:02d}.png", (5 * i, 100, 200 - 3 * i), seed=i))
            if done.wait(0.2):
                return

    with running(Watcher(col, quiet=0.5, max_wait=1.0, rescan_every=600.0)) as w:
        wait_until(lambda: w.status.runs >= 1, what="the catch-up run")
        streamer = threading.Thread(target=stream)
        streamer.start()
        try:
            wait_until(lambda: w.status.runs >= 2 or not streamer.is_alive(), what="a run or the end")
            assert streamer.is_alive(), "no run before the stream ended: batches were not capped"
        finally:
            streamer.join()
        runs_during = w.status.runs - 1
        wait_until(lambda: {real(f) for f in files} <= set(states(col)), what="every streamed file")
    assert 1 <= runs_during < len(files) / 2


def test_a_file_still_being_copied_is_indexed_once_whole(library):
    """A slow copy: writes to one path every 0.2 s look calm to the event batching (the set of
    changed paths stops growing); the batch waits for the file to stop changing instead of
    indexing it half-written."""

    root, col = library
    buf = io.BytesIO()

    Image.fromarray(solid((250, 250, 250), size=(256, 256), seed=3)).save(buf, "PNG")
    data = buf.getvalue()
    reports = []
    with running(Watcher(col, on_run=reports.append, quiet=0.5, max_wait=2.0, rescan_every=600.0)) as w:
        wait_until(lambda: w.status.runs >= 1, what="the catch-up run")
        target = root / "copying.png"
        with open(target, "wb") as f:
            for i in range(0, len(data), len(data) // 12 + 1):
                f.write(data[i:i + len(data) // 12 + 1])
                f.flush()
                time.sleep(0.2)  # the slow writer, not a wait for the result
        wait_until(lambda: real(target) in states(col), what="the copied file to be indexed")
    assert [r.skipped for r in reports] == [[] for _ in reports]  # never seen half-written
    assert sum(r.indexed for r in reports) == 1


def test_events_the_walk_leaves_out_start_no_run(library):
    """Hidden files, excluded ones and the collection's own folder (which every run writes to:
    it lies inside the watched root here) trigger nothing; a visible file still does."""
    root, col = library
    col.set_scan_options(exclude=["*.tmp.png"])
    reports = []
    with running(Watcher(col, on_run=reports.append, **FAST)) as w:
        wait_until(lambda: w.status.runs >= 1, what="the catch-up run")
        save_solid(root / ".hidden.png", (0, 200, 0))
        save_solid(root / "draft.tmp.png", (0, 200, 0))
        (root / "db" / "stray.png").write_bytes((root / "draft.tmp.png").read_bytes())
        visible = save_solid(root / "visible.png", (200, 200, 0))
        wait_until(lambda: w.status.runs >= 2, what="a run for the visible file")
        assert reports[1].indexed == 1
        # Settle: the run wrote into db/ (table, index, thumbnails); those events must not start
        # another run. Give a start-up of one ample time (many quiet periods) to show itself.
        runs = w.status.runs
        with contextlib.suppress(AssertionError):
            wait_until(lambda: w.status.runs > runs, timeout=3, what="a spurious run")
        assert w.status.runs == runs, [r.summary() for r in reports]
    indexed = set(states(col))
    assert real(visible) in indexed
    left_out = {real(root / ".hidden.png"), real(root / "draft.tmp.png"), real(root / "db" / "stray.png")}
    assert not left_out & indexed


def test_a_root_that_vanishes_is_watched_again_when_it_is_back(tmp_path, monkeypatch):
    """An unplugged drive: its rows stay, and once it is back what changed meanwhile is indexed
    and its events are followed again."""
    from clipsearch import watch

    monkeypatch.setattr(watch, "TICK_SECONDS", 0.2)
    tiny_model_args()
    root, away = tmp_path / "drive", tmp_path / "unplugged"
    write_shapes(root, per_class=1, size=64)
    col = build_collection(tmp_path / "db", [root])
    rows = len(states(col))
    with running(Watcher(col, **FAST)) as w:
        wait_until(lambda: w.status.runs >= 1, what="the catch-up run")
        os.rename(root, away)
        wait_until(lambda: w.status.mode == "rescan", what="the watcher to notice the root is gone")
        assert len(states(col)) == rows  # kept
        meanwhile = save_solid(away / "meanwhile.png", (120, 0, 250))
        os.rename(away, root)
        wait_until(lambda: real(root / meanwhile.name) in states(col), what="the catch-up once it is back")
        wait_until(lambda: w.status.mode == "events", what="watching again")
        later = save_solid(root / "later.png", (250, 0, 120))
        wait_until(lambda: real(later) in states(col), what="an event after the root came back")
    assert len(states(col)) == rows + 2


def test_other_processes_see_the_watcher_in_info(library, tmp_path):
    """`clipsearch info` and a server without --watch read what the watcher publishes in the
    collection folder; a killed watcher's state reads as stopped."""
    from click.testing import CliRunner
    from clipsearch.ui.api import SearchService

    from clipsearch.cli import main
    from clipsearch.watch import STATE_FILE, watch_state

    root, col = library
    assert watch_state(col.path) is None  # never watched
    with running(Watcher(col, **FAST)) as w:
        wait_until(lambda: w.status.runs >= 1, what="the catch-up run")
        state = watch_state(col.path)
        assert state["watching"] and state["pid"] == os.getpid() and state["runs"] == 1
        assert SearchService(col.path, device="cpu").watch_status()["watching"]
        out = CliRunner().invoke(main, ["info", "--db", str(col.path)]).output
        assert f"watch       watching (pid {os.getpid()}" in out and "last run" in out
    assert watch_state(col.path)["watching"] is False
    # A watcher killed with -9 never wrote "stopped": its pid is gone, so it reads as stopped.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    path = col.path / STATE_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "watching": True,
                                "pid": int(dead.stdout)}))
    assert watch_state(col.path)["watching"] is False
    assert json.loads(CliRunner().invoke(main, ["info", "--db", str(col.path), "--json"]).output)["watch"][
        "mode"] == "stopped"


def test_admission_follows_the_walk_rules(tmp_path):
    root = tmp_path / "r"
    (root / "a" / "node_modules").mkdir(parents=True)
    (root / "keep").mkdir()
    (root / "keep" / ".clipsearchignore").write_text("*.raw\n")
    (root / "col").mkdir()
    (root / "col" / "clipsearch.json").write_text("{}")
    (root / "col" / "items.lance").mkdir()
    rules = ScanRules(excludes=("node_modules/",), never_enter=((real(tmp_path / "db"), "the collection"),))
    adm = Admission([os.fsencode(root)], rules)
    ok = [root / "x.jpg", root / "a" / "y.jpg", root / "keep" / "z.jpg", root / "keep" / ".clipsearchignore",
          root / "gone" / "deleted.jpg"]
    refused = [root / ".x.jpg", root / ".h" / "y.jpg", root / "a" / "node_modules" / "m.jpg",
               root / "keep" / "photo.raw", root / "col" / "thumb.jpg", tmp_path / "db" / "t.jpg",
               tmp_path / "elsewhere.jpg"]
    assert [p for p in ok if not adm.admits(os.fsencode(p))] == []
    assert [p for p in refused if adm.admits(os.fsencode(p))] == []
    hidden_ok = Admission([os.fsencode(root)], ScanRules(include_hidden=True))
    assert hidden_ok.admits(os.fsencode(root / ".x.jpg"))


def _limit_at_start(*_a, **_k):
    raise OSError(errno.ENOSPC, "inotify watch limit reached")


def _limit_later(*_a, **_k):
    yield set()  # watching worked for a while...
    raise RuntimeError("error in underlying watcher: OS file watch limit reached. (MaxFilesWatch)")


@pytest.mark.parametrize("fake_watch", [_limit_at_start, _limit_later], ids=["at-start", "while-watching"])
def test_the_watch_limit_falls_back_to_rescans(library, monkeypatch, caplog, fake_watch):
    import watchfiles

    monkeypatch.setattr(watchfiles, "watch", fake_watch)
    root, col = library
    caplog.set_level(logging.WARNING, logger="clipsearch.watch")
    with running(Watcher(col, quiet=0.3, max_wait=2.0, rescan_every=1.0)) as w:
        wait_until(lambda: w.status.mode == "rescan", what="the fall-back to rescans")
        warnings = [r.getMessage() for r in caplog.records if "watch limit" in r.getMessage()]
        assert len(warnings) == 1 and "fs.inotify.max_user_watches" in warnings[0]
        new = save_solid(root / "late.png", (10, 200, 200))
        wait_until(lambda: real(new) in states(col), what="a rescan to index the new file")


class FlakyCollection:
    """What a Watcher uses of a Collection; its first run fails as a full disk would."""

    def __init__(self, root: Path) -> None:
        self.roots = [str(root)]
        self.calls: list = []

    def scan_rules(self) -> ScanRules:
        return ScanRules()

    def add(self, paths=None, **options):
        from clipsearch.errors import StorageError
        from clipsearch.pipeline import IndexReport

        self.calls.append(paths)
        if len(self.calls) == 1:
            raise StorageError("/db/items.lance: no space left on device", hint="free some space")
        return IndexReport(indexed=1)


def test_a_failed_run_is_one_line_and_is_retried(tmp_path, caplog, monkeypatch):
    from clipsearch import watch

    monkeypatch.setattr(watch, "FAILED_RETRY_SECONDS", 0.5)
    monkeypatch.setattr(watch, "TICK_SECONDS", 0.2)
    caplog.set_level(logging.WARNING, logger="clipsearch.watch")
    col = FlakyCollection(tmp_path)
    with running(Watcher(col, quiet=0.2, max_wait=1.0, rescan_every=600)) as w:  # no timed rescans
        wait_until(lambda: w.status.runs >= 1, what="the retry after the failed run")
        assert w.status.error is None and w.status.watching
    failed = [r.getMessage() for r in caplog.records if "no space left" in r.getMessage()]
    assert len(failed) == 1 and "free some space" in failed[0] and "\n" not in failed[0]
    assert col.calls[0] is None  # the catch-up covers every saved root


class SlowCollection(FlakyCollection):
    """Its runs block until released: a run in progress when the watcher is told to stop."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.running, self.release = threading.Event(), threading.Event()

    def add(self, paths=None, **options):
        from clipsearch.pipeline import IndexReport

        self.running.set()
        assert self.release.wait(60)
        return IndexReport(indexed=3)


def test_stop_waits_for_the_run_in_progress(tmp_path):
    col = SlowCollection(tmp_path)
    reports = []
    w = Watcher(col, on_run=reports.append, **FAST)
    thread = w.start()
    assert col.running.wait(60)
    assert not w.stop(timeout=0.5)  # asked to stop mid-run: the run is not cut short
    assert thread.is_alive() and reports == []
    col.release.set()
    assert w.stop(timeout=60)
    assert [r.indexed for r in reports] == [3] and w.status.runs == 1 and w.status.mode == "stopped"


def test_is_watch_limit_tells_the_limit_from_other_failures():
    assert is_watch_limit(OSError(errno.ENOSPC, "No space left on device"))
    assert is_watch_limit(OSError("OS file watch limit reached. (Error { kind: MaxFilesWatch })"))
    assert not is_watch_limit(PermissionError(errno.EACCES, "Permission denied"))
    assert not is_watch_limit(FileNotFoundError(errno.ENOENT, "No such file or directory"))


def test_a_restart_catches_up_on_changes_made_while_stopped(library):
    root, col = library
    with running(Watcher(col, **FAST)) as w:
        wait_until(lambda: w.status.runs >= 1, what="the catch-up run")
    assert not w.status.watching and w.status.mode == "stopped"
    added = save_solid(root / "while_stopped.png", (200, 0, 200))
    gone = sorted(root.glob("red_*.jpg"))[0]
    gone.unlink()
    reports = []
    stop = threading.Event()
    t = threading.Thread(target=col.watch, kwargs={"stop": stop, "on_run": reports.append, **FAST})
    t.start()
    try:
        wait_until(lambda: reports, what="the catch-up run after the restart")
    finally:
        stop.set()
        t.join(120)
    assert not t.is_alive()
    assert (reports[0].indexed, reports[0].removed) == (1, 1)
    assert real(added) in states(col) and real(gone) not in states(col)


def test_another_writer_is_waited_for(library, caplog):
    root, col = library
    caplog.set_level(logging.WARNING, logger="clipsearch.watch")
    new = save_solid(root / "queued.png", (90, 90, 250))
    with open(col.path / ".writer.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what `clipsearch index` holds
        with running(Watcher(col, busy_retry=0.2, **FAST)) as w:
            wait_until(lambda: any("another process is indexing" in r.getMessage() for r in caplog.records),
                       what="the watcher to notice the other writer")
            assert w.status.runs == 0 and w.status.watching
            fcntl.flock(lock, fcntl.LOCK_UN)
            wait_until(lambda: w.status.runs >= 1, what="the run once the lock is free")
    assert real(new) in states(col)


@pytest.mark.slow
def test_cli_watch_prints_a_line_per_run_and_stops_on_ctrl_c(library):
    root, col = library
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "clipsearch", "watch", "--db", str(col.path), "--quiet-seconds", "0.3",
           "--max-wait", "2", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any(ln.startswith("indexed 0 files") for ln in lines), what="the catch-up line")
        save_solid(root / "cli.png", (250, 120, 0))
        wait_until(lambda: any(ln.startswith("indexed 1 files") for ln in lines), what="the new file's line")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert "watching" in err and "stopped" in err
    assert all(ln.startswith("indexed ") for ln in lines)  # one summary line per run, no progress bar


@pytest.mark.slow
def test_kill_9_mid_run_is_resumed_by_the_next_start(library):
    """The watcher killed as soon as the first rows of a batch are committed (its derived-state
    refresh, or the rest of the batch, cut off): the next start's catch-up completes it."""
    root, col = library
    before = len(states(col))
    cmd = [sys.executable, "-m", "clipsearch", "watch", "--db", str(col.path), "--quiet-seconds", "0.3",
           "--max-wait", "2", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout.readline().startswith("indexed 0 files")  # the catch-up
        burst = [save_solid(root / "burst" / f"k{i:02d}.png", (6 * i, 250 - 6 * i, 60), seed=i)
                 for i in range(40)]
        wait_until(lambda: len(states(col)) > before, what="the batch's first commit", step=0.02)
    finally:
        proc.kill()
        proc.wait(60)
    committed = len(states(col)) - before
    reports = []
    stop = threading.Event()
    col.watch(stop=stop, on_run=lambda r: (reports.append(r), stop.set()), **FAST)
    assert {real(f) for f in burst} <= set(states(col)) and len(states(col)) == before + 40
    assert col.search(image=burst[7], k=1)[0].source == os.path.realpath(burst[7])
    assert reports[0].indexed == 40 - committed  # the rest of the batch, nothing twice


def test_nothing_to_watch_is_one_line(tmp_path):
    from click.testing import CliRunner

    from clipsearch.cli import main

    Collection.create(tmp_path / "db", device="cpu", **tiny_model_args())  # no folder indexed yet
    for args in (["watch"], ["serve", "--watch"]):
        r = CliRunner().invoke(main, [*args, "--db", str(tmp_path / "db")])
        assert r.exit_code == 2, r.output
        lines = [ln for ln in r.output.splitlines() if ln]
        assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), r.output


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def _search_image(url: str, path: Path) -> list[str]:
    import httpx

    r = httpx.post(f"{url}/api/search/image", files={"file": (path.name, path.read_bytes(), "image/png")},
                   data={"k": "5", "min_relevance": "off"}, timeout=120)
    r.raise_for_status()
    return [h["source"] for h in r.json()["hits"]]


def test_serve_watch_shows_new_files_without_a_restart(library, tmp_path):
    from clipsearch.ui.server import build_app

    root, col = library
    with ServerThread(build_app(col.path, device="cpu", watch=dict(FAST))) as srv:
        wait_until(lambda: (_get(f"{srv.url}/api/info")["watch"] or {}).get("runs"), what="the catch-up run")
        info = _get(f"{srv.url}/api/info")
        assert info["watch"]["watching"] and info["watch"]["mode"] == "events"
        items = info["items"]
        new = save_solid(root / "served.png", (0, 250, 120))
        wait_until(lambda: _get(f"{srv.url}/api/info")["items"] > items, what="the new file in /api/info")
        assert _search_image(srv.url, new)[0] == os.path.realpath(new)
        status = _get(f"{srv.url}/api/info")["watch"]
        assert status["last_changed"] and status["last_run"] >= status["last_changed"]
        assert "watching, updated" in srv.server.config.app.state.service.status_line()
    # A server that does not watch shows what the collection's watcher last published: stopped.
    assert build_app(col.path, device="cpu").state.service.watch_status()["watching"] is False


def test_serve_watch_loads_one_encoder(library, monkeypatch):
    """The watcher's runs and the server's queries share one encoder: one model in memory."""
    from clipsearch.ui.server import build_app

    from clipsearch.encoders import Encoder

    loads = []
    real_load = Encoder.load.__func__

    def counting_load(cls, *args, **kwargs):
        loads.append(args)
        return real_load(cls, *args, **kwargs)

    monkeypatch.setattr(Encoder, "load", classmethod(counting_load))
    root, col = library
    with ServerThread(build_app(col.path, device="cpu", watch=dict(FAST))) as srv:
        wait_until(lambda: (_get(f"{srv.url}/api/info")["watch"] or {}).get("runs"), what="the catch-up run")
        items = _get(f"{srv.url}/api/info")["items"]
        new = save_solid(root / "one-encoder.png", (250, 20, 120))
        wait_until(lambda: _get(f"{srv.url}/api/info")["items"] > items, what="the new file indexed")
        assert _search_image(srv.url, new)[0] == os.path.realpath(new)  # the server embeds the query
        service = srv.server.config.app.state.service
        assert service.watcher.col is not service.col and service.watcher.col.encoder is service.col.encoder
    assert len(loads) == 1, loads
