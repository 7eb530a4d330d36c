"""Query planning: turn a text/image query into a vector, search the ANN index, group hits.

Default search spans images, video frames (one hit per video, at its best frame) and document
pages. Moments and documents have their own rankers (`moments`, `docsearch`); this module only
routes to them. Every query checks the table version, so a searcher in a long-running process
(the web server) sees what another process indexed, without a restart.

Derived state that is damaged (a saved ANN shard, the full-text index, the transforms) is
skipped by queries with one warning, and reported to the maintainer (`maintainer.Maintainer`,
the write side) so that the next index run rebuilds it from the table. Queries only read.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from clipsearch import query_terms
from clipsearch.ann import POINTER, AnnIndex, update_saved
from clipsearch.ann_live import LiveAnn
from clipsearch.errors import TransformError, UsageError
from clipsearch.filters import SORTS, Filters, matching_ids, matching_vectors
from clipsearch.fsutil import is_within
from clipsearch.jsonsafe import finite
from clipsearch.relevance import AUTO, SINGLED_OUT, Calibrator, assign, split
from clipsearch.store import FILE_COLUMNS, float32_vectors, sql_in

if TYPE_CHECKING:
    from clipsearch.browse_topics import Topic, Topics
    from clipsearch.collection import Collection
    from clipsearch.moments import VideoCatalog
    from clipsearch.query_terms import QueryTerm
    from clipsearch.relevance_background import BackgroundFiles
    from clipsearch.transforms import TransformSet

log = logging.getLogger(__name__)

DEFAULT_KINDS = ("image", "video_frame", "doc_page")
KIND_ALIASES: dict[str, tuple[str, ...]] = {
    "image": ("image",),
    "video": ("video",),
    "frame": ("video_frame",),
    "video_frame": ("video_frame",),
    "window": ("video_window",),
    "video_window": ("video_window",),
    "page": ("doc_page",),
    "doc_page": ("doc_page",),
    "doc_text": ("doc_text",),
    "audio": ("audio",),
}
USER_KINDS = ("image", "video", "moment", "doc", "frame", "page", "ocr", "speech", "audio", "all")
IMAGE_LIKE = ("image", "video_frame", "doc_page")
BROWSE_ORDERS = ("atypical", "typical")
# A filter matching at most this many rows ranks them exactly; more go through the ANN's selector.
FILTER_EXACT_LIMIT = 20_000
DATE_SORT_DEPTH = 50  # --sort date orders the top this many by score (or k + offset if more)
RELEVANT_SORT_DEPTH = 500  # with a relevance cut, --sort date orders the relevant hits among this many
# Typicality is measured in the whitening fitted on image-like rows, so only those can be browsed.
BROWSE_KINDS: dict[str, tuple[str, ...]] = {
    "all": DEFAULT_KINDS, "image": ("image",), "video": ("video_frame",), "frame": ("video_frame",),
    "video_frame": ("video_frame",), "doc": ("doc_page",), "page": ("doc_page",), "doc_page": ("doc_page",),
}


@dataclass
class Hit:
    """One search result. `score` is a cosine similarity (or a documented fused score);
    `relevance` the calibrated relevance in 0..1, comparable across queries (`clipsearch.relevance`).
    `companion`: the other file of a Live Photo (its still or its video), `companion_id` one of
    its rows (see `clipsearch.companions`)."""

    source: str
    kind: str
    score: float
    t_start: float | None = None
    t_end: float | None = None
    page: int | None = None
    text: str | None = None
    thumb: str | None = None
    id: str | None = None
    companion: str | None = None
    companion_id: str | None = None
    relevance: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields; a non-finite number (no similarity to show) becomes None."""
        d = {k: v for k, v in asdict(self).items() if v is not None and k != "extra"}
        d["score"] = round(float(self.score), 6)
        if self.relevance is not None:
            d["relevance"] = round(float(self.relevance), 4)
        if self.extra:
            d.update({k: v for k, v in self.extra.items() if k not in d})
        out: dict[str, Any] = finite(d)
        return out



def real_folder(under: str | None) -> str | None:
    """A folder filter as the sources are stored: a real path, symlinks resolved."""
    return os.path.realpath(os.path.expanduser(under)) if under else None

class Hits(list[Hit]):
    """The hits of one query (a list of `Hit`), with `warnings`: lines the caller should see,
    e.g. that a text query was longer than the model reads and was cut.

    The relevance cut (`min_relevance`, None when off): `weaker` are the hits it cut from what
    the plain ranking would have shown, `would_cut` how many of these hits the auto cut would
    drop when no cut was asked for."""

    def __init__(self, hits: Iterable[Hit] = (), warnings: Iterable[str] = (), *,
                 min_relevance: float | None = None, weaker: Iterable[Hit] = (), would_cut: int = 0) -> None:
        super().__init__(hits)
        self.warnings: list[str] = list(warnings)
        self.min_relevance = min_relevance
        self.weaker: list[Hit] = list(weaker)
        self.would_cut = would_cut


# A query image: a path, or one already decoded.
QueryImage = str | os.PathLike[str] | Image.Image


def _load_query_image(image: Any, term: str | None = None) -> Image.Image:
    """A query image decoded; `term` names it in errors when the query has several terms."""
    from clipsearch.errors import SkipFile
    from clipsearch.indexers.image import load_image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    p = Path(image).expanduser()
    what = f"query term {term!r}" if term else f"query image {p}"
    if not p.is_file():
        raise UsageError(f"{what}: no such file", hint="pass the path of an image file")
    try:
        return load_image(p, max_pixels=400_000_000)
    except SkipFile as e:
        raise UsageError(f"{what}: {e.reason}",
                         hint="use a jpg/png/webp/bmp/gif/tiff/heic/avif/jxl or camera RAW image") from None


