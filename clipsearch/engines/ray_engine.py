"""Index with Ray Data: decode in tasks, embed in an actor pool, commit from the driver.

    report = index_with_ray("s3://bucket/photos", ["/mnt/shared/photos"], address="auto",
                            gpus_per_worker=1)

The driver does what must be decided in one place: `pipeline.plan` (the same change detection
and bad-input rules as the local engine; a stat per file, no reads of unchanged files) and the
commits (`Store.replace_sources`, one atomic commit per bounded group of files, so a crash
loses at most the uncommitted group and a re-run resumes). Everything per-file runs on the
cluster: a streaming Ray Dataset of jobs → `map_batches(decode)` tasks (read, decode,
preprocess; a bad file becomes an error string, never an exception) → `map_batches(Embedder)`
actors (one model per actor, on a GPU when `gpus_per_worker` > 0). Videos and documents, whose
decode and encode interleave, go file by file through the same actors.

Faults: a worker process that dies is restarted by Ray and its batch retried (bounded by
`retries`). A batch that keeps killing workers is dropped (Ray Data `max_errored_blocks`), its
files are retried one per batch, and whatever still fails is reported in `report.skipped` with
the reason. A file is committed only once per run (the driver deduplicates retried results),
and its rows replace any older rows of the same source, so neither loss nor duplication can
come from a retry; files not committed are simply picked up by the next run.

Paths must be readable at the same absolute path on every node (shared or network file
system); the collection itself may be a local directory or an object-storage URI.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch import moves
from clipsearch.collection import Collection, IndexRun
from clipsearch.errors import ClipsearchError, SkipFile, UsageError
from clipsearch.indexers.base import is_batched
from clipsearch.pipeline import IndexReport, Job, content_hash, plan, unexpected_reason
from clipsearch.records import Record, display_path
from clipsearch.store import SourceRows

log = logging.getLogger(__name__)

DEFAULT_COMMIT_FILES = 1024
DEFAULT_COMMIT_ROWS = 5000
FAILED_REASON = "a Ray worker failed on this file {n} times ({err}); not indexed, run again to retry"


# ---- cluster-side code ----------------------------------------------------------------------
def _ctx_from(ctx_args: dict):
    from clipsearch.indexers.base import IndexContext

    return IndexContext(thumb_dir=Path(ctx_args["thumb_dir"]), max_pixels=ctx_args["max_pixels"],
                        options=dict(ctx_args["options"]))


def decode_batch(batch: dict[str, np.ndarray], preprocess, ctx_args: dict,
                 min_side: int) -> dict[str, np.ndarray]:
    """Ray task body: read, decode and preprocess each image; errors become reasons, not raises."""
    from clipsearch.indexers.base import indexer_for, is_batched

    ctx = _ctx_from(ctx_args)
    indexers = {m: indexer_for(m) for m in set(batch["medium"])}
    pixels: list[np.ndarray | None] = []
    errors, hashes = [], []
    for path, size, h, medium in zip(batch["path"], batch["size"], batch["content_hash"],
                                     batch["medium"], strict=True):
        raw = bytes(path)
        err, px = "", None
        ix = indexers[medium]
        if not is_batched(ix):  # videos and documents decode inside the actor, file by file
            pixels.append(None)
            errors.append(err)
            hashes.append(h)
            continue
        try:
            px = np.asarray(ix.prepare(Path(os.fsdecode(raw)), preprocess, ctx, min_side))
            h = h or content_hash(raw, int(size))
        except SkipFile as e:
            err = e.reason
        except OSError as e:
            err = f"unreadable: {e.strerror or e}"
        except Exception as e:  # one broken file must never stop the job
            err = unexpected_reason(e)
        pixels.append(px)
        errors.append(err)
        hashes.append(h)
    shape = next((p.shape for p in pixels if p is not None), (3, min_side, min_side))
    stacked = np.stack([p if p is not None else np.zeros(shape, np.float32) for p in pixels])
    out = {k: batch[k] for k in ("path", "mtime", "size", "medium")}
    out.update(content_hash=np.array(hashes, dtype=object), error=np.array(errors, dtype=object),
               pixels=stacked.astype(np.float32))
    return out


class Embedder:
    """Actor: one model per process. Images arrive preprocessed; other media arrive as paths.

    Swappable (`index_with_ray(..., embedder_cls=)`), e.g. to inject faults in tests or to add
    per-batch instrumentation.
    """

    def __init__(self, spec: dict, model_id: str, device: str, threads: int, ctx_args: dict) -> None:
        import torch

        from clipsearch.encoders import Encoder
        from clipsearch.model_registry import ModelSpec

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.encoder = Encoder.load(ModelSpec.from_dict(spec), device=device)
        if self.encoder.model_id != model_id:
            raise ClipsearchError(f"the weights of {spec.get('arch')} on this worker differ from the "
                                  "collection's", hint="install the same model files on every node")
        self.ctx = _ctx_from(ctx_args)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Embed a batch: images in one forward pass, other media one file at a time."""
        import torch

        from clipsearch.indexers.base import indexer_for, is_batched

        batched = {m: is_batched(indexer_for(m)) for m in set(batch["medium"])}
        is_img = np.array([batched[m] for m in batch["medium"]], dtype=bool)
        hashes = list(batch["content_hash"])
        errors = list(batch["error"])
        records: list[bytes] = [b""] * len(is_img)
        ok = is_img & np.array([not e for e in errors], dtype=bool)
        if ok.any():
            px = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok]))
            for i, v in zip(np.flatnonzero(ok), self.encoder.encode_pixels(px), strict=True):
                records[i] = pickle.dumps([Record(kind="image", vector=v)])
        for i in np.flatnonzero(~is_img):
            hashes[i], errors[i], records[i] = self.extract(bytes(batch["path"][i]), int(batch["size"][i]),
                                                            hashes[i], str(batch["medium"][i]))
        return self._out(batch, hashes, errors, records)

    def extract(self, raw: bytes, size: int, h: str, medium: str) -> tuple[str, str, bytes]:
        """Videos and documents: the indexer's own per-file path on this actor's encoder.

        Returns (content_hash, error, pickled records)."""
        from clipsearch.indexers.base import indexer_for

        ix = indexer_for(medium)
        try:
            found = ix.extract(Path(os.fsdecode(raw)), self.encoder, self.ctx)
            return h or content_hash(raw, size), "", pickle.dumps(found)
        except SkipFile as e:
            return h, e.reason, b""
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as e:  # one broken file must never stop the job
            return h, unexpected_reason(e), b""

    @staticmethod
    def _out(batch, hashes, errors, records) -> dict[str, np.ndarray]:
        out = {k: batch[k] for k in ("path", "mtime", "size")}
        out.update(content_hash=np.array(list(hashes), dtype=object),
                   error=np.array(list(errors), dtype=object),
                   records=np.array(list(records), dtype=object))
        return out


