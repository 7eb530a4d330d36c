"""The indexing job: scan → change detection → decode in threads → batched encode → atomic commits.

Images are decoded and preprocessed by a thread pool while the encoder runs on the previous
batch, so the encoder does not wait. Other media (video, documents) go file by file through
their indexer. Commits group whole files; a file's rows are replaced in the same commit. A
streaming indexer's file (a huge text, a long PDF) is committed in row batches as its parts
come, marked partial until its last part is in (`_FileWriter`), so memory follows the batch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tqdm import tqdm

from clipsearch import metadata, moves
from clipsearch.errors import SkipFile, StorageError
from clipsearch.file_states import PARTIAL_SIZE, FileState, FileStates
from clipsearch.fsutil import is_within
from clipsearch.indexers.base import IndexContext, Indexer, Part, is_batched, is_streaming
from clipsearch.indexers.scanner import Found, Problem, Scan, ScanRules, has_media_extension
from clipsearch.records import Record, display_path
from clipsearch.store import SourceRows, Store

if TYPE_CHECKING:
    import torch

    from clipsearch.backends import AnyEncoder
    from clipsearch.gpu_decode import JpegDecoder, RawJpeg

log = logging.getLogger(__name__)

HEAD_BYTES = 64
FULL_HASH_LIMIT = 64 << 20


def content_hash(path: bytes, size: int) -> str:
    """blake2b of the whole file; for files over 64 MiB, of size + first and last 8 MiB."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        if size <= FULL_HASH_LIMIT:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(str(size).encode())
            h.update(f.read(8 << 20))
            f.seek(-(8 << 20), os.SEEK_END)
            h.update(f.read())
    return h.hexdigest()


@dataclass
class Job:
    path: bytes
    mtime: float
    size: int
    indexer: Indexer
    content_hash: str | None = None
    replaces: bool = False  # the store holds rows of an older version of this file
    maybe_text: bool | None = None  # the OCR gate's verdict on an image (None: not asked)


UNEXPECTED = "unexpected error"  # the start of a skip reason that is a bug, not bad input


def unexpected_reason(e: BaseException) -> str:
    """The skip reason of an exception no indexer should raise: a bug, counted apart."""
    return f"{UNEXPECTED} ({type(e).__name__}: {e})"


@dataclass
class IndexReport:
    indexed: int = 0
    unchanged: int = 0
    removed: int = 0
    moved: int = 0  # files renamed or moved: their rows followed them, nothing re-embedded
    described: int = 0  # indexed files whose file columns (date, place...) were read afterwards
    transcribed: int = 0  # files indexed before whose speech was added (`speech_backfill`)
    items: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    vanished: list[tuple[str, str]] = field(default_factory=list)  # (root, why): rows kept
    pruned_roots: list[bytes] = field(default_factory=list)  # vanished roots removed on purpose
    linked_roots: list[bytes] = field(default_factory=list)  # followed symlink targets
    notes: list[tuple[str, str]] = field(default_factory=list)  # indexed, with a caveat (a cap)
    unexpected: int = 0  # skips that are bugs (`unexpected_reason`), not bad input
    scan_seconds: float = 0.0
    seconds: float = 0.0
    image_seconds: float = 0.0  # wall time of the image phase (decode threads + encoder)
    encode_seconds: float = 0.0  # of it, time in the encoder's calls
    ocr_files: int = 0  # files whose words were read (or found to have none) this run
    ocr_rows: int = 0  # `ocr` rows written
    ocr_pictures: int = 0  # pictures (images, scanned pages, video frames) the OCR pass looked at
    ocr_seconds: float = 0.0  # wall time of the OCR pass (the gate in the decode threads aside)
    ocr_problem: str | None = None  # why OCR could not run (the engine missing), one line

    @property
    def encoder_busy(self) -> float | None:
        """The share of the image phase the encoder was working: near 1, decoding kept up."""
        return self.encode_seconds / self.image_seconds if self.image_seconds > 1.0 else None
    interrupted: bool = False

    def skip(self, path: bytes, reason: str) -> None:
        """A file not indexed, and why; a bug's reason is also counted in `unexpected`."""
        self.skipped.append((display_path(path), reason))
        if reason.startswith(UNEXPECTED):
            self.unexpected += 1
            log.warning("%s: %s; this is a bug in clipsearch (--verbose shows the traceback)",
                        display_path(path), reason)

    @property
    def seen(self) -> int:
        return self.indexed + self.unchanged + len(self.skipped)

    def summary(self) -> str:
        rate = ""
        if self.seen >= 1000:  # a per-1,000 figure from a handful of files is just overhead
            rate = f", {1000 * self.scan_seconds / self.seen:.3f} s per 1,000 files"
        s = (f"indexed {self.indexed} files ({self.items} items), {self.unchanged} unchanged, "
             f"{self.moved} moved, {self.removed} removed, {len(self.skipped)} skipped "
             f"in {self.seconds:.1f} s "
             f"(scan + change check {self.scan_seconds:.2f} s{rate})")
        if self.encoder_busy is not None:
            s += f"; encoder busy {100 * self.encoder_busy:.0f}% of {self.image_seconds:.1f} s of images"
        if self.ocr_files or self.ocr_seconds >= 0.05:
            s += (f"; OCR read {self.ocr_pictures} pictures of {self.ocr_files} files, "
                  f"{self.ocr_rows} rows, in {self.ocr_seconds:.1f} s")
        if self.ocr_problem:
            s += f"; OCR skipped: {self.ocr_problem}"
        if self.transcribed:
            s += f"; speech added to {self.transcribed} files indexed before"
        if self.described:
            s += f"; date, place and camera read for {self.described} indexed files"
        if self.unexpected:
            s += f"; {self.unexpected} of the skipped hit an unexpected error (a bug)"
        if self.vanished:
            s += f"; {len(self.vanished)} root(s) not found, their rows kept"
        if self.notes:
            s += f"; {len(self.notes)} indexed in part: " + "; ".join(
                f"{os.path.basename(path)}: {note}" for path, note in self.notes[:3])
            s += f"; and {len(self.notes) - 3} more" if len(self.notes) > 3 else ""
        return s + (" [interrupted: run again to resume]" if self.interrupted else "")