class Searcher:
    """Holds the per-process caches (ANN index, transformed indexes) for one collection."""

    def __init__(self, col: Collection) -> None:
        self.col = col
        self._lock = threading.RLock()
        self._ann: LiveAnn | None = None  # what queries at the table's current version search
        self._saved: AnnIndex | None = None  # the saved index, its shards loaded as queries need them
        self._saved_pointer: bytes | None = None  # the pointer file `_saved` was loaded through
        self._transformed: dict[tuple[Any, ...], tuple[AnnIndex, int]] = {}
        self._transforms: TransformSet | None = None
        self._transforms_mtime: float | None = None
        self._video_catalog: VideoCatalog | None = None
        self._video_queries: tuple[int, int] = (-1, 0)  # (table version, video queries at it)
        self._typicality: dict[tuple[str, ...], tuple[Any, ...]] = {}  # kinds -> (version, transforms, rows)
        self._kind_rows: dict[str, tuple[int, bool]] = {}  # kind -> (table version, has rows)
        self._doc_text: tuple[int, bool] = (-1, False)  # (table version, has doc_text rows)
        self.calibrator = Calibrator(lambda: self.col.store, self._caption_vectors, self._background_files)

    @property
    def ann_dir(self) -> Path:
        return self.col.path / "ann"

    # ---- ANN ---------------------------------------------------------------------------------
    def rebuild_ann(self, save: bool = False, full: bool = False) -> AnnIndex:
        """The writer's ANN step: with `save`, `ann.update_saved` brings the saved index to the
        table's version (rows added and removed in place; `full` retrains every shard) and
        queries use it. Without `save`, an index is built in memory only, for this process."""
        with self._lock:
            store = self.col.store
            if save:
                ann = update_saved(store, self.ann_dir, full=full, previous=self._saved)
                self._saved, self._saved_pointer = ann, self._pointer()
            else:
                ann = AnnIndex.build(store, reuse=self._saved if self._saved is not None else self.ann_dir)
            self._ann = LiveAnn(store, ann, self.ann_dir) if ann.version == store.version else None
            self._transformed.clear()
            return ann

    def _pointer(self) -> bytes | None:
        try:
            return (self.ann_dir / POINTER).read_bytes()
        except OSError:
            return None

    def _saved_index(self) -> AnnIndex | None:
        """The saved index, read again only when the writer has switched the pointer (so the
        shards this process has loaded are kept across table versions)."""
        pointer = self._pointer()
        if pointer is None or pointer != self._saved_pointer:
            self._saved = AnnIndex.load(self.ann_dir) if pointer is not None else None
            self._saved_pointer = pointer
        return self._saved

    def ann_problem(self, restat: bool = False) -> str | None:
        """Why the saved ANN index is missing, stale or damaged (the maintainer rebuilds it).
        `restat`: the writer's call (see `AnnIndex.problem`)."""
        store = self.col.store
        return AnnIndex.problem(self.ann_dir, version=store.version, rows=store.count(), restat=restat)

    def ann(self) -> LiveAnn:
        """The ANN view at the table's current version: the saved index plus an exact search of
        the rows written since it was saved. Readers never build or save an index."""
        with self._lock:
            store = self.col.store
            version = store.version
            if self._ann is not None and self._ann.version == version:
                return self._ann
            self._ann = LiveAnn(store, self._saved_index(), self.ann_dir)
            return self._ann

    def ann_search(self, vec: np.ndarray, n: int, kind: str | tuple[str, ...],
                   under: str | None = None) -> list[tuple[str, float]]:
        """(id, cosine) of the top n rows of `kind`: the hook the moment/doc rankers use."""
        kinds = (kind,) if isinstance(kind, str) else tuple(kind)
        return self.ann().search(vec, n, kinds=kinds, under=under)[0]

    def ranker_search(self, under: str | None,
                      filters: Filters | None) -> Callable[[np.ndarray, int, str], list[tuple[str, float]]]:
        """The `ann_search` hook for one query of the moment, video and document rankers: the
        top n rows of a kind among those the filters keep (a prefilter, as in `search`: n
        rows whenever n match), each kind's matches looked up once."""
        if not filters:
            return lambda v, n, kind: self.ann_search(v, n, kind, under)
        matches: dict[str, np.ndarray] = {}

        def search(v: np.ndarray, n: int, kind: str) -> list[tuple[str, float]]:
            if kind not in matches:
                matches[kind] = matching_ids(self.col.store, filters, (kind,), under)
            return self._filtered(v, n, (kind,), under, matches[kind], filters)
        return search

    def ann_description(self) -> dict[str, Any]:
        """The ANN index that serves the table now: the saved one's manifest when it is current
        (no shard is loaded), else the index `ann` loads or builds."""
        saved = AnnIndex.describe_saved(self.ann_dir)
        if saved is not None and saved["version"] == self.col.store.version:
            return saved
        ann = self.ann()
        return {"type": ann.describe(), "rows": len(ann), "version": ann.version}

    # ---- transforms --------------------------------------------------------------------------
    def transforms(self) -> TransformSet:
        from clipsearch.transforms import TransformSet

        path = self.col.path / "transforms.npz"
        with self._lock:  # (re)loading only: concurrent queries then share the loaded set
            mtime = path.stat().st_mtime if path.exists() else None
            if self._transforms is None or mtime != self._transforms_mtime:
                if mtime is None:
                    raise TransformError(f"no transforms are fitted for {self.col.path}",
                                         hint="run `clipsearch fit-transforms` (needs enough indexed items)")
                self._transforms = TransformSet.load(self.col.path, self.col.meta["model_id"],
                                                     int(self.col.meta["dim"]))
                self._transforms_mtime = mtime
                self._transformed.clear()
            return self._transforms

    def _fit_text_mean(self) -> None:
        """The text mean --center needs, fitted once per collection by the maintainer under the
        writer lock; while another process writes, fitted for this process only (nothing saved)."""
        from clipsearch.errors import WriterBusy

        log.warning("fitting the text mean for --center (once per collection)...")
        try:
            self.col.fit_transforms(strict=False, reason="text mean for --center")
        except WriterBusy:
            ts = self.col.maintainer.fit_transforms(strict=False, reason="text mean for --center",
                                                    save=False)
            self._transforms, self._transformed = ts, {}

    def transforms_description(self) -> str | None:
        try:
            return self.transforms().describe()
        except TransformError:
            return None

    def transforms_fit(self) -> dict[str, Any] | None:
        """The saved fit's record: why it was fitted, the rows it stood for, its sample size."""
        try:
            fit: dict[str, Any] | None = self.transforms().params.get("fit")
        except TransformError:
            return None
        return fit

    def _transformed_index(self, kinds: tuple[str, ...], whiten: bool, center: bool) -> AnnIndex:
        """A flat index over transformed vectors of `kinds` (transforms move every vector)."""
        with self._lock:  # build once; searching the built index needs no lock
            ts = self.transforms()
            version = self.col.store.version
            key = (kinds, whiten, center)
            cached = self._transformed.get(key)
            if cached and cached[1] == version:
                return cached[0]
            where = sql_in("kind", kinds)
            meta, vecs = self.col.store.vectors(where)
            tv = ts.apply_db(vecs, whiten=whiten, center=center).astype(np.float32)
            idx = AnnIndex.from_vectors(tv, np.array(meta.column("id").to_pylist(), dtype=object),
                                        np.array(meta.column("kind").to_pylist(), dtype=object),
                                        np.array(meta.column("source").to_pylist(), dtype=object),
                                        version, exact_threshold=1 << 62)
            self._transformed[key] = (idx, version)
            return idx

    # ---- queries -----------------------------------------------------------------------------
    def query_vector(self, text: str | None, image: QueryImage | None,
                     invert: bool = False) -> tuple[np.ndarray, str]:
        """(vector, modality). Text+image → the normalised sum of both."""
        if text is None and image is None:
            raise UsageError("give a text query, an image, or both", hint="clipsearch search \"a dog\"")
        vectors = self.term_vectors(query_terms.of(text, image), invert=invert)
        return (query_terms.combine([v for v, _, _ in vectors], [w for _, _, w in vectors]),
                query_terms.modality_of([m for _, m, _ in vectors]))

    def term_vectors(self, terms: Sequence[QueryTerm],
                     invert: bool = False) -> list[tuple[np.ndarray, str, float]]:
        """(unit vector, modality, weight) of each term: texts and images encoded in one batch
        each (with `invert`, images as OTI pseudo-word texts), items read from the table."""
        enc = self.col.encoder
        texts = [i for i, t in enumerate(terms) if t.kind == "text"]
        images = [i for i, t in enumerate(terms) if t.kind == "image"]
        items = [i for i, t in enumerate(terms) if t.kind == "item"]
        out: dict[int, tuple[np.ndarray, str]] = {}
        for i in texts:
            if not str(terms[i].value).strip():
                raise UsageError("the text query is empty", hint="type some words to search for")
        if texts:
            for i, v in zip(texts, enc.encode_texts([str(terms[i].value) for i in texts]), strict=True):
                out[i] = (v, "text")
        if images:
            pictures = [_load_query_image(terms[i].value, terms[i].label if len(terms) > 1 else None)
                        for i in images]
            if invert:
                from clipsearch.inversion import invert_images

                vecs, modality = invert_images(enc, pictures), "text"
            else:
                vecs, modality = enc.encode_images(pictures), "image"
            for i, v in zip(images, vecs, strict=True):
                out[i] = (v, modality)
        if items:
            out.update(zip(items, self._item_vectors([str(terms[i].value) for i in items]), strict=True))
        return [(out[i][0], out[i][1], t.weight) for i, t in enumerate(terms)]

    def _item_vectors(self, ids: list[str]) -> list[tuple[np.ndarray, str]]:
        """The stored vectors of item terms, each with its modality (doc_text rows are text)."""
        rows = self.col.store.scan(["id", "kind", "vector"], sql_in("id", set(ids)))
        found = dict(zip(rows.column("id").to_pylist(),
                         zip(float32_vectors(rows.column("vector")), rows.column("kind").to_pylist(),
                             strict=True), strict=True))
        out = []
        for rid in ids:
            if rid not in found:
                raise UsageError(f"query term 'id:{rid}': no such item in this collection",
                                 hint="copy the id of a current search hit (ids change when a file does)")
            v, kind = found[rid]
            out.append((v / max(float(np.linalg.norm(v)), 1e-12), "text" if kind == "doc_text" else "image"))
        return out

    def search(self, text: str | None = None, image: QueryImage | None = None, k: int = 10,
               kind: str | None = None,
               under: str | None = None, offset: int = 0, whiten: bool = False, center: bool = False,
               invert: bool = False, hybrid: bool = False, sort: str | None = None,
               filters: Filters | None = None, terms: Sequence[QueryTerm] | None = None,
               words_only: bool = False, visual_only: bool = False,
               min_relevance: float | None = None) -> Hits:
        """`filters` (date, place, camera, ... `clipsearch.filters`) are a prefilter: only
        matching rows are ranked, so k hits come when k match. `sort`: score (default),
        typicality, date or -date (the top `DATE_SORT_DEPTH` by score, by date). `terms`
        (`clipsearch.query_terms`) come after `text` and `image`: the query is their weighted
        sum (README, "Query operators").
        A text query over all kinds ranks items by what they show and by the words in them
        (document text, words read by OCR: `_with_words`); `words_only` ranks by the words
        alone, `visual_only` by the picture alone.

        Every hit gets its calibrated `relevance` (`clipsearch.relevance`). `min_relevance`
        (0..1, `relevance.AUTO` for auto; None: no cut) keeps only hits at least that relevant;
        by date, the relevant hits among the top `RELEVANT_SORT_DEPTH` are sorted."""
        if k <= 0:
            raise UsageError(f"k must be positive, got {k}", hint="use -k 10")
        if offset < 0:
            raise UsageError(f"offset must be >= 0, got {offset}")
        under = real_folder(under)
        kind = (kind or "").lower() or None
        if kind is not None and kind not in USER_KINDS and kind not in KIND_ALIASES:
            raise UsageError(f"unknown kind '{kind}'", hint="one of: " + ", ".join(USER_KINDS))
        if sort not in (None, "score", "typicality", *SORTS):
            raise UsageError(f"unknown sort {sort!r}", hint="one of: score, typicality, date, -date")
        all_terms = query_terms.of(text, image, terms)
        if not all_terms:
            raise UsageError("give a text query, an image, or both", hint="clipsearch search \"a dog\"")
        query_terms.check_positive(all_terms)
        if invert and not any(t.kind == "image" for t in all_terms):
            raise UsageError("--invert needs an image query", hint="add --image FILE")
        words = _query_words(all_terms)
        only_text = all(t.kind == "text" for t in all_terms)
        if words_only and visual_only:
            raise UsageError("--words-only and --visual-only exclude each other", hint="pass one of them")
        if words_only and kind not in (None, "all"):
            raise UsageError(f"--words-only ranks all kinds by their words, not --kind {kind}",
                             hint="drop --kind, or use --kind ocr (words read in pictures) or speech")
        if words_only and (words is None or not only_text):
            raise UsageError("--words-only needs a text query (and no image)",
                             hint='clipsearch search "wifi password" --words-only')
        rankers = {"moment": self.moments, "video": self.videos, "doc": self.documents, "ocr": self.words,
                   "speech": self.speech}
        by_date = sort in ("date", "-date")
        if kind in rankers:
            what = "document" if kind == "doc" else kind
            if len(all_terms) > 1:
                raise UsageError(f"{what} search takes one text query, not several terms",
                                 hint="query operators (+, -, --not, --image) work with --kind image, "
                                      "frame, page or all")
            if all_terms[0].kind != "text" or words is None:
                raise UsageError(f"{what} search needs a text query")
            deep = by_date or min_relevance is not None
            found = rankers[kind](words, k=max(DATE_SORT_DEPTH, k + offset) if deep else k + offset,
                                  under=under, filters=filters)
            self._ranked_relevance(found, kind, words)
            return self._cut(found, k, offset, sort, min_relevance)
        vectors = self.term_vectors(all_terms, invert=invert)
        vec = query_terms.combine([v for v, _, _ in vectors], [w for _, _, w in vectors])
        modality = query_terms.modality_of([m for _, m, _ in vectors])
        kinds = DEFAULT_KINDS if kind in (None, "all") else KIND_ALIASES[kind]
        if whiten and modality != "image":
            raise UsageError("--whiten applies to image queries", hint="use --center for text queries")
        need = (k + offset) * 4 + 20
        if by_date:
            need = max(need, DATE_SORT_DEPTH + 20, RELEVANT_SORT_DEPTH if min_relevance is not None else 0)
        only = matching_ids(self.col.store, filters, kinds, under) if filters else None
        if whiten or center:
            ts = self.transforms()
            if center and modality != "image" and ts.text_mean is None and ts.image_mean is not None:
                with self._lock:  # concurrent --center queries: one fits, the others then reuse it
                    if self.transforms().text_mean is None:
                        self._fit_text_mean()
                    ts = self.transforms()
            if len(vectors) == 1:
                qv = ts.apply_query(vec[None], "image" if modality == "image" else "text",
                                    whiten=whiten, center=center)[0]
            else:  # each term in its own modality's transformed space, then their weighted sum
                qv = query_terms.combine(
                    [ts.apply_query(v[None], m, whiten=whiten, center=center)[0] for v, m, _ in vectors],
                    [w for _, _, w in vectors])
            raw = self._transformed_index(tuple(sorted(set(kinds) & set(IMAGE_LIKE)) or kinds),
                                          whiten, center).search(qv, need, kinds=kinds, under=under,
                                                                 only=only)[0]
        elif only is not None and filters is not None:
            raw = self._filtered(vec, need, kinds, under, only, filters)
        else:
            raw = self.ann().search(vec, need, kinds=kinds, under=under)[0]
        hits = self._of_kinds(self._hydrate(raw), kinds)
        hits = _group(hits)
        if words and kind in (None, "all") and only_text and not visual_only:
            hits = self._with_words(hits, words, vec, under, need, max(200, 20 * (k + offset)),
                                    filters, words_only=words_only)
            hits = self._with_speech(hits, words, under, filters, max(200, 20 * (k + offset)))
        if hybrid and words:
            hits = self._hybrid(hits, words, kinds, need, under, filters)
        if only is not None:  # what fusion brought in by words must match the filters too
            # (speech rows come from a ranking prefiltered by the same filters)
            hits = [h for h in hits if h.id is not None and (_among(h.id, only) or h.kind == "speech")]
        self._vector_relevance(hits, vec, "text" if invert else modality, kinds, raw_cosines=whiten or center)
        if sort == "typicality":
            hits = self._sort_typicality(hits)
        return self._cut(hits, k, offset, sort, min_relevance)

    # ---- relevance ---------------------------------------------------------------------------
    def _background_files(self) -> BackgroundFiles:
        """Where the relevance backgrounds of this collection are kept between processes."""
        from clipsearch.relevance import SAMPLING
        from clipsearch.relevance_background import BackgroundFiles

        return BackgroundFiles(self.col.path, str(self.col.meta["model_id"]), int(self.col.meta["dim"]),
                               SAMPLING)

    def _caption_vectors(self) -> np.ndarray | None:
        """The caption bank (`relevance.CAPTION_BANK` of the model's own and generic captions,
        a fixed draw): the text queries of the relevance reference and the descriptions a text
        query's hits are checked against. Embedded once per model, kept in the cache folder."""
        from clipsearch.backends.cache import exports_root, safe_name
        from clipsearch.model_registry import domain_captions
        from clipsearch.relevance import CAPTION_BANK
        from clipsearch.transforms import builtin_captions

        dim = int(self.col.meta["dim"])
        name = f"{safe_name(str(self.col.meta['model_id']))}-{CAPTION_BANK}.npy"
        path = exports_root().parent / "captions" / name
        try:
            cached: np.ndarray = np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
            if cached.ndim == 2 and cached.shape[1] == dim and len(cached):
                return cached
        except (OSError, ValueError):
            pass
        enc = self.col.encoder
        spec = getattr(enc, "spec", None)
        captions = builtin_captions(domain_captions(spec) if spec is not None else [], 3000)
        if not captions:
            return None
        pick = np.random.default_rng(0).choice(len(captions), size=min(CAPTION_BANK, len(captions)),
                                               replace=False)
        bank = np.asarray(enc.encode_texts([captions[i] for i in sorted(pick)]), dtype=np.float32)
        try:  # a cache only: a read-only or full disk costs the next process the embedding again
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, bank)
            os.replace(tmp, path)
        except OSError:
            pass
        return bank

    def _vectors_of(self, ids: Iterable[str | None]) -> dict[str, np.ndarray]:
        """The stored vectors of these row ids."""
        wanted = [i for i in ids if i is not None]
        if not wanted:
            return {}
        rows = self.col.store.scan(["id", "vector"], sql_in("id", wanted))
        return dict(zip(rows.column("id").to_pylist(), float32_vectors(rows.column("vector")), strict=True))

    def _vector_relevance(self, hits: list[Hit], vec: np.ndarray, modality: str, kinds: tuple[str, ...],
                          raw_cosines: bool = False) -> None:
        """Relevance of ranked rows: their cosine against the query's bulk over `kinds`, and for
        a text query against each hit's best caption. With a transform the ranking's scores are
        not raw cosines, so the raw ones are taken from the hits' vectors."""
        if not hits:
            return
        calibration = self.calibrator.calibrate(vec, modality, kinds)
        if not raw_cosines and calibration.bank is None:
            assign(hits, calibration, singled_out=lambda h: bool(h.extra.get("text_match")))
            return
        by_id = self._vectors_of(h.id for h in hits)
        zero = np.zeros_like(vec)
        best = calibration.best_captions(np.stack([by_id.get(h.id or "", zero) for h in hits]))
        best = [b if (h.id or "") in by_id else None for h, b in zip(hits, best, strict=True)]
        if raw_cosines:
            for h, b in zip(hits, best, strict=True):
                v = by_id.get(h.id or "")
                h.relevance = calibration.relevance(float(v @ vec) if v is not None else None, b)
            return
        assign(hits, calibration, singled_out=lambda h: bool(h.extra.get("text_match")), best_captions=best)

    def _ranked_relevance(self, hits: list[Hit], kind: str, text: str) -> None:
        """Relevance of moments and whole videos (their best frame inside the span) and of
        document pages (their picture; a page the keyword ranking singled out is relevant),
        against the bulk of the default search's kinds, so that a video or a page is as
        relevant here as it is in a search over all kinds."""
        if not hits:
            return
        if kind == "ocr":  # relevant: the pictures holding every word of the query (`words` ranks
            for h in hits:  # them first, with scores of 1 and above); the fused rest is not
                h.relevance = SINGLED_OUT if h.score >= 1.0 else 0.0
            return
        if kind == "speech":  # as document text: segments the keyword ranking singles out, or
            for h in hits:  # whose words hold every word of the query; not those by vector alone
                relevant = h.extra.get("text_match") or "keyword" in h.extra.get("signals", ())
                h.relevance = SINGLED_OUT if relevant else 0.0
            return
        vec = self.col.encoder.encode_texts([text])[0].astype(np.float32)
        calibration = self.calibrator.calibrate(vec, "text", DEFAULT_KINDS)
        peaks = self._peak_rows(hits, vec, "doc_page" if kind == "doc" else "video_frame")
        zero = np.zeros_like(vec)
        best = calibration.best_captions(np.stack([v if v is not None else zero for _, v in peaks]))
        for h, (c, _), b in zip(hits, peaks, best, strict=True):
            h.relevance = calibration.relevance(c, b if c is not None else None)
            if kind == "doc" and "keyword" in h.extra.get("signals", ()):
                h.relevance = max(h.relevance, SINGLED_OUT)
            if h.extra.get("evidence") in ("speech", "both"):  # the query's words are said there
                h.relevance = max(h.relevance, SINGLED_OUT)

    def _peak_rows(self, hits: list[Hit], vec: np.ndarray,
                   row_kind: str) -> list[tuple[float | None, np.ndarray | None]]:
        """Per hit, (the best cosine, that row's vector) among its file's `row_kind` rows inside
        its span (video frames from t_start to t_end) or on its page (page pictures)."""
        rows = self.col.store.scan(["source", "t_start", "page", "vector"],
                                   f"kind = '{row_kind}' AND {sql_in('source', {h.source for h in hits})}")
        sources = np.array(rows.column("source").to_pylist(), dtype=object)
        t = np.array([np.nan if x is None else x for x in rows.column("t_start").to_pylist()], float)
        pages = np.array([x if x is not None else -1 for x in rows.column("page").to_pylist()], dtype=int)
        vectors = (float32_vectors(rows.column("vector")) if rows.num_rows
                   else np.zeros((0, len(vec)), np.float32))
        cos = vectors @ vec
        out: list[tuple[float | None, np.ndarray | None]] = []
        for h in hits:
            m = sources == h.source
            if row_kind == "doc_page":
                m &= pages == (h.page if h.page is not None else -1)
            else:
                lo, hi = h.t_start or 0.0, h.t_end if h.t_end is not None else np.inf
                m &= (t >= lo - 1e-6) & (t <= hi + 1e-6)
            idx = np.flatnonzero(m)
            if not len(idx):
                out.append((None, None))
                continue
            j = idx[int(np.argmax(cos[idx]))]
            out.append((float(cos[j]), vectors[j]))
        return out

    @staticmethod
    def _cut(hits: list[Hit], k: int, offset: int, sort: str | None, threshold: float | None) -> Hits:
        """The page of hits the caller asked for, after the relevance cut (if any) and the sort."""
        by_date, newest = sort in ("date", "-date"), sort == "-date"
        if threshold is None:
            if by_date:
                hits = sort_by_date(hits[:max(DATE_SORT_DEPTH, offset + k)], newest=newest)
            page = hits[offset:offset + k]
            below = sum(1 for h in page if h.relevance is not None and h.relevance < AUTO)
            return Hits(page, would_cut=below)
        kept, _ = split(hits, threshold)
        _, weaker = split(hits[:offset + k], threshold)
        if by_date:
            kept = sort_by_date(kept[:RELEVANT_SORT_DEPTH], newest=newest)
        return Hits(kept[offset:offset + k], min_relevance=threshold, weaker=weaker)

    def _filtered(self, vec: np.ndarray, n: int, kinds: tuple[str, ...], under: str | None,
                  only: np.ndarray, filters: Filters) -> list[tuple[str, float]]:
        """Top n (id, cosine) among the rows a filter matched: exactly over their vectors when
        they are few, else through the ANN restricted to them (an ID selector), and exactly
        again if an IVF shard's probed lists held fewer than n of them."""
        if not len(only):
            return []
        if len(only) > FILTER_EXACT_LIMIT:
            raw = self.ann().search(vec, n, kinds=kinds, under=under, only=only)[0]
            if len(raw) >= min(n, len(only)):
                return raw
        ids, vectors = matching_vectors(self.col.store, filters, kinds, under)
        scores = vectors @ vec
        top = np.argsort(-scores, kind="stable")[:n]
        return [(str(ids[i]), float(scores[i])) for i in top]

    def _hydrate(self, raw: list[tuple[str, float]]) -> list[Hit]:
        if not raw:
            return []
        rows = self.col.store.rows_by_id([i for i, _ in raw]).to_pylist()
        by_id = {r["id"]: r for r in rows}
        out = []
        for rid, score in raw:
            r = by_id.get(rid)
            if r is None:  # deleted since the index was built
                continue
            out.append(hit_from_row(r, score))
        return out

    @staticmethod
    def _of_kinds(hits: list[Hit], kinds: tuple[str, ...]) -> list[Hit]:
        """Only hits of the kinds asked for: the table's kind is the truth, whatever an index says."""
        return [h for h in hits if h.kind in kinds]

    def _hybrid(self, hits: list[Hit], text: str, kinds: tuple[str, ...], n: int,
                under: str | None = None, filters: Filters | None = None) -> list[Hit]:
        """Fuse vector ranks with BM25 over paths (and text) by RRF; score = fused RRF score.

        `cosine` is the vector similarity, None for a match by path alone."""
        from clipsearch.docsearch import keyword_search, under_clause
        from clipsearch.fusion import hybrid_rerank

        where = sql_in("kind", kinds)
        if under:
            where = f"({where}) AND {under_clause(under)}"
        predicate = filters.sql() if filters else None
        if predicate:
            where = f"({where}) AND ({predicate})"
        kw = keyword_search(self.col.store.table, text, n, where=where, column="source")
        fused = hybrid_rerank([(h.id, h.score) for h in hits], [(r["id"], r["score"]) for r in kw], n)
        cosines: dict[str | None, float | None] = {h.id: h.extra.get("cosine", h.score) for h in hits}
        by_id = {h.id: h for h in hits}
        missing = [i for i, _ in fused if i not in by_id]
        for h in self._hydrate([(i, float("nan")) for i in missing]):
            by_id[h.id] = h
        out = []
        for rid, score in fused:
            hit = by_id.get(rid)
            if hit is not None:
                hit.extra["cosine"] = cosines.get(rid)
                hit.score = float(score)
                out.append(hit)
        return _group(out)

    def _with_words(self, hits: list[Hit], text: str, vec: np.ndarray, under: str | None,
                    n: int, depth: int, filters: Filters | None = None, *,
                    words_only: bool = False) -> list[Hit]:
        """Give the words of documents and pictures their say in a text query over all kinds.

        The vector ranking (images, video frames, page pictures) is fused with the text
        rankings of `docsearch.text_evidence` (document chunks, and words read by OCR, each by
        chunk vectors and keywords) by two-tier RRF, as document search fuses its own: an item
        whose words single it out (a rare word of the query) ranks with the items the picture
        ranking singles out, ahead of the rest. When the words single nothing out (a visual
        query) the ranking and its cosine scores stay as they were. Otherwise `score` is the
        fused score, `extra["cosine"]` the vector similarity (None for an item found by its
        words alone) and `extra["matched"]` says by what: "visual", "words" or "both"; a hit
        found by words carries them as `text` (OCR hits also `extra["box"]`, where in the
        picture). `words_only` drops the vector ranking. Returns at least `n` hits when there
        are. `filters` restrict the text rankings as they do the vector one.
        """
        from clipsearch.docsearch import HEAD, page_details, snippet, text_evidence
        from clipsearch.fusion import confident_head, gated_rrf

        sources = [(kind, key_of) for kind, key_of in (("doc_text", _row_page_key), ("ocr", ocr_item_key))
                   if (self._has_document_text() if kind == "doc_text" else self._has_rows(kind))]
        if not sources:  # no words in the collection: the picture ranking as it is (and no LanceDB)
            return [] if words_only else hits
        table = self.col.store.table
        where = filters.sql() if filters else None
        search = self.ranker_search(under, filters)
        evidences = []
        for kind, key_of in sources:
            evidences.append((kind, text_evidence(table, vec, text, depth, kind=kind, key=key_of,
                                                  under=under, where=where, ann_search=search,
                                                  glued=kind == "ocr")))
        by_words: set[Any] = set()  # what a keyword ranking singled out: relevant by its words
        for _, ev in evidences:
            if len(ev.heads) > 1:
                by_words |= set(ev.rankings[1][:ev.heads[1]])
        if not any(ev.decisive for _, ev in evidences):
            return [] if words_only else hits
        by_key = {} if words_only else {_fusion_key(h): h for h in hits}
        rankings: list[list[Any]] = [] if words_only else [list(by_key)]
        heads = [] if words_only else [confident_head([h.score for h in hits], max_head=HEAD)]
        weights = [] if words_only else [1.0]
        for _, ev in evidences:
            rankings += ev.rankings
            heads += ev.heads
            weights += ev.weights
        fused = gated_rrf(rankings, heads, weights=weights)
        fused = fused[:max(n, len(hits))]
        visual = set() if words_only else set(rankings[0][:heads[0]])
        first = 0 if words_only else 1
        worded = {key for r, head in zip(rankings[first:], heads[first:], strict=True) for key in r[:head]}
        missing = [key for key, _ in fused if key not in by_key]
        pages = [key for key in missing if key[0] != ""]
        for key, found in page_details(table, pages).items():
            row = found.get("page") or found.get("chunk")
            if row is not None:
                by_key[key] = hit_from_row(row, float("nan"))
        for found_hit in self._hydrate([(key[1], float("nan")) for key in missing if key[0] == ""]):
            by_key[_fusion_key(found_hit)] = found_hit
        out = []
        for key, score in fused:
            hit = by_key.get(key)
            if hit is None:
                continue
            h = hit
            h.extra["cosine"] = h.score if np.isfinite(h.score) else None
            h.score = float(score)
            if key in by_words:
                h.extra["text_match"] = True
            h.extra["matched"] = ("both" if key in visual and key in worded else
                                  "words" if key in worded or words_only else "visual")
            for source, ev in evidences:
                chunk = ev.chunks.get(key)
                if chunk is not None and chunk.get("text") and key in worded:
                    h.text = snippet(chunk["text"], text)
                    h.extra["words"] = "ocr" if source == "ocr" else "document"
                    _locate_words(h, chunk)
                    break
            out.append(h)
        return _group(out)

    def _has_rows(self, kind: str) -> bool:
        """Whether the table holds rows of `kind` (asked once per table version and kind)."""
        version = self.col.store.version
        if self._kind_rows.get(kind, (-1, False))[0] != version:
            self._kind_rows[kind] = (version, self.col.store.count(f"kind = '{kind}'") > 0)
        return self._kind_rows[kind][1]

    def _with_speech(self, hits: list[Hit], text: str, under: str | None, filters: Filters | None,
                     depth: int) -> list[Hit]:
        """Give what is said its say in a text query over all kinds: segments whose words hold
        every word of the query (`speechsearch.spoken_evidence`) are one more ranking, fused by
        gated RRF. A segment of a video already found by its frames (or its words read by OCR)
        is that hit (`extra["evidence"]` "both", with the words said and their span, unless it
        already carries the words read); others become `speech` hits ("speech"). Either way the
        words singled the hit out (`extra["text_match"]`, as for OCR and document text). When
        no segment holds the words the hits stay exactly as they were."""
        from clipsearch.fusion import confident_head, gated_rrf
        from clipsearch.speechsearch import HEAD, spoken_evidence

        if not self._has_rows("speech"):
            return hits
        rows, head = spoken_evidence(self.col.store.table, text, depth, self._rows_where(under, filters))
        if not head:
            return hits
        by_key = {_fusion_key(h): h for h in hits}
        video_key = {h.source: key for key, h in by_key.items() if h.kind in ("video_frame", "video")}
        spoken: list[tuple[Any, ...]] = []
        found = self._hydrate([(r["id"], float("nan")) for r in rows[:head]])
        for h in found:
            key = video_key.get(h.source)
            if key is not None and by_key[key].extra.get("evidence") is None:
                old = by_key[key]
                if old.text is None:
                    old.text, old.t_start, old.t_end = h.text, h.t_start, h.t_end
                    old.extra["words"] = "speech"
                old.extra["evidence"] = "both"
                old.extra["matched"] = "words" if old.extra.get("matched") == "words" else "both"
            else:
                key = _fusion_key(h)
                h.extra.update(evidence="speech", matched="words", words="speech")
                by_key[key] = h
            by_key[key].extra["text_match"] = True
            spoken.append(key)
        fused = gated_rrf([[_fusion_key(h) for h in hits], spoken],
                          [confident_head([h.score for h in hits], max_head=HEAD), len(spoken)])
        out = []
        for key, score in fused:
            h = by_key[key]
            h.extra.setdefault("cosine", h.score if np.isfinite(h.score) else None)
            h.extra.setdefault("evidence", "visual")
            h.score = float(score)
            out.append(h)
        return out

    def _has_document_text(self) -> bool:
        """Whether the table holds document text."""
        return self._has_rows("doc_text")

    def words(self, text: str, k: int = 10, under: str | None = None,
              filters: Filters | None = None) -> list[Hit]:
        """`--kind ocr`: the items whose words (read by OCR) match, one hit per picture, each
        an `ocr` row: `text` (the matched words), `extra["box"]`, `page` or `t_start`."""
        from clipsearch.docsearch import keyword_search, snippet, substring_search, under_clause, vector_leg
        from clipsearch.fusion import best_member, rrf

        if not self._has_rows("ocr"):
            return []
        table = self.col.store.table
        depth = max(200, 20 * k)
        where = " AND ".join(f"({c})" for c in (under_clause(under), filters.sql() if filters else None) if c)
        vec = self.col.encoder.encode_texts([text])[0].astype(np.float32)
        vector_rows = vector_leg(table, vec, "ocr", depth, where or None, self.ranker_search(under, filters))
        kind_where = " AND ".join(c for c in ("kind = 'ocr'", where) if c)
        keyword_rows = keyword_search(table, text, depth, where=kind_where)
        every_word = (keyword_search(table, text, depth, where=kind_where, all_terms=True)
                      or substring_search(table, text, depth, where=kind_where))
        by_id = {r["id"]: r for r in vector_rows + keyword_rows + every_word}
        # rows holding every word of the query first, then the fused rest (RRF scores < 1)
        order = [(r["id"], 1.0 + r["score"] / (1.0 + r["score"])) for r in every_word]
        order += [(i, s) for i, s in rrf([[r["id"] for r in keyword_rows], [r["id"] for r in vector_rows]],
                                         weights=[1.0, 0.5]) if i not in {j for j, _ in order}]
        best = best_member(((by_id[i], s) for i, s in order), lambda rs: ocr_item_key(rs[0]))
        out = []
        for row, score in list(best.values())[:k]:
            h = hit_from_row({**row, "extra": None}, float(score))
            h.text = snippet(row["text"] or "", text)
            _locate_words(h, row)
            out.append(h)
        return self._with_file_columns(out)

    # ---- browsing without a query -----------------------------------------------------------
    def browse(self, order: str = "atypical", kind: str | None = None, k: int = 10, offset: int = 0,
               under: str | None = None) -> list[Hit]:
        """The whole collection by typicality, no query: "atypical" (outliers first) or "typical".

        Typicality is ||w||^2 in the fitted whitened space (`TransformSet.typicality`, lower is
        more typical); it is each hit's `score` and `extra["typicality"]`. One hit per video (its
        most atypical, or typical, frame) and per document page, as in search.
        """
        if k <= 0:
            raise UsageError(f"k must be positive, got {k}", hint="use -k 20")
        if offset < 0:
            raise UsageError(f"offset must be >= 0, got {offset}")
        if order not in BROWSE_ORDERS:
            raise UsageError(f"unknown order '{order}'", hint="one of: " + ", ".join(BROWSE_ORDERS))
        kind = (kind or "all").lower()
        if kind not in BROWSE_KINDS:
            raise UsageError(f"cannot browse kind '{kind}' by typicality",
                             hint="one of: " + ", ".join(BROWSE_KINDS))
        ids, keys, sources, typ = self._typicality_of(BROWSE_KINDS[kind])
        rank = np.argsort(-typ if order == "atypical" else typ, kind="stable")
        base = real_folder(under)
        picked: list[int] = []
        seen: set[tuple[Any, ...]] = set()
        for i in rank:
            if base is not None and not is_within(sources[i], base):
                continue
            if keys[i] in seen:
                continue
            seen.add(keys[i])
            picked.append(int(i))
            if len(picked) == offset + k:
                break
        hits = self._hydrate([(ids[i], float(typ[i])) for i in picked[offset:]])
        for h in hits:
            h.extra["typicality"] = h.score
        return hits

    def browse_by_date(self, kind: str | None = None, k: int = 10, offset: int = 0,
                       under: str | None = None) -> list[Hit]:
        """No query: one hit per file, newest first (`clipsearch.browse_date`). Each hit's
        `extra["month"]` ("2024-05") is what a UI groups by; `extra["date"]` is the ISO time it
        is ordered by, `extra["dated"]` whether that is when it was taken (else its mtime)."""
        from clipsearch.browse_date import iso_of, month_of, newest_first
        from clipsearch.docsearch import under_clause

        if k <= 0:
            raise UsageError(f"k must be positive, got {k}", hint="use -k 20")
        if offset < 0:
            raise UsageError(f"offset must be >= 0, got {offset}")
        kind = (kind or "all").lower()
        if kind not in BROWSE_KINDS:
            raise UsageError(f"cannot browse kind '{kind}' by date",
                             hint="one of: " + ", ".join(BROWSE_KINDS))
        order = newest_first(self.col.store, BROWSE_KINDS[kind], under_clause(under))
        page = order.page(k, offset)
        hits = self._hydrate([(rid, 0.0) for rid, _, _ in page])
        when = {rid: (t, dated) for rid, t, dated in page}
        for h in hits:
            t, dated = when[str(h.id)]
            h.extra["month"] = month_of(t)
            h.extra["date"] = iso_of(t)
            h.extra["dated"] = dated
        return hits

    def browse_topics(self, kind: str | None = None) -> list[Topic]:
        """No query: the collection's topics, largest first (`clipsearch.browse_topics`)."""
        return self._topics(kind, "browse topics of").topics

    def browse_topic(self, topic: int, kind: str | None = None, k: int = 10, offset: int = 0) -> list[Hit]:
        """The items of one topic (one per file or page), closest to its centre first; each
        hit's score is that cosine, `extra["topic"]` its topic's id and `extra["topic_label"]`."""
        if k <= 0:
            raise UsageError(f"k must be positive, got {k}", hint="use -k 20")
        if offset < 0:
            raise UsageError(f"offset must be >= 0, got {offset}")
        topics = self._topics(kind, "browse topics of")
        if not 0 <= topic < len(topics.topics):
            raise UsageError(f"no topic {topic}: this collection has {len(topics.topics)}",
                             hint="list them with `clipsearch browse --by topics`")
        label = topics.topics[topic].label
        hits = self._hydrate(topics.items(topic, k, offset))
        for h in hits:
            h.extra["topic"] = topic
            h.extra["topic_label"] = label
        return hits

    def items(self, ids: Sequence[str]) -> list[Hit]:
        """The hits of these row ids, in their order (score 0); ids no longer in the table are left out."""
        return self._hydrate([(str(i), 0.0) for i in ids])

    def _topics(self, kind: str | None, what: str) -> Topics:
        from clipsearch.browse_topics import TopicFiles, topics_of

        kind = (kind or "all").lower()
        if kind not in BROWSE_KINDS:
            raise UsageError(f"cannot {what} kind '{kind}'", hint="one of: " + ", ".join(BROWSE_KINDS))
        files = TopicFiles(self.col.path, str(self.col.meta["model_id"]), int(self.col.meta["dim"]))
        return topics_of(self.col.store, files, BROWSE_KINDS[kind],
                         lambda words: self.col.encoder.encode_texts(list(words)))

    def _typicality_of(self, kinds: tuple[str, ...]) -> tuple[list[Any], list[Any], list[Any], np.ndarray]:
        """(ids, group keys, sources, typicality) of every row of `kinds`, cached per table
        version and fitted transforms (a browsing UI pages through them)."""
        ts = self.transforms()
        if ts.whitening is None:
            why = ts.skipped.get("whiten", "it was not fitted")
            raise TransformError(f"browsing by typicality needs the whitening transform: {why}",
                                 hint="index more images, then run `clipsearch fit-transforms`")
        store = self.col.store
        version = store.version
        cached = self._typicality.get(kinds)
        if cached and cached[0] == version and cached[1] is ts:
            rows: tuple[list[Any], list[Any], list[Any], np.ndarray] = cached[2]
            return rows
        where = "kind IN (" + ",".join(f"'{x}'" for x in kinds) + ")"
        ids: list[Any] = []
        keys: list[Any] = []
        sources: list[Any] = []
        parts = []
        for meta, vecs in store.vector_batches(store.snapshot(), ["id", "kind", "source", "page"], where):
            batch_ids = meta.column("id").to_pylist()
            ids += batch_ids
            sources += meta.column("source").to_pylist()
            keys += [_group_key(i, kd, src, pg) for i, kd, src, pg in zip(
                batch_ids, meta.column("kind").to_pylist(), meta.column("source").to_pylist(),
                meta.column("page").to_pylist(), strict=True)]
            parts.append(ts.typicality(vecs))
        rows = (ids, keys, sources, np.concatenate(parts) if parts else np.zeros(0))
        self._typicality[kinds] = (version, ts, rows)
        return rows

    def _sort_typicality(self, hits: list[Hit]) -> list[Hit]:
        """Most typical first (lowest ||w||^2), as Whitened-CLIP's likelihood surrogate."""
        ts = self.transforms()
        if not hits:
            return hits
        rows = self.col.store.scan(["id", "vector"], sql_in("id", (h.id for h in hits if h.id is not None)))
        vec = float32_vectors(rows.column("vector"))
        typ = dict(zip(rows.column("id").to_pylist(), ts.typicality(vec), strict=True))
        for h in hits:
            h.extra["typicality"] = float(typ.get(h.id, np.inf))
        return sorted(hits, key=lambda h: h.extra["typicality"])

    def video_catalog(self) -> VideoCatalog | None:
        """The in-memory `VideoCatalog` of the current table version, or None.

        It is built on the second video query at a version: a long-lived process (UI, HTTP
        API, an embedding tool) then answers moment queries from memory, while a one-shot CLI
        query does not pay for a catalog it would use once (seconds at 1,000 video-hours).
        """
        from clipsearch.moments import VideoCatalog

        with self._lock:
            version = self.col.store.version
            cat = self._video_catalog
            if cat is not None and cat.version == version:
                return cat
            seen_version, count = self._video_queries
            count = count + 1 if seen_version == version else 1
            self._video_queries = (version, count)
            if count < 2 or not self.col.store.count("kind = 'video_window'"):
                return None
            self._video_catalog = VideoCatalog.build(self.col.store.table)
            return self._video_catalog

    def moments(self, text: str, k: int = 10, under: str | None = None,
                filters: Filters | None = None) -> list[Hit]:
        """Moments in the videos the filters keep (their windows are what is ranked), fused with
        where the query's words are said (`speechsearch.fuse_moments`): each hit's
        `extra["evidence"]` is "visual", "speech" or "both", and `text` the words said."""
        from clipsearch.moments import find_moments
        from clipsearch.speechsearch import fuse_moments, spoken_evidence

        vec = self.col.encoder.encode_texts([text])[0]
        found = find_moments(vec, self.col.store.table, k=k, catalog=self.video_catalog(),
                             ann_search=self.ranker_search(under, filters))
        spoken: list[dict[str, Any]] = []
        head = 0
        if self._has_rows("speech"):
            spoken, head = spoken_evidence(self.col.store.table, text, max(200, 20 * k),
                                           self._rows_where(under, filters))
        hits = []
        for m in fuse_moments(found, spoken, head, k):
            extra: dict[str, Any] = {"evidence": m.evidence}
            if m.visual_score is not None and m.evidence != "visual":
                extra["visual_score"] = m.visual_score
            hits.append(Hit(source=m.source, kind="moment", score=float(m.score), t_start=float(m.t_start),
                            t_end=float(m.t_end), text=m.text, thumb=m.thumb, extra=extra))
        return self._with_file_columns(hits)

    def speech(self, text: str, k: int = 10, under: str | None = None,
               filters: Filters | None = None) -> list[Hit]:
        """Transcript segments (`--kind speech`) of the files the filters keep, by their words
        and their text vectors (`speechsearch.search_speech`)."""
        from clipsearch.speechsearch import search_speech, spoken_evidence

        if not self._has_rows("speech"):
            return []
        vec = self.col.encoder.encode_texts([text])[0]
        where = self._rows_where(under, filters)
        found = search_speech(self.col.store.table, vec, text, k, where=where,
                              ann_search=self.ranker_search(under, filters))
        whole = {r["id"] for r in spoken_evidence(self.col.store.table, text, max(200, 20 * k), where)[0]}
        return self._with_file_columns([
            Hit(source=s.source, kind="speech", score=s.score, t_start=s.t_start, t_end=s.t_end,
                text=s.text, id=s.id, extra={"cosine": s.cosine, "signals": list(s.signals),
                                             "evidence": "speech", "text_match": s.id in whole})
            for s in found])

    @staticmethod
    def _rows_where(under: str | None, filters: Filters | None) -> str | None:
        """The SQL prefilter of a folder and the metadata filters (for keyword rankings)."""
        from clipsearch.docsearch import under_clause

        parts = [p for p in (under_clause(under), filters.sql() if filters else None) if p]
        return " AND ".join(f"({p})" for p in parts) or None

    def videos(self, text: str, k: int = 10, under: str | None = None,
               filters: Filters | None = None) -> list[Hit]:
        """Whole videos ranked by their best-matching window, among those the filters keep."""
        from clipsearch.moments import rank_videos

        vec = self.col.encoder.encode_texts([text])[0]
        found = rank_videos(vec, self.col.store.table, k=k, catalog=self.video_catalog(),
                            ann_search=self.ranker_search(under, filters))
        return self._with_file_columns([
            Hit(source=v.source, kind="video", score=float(v.score), t_start=float(v.t_start),
                t_end=float(v.t_end), thumb=v.thumb) for v in found])

    def documents(self, text: str, k: int = 10, under: str | None = None,
                  filters: Filters | None = None) -> list[Hit]:
        """Document pages, every ranking of `docsearch` restricted to the rows the filters keep."""
        from clipsearch.docsearch import search_documents

        found = search_documents(self.col.store.table, self.col.encoder, text, k, under=under,
                                 where=filters.sql() if filters else None,
                                 ann_search=self.ranker_search(under, filters))
        return self._with_file_columns([
            Hit(source=d.source, kind="doc", score=float(d.score), page=d.page, text=d.text,
                thumb=d.thumb, extra={"cosine": d.cosine, "signals": list(d.signals)}) for d in found])

    def _with_file_columns(self, hits: list[Hit]) -> list[Hit]:
        """Give ranked moments, videos and pages their file's date, place, camera... in
        `extra`, as row hits have (every row of a file carries them): one scan for all."""
        columns = self.col.store.file_columns()
        if not hits or not columns:
            return hits
        sources = sql_in("source", {h.source for h in hits})
        kinds = sql_in("kind", ("video", "audio", "doc_page", "doc_text"))
        rows = self.col.store.scan(["source", *columns], f"{kinds} AND {sources}")
        by_source = {r["source"]: r for r in rows.to_pylist()}
        for h in hits:
            h.extra = {**file_values(by_source.get(h.source, {})), **h.extra}
        return hits


