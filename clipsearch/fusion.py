"""Reciprocal rank fusion (RRF) of several rankings, and grouping rows into pages.

Vector similarities, BM25 scores and image-vs-text cosines live on different scales, so
they cannot be added. RRF (Cormack, Clarke & Buettcher, SIGIR 2009) uses only ranks:
score(d) = sum over rankings r of weight_r / (k + rank_r(d)), with rank starting at 1 and
documents missing from a ranking contributing nothing. k=60 is the paper's constant; it
damps the difference between the first few ranks so that agreement between rankings wins.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

RRF_K = 60
CONFIDENCE = 3.5  # see confident_head; tuned on benchmarks/doc_pages.py seed 0, checked on seed 1


def rrf(
    rankings: Sequence[Sequence[K]], *, k: float = RRF_K, weights: Sequence[float] | None = None
) -> list[tuple[K, float]]:
    """Fuse best-first rankings of keys; returns (key, fused score), best first.

    A key repeated inside one ranking counts once, at its best rank. Ties are broken by the
    best single rank the key reached, then by first appearance, so the order is deterministic.
    """
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    score: dict[K, float] = {}
    best: dict[K, int] = {}
    for ranking, w in zip(rankings, weights, strict=True):
        for rank, key in enumerate(dedupe(ranking), start=1):
            score[key] = score.get(key, 0.0) + w / (k + rank)
            best[key] = min(best.get(key, rank), rank)
    order = {key: i for i, key in enumerate(score)}
    return sorted(score.items(), key=lambda kv: (-kv[1], best[kv[0]], order[kv[0]]))


def dedupe(keys: Iterable[K]) -> list[K]:
    """Keys in first-seen order, each once: a row ranking becomes a ranking of its groups."""
    seen: set[K] = set()
    out = []
    for key in keys:
        if key not in seen:
            seen.add(key)
            out.append(key)
    return out


def group_ranking(hits: Iterable[T], key: Callable[[T], K]) -> list[K]:
    """Rank groups (e.g. (source, page)) by their best member in a best-first list of hits."""
    return dedupe(key(h) for h in hits)


def best_member(hits: Iterable[T], key: Callable[[T], K]) -> dict[K, T]:
    """The first (best) hit of each group in a best-first list: the snippet a group shows."""
    out: dict[K, T] = {}
    for h in hits:
        out.setdefault(key(h), h)
    return out


def hybrid_rerank(
    vector_hits: Sequence[tuple[K, float]],
    keyword_hits: Sequence[tuple[K, float]],
    k: int,
    *,
    rrf_k: float = RRF_K,
    weights: tuple[float, float] = (1.0, 1.0),
) -> list[tuple[K, float]]:
    """Fuse a vector search and a keyword (full-text) search over the same ids; top `k`.

    Both inputs are best-first (id, score) lists; only their order is used. Usable for any
    kind of row: images and videos matched by path and text, document chunks, ...
    """
    fused = rrf([[i for i, _ in vector_hits], [i for i, _ in keyword_hits]], k=rrf_k, weights=weights)
    return fused[:k]


def confident_head(scores: Sequence[float], *, threshold: float = CONFIDENCE, max_head: int = 5) -> int:
    """How many leading items of a best-first score list stand out from the rest; 0 if none.

    Rankings that know nothing about a query (a CLIP text tower asked about an unknown name,
    BM25 asked about a picture) still rank something first, and RRF cannot tell. In the tail
    of a score distribution the normalised spacings i * (s_i - s_{i+1}) are roughly i.i.d.
    exponential (extreme-value theory), so their mean below rank `max_head` estimates the
    scale, and a head of size j is singled out when j * (s_j - s_{j+1}) exceeds `threshold`
    times it (a pure-noise ranking passes 1-10 % of the time at the default). Scale-free,
    so it works for cosines and BM25 alike. Lists shorter than `max_head` + 13, and lists
    whose tail is all ties (nothing to measure a gap against), give 0.
    """
    s = np.asarray(scores, dtype=np.float64)
    if len(s) < max_head + 13:
        return 0
    spacings = np.arange(1, len(s)) * (s[:-1] - s[1:])
    scale = float(np.mean(spacings[max_head:]))
    head = spacings[:max_head]
    if scale <= 0:
        return 0
    singled = np.flatnonzero(head >= threshold * scale)
    return int(singled.max()) + 1 if len(singled) else 0


def gated_rrf(
    rankings: Sequence[Sequence[K]],
    heads: Sequence[int],
    *,
    k: float = RRF_K,
    weights: Sequence[float] | None = None,
) -> list[tuple[K, float]]:
    """RRF in two tiers: first the keys some ranking is confident about, then the rest.

    `heads[i]` is how many leading keys of `rankings[i]` that ranking singles out (see
    `confident_head`). Tier-1 keys score 1 + RRF over the confident heads alone, so rankings
    that single nothing out cannot reorder them (they only break ties); the rest score plain
    RRF over the full rankings (always < 1). When no ranking is confident this is `rrf`.
    """
    full = dict(rrf(rankings, k=k, weights=weights))
    confident = dict(rrf([r[:h] for r, h in zip(rankings, heads, strict=True)], k=k, weights=weights))
    scored = {key: 1.0 + confident[key] if key in confident else s for key, s in full.items()}
    order = {key: i for i, key in enumerate(full)}
    return sorted(scored.items(), key=lambda kv: (-kv[1], order[kv[0]]))