class Committer:
    """Groups finished files and commits them together, by count, row volume or age; and
    removes the old rows of files whose re-index failed (`drop`), so no stale rows stay."""

    def __init__(self, store: Store, max_files: int, max_rows: int = 5000, max_age: float = 10.0,
                 thumb_dir: str | os.PathLike | None = None):
        self.store, self.max_files, self.max_rows, self.max_age = store, max_files, max_rows, max_age
        self.thumb_dir = thumb_dir
        self.pending: list[SourceRows] = []
        self.dropped: list[bytes] = []
        self.rows = 0
        self.removed = 0  # files whose old rows `drop` removed
        self.since = time.monotonic()

    def drop(self, job: Job) -> None:
        """A file that failed: its rows from an older version go with the next commit."""
        if job.replaces:
            self.dropped.append(job.path)

    def add(self, item: SourceRows) -> None:
        if item.file_meta is None and item.size != PARTIAL_SIZE:
            item.file_meta = metadata.read(item.source_raw)  # header only; never raises
        if not self.pending:
            self.since = time.monotonic()
        self.pending.append(item)
        self.rows += len(item.records)
        if (len(self.pending) >= self.max_files or self.rows >= self.max_rows
                or time.monotonic() - self.since > self.max_age):
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.store.replace_sources(self.pending)
            self.pending, self.rows = [], 0
        if self.dropped:
            self.removed += self.store.delete_sources(self.dropped, thumb_dir=self.thumb_dir)
            self.dropped = []


class _FileWriter:
    """Commits one file's rows in batches of the committer's `max_rows` while its indexer is
    still producing them, so no more than a batch is held.

    The batches go in marked partial (`PARTIAL_SIZE`), the first one replacing the file's old
    rows; after the last, `mark_complete` records the file's state. A run stopped in between
    leaves rows that change detection does not take as indexed, so the next run redoes the
    file. A file that fits in one batch goes through the committer like any other."""

    def __init__(self, committer: Committer, job: Job) -> None:
        self.committer, self.store, self.job = committer, committer.store, job
        self.buffer: list[Record] = []
        self.rows = 0
        self.started = False

    def add(self, records: list[Record]) -> None:
        self.buffer.extend(records)
        self.rows += len(records)
        if len(self.buffer) >= self.committer.max_rows:
            self._commit_part()

    def _commit_part(self) -> None:
        item = SourceRows(self.job.path, self.job.mtime, PARTIAL_SIZE, "", self.buffer)
        if self.started:
            self.store.append_rows(item)
        else:
            self.store.replace_sources([item])
        self.started, self.buffer = True, []

    def finish(self) -> None:
        job = self.job
        if not self.started:
            self.committer.add(SourceRows(job.path, job.mtime, job.size, job.content_hash or "", self.buffer))
            return
        if self.buffer:
            self._commit_part()
        self.store.mark_complete(job.path, job.mtime, job.size, job.content_hash or "")

    def abandon(self) -> None:
        """The file turned out bad midway: it gets no rows, like any skipped file."""
        if self.started:
            self.store.delete_sources([self.job.path])