# ---- driver ---------------------------------------------------------------------------------
def _resolve_collection(collection: Collection | str | os.PathLike, model: str | None,
                        checkpoint: str | None) -> Collection:
    if isinstance(collection, Collection):
        return collection
    return Collection.open_or_create(collection, model=model, checkpoint=checkpoint)


@contextlib.contextmanager
def _ray_session(address: str | None) -> Iterator[Any]:
    """Connect to `address` (or start a local runtime); shut down only what we started."""
    try:
        import ray
    except ImportError as e:
        raise UsageError("--engine ray needs Ray", hint="pip install 'clipsearch[ray]'") from e
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        except ConnectionError as e:
            raise ClipsearchError(f"cannot reach the Ray cluster at {address}: {e}",
                                  hint="start it with `ray start --head`, or leave out --ray-address") from e
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def _data_context(progress: bool) -> Iterator[None]:
    """Tolerate dropped blocks (we account for every file ourselves); restore settings after."""
    from ray.data import DataContext

    dc = DataContext.get_current()
    old = (dc.max_errored_blocks, dc.enable_progress_bars)
    dc.max_errored_blocks, dc.enable_progress_bars = -1, progress
    try:
        yield
    finally:
        dc.max_errored_blocks, dc.enable_progress_bars = old


def default_workers(ray, gpus_per_worker: float) -> int:
    """One actor per GPU share; on CPUs half the cores embed and half decode."""
    res = ray.cluster_resources()
    if gpus_per_worker > 0:
        return max(1, int(res.get("GPU", 0) / gpus_per_worker))
    return max(1, int(res.get("CPU", 1)) // 2)


class _ActorNames:
    """Names the pool's actors so the driver can end them after a pass.

    Ray Data releases its actors by dropping references; an actor that was restarting after
    a crash when the pass ended can outlive that and keep its CPU/GPU, starving the next
    pass. Killing them by name once the pass's results are committed is always safe.
    """

    def __init__(self) -> None:
        self.prefix = f"clipsearch-embed-{os.getpid()}-{time.monotonic_ns()}"
        self.names: list[str] = []

    def next_options(self) -> dict[str, Any]:
        self.names.append(f"{self.prefix}-{len(self.names)}")
        return {"name": self.names[-1]}

    def kill_all(self, ray) -> None:
        for name in self.names:
            try:
                ray.kill(ray.get_actor(name))
            except ValueError:  # already gone
                pass
        self.names.clear()


def _wait_for_release(ray, cpus: float, gpus: float, timeout: float = 60.0) -> None:
    """Give Ray time to reap the actors a failed pass restarted, so the next pass can start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        free = ray.available_resources()
        if free.get("CPU", 0) >= cpus and free.get("GPU", 0) >= gpus:
            return
        time.sleep(1.0)
    log.warning("Ray resources still busy after %.0f s; starting the retry pass anyway", timeout)


def _cap_workers(ray, workers: int, cpus_per_worker: float) -> int:
    """Leave at least one CPU for the decode tasks: actors holding every CPU deadlock the run."""
    cpus = ray.cluster_resources().get("CPU", 1)
    most = max(1, int((cpus - 1) / cpus_per_worker)) if cpus_per_worker > 0 else workers
    if workers > most:
        log.warning("%d workers of %.1f CPUs each would leave no CPU for decoding on a %d-CPU "
                    "cluster; using %d (lower cpus_per_worker to run more)", workers,
                    cpus_per_worker, cpus, most)
    return min(workers, most)


def _job_row(job: Job) -> dict[str, Any]:
    return {"path": job.path, "mtime": float(job.mtime), "size": int(job.size),
            "content_hash": job.content_hash or "", "medium": job.indexer.medium}


class _Run:
    """One indexing run's driver state: what was committed, what failed, and why."""

    def __init__(self, index_run: IndexRun, report: IndexReport, jobs: list[Job], commit_files: int,
                 commit_rows: int):
        self.report = report
        self.jobs = {j.path: j for j in jobs}
        self.committer = index_run.committer(commit_files, max_rows=commit_rows, max_age=30.0)
        self.done: set[bytes] = set()

    def consume(self, ds) -> None:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for path, mtime, size, h, err, recs in zip(batch["path"], batch["mtime"], batch["size"],
                                                       batch["content_hash"], batch["error"],
                                                       batch["records"], strict=True):
                raw = bytes(path)
                if raw in self.done:  # a retried batch whose first attempt also reported
                    continue
                self.done.add(raw)
                if err:
                    self.report.skip(raw, str(err))
                    self.committer.drop(self.jobs[raw])  # its old rows are of another version
                    continue
                records: list[Record] = pickle.loads(recs)
                self.committer.add(SourceRows(raw, float(mtime), int(size), str(h), records))
                self.report.indexed += 1
                self.report.items += len(records)


def index_with_ray(collection: Collection | str | os.PathLike, paths: Sequence[str | os.PathLike], *,
                   address: str | None = None, workers: int | None = None,
                   gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0, batch_size: int = 32,
                   commit_files: int = DEFAULT_COMMIT_FILES, commit_rows: int = DEFAULT_COMMIT_ROWS,
                   retries: int = 3, max_pixels: int | None = None, options: dict | None = None,
                   model: str | None = None, checkpoint: str | None = None, progress: bool = False,
                   fit_transforms: bool = True, embedder_cls: type = Embedder,
                   follow_symlinks: bool | None = None, include_hidden: bool | None = None,
                   exclude: Sequence[str] | None = None, clear_excludes: bool = False,
                   verify: bool = False, prune_missing: bool = False) -> IndexReport:
    """`Collection.add` on a Ray cluster: same rows, same report, same collection format.

    `collection` is a Collection or a directory/URI (created with `model` if new). `address`
    is a Ray address ("auto" for the cluster this node belongs to; None starts a local one
    unless Ray is already initialised). `workers` embedding actors (default: one per GPU share,
    or half the CPUs), each with `gpus_per_worker` GPUs and `cpus_per_worker` CPU threads.
    The walk options (`follow_symlinks` ... `prune_missing`) are those of `Collection.add`.
    """
    from clipsearch.indexers.base import default_indexers

    col = _resolve_collection(collection, model, checkpoint)
    with col.index_run(paths, max_pixels=max_pixels, options=options, fit_transforms=fit_transforms,
                       follow_symlinks=follow_symlinks, include_hidden=include_hidden, exclude=exclude,
                       clear_excludes=clear_excludes) as index_run:
        report = IndexReport()
        t0 = time.perf_counter()
        carries: list[moves.Carry] = []
        jobs, gone = plan(index_run.store, index_run.roots, default_indexers(), report, index_run.rules,
                          verify=verify, prune_missing=prune_missing, carries=carries)
        moves.apply(index_run.store, carries, index_run.ctx.thumb_dir, report, commit_files)
        report.removed = index_run.store.delete_sources(gone, thumb_dir=index_run.ctx.thumb_dir)
        report.scan_seconds = time.perf_counter() - t0
        if jobs:
            run = _Run(index_run, report, jobs, commit_files, commit_rows)
            try:
                with _ray_session(address) as ray, _data_context(progress):
                    n = _cap_workers(ray, workers or default_workers(ray, gpus_per_worker),
                                     cpus_per_worker)
                    _execute(ray, col, index_run.ctx, jobs, run, n, gpus_per_worker, cpus_per_worker,
                             batch_size, retries, embedder_cls)
            except KeyboardInterrupt:
                report.interrupted = True
            finally:
                run.committer.flush()
                report.removed += run.committer.removed
        report.seconds = time.perf_counter() - t0
        index_run.report = report
    return report


def _execute(ray, col: Collection, ctx, jobs: list[Job], run: _Run, workers: int,
             gpus_per_worker: float, cpus_per_worker: float, batch_size: int, retries: int,
             embedder_cls: type) -> None:
    """Pass 1 in batches; files of dropped batches once more one by one; the rest are failures."""
    encoder = col.encoder  # checks the weights match the collection; its preprocess ships to tasks
    col.record_writer({"backend": "torch",  # what the actors run
                       "precision": "fp16" if gpus_per_worker > 0 else "fp32"})
    ctx_args = {"thumb_dir": str(ctx.thumb_dir), "max_pixels": ctx.max_pixels, "options": ctx.options}
    actor_args = {"spec": col.spec.to_dict(), "model_id": col.meta["model_id"],
                  "device": "auto" if gpus_per_worker > 0 else "cpu",
                  "threads": max(1, int(cpus_per_worker)), "ctx_args": ctx_args}

    def dataset(rows: list[dict], bs: int, isolate: bool):
        from ray.data import ActorPoolStrategy

        ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / bs)))
        with warnings.catch_warnings():  # retry limits have no named parameter in Ray Data yet
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ds.map_batches(decode_batch, batch_size=bs, batch_format="numpy", num_cpus=1,
                                max_retries=retries,
                                fn_kwargs={"preprocess": encoder.preprocess, "ctx_args": ctx_args,
                                           "min_side": encoder.image_size})
            # One task per actor at a time when isolating: a dying actor fails every task in
            # flight on it, and an innocent file must not share a poison file's fate.
            pool = ActorPoolStrategy(size=max(1, min(workers, math.ceil(len(rows) / bs))),
                                     max_tasks_in_flight_per_actor=1 if isolate else None)
            return ds.map_batches(embedder_cls, batch_size=bs, batch_format="numpy", compute=pool,
                                  num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None,
                                  max_restarts=-1, max_task_retries=retries,
                                  ray_remote_args_fn=actors.next_options,
                                  fn_constructor_kwargs=actor_args)

    actors = _ActorNames()
    # Images first (cheap, batched), then videos and documents: one pipeline, one actor pool.
    rows = [_job_row(j) for j in sorted(jobs, key=lambda j: not is_batched(j.indexer))]
    last_error = "worker process died"
    for bs in ([batch_size, 1] if batch_size > 1 else [1]):
        todo = [r for r in rows if r["path"] not in run.done]
        if not todo:
            break
        if bs != batch_size:
            log.info("retrying %d files of failed batches one by one", len(todo))
            _wait_for_release(ray, cpus_per_worker + 1, gpus_per_worker)
        try:
            run.consume(dataset(todo, bs, isolate=bs != batch_size or batch_size == 1))
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as e:  # the dataset aborted: what is not done is retried or reported
            last_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            log.warning("Ray pass failed: %s", last_error)
        finally:
            actors.kill_all(ray)
    for r in rows:
        if r["path"] not in run.done:
            run.report.skipped.append((display_path(r["path"]),
                                       FAILED_REASON.format(n=retries + 1, err=last_error)))
