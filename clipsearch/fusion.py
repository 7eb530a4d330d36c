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

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

RRF_K = 60


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