def plan(store: Store | Callable[[], Store], roots: list[bytes], indexers: list[Indexer], report: IndexReport,
         rules: ScanRules | None = None, *, verify: bool = False,
         prune_missing: bool = False,
         carries: list[moves.Carry] | None = None,
         states: FileStates | None = None) -> tuple[list[Job], list[bytes]]:
    """Decide per file: unchanged, skipped, or to (re)index; and which sources are gone.

    Each file is keyed by its real path, once however many roots or links reach it. `verify`
    re-hashes files whose size and mtime are unchanged. Rows under a root that vanished (see
    `vanished_roots`) are kept unless `prune_missing`. With `carries`, files whose content the
    table already holds (renamed, moved, copied: `moves.find`) leave the jobs for that list,
    and the sources they came from leave `gone` when the carry removes them (`moves.apply`).
    `states`: the table's file states when the caller has them (`catalog.Catalog.file_states`);
    then `store` may be a function that opens it, called only if something must be written.
    """
    if states is None:
        states = resolve_store(store).file_states()
    jobs: list[Job] = []
    seen: set[bytes] = set()
    stale: list[bytes] = []
    touched: list[tuple[bytes, float]] = []  # new mtime, same content: written together below
    walk = Scan(roots, rules)
    for entry in walk:
        if isinstance(entry, Problem):
            if entry.keeps_rows:
                seen.add(entry.path)
            if entry.notable or has_media_extension(entry.path) or os.path.islink(entry.path):
                report.skipped.append((display_path(entry.path), entry.reason))
            continue
        seen.add(entry.path)
        unchanged = report.unchanged
        job = _plan_file(entry, states.get(entry.path), indexers, report, verify, touched)
        if job is not None:
            jobs.append(job)
        elif report.unchanged == unchanged and entry.path in states:
            stale.append(entry.path)  # changed, and now unreadable, empty or not media: rows go
    if touched:
        resolve_store(store).touch_many(touched)
    covered, kept = vanished_roots(walk, states, report, prune_missing)
    report.linked_roots.extend(walk.linked)
    gone = [raw for raw in states.under(covered) if raw not in seen and not _under(raw, kept)]
    if carries is None:
        return jobs, gone + stale
    jobs, gone, found = moves.find(jobs, gone + stale, states, content_hash)
    carries.extend(found)
    return jobs, gone


def _plan_file(entry: Found, old: FileState | None, indexers: list[Indexer],
               report: IndexReport, verify: bool, touched: list[tuple[bytes, float]]) -> Job | None:
    """A job for a new or changed file; None for an unchanged (or unindexable) one. A file
    whose mtime changed but not its content goes on `touched` (its new mtime)."""
    same_stat = old is not None and old.mtime == entry.mtime and old.size == entry.size
    if same_stat and not verify:
        report.unchanged += 1
        return None
    job = _job_for(entry, indexers, report)
    if job is None:
        return None
    job.replaces = old is not None
    if old is not None and old.size == entry.size:
        try:
            job.content_hash = content_hash(entry.path, entry.size)
        except OSError as e:
            report.skipped.append((display_path(entry.path), f"unreadable: {e.strerror}"))
            return None
        if job.content_hash == old.content_hash:
            if not same_stat:
                touched.append((entry.path, entry.mtime))
            report.unchanged += 1
            return None
    return job


def _under(raw: bytes, prefixes: list[bytes]) -> bool:
    return any(is_within(raw, p) for p in prefixes)