def hit_from_row(r: dict[str, Any], score: float) -> Hit:
    """A hit of a table row; its file columns (date, place, camera, size...) go in `extra`."""
    extra = json.loads(r["extra"]) if r.get("extra") else {}
    kept = {k: v for k, v in extra.items() if k in ("duration", "scale")}
    kept.update(file_values(r))
    return Hit(source=r["source"], kind=r["kind"], score=score, t_start=r.get("t_start"),
               t_end=r.get("t_end"), page=r.get("page"), text=r.get("text"), thumb=r.get("thumb"),
               id=r["id"], extra=kept)


def file_values(r: dict[str, Any]) -> dict[str, Any]:
    """A row's known file columns as JSON-able values (taken_at as an ISO time)."""
    return {c: r[c].isoformat() if c == "taken_at" else r[c] for c in FILE_COLUMNS if r.get(c) is not None}


def sort_by_date(hits: list[Hit], newest: bool = False) -> list[Hit]:
    """Hits by `taken_at` (oldest first, or newest), those without a date last, score order kept
    among equals. taken_at is an ISO time in UTC, so its text sorts as its time."""
    dated = sorted((h for h in hits if h.extra.get("taken_at")), key=lambda h: h.extra["taken_at"],
                   reverse=newest)
    return dated + [h for h in hits if not h.extra.get("taken_at")]


