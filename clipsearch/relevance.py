"""Calibrated relevance: how far a hit stands above its own query's scores over the collection.

A cosine means different things for different queries (a text query's best cosine may be 0.3,
an image query's 0.95; a gibberish query still has a best hit), so no global threshold can tell
a match from the best of nothing. Per query, the query vector is scored against a fixed random
sample of the collection's vectors of the kinds searched (the *background*): its median is
where the bulk of what the query "sees" lies, which removes the query's own offset. A hit's
excess over that median, in units of the *reference spread* (the typical MAD of meaningful
queries of the same modality against the same background: collection items as image queries,
the model's own captions as text queries, their sums for text + image), is its z. The spread
is the collection's and the modality's, not the query's: a query that discriminates nothing
(a narrow, flat score distribution, as gibberish has) is not stretched into false confidence.

An image query's copies (cosine >= COPY_COSINE: the picture itself, re-encoded or resized)
are relevant whatever the spread: in a small or varied collection the reference spread can be
so wide that even the query's own item stands less than Z_AUTO spreads above the bulk.

A text query must also *describe* its hit: a hit whose best description in a fixed bank of
captions (the model's own, else generic ones) beats the query by more than DESCRIPTION_MARGIN
reference spreads is a partial match ("a yellow circle" finding a yellow square, which "a
yellow square" describes better), and its z is capped below the cut.
`relevance` maps z to (0, 1) by a logistic, and `auto` keeps relevance >= 0.5.
The method, its assumptions and where it fails: docs/relevance.md.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.errors import UsageError

if TYPE_CHECKING:
    from clipsearch.relevance_background import BackgroundFiles
    from clipsearch.search import Hit
    from clipsearch.store import Store

BACKGROUND_ROWS = 4096  # rows sampled per set of kinds; the bulk's median/MAD need no more
REFERENCE_QUERIES = 64  # reference queries per modality (sample rows, captions)
CAPTION_BANK = 512  # captions a text query's hits are checked against (their best description)
Z_AUTO = 2.1  # z at which relevance is 0.5, the auto cut (tuned on the shapes world, seed 0)
DESCRIPTION_MARGIN = 0.2  # reference spreads a hit's best caption may beat the query by (seed 0)
COPY_COSINE = 0.97  # an image query's hit this similar is a copy of the query picture (relevant)
Z_COPY = 1.0  # a copy's z is at least Z_AUTO + this: relevance ~0.98, whatever the bulk's spread
Z_WIDTH = 0.25  # z units per e-fold of the logistic: relevance 0.12 at Z_AUTO - 0.5, 0.88 at +0.5
AUTO = 0.5  # the auto cut on the relevance scale
SINGLED_OUT = AUTO  # relevance of a hit some fused ranking singled out with no cosine to calibrate
MODALITIES = ("text", "image", "mixed")
# what a persisted background depends on besides the model and the table (relevance_background)
SAMPLING = {"background_rows": BACKGROUND_ROWS, "reference_queries": REFERENCE_QUERIES,
            "caption_bank": CAPTION_BANK}


def parse_min_relevance(value: str | float | None, name: str = "min_relevance") -> float | None:
    """'auto' -> AUTO, 'off'/None -> None (no cut), a number in [0, 1] -> itself."""
    if value is None:
        return None
    if isinstance(value, str):
        v = value.strip().lower()
        if v == "auto":
            return AUTO
        if v in ("off", "none", ""):
            return None
        try:
            number = float(v)
        except ValueError:
            raise UsageError(f"{name}: {value!r} is not auto, off or a number",
                             hint=f"use {name}=auto, off, or a relevance between 0 and 1 (auto = {AUTO})"
                             ) from None
    else:
        number = float(value)
    if not 0.0 <= number <= 1.0 or math.isnan(number):
        raise UsageError(f"{name}: {value!r} is outside 0..1",
                         hint=f"relevance is between 0 and 1; auto is {AUTO}")
    return number


def robust_bulk(scores: np.ndarray) -> tuple[float, float]:
    """(median, MAD scaled to a normal sigma) of a score distribution."""
    s = np.asarray(scores, dtype=np.float64)
    if not len(s):
        return 0.0, 0.0
    med = float(np.median(s))
    return med, 1.4826 * float(np.median(np.abs(s - med)))


def relevance_of_z(z: float) -> float:
    """The logistic map of z onto (0, 1), 0.5 at Z_AUTO."""
    x = (z - Z_AUTO) / Z_WIDTH
    return 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0


@dataclass(frozen=True)
class Calibration:
    """One query's bulk over the background: `loc` (median), `scale` (the spread z is in);
    `bank`: caption embeddings to check a text query's hits against (None: no check);
    `copies`: an image query, whose copies (cosine >= COPY_COSINE) are relevant."""

    loc: float
    scale: float
    bank: np.ndarray | None = None
    copies: bool = False

    def z(self, cosine: float, best_caption: float | None = None) -> float:
        """The hit's excess over the bulk in spreads, capped below the cut when some caption
        describes the hit better than the query by more than DESCRIPTION_MARGIN spreads."""
        if self.scale <= 0:
            return 0.0
        z = (cosine - self.loc) / self.scale
        if best_caption is not None:
            z = min(z, Z_AUTO + (cosine - best_caption) / self.scale + DESCRIPTION_MARGIN)
        if self.copies and cosine >= COPY_COSINE:
            z = max(z, Z_AUTO + Z_COPY)
        return z

    def relevance(self, cosine: float | None, best_caption: float | None = None) -> float:
        if cosine is None or not math.isfinite(cosine):
            return 0.0
        return relevance_of_z(self.z(cosine, best_caption))

    def best_captions(self, vectors: np.ndarray) -> list[float | None]:
        """Per hit vector, its best caption's cosine (all None without a bank)."""
        if self.bank is None or not len(self.bank) or not len(vectors):
            return [None] * len(vectors)
        return [float(x) for x in (np.asarray(vectors, np.float32) @ self.bank.T).max(axis=1)]


