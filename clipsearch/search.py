"""Query planning: turn a text/image query into a vector, search the ANN index, group hits.

Default search spans images, video frames (one hit per video, at its best frame) and document
pages. Moments and documents have their own rankers (`moments`, `docsearch`); this module only
routes to them. Every query checks the table version, so a searcher in a long-running process
(the web server) sees what another process indexed, without a restart.

Derived state that is damaged (a saved ANN shard, the full-text index, the transforms) is
skipped by queries with one warning, and reported by `derived_problems` so that the next
index run rebuilds it from the table.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from clipsearch.ann import AnnIndex
from clipsearch.errors import TransformError, UsageError
from clipsearch.fsutil import write_atomic
from clipsearch.store import float32_vectors, sql_in

if TYPE_CHECKING:
    from clipsearch.collection import Collection

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
}
USER_KINDS = ("image", "video", "moment", "doc", "frame", "page", "all")
IMAGE_LIKE = ("image", "video_frame", "doc_page")


@dataclass
class Hit:
    """One search result. `score` is a cosine similarity (or a documented fused score)."""

    source: str
    kind: str
    score: float
    t_start: float | None = None
    t_end: float | None = None
    page: int | None = None
    text: str | None = None
    thumb: str | None = None
    id: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if v is not None and k != "extra"}
        d["score"] = round(float(self.score), 6)
        if self.extra:
            d.update({k: v for k, v in self.extra.items() if k not in d})
        return d


def _load_query_image(image: str | os.PathLike | Image.Image) -> Image.Image:
    from clipsearch.errors import SkipFile
    from clipsearch.indexers.image import load_image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    p = Path(image).expanduser()
    if not p.is_file():
        raise UsageError(f"query image {p}: no such file", hint="pass the path of an image file")
    try:
        return load_image(p, max_pixels=400_000_000)
    except SkipFile as e:
        raise UsageError(f"query image {p}: {e.reason}",
                         hint="use a jpg/png/webp/bmp/gif/tiff image") from None


class Searcher:
    """Holds the per-process caches (ANN index, transformed indexes) for one collection."""

    def __init__(self, col: Collection) -> None:
        self.col = col
        self._lock = threading.RLock()
        self._ann: AnnIndex | None = None
        self._transformed: dict[tuple, tuple[AnnIndex, int]] = {}
        self._transforms = None
        self._transforms_mtime: float | None = None
        self._video_catalog = None
        self._video_queries: tuple[int, int] = (-1, 0)  # (table version, video queries at it)

    @property
    def ann_dir(self) -> Path:
        return self.col.path / "ann"

    # ---- ANN ---------------------------------------------------------------------------------
    def rebuild_ann(self, save: bool = False) -> AnnIndex:
        with self._lock:
            ann = AnnIndex.build(self.col.store, reuse=self._ann if self._ann is not None else self.ann_dir)
            if save:
                ann.save(self.ann_dir)
            self._ann = ann
            self._transformed.clear()
            return ann

    def derived_problems(self, fit_transforms: bool = True) -> list[str]:
        """One line per part of the derived state that is missing, stale or damaged and must be
        rebuilt from the table: the saved ANN index, the full-text index, the transforms."""
        from clipsearch.docsearch import fts_problem

        problems = [self._ann_problem(), fts_problem(self.col.store.table),
                    self._transforms_problem(fit_transforms)]
        return [p for p in problems if p]

    def _ann_problem(self) -> str | None:
        store = self.col.store
        return AnnIndex.problem(self.ann_dir, version=store.version, rows=store.count())

    def _transforms_problem(self, fit_transforms: bool) -> str | None:
        from clipsearch.transforms import MIN_CENTER_SAMPLES, TransformSet

        if not TransformSet.exists(self.col.path):
            enough = self.col.store.count(sql_in("kind", IMAGE_LIKE)) >= MIN_CENTER_SAMPLES
            return "no transforms are fitted though there are enough items" if fit_transforms and enough \
                else None
        try:
            TransformSet.load(self.col.path, self.col.meta["model_id"], int(self.col.meta["dim"]))
        except TransformError as e:
            return str(e)
        return None

    def ann(self) -> AnnIndex:
        """The ANN index at the table's current version: cached, loaded, or rebuilt."""
        with self._lock:
            version = self.col.store.version
            if self._ann is not None and self._ann.version == version:
                return self._ann
            loaded = AnnIndex.load(self.ann_dir)
            if loaded is not None and loaded.version == version:
                self._ann = loaded
                return loaded
            # Another process is writing (or crashed before its rebuild): build from the table,
            # taking over the shards of kinds that did not change.
            self._ann = AnnIndex.build(self.col.store, reuse=loaded if loaded is not None else self._ann)
            return self._ann

    def ann_search(self, vec: np.ndarray, n: int, kind: str | tuple[str, ...],
                   under: str | None = None) -> list[tuple[str, float]]:
        """(id, cosine) of the top n rows of `kind`: the hook the moment/doc rankers use."""
        kinds = (kind,) if isinstance(kind, str) else tuple(kind)
        return self.ann().search(vec, n, kinds=kinds, under=under)[0]

    def ann_description(self) -> dict:
        ann = self.ann()
        return {"type": ann.describe(), "rows": len(ann), "version": ann.version}

    # ---- transforms --------------------------------------------------------------------------
    def transforms(self):
        from clipsearch.transforms import TransformSet

        path = self.col.path / "transforms.npz"
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

    def transforms_description(self) -> str | None:
        try:
            return self.transforms().describe()
        except TransformError:
            return None

    def _builtin_text_vectors(self) -> np.ndarray:
        """Embeddings of the built-in captions, cached in the collection (same model forever)."""
        from clipsearch.transforms import embed_builtin_captions

        cache = self.col.path / "builtin_text_vectors.npy"
        if cache.exists():
            try:
                vecs = np.load(cache, allow_pickle=False)
                if vecs.ndim == 2 and vecs.shape[1] == int(self.col.meta["dim"]) and np.isfinite(vecs).all():
                    return vecs
            except Exception as e:  # truncated or garbage: embed the captions again
                log.warning("%s is unreadable (%s); embedding the captions again", cache, e)
        vecs = embed_builtin_captions(self.col.encoder).astype(np.float32)
        buf = io.BytesIO()
        np.save(buf, vecs)
        write_atomic(cache, buf.getvalue())
        return vecs

    def fit_transforms(self, strict: bool = True, text_source: str = "builtin", embed_text: bool = True):
        """Fit whitening + centering on the collection's image-like vectors and save them.

        The text mean for centering needs a few thousand caption embeddings: minutes with a
        big text tower on a CPU. With `embed_text=False` (the automatic fit after `index`) it is
        fitted only if those embeddings are already cached; otherwise on first use of --center.
        """
        from clipsearch.transforms import TransformSet

        _, vecs = self.col.store.vectors(sql_in("kind", IMAGE_LIKE))
        texts = None
        if text_source == "collection":
            _, texts = self.col.store.vectors("kind = 'doc_text'")
        if texts is None or len(texts) == 0:
            text_source = "builtin"
            cached = (self.col.path / "builtin_text_vectors.npy").exists()
            texts = self._builtin_text_vectors() if (embed_text or cached) else None
        ts = TransformSet.fit(vecs, texts, model_id=self.col.meta["model_id"], dim=int(self.col.meta["dim"]),
                              text_source=text_source, strict=strict)
        ts.save(self.col.path)
        self._transforms = None
        return ts

    def ensure_text_index(self) -> None:
        """Full-text index over document text, and over paths for --hybrid."""
        from clipsearch.docsearch import ensure_fts_index

        ensure_fts_index(self.col.store.table)

    def after_write(self, fit_transforms: bool = True) -> None:
        """Derived state after an index run: (best-effort) transforms.

        Transforms are refitted automatically only when there are enough image-like items for
        at least centering; below that, `clipsearch fit-transforms` explains what is missing.
        """
        from clipsearch.transforms import MIN_CENTER_SAMPLES

        store = self.col.store
        if fit_transforms and store.count(sql_in("kind", IMAGE_LIKE)) >= MIN_CENTER_SAMPLES:
            try:
                self.fit_transforms(strict=False, embed_text=False)
                return
            except TransformError as e:
                log.info("transforms not fitted: %s", e)
        problem = self._transforms_problem(fit_transforms=False)
        if problem:  # damaged and not refittable now: remove it rather than report it every run
            log.warning("%s; removing it", problem)
            (self.col.path / "transforms.npz").unlink(missing_ok=True)
            self._transforms = None

    def _transformed_index(self, kinds: tuple[str, ...], whiten: bool, center: bool) -> AnnIndex:
        """A flat index over transformed vectors of `kinds` (transforms move every vector)."""
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
                                    np.array(meta.column("source").to_pylist(), dtype=object), version,
                                    exact_threshold=1 << 62)
        self._transformed[key] = (idx, version)
        return idx

    # ---- queries -----------------------------------------------------------------------------
    def query_vector(self, text: str | None, image, invert: bool = False) -> tuple[np.ndarray, str]:
        """(vector, modality). Text+image → the normalised sum of both."""
        enc = self.col.encoder
        if text is None and image is None:
            raise UsageError("give a text query, an image, or both", hint="clipsearch search \"a dog\"")
        parts, modality = [], "text"
        if text is not None:
            if not text.strip():
                raise UsageError("the text query is empty", hint="type some words to search for")
            parts.append(enc.encode_texts([text])[0])
        if image is not None:
            im = _load_query_image(image)
            if invert:
                from clipsearch.inversion import invert_images

                parts.append(invert_images(enc, [im])[0])
            else:
                parts.append(enc.encode_images([im])[0])
                modality = "image" if text is None else "mixed"
        v = np.sum(parts, axis=0)
        return (v / max(np.linalg.norm(v), 1e-12)).astype(np.float32), modality

    def search(self, text=None, image=None, k: int = 10, kind: str | None = None,
               under: str | None = None, offset: int = 0, whiten: bool = False, center: bool = False,
               invert: bool = False, hybrid: bool = False, sort: str | None = None) -> list[Hit]:
        if k <= 0:
            raise UsageError(f"k must be positive, got {k}", hint="use -k 10")
        if offset < 0:
            raise UsageError(f"offset must be >= 0, got {offset}")
        # sources are real paths (symlinks resolved), so the folder is too
        under = os.path.realpath(os.path.expanduser(under)) if under else None
        kind = (kind or "").lower() or None
        if kind is not None and kind not in USER_KINDS and kind not in KIND_ALIASES:
            raise UsageError(f"unknown kind '{kind}'", hint="one of: " + ", ".join(USER_KINDS))
        if invert and image is None:
            raise UsageError("--invert needs an image query", hint="add --image FILE")
        if kind == "moment":
            if text is None:
                raise UsageError("moment search needs a text query")
            return self.moments(text, k=k + offset, under=under)[offset:]
        if kind == "video":
            if text is None:
                raise UsageError("video search needs a text query")
            return self.videos(text, k=k + offset, under=under)[offset:]
        if kind == "doc":
            if text is None:
                raise UsageError("document search needs a text query")
            return self.documents(text, k=k + offset, under=under)[offset:]
        vec, modality = self.query_vector(text, image, invert=invert)
        if invert:
            modality = "text"
        kinds = DEFAULT_KINDS if kind in (None, "all") else KIND_ALIASES[kind]
        if whiten and modality != "image":
            raise UsageError("--whiten applies to image queries", hint="use --center for text queries")
        need = (k + offset) * 4 + 20
        if whiten or center:
            ts = self.transforms()
            if center and modality != "image" and ts.text_mean is None and ts.image_mean is not None:
                log.warning("fitting the text mean for --center (once per collection)...")
                self.fit_transforms(strict=False)
                ts = self.transforms()
            qv = ts.apply_query(vec[None], "image" if modality == "image" else "text",
                                whiten=whiten, center=center)[0]
            raw = self._transformed_index(tuple(sorted(set(kinds) & set(IMAGE_LIKE)) or kinds),
                                          whiten, center).search(qv, need, kinds=kinds, under=under)[0]
        else:
            raw = self.ann().search(vec, need, kinds=kinds, under=under)[0]
        hits = self._of_kinds(self._hydrate(raw), kinds)
        hits = _group(hits)
        if hybrid and text:
            hits = self._hybrid(hits, text, kinds, need)
        if sort == "typicality":
            hits = self._sort_typicality(hits)
        return hits[offset:offset + k]

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

    def _hybrid(self, hits: list[Hit], text: str, kinds: tuple[str, ...], n: int) -> list[Hit]:
        """Fuse vector ranks with BM25 over paths (and text) by RRF; score = fused RRF score."""
        from clipsearch.docsearch import keyword_search
        from clipsearch.fusion import hybrid_rerank

        where = sql_in("kind", kinds)
        kw = keyword_search(self.col.store.table, text, n, where=where, column="source")
        fused = hybrid_rerank([(h.id, h.score) for h in hits], [(r["id"], r["score"]) for r in kw], n)
        by_id = {h.id: h for h in hits}
        missing = [i for i, _ in fused if i not in by_id]
        for h in self._hydrate([(i, float("nan")) for i in missing]):
            by_id[h.id] = h
        out = []
        for rid, score in fused:
            h = by_id.get(rid)
            if h is not None:
                h.extra["cosine"] = h.score
                h.score = float(score)
                out.append(h)
        return _group(out)

    def _sort_typicality(self, hits: list[Hit]) -> list[Hit]:
        """Most typical first (lowest ||w||^2), as Whitened-CLIP's likelihood surrogate."""
        ts = self.transforms()
        if not hits:
            return hits
        rows = self.col.store.scan(["id", "vector"], sql_in("id", (h.id for h in hits)))
        vec = float32_vectors(rows.column("vector"))
        typ = dict(zip(rows.column("id").to_pylist(), ts.typicality(vec), strict=True))
        for h in hits:
            h.extra["typicality"] = float(typ.get(h.id, np.inf))
        return sorted(hits, key=lambda h: h.extra["typicality"])

    def video_catalog(self):
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

    def moments(self, text: str, k: int = 10, under: str | None = None) -> list[Hit]:
        from clipsearch.moments import find_moments

        vec = self.col.encoder.encode_texts([text])[0]
        found = find_moments(vec, self.col.store.table, k=k, catalog=self.video_catalog(),
                             ann_search=lambda v, n, kind: self.ann_search(v, n, kind, under))
        return [Hit(source=m.source, kind="moment", score=float(m.score), t_start=float(m.t_start),
                    t_end=float(m.t_end), thumb=m.thumb) for m in found]

    def videos(self, text: str, k: int = 10, under: str | None = None) -> list[Hit]:
        """Whole videos ranked by their best-matching window."""
        from clipsearch.moments import rank_videos

        vec = self.col.encoder.encode_texts([text])[0]
        found = rank_videos(vec, self.col.store.table, k=k, catalog=self.video_catalog(),
                            ann_search=lambda v, n, kind: self.ann_search(v, n, kind, under))
        return [Hit(source=v.source, kind="video", score=float(v.score), t_start=float(v.t_start),
                    t_end=float(v.t_end), thumb=v.thumb) for v in found]

    def documents(self, text: str, k: int = 10, under: str | None = None) -> list[Hit]:
        from clipsearch.docsearch import search_documents

        found = search_documents(self.col.store.table, self.col.encoder, text, k, under=under,
                                 ann_search=lambda v, n, kind: self.ann_search(v, n, kind, under))
        return [Hit(source=d.source, kind="doc", score=float(d.score), page=d.page, text=d.text,
                    thumb=d.thumb) for d in found]


def hit_from_row(r: dict, score: float) -> Hit:
    extra = json.loads(r["extra"]) if r.get("extra") else {}
    return Hit(source=r["source"], kind=r["kind"], score=score, t_start=r.get("t_start"),
               t_end=r.get("t_end"), page=r.get("page"), text=r.get("text"), thumb=r.get("thumb"),
               id=r["id"], extra={k: v for k, v in extra.items() if k in ("duration", "scale")})


def _group(hits: list[Hit]) -> list[Hit]:
    """One hit per video (its best frame) and per document page; images pass through."""
    seen: set[tuple] = set()
    out = []
    for h in hits:
        key = (h.source,) if h.kind in ("video_frame", "video", "video_window") else \
            (h.source, h.page) if h.kind in ("doc_page", "doc_text") else (h.id,)
        if key in seen:
            continue
        seen.add(key)
        out.append(h)
    return out