def _query_words(terms: Sequence[QueryTerm]) -> str | None:
    """The words keyword matches rank by: those of the positive text terms (a negative term's
    words would match, not push away); None when there are none."""
    words = " ".join(str(t.value) for t in terms if t.kind == "text" and t.weight > 0)
    return words or None


def _among(rid: str, only: np.ndarray) -> bool:
    """Whether `rid` is in the sorted id array `only`."""
    i = int(np.searchsorted(only, rid))
    return i < len(only) and only[i] == rid


def _group_key(rid: str | None, kind: str, source: str, page: int | None) -> tuple[Any, ...]:
    """What a result stands for: a whole video, one document page, or the row itself."""
    if kind in ("video_frame", "video", "video_window"):
        return (source,)
    if kind in ("doc_page", "doc_text"):
        return (source, page)
    return (rid,)


def _row_page_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """A document text row's item: its page."""
    page = row.get("page")
    return row["source"], None if page is None else int(page)


def ocr_item_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """The item an `ocr` row's words belong to, as `_fusion_key` names it: a scanned page, or
    the row they were read in (an image, a video frame)."""
    if row.get("page") is not None:
        return row["source"], int(row["page"])
    extra = row.get("extra")
    of = (json.loads(extra) if isinstance(extra, str) else extra or {}).get("of")
    return ("", of) if of else ("", row["id"])


def _locate_words(h: Hit, row: dict[str, Any]) -> None:
    """Where the words of a text row are: an OCR row's box, and its time in a video."""
    extra = row.get("extra")
    found = json.loads(extra) if isinstance(extra, str) else extra or {}
    if row.get("kind") == "ocr" and found.get("box"):
        h.extra["box"] = found["box"]
        if row.get("t_start") is not None:
            h.t_start, h.t_end = row["t_start"], row.get("t_end")


def _fusion_key(h: Hit) -> tuple[Any, ...]:
    """A hit's key in rankings fused with document pages: (source, page) for pages."""
    return (h.source, h.page) if h.kind in ("doc_page", "doc_text") else ("", h.id)


def _group(hits: list[Hit]) -> list[Hit]:
    """One hit per video (its best frame) and per document page; images pass through."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for h in hits:
        key = _group_key(h.id, h.kind, h.source, h.page)
        if key in seen:
            continue
        seen.add(key)
        out.append(h)
    return out