@dataclass(frozen=True)
class Background:
    """A fixed sample of one set of kinds' vectors and, per modality, the reference spread."""

    vectors: np.ndarray
    rows: int
    references: dict[str, float]
    bank: np.ndarray | None = None

    def calibrate(self, query: np.ndarray, modality: str) -> Calibration:
        """The query's bulk: its median over the sample, in the reference spread of its
        modality (its own MAD only where no reference could be measured). Text queries get
        the caption bank to check their hits against."""
        loc, mad = robust_bulk(self.vectors @ query)
        return Calibration(loc, self.references.get(modality) or mad,
                           self.bank if modality == "text" else None, copies=modality == "image")


def reference_spreads(vectors: np.ndarray, text_queries: np.ndarray | None,
                      n: int = REFERENCE_QUERIES) -> dict[str, float]:
    """Median MAD of the score distributions of meaningful queries, per modality: rows of the
    sample as image queries, caption embeddings as text queries, and their normalised sums."""
    if not len(vectors):
        return {}
    rng = np.random.default_rng(0)
    pick = rng.choice(len(vectors), size=min(n, len(vectors)), replace=False)
    images = vectors[pick]
    out = {"image": _median_mad(vectors, images)}
    if text_queries is not None and len(text_queries):
        texts = text_queries[rng.choice(len(text_queries), size=min(n, len(text_queries)), replace=False)]
        out["text"] = _median_mad(vectors, texts)
        m = min(len(texts), len(images))
        mixed = texts[:m] + images[:m]
        mixed /= np.maximum(np.linalg.norm(mixed, axis=1, keepdims=True), 1e-12)
        out["mixed"] = _median_mad(vectors, mixed)
    return out


def _median_mad(vectors: np.ndarray, queries: np.ndarray) -> float:
    scores = vectors @ queries.T  # (rows, queries)
    return float(np.median([robust_bulk(scores[:, j])[1] for j in range(scores.shape[1])]))


