"""Watch mode: keep a collection current as files appear, change, move and vanish.

File events come from watchfiles (the Rust `notify` crate: inotify, FSEvents, ReadDirectoryChangesW).
They are only a trigger: each batch (after `quiet` seconds without new events, or `max_wait` under a
steady stream) becomes one ordinary incremental run, `Collection.add` over the roots the events fell
in, so the plan decides what is new, changed, moved or gone exactly as `clipsearch index` does, and a
missed or coalesced event costs nothing. Events the walk would leave out (hidden names, excludes,
.clipsearchignore, the collection's own folder) start no run (`scanner.Admission`); a file still
being written holds its batch back until it has been left alone for `quiet` seconds.

A full rescan runs on start (catching up on what changed while nothing watched) and every
`rescan_every` seconds as a safety net; where the platform's watch limit is reached (inotify's
ENOSPC), rescans are all there is, with one warning saying how to raise the limit. Another process
holding the writer lock is waited for. Stopping (`stop` set) happens between runs: a run in progress
finishes its commits first, and one cut short (a second Ctrl-C, a kill) is resumed by the next start.
The status is published in the collection folder (`watch_state`) for `info` and other servers.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from clipsearch.errors import ClipsearchError, UsageError, WriterBusy
from clipsearch.fsutil import is_within, write_atomic
from clipsearch.indexers.scanner import Admission
from clipsearch.leftovers import process_alive

if TYPE_CHECKING:
    from clipsearch.collection import Collection
    from clipsearch.pipeline import IndexReport

log = logging.getLogger(__name__)

QUIET_SECONDS = 1.5  # a batch ends after this long without new events...
MAX_WAIT_SECONDS = 10.0  # ...or this long after its first event, under a steady stream
RESCAN_SECONDS = 300.0  # the safety-net rescan, and the only updates past the watch limit
BUSY_RETRY_SECONDS = 2.0  # another process is indexing: try again after this long
SETTLE_SECONDS = 300.0  # the longest a batch waits for a file still being written
FAILED_RETRY_SECONDS = 30.0  # a failed run (full disk, server down) is retried over every root after this
TICK_SECONDS = 5.0  # how often an idle watcher looks at the clock (rescans, roots that came back)
STATE_FILE = "watch.state"  # in the collection folder: what its watcher is doing, for other processes
WATCHES_SETTING = "fs.inotify.max_user_watches"
WATCHES_FILE = "/proc/sys/fs/inotify/max_user_watches"


def is_watch_limit(error: BaseException) -> bool:
    """Whether `error` says the platform's limit on watched folders was reached: inotify's
    ENOSPC, which notify reports as MaxFilesWatch ("OS file watch limit reached")."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    text = str(error)
    return "MaxFilesWatch" in text or "watch limit" in text


def watch_limit_warning(rescan_every: float) -> str:
    """One line: the limit was reached, what happens instead, and how to raise it."""
    try:
        with open(WATCHES_FILE) as f:
            current = f" ({WATCHES_SETTING} = {f.read().strip()})"
    except OSError:
        current = ""
    return (f"the inotify watch limit is reached{current}: rescanning every {rescan_every:g} s "
            f"instead of watching; raise it with `sudo sysctl {WATCHES_SETTING}=524288` "
            f"(and a line in /etc/sysctl.d/ to keep it)")


def _modified_within(path: str, seconds: float) -> bool:
    """Whether the regular file at `path` was modified in the last `seconds` (False when it is
    gone, or a folder: its mtime moves with every file added to it)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and time.time() - st.st_mtime < seconds


def watch_state(collection_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What the watcher of the collection at `collection_dir` last published (`WatchStatus`
    fields plus `pid` and `host`), for a process that is not the watcher (`info`, a server
    without --watch); None when it was never watched. A watcher on this machine whose process
    is gone (killed) reads as stopped."""
    try:
        with open(os.path.join(collection_dir, STATE_FILE)) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    if state.get("watching") and state.get("host") == socket.gethostname() \
            and not process_alive(int(state.get("pid") or 0)):
        state.update(watching=False, mode="stopped")
    return state