def vanished_roots(walk: Scan, states: FileStates, report: IndexReport,
                   prune_missing: bool) -> tuple[list[bytes], list[bytes]]:
    """(prefixes whose unseen rows are gone, prefixes whose rows are kept) after a walk.

    A root vanished when it is missing, cannot be listed, or is an empty folder while the
    collection has rows under it (an unplugged drive leaves its empty
    mount folder). Its rows are kept and it is reported in `report.vanished`, unless
    `prune_missing`: then its rows go and it lands in `report.pruned_roots`.
    """
    covered = list(walk.walked)
    kept = list(walk.unwalked)
    lost = list(walk.vanished)
    for root in walk.empty:
        real = os.path.realpath(root)
        if states.under([root, real]):
            lost.append((root, "it is empty now (an unplugged drive?)"))
    for root, reason in lost:
        forms = [root, os.path.realpath(root)]
        if prune_missing:
            covered.extend(forms)
            report.pruned_roots.append(root)
        else:
            if not _under(root, [c for c in covered if c not in forms]):  # not seen gone in a walk
                kept.extend(forms)
            report.vanished.append((display_path(root), reason))
            log.warning("%s: %s; its rows are kept (--prune-missing removes them)",
                        display_path(root), reason)
    return covered, kept


def _job_for(entry: Found, indexers: list[Indexer], report: IndexReport) -> Job | None:
    name = display_path(entry.path)
    media = has_media_extension(entry.path)
    if entry.size == 0:
        if media:
            report.skipped.append((name, "empty file (0 bytes)"))
        return None
    try:
        with open(entry.path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as e:
        if media:
            report.skipped.append((name, f"unreadable: {e.strerror}"))
        return None
    from pathlib import Path

    p = Path(os.fsdecode(entry.path))
    for ix in indexers:
        if ix.accepts(p, head):
            return Job(entry.path, entry.mtime, entry.size, ix)
    if media:
        report.skipped.append((name, "content is not a supported image, video or document "
                                     "(the extension does not match what is inside)"))
    return None


def _prepare_image(job: Job, preprocess, ctx: IndexContext, min_side: int, gpu: JpegDecoder | None = None
                   ) -> tuple[Job, torch.Tensor | RawJpeg | None, str | None]:
    """Worker-thread body: (job, tensor, None) on success, (job, None, reason) on a bad file.

    With a GPU decoder, a JPEG is only read here (a RawJpeg) and decoded later, in a batch."""
    from pathlib import Path

    try:
        path = Path(os.fsdecode(job.path))
        tensor = None
        if gpu is not None:
            from clipsearch.gpu_decode import read_jpeg

            tensor = read_jpeg(path, ctx.max_pixels)
        if tensor is None and ctx.options.get("ocr") and hasattr(job.indexer, "prepare_gated"):
            tensor, job.maybe_text = job.indexer.prepare_gated(path, preprocess, ctx, min_side)
        if tensor is None:
            tensor = job.indexer.prepare(path, preprocess, ctx, min_side)  # type: ignore[attr-defined]
        if job.content_hash is None:
            job.content_hash = content_hash(job.path, job.size)
    except SkipFile as e:
        return job, None, e.reason
    except OSError as e:
        return job, None, f"unreadable: {e.strerror or e}"
    except Exception as e:  # one broken file must never stop the job
        log.info("unexpected error on %s", display_path(job.path), exc_info=True)
        return job, None, unexpected_reason(e)
    return job, tensor, None


def run(store: Store | Callable[[], Store], encoder: AnyEncoder | Callable[[], AnyEncoder],
        roots: list[bytes], ctx: IndexContext, indexers: list[Indexer], *, batch_size: int = 32,
        workers: int | None = None, progress: bool = True, commit_files: int = 256, decode: str = "auto",
        rules: ScanRules | None = None, verify: bool = False, prune_missing: bool = False,
        commit_rows: int = 5000, states: FileStates | None = None) -> IndexReport:
    """Bring the store up to date with the files under `roots`. Never raises for one bad file.

    `decode`: where JPEGs are decoded; auto = on the GPU when the encoder runs on CUDA.
    `rules`, `verify`, `prune_missing`: see `plan`. `commit_rows`: rows per commit, also the
    batch a big file's rows are committed in. `encoder` may be a function that loads it: it is
    called only when some file needs embedding, so a run that changes nothing loads no model.
    Likewise `store`, with `states` (see `plan`): a run that changes nothing opens no table."""
    report = IndexReport()
    t0 = time.perf_counter()
    carries: list[moves.Carry] = []
    jobs, gone = plan(store, roots, indexers, report, rules, verify=verify, prune_missing=prune_missing,
                      carries=carries, states=states)
    if carries or gone:
        moves.apply(resolve_store(store), carries, ctx.thumb_dir, report, commit_files)
        report.removed = resolve_store(store).delete_sources(gone, thumb_dir=ctx.thumb_dir)
    report.scan_seconds = time.perf_counter() - t0
    if not jobs:
        report.seconds = time.perf_counter() - t0
        return report
    encoder = resolve_encoder(encoder)
    gpu = _jpeg_decoder(encoder, decode)
    committer = Committer(resolve_store(store), commit_files, max_rows=commit_rows, thumb_dir=ctx.thumb_dir)
    bar = tqdm(total=len(jobs), unit="file", disable=not progress or not jobs, dynamic_ncols=True,
               desc="indexing", smoothing=0.1)
    try:
        images = [j for j in jobs if is_batched(j.indexer)]
        others = [j for j in jobs if not is_batched(j.indexer)]
        _run_images(images, encoder, ctx, committer, report, bar, batch_size, workers, gpu)
        _run_others(others, encoder, ctx, committer, report, bar)
    except KeyboardInterrupt:
        report.interrupted = True
    except StorageError:  # the disk or server failed: a second commit attempt on the way out
        committer.pending, committer.rows = [], 0  # would only wait for the same failure
        raise
    finally:
        committer.flush()
        bar.close()
        report.removed += committer.removed
    report.seconds = time.perf_counter() - t0
    return report


def fill_file_meta(store: Store, batch: int = 2000, among: Iterable[bytes] | None = None) -> int:
    """Read the file columns of every source whose rows lack them (a migrated table, rows
    carried from a moved file, a file committed by parts), or of those `among` these sources:
    headers only, no encoder, no new vectors. Returns the files read."""
    missing = store.sources_without_file_meta(among)
    for i in range(0, len(missing), batch):
        chunk = missing[i:i + batch]
        store.set_file_meta({raw: metadata.read(raw) for raw in chunk})
    return len(missing)


def resolve_store(store: Store | Callable[[], Store]) -> Store:
    """The store itself, opening it now if given as a function that opens it (told apart by
    what a store does, as `resolve_encoder` does)."""
    if hasattr(store, "file_states"):
        return store  # type: ignore[return-value]
    return store()


def resolve_encoder(encoder: AnyEncoder | Callable[[], AnyEncoder]
                    ) -> AnyEncoder:
    """The encoder itself, loading it now if given as a function that loads it. Told apart by
    what an encoder does, not its class: importing `clipsearch.encoders` imports torch."""
    if hasattr(encoder, "encode_pixels"):
        return encoder  # type: ignore[return-value]
    return encoder()


def _jpeg_decoder(encoder: AnyEncoder, decode: str) -> JpegDecoder | None:
    if decode != "gpu" and not str(encoder.device).startswith("cuda"):
        return None  # the PIL path; and an encoder without torch (ONNX, OpenVINO) imports none here
    from clipsearch.gpu_decode import JpegDecoder

    return JpegDecoder.for_encoder(encoder, decode)


def _skip(report: IndexReport, committer: Committer, job: Job, reason: str) -> None:
    """A job that failed: reported, and its old rows dropped (they are of another version)."""
    report.skip(job.path, reason)
    committer.drop(job)


def _run_images(jobs: list[Job], encoder: AnyEncoder, ctx: IndexContext, committer: Committer,
                report: IndexReport, bar: tqdm, batch_size: int, workers: int | None,
                gpu: JpegDecoder | None = None) -> None:
    if not jobs:
        return
    workers = workers or max(2, min(8, (os.cpu_count() or 2)))
    queue = deque(jobs)
    inflight: set[Future] = set()
    ready: list[tuple[Job, torch.Tensor]] = []
    window = max(2 * batch_size, 4 * workers)
    started = time.perf_counter()
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        while queue or inflight or ready:
            while queue and len(inflight) < window:
                inflight.add(pool.submit(_prepare_image, queue.popleft(), encoder.preprocess, ctx,
                                         encoder.image_size, gpu))
            if inflight and len(ready) < batch_size:
                done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in done:
                    _collect(fut, ready, report, committer, bar)
            if len(ready) >= batch_size or (not inflight and not queue and ready):
                batch, ready = ready[:batch_size], ready[batch_size:]
                if gpu is not None:
                    batch = _decode_on_gpu(batch, gpu, encoder, ctx, report, committer, bar)  # type: ignore[arg-type]
                    if not batch:
                        continue
                t0 = time.perf_counter()
                vecs = encoder.encode_batch([t for _, t in batch])
                report.encode_seconds += time.perf_counter() - t0
                for (job, _), v in zip(batch, vecs, strict=True):
                    committer.add(SourceRows(job.path, job.mtime, job.size, job.content_hash or "",
                                             [Record(kind="image", vector=v, extra=_gate_mark(job))]))
                    report.indexed += 1
                    report.items += 1
                    bar.update(1)
    report.image_seconds += time.perf_counter() - started


def _gate_mark(job: Job) -> dict[str, str]:
    """An image the OCR gate found no print in is marked read (`clipsearch.ocr_index`)."""
    return {"ocr": "gate"} if job.maybe_text is False else {}


def _decode_on_gpu(batch: list[tuple[Job, torch.Tensor | RawJpeg]], gpu: JpegDecoder, encoder: AnyEncoder,
                   ctx: IndexContext, report: IndexReport, committer: Committer,
                   bar: tqdm) -> list[tuple[Job, torch.Tensor]]:
    """Decode a batch's RawJpegs on the GPU; a JPEG nvJPEG refuses goes through PIL instead."""
    from clipsearch.gpu_decode import RawJpeg

    raws = [(i, t) for i, (_, t) in enumerate(batch) if isinstance(t, RawJpeg)]
    out: list[torch.Tensor | None] = [t if not isinstance(t, RawJpeg) else None for _, t in batch]
    for (i, _), img in zip(raws, gpu([t for _, t in raws]), strict=True):
        out[i] = img
    kept = []
    for (job, _), tensor in zip(batch, out, strict=True):
        if tensor is None:  # rare: fall back to PIL, which also names what is wrong with the file
            _, tensor, reason = _prepare_image(job, encoder.preprocess, ctx, encoder.image_size)  # type: ignore[assignment]
            if reason is not None:
                _skip(report, committer, job, reason)
                bar.update(1)
                continue
        kept.append((job, tensor.to(gpu.device, non_blocking=True)))  # type: ignore[union-attr]
    return kept


def _collect(fut: Future, ready: list, report: IndexReport, committer: Committer, bar: tqdm) -> None:
    job, tensor, reason = fut.result()
    if reason is not None:
        _skip(report, committer, job, reason)
        bar.update(1)
    else:
        ready.append((job, tensor))


def _run_others(jobs: list[Job], encoder: AnyEncoder, ctx: IndexContext, committer: Committer,
                report: IndexReport, bar: tqdm) -> None:
    from pathlib import Path

    for job in jobs:
        name = os.path.basename(display_path(job.path))[:40]
        bar.set_postfix_str(name, refresh=False)
        writer: _FileWriter | None = None
        try:
            path = Path(os.fsdecode(job.path))
            if is_streaming(job.indexer):
                job.content_hash = job.content_hash or content_hash(job.path, job.size)
                writer = _FileWriter(committer, job)
                notes = _stream_parts(job.indexer.extract_parts(path, encoder, ctx), writer, bar, name)
            else:
                records = job.indexer.extract(path, encoder, ctx)
                job.content_hash = job.content_hash or content_hash(job.path, job.size)
        except SkipFile as e:
            _abandon(writer)
            _skip(report, committer, job, e.reason)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as e:  # one broken file must never stop the job
            log.info("unexpected error on %s", display_path(job.path), exc_info=True)
            _abandon(writer)
            _skip(report, committer, job, unexpected_reason(e))
        else:
            if writer is not None:
                writer.finish()
                report.items += writer.rows
                report.notes.extend((display_path(job.path), n) for n in notes)
            else:
                committer.add(SourceRows(job.path, job.mtime, job.size, job.content_hash, records))
                report.items += len(records)
            report.indexed += 1
        bar.update(1)


def _stream_parts(parts: Iterable[Part], writer: _FileWriter, bar: tqdm, name: str) -> list[str]:
    """Feed a streaming indexer's parts to the file's writer, showing progress within the file;
    returns the parts' notes."""
    notes = []
    for part in parts:
        writer.add(part.records)
        if part.note:
            notes.append(part.note)
        if part.total:
            bar.set_postfix_str(f"{name} {part.done:g}/{part.total:g} {part.unit}")
    return notes


def _abandon(writer: _FileWriter | None) -> None:
    if writer is not None:
        writer.abandon()