class Calibrator:
    """Per-process cache of backgrounds, one per (table version, kinds); thread-safe.

    The sample is drawn once per table version (`Store.sample_vectors`: the kind column and
    the sampled rows only, so it costs the sample, not the collection) and, given `files`,
    kept in the collection (`relevance_background`) so the next process reads it instead;
    `text_vectors` (the caption bank: the text reference and the description check) is asked
    once per process."""

    def __init__(self, store: Callable[[], Store], text_vectors: Callable[[], np.ndarray | None],
                 files: Callable[[], BackgroundFiles | None] | None = None) -> None:
        self._store = store
        self._text_vectors = text_vectors
        self._files = files
        self._texts: np.ndarray | None = None
        self._texts_done = False
        self._cache: dict[tuple[str, ...], tuple[int, Background]] = {}
        self._lock = threading.Lock()

    def _bank(self) -> np.ndarray | None:
        if not self._texts_done:
            self._texts, self._texts_done = self._text_vectors(), True
        return self._texts

    def background(self, kinds: Iterable[str]) -> Background:
        key = tuple(sorted(set(kinds)))
        store = self._store()
        version = store.version
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] == version:
                return cached[1]
            files = self._files() if self._files is not None else None
            table_rows = store.count() if files is not None else 0
            kept = files.load(key, version, table_rows) if files is not None else None
            if kept is not None:
                bg = Background(kept.vectors, kept.rows, kept.references, self._bank())
            else:
                vecs, rows = store.sample_vectors(key, BACKGROUND_ROWS, seed=0)
                bg = Background(vecs, rows, reference_spreads(vecs, self._bank()), self._bank())
                if files is not None:
                    from clipsearch.relevance_background import Sample

                    files.save(key, version, table_rows, Sample(vecs, rows, bg.references))
            self._cache[key] = (version, bg)
            return bg

    def calibrate(self, query: np.ndarray, modality: str, kinds: Iterable[str]) -> Calibration:
        return self.background(kinds).calibrate(np.asarray(query, dtype=np.float32), modality)


def cosine_of(hit: Hit) -> float | None:
    """The vector similarity of a hit: `score`, or `extra["cosine"]` where fusion replaced it."""
    if "cosine" in hit.extra:
        c = hit.extra["cosine"]
        return float(c) if c is not None else None
    return float(hit.score)


def assign(hits: Sequence[Hit], calibration: Calibration,
           singled_out: Callable[[Hit], bool] = lambda h: False,
           best_captions: Sequence[float | None] | None = None) -> None:
    """Set each hit's `relevance`: its cosine calibrated (against its best caption, where
    given), at least SINGLED_OUT when a fused ranking (keywords, document text) singled it out."""
    for i, h in enumerate(hits):
        rel = calibration.relevance(cosine_of(h), best_captions[i] if best_captions is not None else None)
        if singled_out(h):
            rel = max(rel, SINGLED_OUT)
        h.relevance = rel


def split(hits: Sequence[Hit], threshold: float) -> tuple[list[Hit], list[Hit]]:
    """(hits at or above `threshold`, the rest), order kept; a hit without relevance is kept."""
    kept: list[Hit] = []
    weaker: list[Hit] = []
    for h in hits:
        (kept if h.relevance is None or h.relevance >= threshold else weaker).append(h)
    return kept, weaker


def describe_cut(shown: int, cut: int, would_cut: int, threshold: float | None) -> str | None:
    """The line a CLI prints under the hits: how many the cut dropped, or would drop."""
    if threshold is None:
        if would_cut:
            return (f"{would_cut} of these {shown} hits are below the auto relevance cut "
                    f"(--min-relevance auto drops them)")
        return None
    if cut:
        return (f"{shown} relevant hit{'s' if shown != 1 else ''}; {cut} weaker match"
                f"{'es' if cut != 1 else ''} cut (--min-relevance off shows them)")
    return None


def summary(hits: Any) -> dict[str, Any]:
    """The cut's facts about one answer, as JSON: threshold, how many were cut or would be."""
    return {"min_relevance": getattr(hits, "min_relevance", None), "cut": len(getattr(hits, "weaker", [])),
            "would_cut": int(getattr(hits, "would_cut", 0))}
