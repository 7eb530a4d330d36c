"""The write side of a collection: derived state kept in step with the table.

After an index run or a removal (and on `clipsearch optimize`) the `Maintainer` brings what is
derived from the table up to date: the full-text index (new rows folded in), the compacted
table, the ANN index, the transforms (refitted only when the collection changed by a large
factor), and it removes table versions superseded longer ago than a retention. It runs under
the writer lock, which the `Collection` holds; the query engine (`search.Searcher`) only
reads what it leaves.

Every derived file it writes goes through `col.storage.mirror` as well, so a collection on
object storage has its transforms and skip log next to the table (a local one: already there).

The video catalog stays a reader cache, on purpose: it is the row offsets of the frames of one
pinned table version, which every commit, deletion and compaction moves, so a saved copy would
be stale after the very run that wrote it; rebuilding it is one scan of three narrow columns,
done by a long-lived reader on its second video query at a version (`Searcher.video_catalog`),
and never by a one-shot query or by the writer.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch import catalog
from clipsearch.errors import ClipsearchError, TransformError, UsageError
from clipsearch.failures import storage_errors
from clipsearch.fsutil import write_atomic
from clipsearch.search import IMAGE_LIKE
from clipsearch.storage import TRANSFORMS_FILE
from clipsearch.store import sql_in
from clipsearch.testpoints import pause_at

if TYPE_CHECKING:
    from clipsearch.collection import Collection
    from clipsearch.pipeline import IndexReport
    from clipsearch.transforms import TransformSet

log = logging.getLogger(__name__)

REFRESH_MARKER = "refresh.pending"  # written before a refresh of derived state, removed after
KEEP_VERSIONS_ENV = "CLIPSEARCH_KEEP_VERSIONS_MINUTES"
DEFAULT_KEEP_MINUTES = 10.0  # a superseded version stays readable this long
TRANSFORM_SAMPLE_ROWS = 100_000  # transforms are fitted on at most this many image-like rows
REFIT_FACTOR = 2.0  # refit once the image-like rows grew to this many times, or shrank to 1/this
COMPACT_MIN_SMALL_FILES = 16  # compact once the table has this many small data files ...
COMPACT_DELETED_SHARE = 0.1  # ... or this share of its rows are deleted but still stored
BUILTIN_TEXT_CACHE = "builtin_text_vectors.npy"


def keep_versions() -> timedelta:
    """How long a superseded table version is kept for readers that still read it
    ($CLIPSEARCH_KEEP_VERSIONS_MINUTES, default 10 minutes)."""
    raw = os.environ.get(KEEP_VERSIONS_ENV)
    if raw is None or not raw.strip():
        return timedelta(minutes=DEFAULT_KEEP_MINUTES)
    try:
        minutes = float(raw)
    except ValueError:
        minutes = -1.0
    if not minutes >= 0:
        raise UsageError(f"${KEEP_VERSIONS_ENV}={raw!r}: not a number of minutes >= 0",
                         hint=f"e.g. {KEEP_VERSIONS_ENV}=10 (0 keeps only the latest version)")
    return timedelta(minutes=minutes)


@dataclass
class TableStats:
    """What the table holds on disk: versions, fragments, data files, bytes, deleted rows."""

    versions: int
    fragments: int
    small_files: int
    deleted_rows: int
    rows: int
    bytes: int

    def to_dict(self) -> dict[str, int]:
        return {"versions": self.versions, "fragments": self.fragments, "small_files": self.small_files,
                "deleted_rows": self.deleted_rows, "bytes": self.bytes}


def table_stats(dataset: Any, folder: str | None = None, count_bytes: bool = True) -> TableStats:
    """Stats of a lance dataset; bytes are counted in `folder` when it is local. Without
    `count_bytes` (the compaction decision) no folder is walked and `bytes` is 0."""
    s = dataset.stats.dataset_stats()
    versions = dataset.versions()
    size = 0
    if count_bytes and folder is not None and os.path.isdir(folder):
        size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
    elif count_bytes and versions:
        size = int(versions[-1].get("metadata", {}).get("total_files_size", 0))
    return TableStats(versions=len(versions), fragments=int(s["num_fragments"]),
                      small_files=int(s["num_small_files"]), deleted_rows=int(s["num_deleted_rows"]),
                      rows=int(dataset.count_rows()), bytes=size)


def compaction_worth_it(stats: TableStats) -> bool:
    """Many small data files, or many deleted rows still stored: a tiny run stays cheap."""
    stored = stats.rows + stats.deleted_rows
    return (stats.small_files >= COMPACT_MIN_SMALL_FILES
            or (stored > 0 and stats.deleted_rows / stored >= COMPACT_DELETED_SHARE))


@dataclass
class OptimizeSummary:
    """What `Maintainer.optimize` did to the table."""

    before: TableStats
    after: TableStats
    compacted: bool

    def line(self) -> str:
        b, a = self.before, self.after
        return (f"optimized: versions {b.versions} -> {a.versions}, fragments {b.fragments} -> "
                f"{a.fragments}, {b.bytes / 1e6:.1f} MB -> {a.bytes / 1e6:.1f} MB"
                + ("" if self.compacted else " (nothing to compact)"))


def refit_reason(fit: dict[str, Any] | None, rows: int) -> str | None:
    """Why transforms fitted as `fit` records (None: never fitted) should be refitted now that
    the collection has `rows` image-like rows; None keeps them."""
    if fit is None:
        return f"first fit ({rows} image-like rows)"
    fitted = int(fit.get("rows", 0))
    if fitted <= 0:
        return f"the saved fit records no size; {rows} image-like rows now"
    if rows >= REFIT_FACTOR * fitted:
        return f"grew from {fitted} to {rows} image-like rows"
    if rows * REFIT_FACTOR <= fitted:
        return f"shrank from {fitted} to {rows} image-like rows"
    return None


class Maintainer:
    """Keeps the derived state of one collection current. Its caller holds the writer lock."""

    def __init__(self, col: Collection) -> None:
        self.col = col

    # ---- after writes ------------------------------------------------------------------------
    def after_run(self, report: IndexReport, fit_transforms: bool = True) -> None:
        """After an index run that was not interrupted: the derived state, unless the run
        changed nothing and every part is whole and current (a no-op re-run costs a stat per
        file, not a rebuild). A damaged part, or a refresh an earlier run did not finish, is
        rebuilt here."""
        if (report.indexed == 0 and report.removed == 0 and report.moved == 0 and report.described == 0
                and report.ocr_files == 0 and report.transcribed == 0):
            facts = catalog.fresh(self.col.path)
            problems = self.derived_problems(fit_transforms=fit_transforms, facts=facts, restat=True)
            if (self.col.path / REFRESH_MARKER).exists():
                problems.insert(0, "an earlier refresh of the derived state did not finish")
            for problem in problems:
                log.warning("%s: %s; rebuilding it from the table", self.col.path, problem)
            if not problems:
                if facts is None or not facts.states_intact():
                    self.write_catalog()
                return
        self.refresh(fit_transforms=fit_transforms)

    def refresh(self, fit_transforms: bool = True) -> None:
        """Bring every derived part up to date with the table.

        A marker file stands while it runs: a refresh cut short (kill, full disk) is redone by
        the next index run even if that run changes nothing. Steps that make a table version
        (full-text index, compaction) come first, so the ANN index is tagged with the final one."""
        keep = keep_versions()  # a bad setting stops here, before anything is written
        marker = self.col.path / REFRESH_MARKER
        with storage_errors(str(self.col.path)):
            self.col.path.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"{time.time()}\n")
        with storage_errors(str(self.col.store.db_dir)):
            self.update_text_index()
            self.compact()
            self.update_scalar_indexes()
            self.sweep_thumbs()
            self.update_ann()
            self.update_transforms(fit_transforms)
            self.cleanup(keep)
        self.write_catalog()
        marker.unlink(missing_ok=True)

    def optimize(self, transforms: bool = False) -> OptimizeSummary:
        """On demand: compact the table whatever its state, rebuild the full-text index and
        retrain the ANN index fully, clean up old versions past the retention; with
        `transforms`, refit them too."""
        store = self.col.store
        keep = keep_versions()
        before = self.table_stats()
        marker = self.col.path / REFRESH_MARKER
        with storage_errors(str(self.col.path)):
            marker.write_text(f"{time.time()}\n")
        with storage_errors(str(store.db_dir)):
            self.update_text_index(rebuild=True)
            compacted = self.compact(force=True)
            self.update_scalar_indexes()
            self.update_ann(full=True)
            if transforms:
                self.fit_transforms(strict=False, embed_text=False, reason="on demand (optimize)")
            else:
                self.update_transforms(True)
            self.cleanup(keep)
        self.write_catalog()
        marker.unlink(missing_ok=True)
        return OptimizeSummary(before, self.table_stats(), compacted)

    # ---- the steps ---------------------------------------------------------------------------
    def update_ann(self, full: bool = False) -> None:
        """The ANN step, in one place: the saved index brought to the table's version in place
        (`ann.update_saved`: rows added and removed, shards retrained only when grown past
        their training size); `full`: retrain every shard (`optimize`)."""
        self.col.searcher.rebuild_ann(save=True, full=full)

    def update_scalar_indexes(self) -> None:
        """The table's lookup indexes (`scalar_index`): built when missing, new rows folded in."""
        from clipsearch import scalar_index

        scalar_index.maintain(self.col.path, self.col.store)

    def sweep_thumbs(self) -> None:
        """Thumbnails no row names any more (of rows removed, replaced or moved) are deleted."""
        from clipsearch import thumbs

        pause_at("thumbs")
        thumbs.sweep(self.col.path, self.col.store.thumb_column())

    def update_text_index(self, rebuild: bool = False) -> None:
        """Full-text indexes: new rows folded into the existing ones; rebuilt when damaged."""
        from clipsearch.docsearch import ensure_fts_index, fts_problem

        table = self.col.store.table
        pause_at("fts")
        ensure_fts_index(table, rebuild=rebuild or fts_problem(table) is not None)

    def table_stats(self, count_bytes: bool = True) -> TableStats:
        """The table's stats (`table_stats`); `count_bytes=False` walks no folder."""
        from clipsearch.store import TABLE

        store = self.col.store
        local = os.path.join(store.db_dir, f"{TABLE}.lance") if "://" not in store.db_dir else None
        return table_stats(store.snapshot(), local, count_bytes)

    def compact(self, force: bool = False) -> bool:
        """Merge small data files and drop deleted rows, when worth it (`compaction_worth_it`)
        or `force`d. Returns whether it compacted."""
        if not force and not compaction_worth_it(self.table_stats(count_bytes=False)):
            return False
        from clipsearch import scalar_index

        # Lance merges no indexed fragment with an unindexed one: every row goes in the indexes first
        scalar_index.maintain(self.col.path, self.col.store, fold_rows=1)
        self.col.store.compact()
        pause_at("compact_indexes")
        scalar_index.record(self.col.path, self.col.store)  # the indexes remapped by this compaction
        return True

    def cleanup(self, keep: timedelta | None = None) -> int:
        """Remove table versions superseded longer ago than `keep` (default: the retention,
        `keep_versions`), and the files only they use; returns how many."""
        return self.col.store.cleanup_versions(keep_versions() if keep is None else keep)

    # ---- transforms --------------------------------------------------------------------------
    def update_transforms(self, fit_transforms: bool = True) -> None:
        """Refit the transforms when `refit_reason` says so (first fit, or the collection grew
        or shrank by `REFIT_FACTOR`), on a bounded sample; keep them otherwise. Transforms are
        fitted automatically only when there are enough image-like items for centering; a
        damaged file that cannot be refitted now is removed."""
        from clipsearch.transforms import MIN_CENTER_SAMPLES, TransformSet

        store = self.col.store
        rows = store.count(sql_in("kind", IMAGE_LIKE))
        problem = self.transforms_problem(fit_transforms=False)
        if fit_transforms and rows >= MIN_CENTER_SAMPLES:
            fit = None
            if problem is None and TransformSet.exists(self.col.path):
                fit = self.col.searcher.transforms().params.get("fit", {})
            reason = refit_reason(fit, rows) if problem is None else f"refit: {problem}"
            if reason is None:
                return
            try:
                self.fit_transforms(strict=False, embed_text=False, reason=reason)
                return
            except TransformError as e:
                log.info("transforms not fitted: %s", e)
        if problem:  # damaged and not refittable now: remove it rather than report it every run
            log.warning("%s; removing it", problem)
            (self.col.path / TRANSFORMS_FILE).unlink(missing_ok=True)

    def fit_transforms(self, strict: bool = True, text_source: str = "builtin", embed_text: bool = True,
                       reason: str = "on demand", save: bool = True) -> TransformSet:
        """Fit whitening + centering on a sample of the image-like vectors and save them.

        At most `TRANSFORM_SAMPLE_ROWS` rows, float32, vector column only. The fit records
        `reason`, the rows it stood for and the sample size (`params["fit"]`), for `info` and
        the next refit decision. All or nothing: written (atomically) only if at least one
        transform came out of it; otherwise `TransformError` and the saved ones stay. Without
        `save` nothing is written (a reader that could not take the writer lock).
        `text_source="collection"` with too few document chunks falls back to the built-in
        captions (logged). With `embed_text=False` (the automatic fit) the text mean is fitted
        only if the caption embeddings are already cached; otherwise on first use of --center.
        """
        from clipsearch.transforms import MIN_CENTER_SAMPLES, TransformSet

        store = self.col.store
        vecs, rows = store.sample_vectors(IMAGE_LIKE, TRANSFORM_SAMPLE_ROWS)
        texts, note = None, None
        if text_source == "collection":
            texts, _ = store.sample_vectors(("doc_text",), TRANSFORM_SAMPLE_ROWS)
            if len(texts) < MIN_CENTER_SAMPLES:
                note = (f"text source 'collection': {len(texts)} document text chunks, centering needs "
                        f"{MIN_CENTER_SAMPLES}; using the built-in captions")
                log.warning(note)
                texts = None
        if texts is None:
            text_source = "builtin"
            cached = (self.col.path / BUILTIN_TEXT_CACHE).exists()
            texts = self.builtin_text_vectors(save=save) if (embed_text or cached) else None
        ts = TransformSet.fit(vecs, texts, model_id=self.col.meta["model_id"], dim=int(self.col.meta["dim"]),
                              text_source=text_source, strict=strict)
        if note and "center" in ts.params:
            ts.params["center"]["note"] = note
        if not ts.available:
            raise TransformError("no transform could be fitted: " + "; ".join(ts.skipped.values()),
                                 hint="index more items, then run fit-transforms again")
        ts.params["fit"] = {"reason": reason, "rows": rows, "sample": int(len(vecs)), "time": time.time()}
        pause_at("transforms")
        if save:
            ts.save(self.col.path)
            self.col.storage.mirror(TRANSFORMS_FILE)
        return ts

    def builtin_text_vectors(self, save: bool = True) -> np.ndarray:
        """Embeddings of the built-in captions, cached in the collection (same model forever)."""
        import io

        from clipsearch.transforms import embed_builtin_captions

        cache = self.col.path / BUILTIN_TEXT_CACHE
        if cache.exists():
            try:
                vecs: np.ndarray = np.load(cache, allow_pickle=False)
                if vecs.ndim == 2 and vecs.shape[1] == int(self.col.meta["dim"]) and np.isfinite(vecs).all():
                    return vecs
            except Exception as e:  # truncated or garbage: embed the captions again
                log.warning("%s is unreadable (%s); embedding the captions again", cache, e)
        vecs = embed_builtin_captions(self.col.encoder).astype(np.float32)
        if not save:
            return vecs
        buf = io.BytesIO()
        np.save(buf, vecs)
        write_atomic(cache, buf.getvalue())
        return vecs

    def write_catalog(self) -> None:
        """Record the table's facts for readers that need not open it (`clipsearch.catalog`).
        Derived, like the rest: a failure to write it is logged, and readers read the table."""
        from clipsearch.store import ABSOLUTE_THUMBS

        store = self.col.store
        if "://" in store.db_dir:
            return
        try:
            previous = catalog.last(self.col.path)
            # rows are written with relative thumbnails: none absolute at the last catalog, and
            # every commit since made by this store, none now
            known = previous is not None and previous.absolute_thumbs == 0 and \
                store.changes_since(previous.version) is not None
            absolute = 0 if known else store.count(ABSOLUTE_THUMBS)
            if catalog.write(self.col.path, store, fts_ok=self.fts_problem() is None,
                             stats=self.table_stats().to_dict(), absolute_thumbs=absolute, previous=previous):
                store.clear_changes()  # the catalog now stands for every change logged so far
        except (OSError, ClipsearchError) as e:
            log.warning("%s: could not record the table's catalog (%s); readers read the table",
                        self.col.path, e)

    # ---- health ------------------------------------------------------------------------------
    def derived_problems(self, fit_transforms: bool = True,
                         facts: catalog.Catalog | None = None, restat: bool = False) -> list[str]:
        """One line per part of the derived state that is missing, stale or damaged and must be
        rebuilt from the table: the saved ANN index, the full-text index, the transforms.
        With `facts` (a fresh catalog) the table is not opened: its version, rows and counts
        come from there, and a full-text index it saw healthy, whose files are unchanged since,
        is taken as healthy. `restat`: the writer's call (see `AnnIndex.problem`)."""
        from clipsearch.ann import AnnIndex

        searcher = self.col.searcher
        if facts is None:
            ann, fts = searcher.ann_problem(restat), self.fts_problem()
        else:
            ann = AnnIndex.problem(searcher.ann_dir, version=facts.version, rows=facts.rows, restat=restat)
            fts = None if facts.fts_ok else self.fts_problem()
        problems = [ann, fts, self.transforms_problem(fit_transforms, facts),
                    self.scalar_index_problem(facts)]
        return [p for p in problems if p]

    def scalar_index_problem(self, facts: catalog.Catalog | None = None) -> str | None:
        """The table's lookup indexes missing, or not recorded (`scalar_index`)."""
        from clipsearch import scalar_index

        if facts is not None:  # local (a catalog is), and it vouches for the index files' stat
            if scalar_index.missing(self.col.path) and facts.rows:
                return "the table's lookup indexes (id, source) are missing"
            return None
        store = self.col.store
        if not scalar_index.local(store):
            return None
        if scalar_index.missing(self.col.path):
            return "the table's lookup indexes (id, source) are missing" if store.count() else None
        bad = scalar_index.problems(self.col.path, store)
        if bad:
            return "the table's lookup indexes: " + "; ".join(f"{k} {v}" for k, v in bad.items())
        return None

    def fts_problem(self) -> str | None:
        """The full-text index's problem, if any. Asked through the Lance dataset first, which
        answers a healthy index without importing LanceDB; docsearch's own check, through
        LanceDB, then words what it found."""
        from clipsearch.docsearch import FTS_PROBE, fts_problem

        store = self.col.store
        if store.count() == 0:
            return None
        wanted = ["source"]
        if "text" in store.text_indexed_columns() or store.count("text IS NOT NULL") > 0:
            wanted.append("text")
        if all(store.text_index_problem(c, FTS_PROBE) is None for c in wanted):
            return None
        return fts_problem(store.table)

    def transforms_problem(self, fit_transforms: bool, facts: catalog.Catalog | None = None) -> str | None:
        """Why the saved transforms are unusable, or missing though they could be fitted."""
        from clipsearch.transforms import MIN_CENTER_SAMPLES, TransformSet

        if not TransformSet.exists(self.col.path):
            rows = (facts.count_kinds(IMAGE_LIKE) if facts is not None
                    else self.col.store.count(sql_in("kind", IMAGE_LIKE)))
            enough = rows >= MIN_CENTER_SAMPLES
            return "no transforms are fitted though there are enough items" if fit_transforms and enough \
                else None
        try:
            TransformSet.load(self.col.path, self.col.meta["model_id"], int(self.col.meta["dim"]))
        except TransformError as e:
            return str(e)
        return None