def describe_state(state: dict[str, Any]) -> str:
    """One line for `clipsearch info`: whether a watcher runs, where, and its last run."""
    when = state.get("last_run")
    last = (f"; last run {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(when))}: "
            f"{state.get('last_summary')}") if when else ""
    if not state.get("watching"):
        return "not watching (the last watcher stopped)" + last
    how = "rescanning every so often (watch limit reached or no root to watch)" \
        if state.get("mode") == "rescan" else "watching"
    failed = f"; the last run failed: {state['error']}" if state.get("error") else ""
    return f"{how} (pid {state.get('pid')} on {state.get('host')}){last}{failed}"


@dataclass
class WatchStatus:
    """What a watcher is doing, for `info`, the HTTP API and the UI."""

    watching: bool = False  # between start and stop
    mode: str = "starting"  # starting | events | rescan (watch limit reached or no watchable root) | stopped
    roots: list[str] = field(default_factory=list)
    runs: int = 0
    last_run: float | None = None  # time.time() when the last run finished
    last_summary: str | None = None
    last_changed: float | None = None  # when a run last added, changed or removed something
    error: str | None = None  # the last run's failure (one line); cleared by the next good run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Watcher:
    """Keeps one collection current until stopped. `run` blocks (the CLI); `start` runs it in a
    daemon thread (the server). `on_run(report)` is called after every run, catch-up included.

    `paths`: what to watch and index (default: the collection's saved roots). `add_options` go to
    every `Collection.add` (e.g. workers). `force_polling` is watchfiles' (None: its default)."""

    def __init__(self, col: Collection, paths: Sequence[str | os.PathLike[str]] | None = None, *,
                 quiet: float = QUIET_SECONDS, max_wait: float = MAX_WAIT_SECONDS,
                 rescan_every: float = RESCAN_SECONDS, on_run: Callable[[IndexReport], None] | None = None,
                 busy_retry: float = BUSY_RETRY_SECONDS, add_options: dict[str, Any] | None = None,
                 force_polling: bool | None = None) -> None:
        if not 0 < quiet <= max_wait or rescan_every <= 0:
            raise UsageError(f"watch: quiet={quiet:g}, max_wait={max_wait:g}, rescan_every={rescan_every:g} "
                             "do not fit", hint="need 0 < quiet <= max_wait and rescan_every > 0")
        self.col = col
        self.paths = [os.path.abspath(os.path.expanduser(os.fspath(p))) for p in paths] if paths else None
        self.quiet, self.max_wait, self.rescan_every = quiet, max_wait, rescan_every
        self.on_run, self.busy_retry = on_run, busy_retry
        self.add_options = dict(add_options or {})
        self.force_polling = force_polling
        self.stop_event = threading.Event()
        self._limit_reached = False
        self._linked: list[str] = []  # followed symlink targets outside the given paths
        self._watched_before: list[str] = []  # the roots the last watching session covered
        self._retry_at: float | None = None  # when to retry after a failed run (monotonic)
        self._status = WatchStatus()
        self._status_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ---- status ------------------------------------------------------------------------------
    @property
    def status(self) -> WatchStatus:
        """A copy of the current status (safe to read from any thread)."""
        with self._status_lock:
            return replace(self._status, roots=list(self._status.roots))

    def _set(self, **changes: Any) -> None:
        with self._status_lock:
            before = asdict(self._status)
            for k, v in changes.items():
                setattr(self._status, k, v)
            state = asdict(self._status)
        if state != before:
            self._publish(state)

    def _publish(self, state: dict[str, Any]) -> None:
        """Write the status where other processes read it (`watch_state`); never fails the
        watcher (the collection folder may be read-only or full)."""
        path = getattr(self.col, "path", None)
        if path is None:
            return
        try:
            write_atomic(os.path.join(path, STATE_FILE),
                         json.dumps({**state, "pid": os.getpid(), "host": socket.gethostname()}))
        except OSError as e:
            log.debug("could not write %s: %s", STATE_FILE, e)

    # ---- running -----------------------------------------------------------------------------
    def start(self) -> threading.Thread:
        """Run in a daemon thread; `stop()` ends it."""
        self._thread = threading.Thread(target=self.run, name="clipsearch-watch", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the watcher to stop after the run in progress; wait up to `timeout` for the thread
        `start` made. Returns whether it has stopped."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def run(self, stop: threading.Event | None = None) -> None:
        """Catch up, then watch until `stop` (or `self.stop_event`) is set."""
        if stop is not None:
            self.stop_event = stop
        if not self.run_roots():
            raise UsageError("give the folders to watch",
                             hint="clipsearch watch PATH... (later runs without PATH watch them all)")
        self._set(watching=True, mode="starting", roots=self.run_roots())
        self._watched_before = self._watchable()  # what the catch-up covers
        try:
            going = self._index(self.paths)  # catch-up: what changed while nothing watched
            while going and not self.stop_event.is_set():
                going = self._rescan_after(self.rescan_every) if self._limit_reached else self._watch_events()
        except Exception as e:  # a bug: the status says the watcher is gone, and why
            self._set(error=f"the watcher stopped: {type(e).__name__}: {e}")
            raise
        finally:
            self._set(watching=False, mode="stopped")

    def run_roots(self) -> list[str]:
        """The roots runs cover: the paths given (and the outside targets their symlinks led
        to), else the collection's saved roots."""
        return [*self.paths, *self._linked] if self.paths else self.col.roots

    def _watchable(self) -> list[str]:
        """Real paths of the run roots that exist now: what watchfiles is given."""
        return sorted({os.path.realpath(r) for r in self.run_roots() if os.path.exists(r)})

    def _watch_events(self) -> bool:
        """One watchfiles session over the roots that exist now. Returns False when the watcher
        should stop, True to be started again (the set of watchable roots changed, or watching
        failed and rescans took over)."""
        import watchfiles

        watched = self._watchable()
        back = self._roots_holding(r for r in watched if r not in self._watched_before)
        self._watched_before = watched
        if not watched:  # every root is missing (an unplugged drive): rescan until one is back
            self._set(mode="rescan")
            return self._rescan_after(self.rescan_every, until_roots_change=True)
        if back and not self._index(back):  # what changed while it was away
            return False
        self._set(mode="events", roots=self.run_roots())
        admission = self._admission(watched)
        last_full = time.monotonic()
        try:
            for changes in watchfiles.watch(
                    *watched, watch_filter=None, debounce=int(self.max_wait * 1000),
                    step=int(self.quiet * 1000), stop_event=self.stop_event,
                    rust_timeout=int(min(self.rescan_every, TICK_SECONDS) * 1000), yield_on_timeout=True,
                    raise_interrupt=True, force_polling=self.force_polling, ignore_permission_denied=True):
                admitted = [p for _, p in changes if admission.admits(os.fsencode(p))]
                touched = self._roots_holding(admitted)
                if touched and not self._settle(admitted):
                    return False
                if touched:
                    log.info("changes under %s", ", ".join(touched))
                    if not self._index(touched):
                        return False
                    admission = self._admission(watched)  # the run may have changed the rules
                if time.monotonic() - last_full >= self.rescan_every or self._retry_due():
                    if not self._index(self.paths):
                        return False
                    last_full = time.monotonic()
                if self._watchable() != watched:
                    return True  # a root came back, vanished or was linked: watch the new set
        except (OSError, RuntimeError) as e:
            if is_watch_limit(e):
                log.warning(watch_limit_warning(self.rescan_every))
                self._limit_reached = True
                self._set(mode="rescan")
                return True
            if not isinstance(e, OSError) and not type(e).__name__.startswith("Watchfiles"):
                raise  # not the watcher's failure: a bug
            log.warning("watching %s failed (%s); rescanning every %g s until it works again",
                        ", ".join(watched), str(e).splitlines()[0], self.rescan_every)
            self._set(mode="rescan")
            return self._rescan_after(self.rescan_every, until_roots_change=True)
        return not self.stop_event.is_set()

    def _settle(self, paths: list[str]) -> bool:
        """Wait until no file of a batch was modified in the last `quiet` seconds: a copy in
        progress keeps writing to one path, which watchfiles sees as calm (its set of changed
        paths stops growing), and must not be indexed half-written. A file written once is
        already that old when its batch closes, so this costs it nothing. At most
        SETTLE_SECONDS; returns False when stopped meanwhile."""
        start = time.monotonic()
        while any(_modified_within(p, self.quiet) for p in paths):
            if time.monotonic() - start >= SETTLE_SECONDS:
                break
            if self.stop_event.wait(min(0.25, self.quiet / 2)):
                return False
        return True

    def _retry_due(self) -> bool:
        """Whether a failed run's changes are due to be tried again (by a run over every root)."""
        return self._retry_at is not None and time.monotonic() >= self._retry_at

    def _admission(self, watched: list[str]) -> Admission:
        return Admission([os.fsencode(r) for r in watched], self.col.scan_rules())

    def _rescan_after(self, seconds: float, until_roots_change: bool = False) -> bool:
        """Wait `seconds` (or until stopped), then run over every root. Returns False when the
        watcher should stop. With `until_roots_change`, return early (True) once a root
        appears or vanishes, so that watching can start again."""
        start, before = time.monotonic(), self._watchable()
        while (left := seconds - (time.monotonic() - start)) > 0:
            if self.stop_event.wait(min(TICK_SECONDS, left)):
                return False
            if until_roots_change and self._watchable() != before:
                return True
        return self._index(self.paths)

    def _roots_holding(self, paths: Iterable[str]) -> list[str]:
        """The run roots (as runs name them) that hold any of `paths` (event paths, real)."""
        by_real = {os.path.realpath(r): r for r in self.run_roots()}
        return sorted({root for p in paths for real, root in by_real.items() if is_within(p, real)})

    def _index(self, paths: Sequence[str] | None) -> bool:
        """One incremental run over `paths` (None: every run root). Waits while another process
        holds the writer lock; a failed run is logged and left to the next event or rescan.
        Returns False when the watcher should stop (stopped, or the run was interrupted)."""
        announced = False
        while not self.stop_event.is_set():
            try:
                report = self.col.add(paths or None, progress=False, **self.add_options)
            except WriterBusy as e:
                if not announced:
                    log.warning("%s; waiting for it (retrying every %g s)", e, self.busy_retry)
                    announced = True
                self.stop_event.wait(self.busy_retry)
                continue
            except (ClipsearchError, OSError) as e:
                hint = f" (hint: {e.hint})" if isinstance(e, ClipsearchError) and e.hint else ""
                log.warning("a run failed: %s%s; a run over every root follows in %g s", e, hint,
                            FAILED_RETRY_SECONDS)
                self._set(error=str(e))
                self._retry_at = time.monotonic() + FAILED_RETRY_SECONDS
                return True
            if not paths:
                self._retry_at = None
            self._record(report)
            if report.interrupted:
                self.stop_event.set()
                return False
            return True
        return False

    def _record(self, report: IndexReport) -> None:
        """Status, linked roots and the caller's callback after one run."""
        if self.paths:
            real_given = [os.path.realpath(p) for p in self.paths]
            for r in map(os.fsdecode, report.linked_roots):
                if r not in self._linked and not any(is_within(r, g) for g in real_given):
                    self._linked.append(r)
        now = time.time()
        self._set(runs=self._status.runs + 1, last_run=now, last_summary=report.summary(), error=None,
                  roots=self.run_roots(),
                  **({"last_changed": now} if report.indexed or report.removed else {}))
        if self.on_run is not None:
            self.on_run(report)
