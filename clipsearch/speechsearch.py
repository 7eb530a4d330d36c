"""Speech search: transcript segments ranked for a text query, and moments that fuse what is
seen with what is said.

A segment is matched two ways, as document chunks are (`clipsearch.docsearch`): its CLIP text
vector, and BM25 over its words (the full-text index on `text`). The two rankings are fused by
gated RRF (`fusion.gated_rrf`): segments a ranking singles out come first.

Moments (`fuse_moments`): the visual moments of `clipsearch.moments` and the segments whose
words hold every word of the query are two rankings of spans. A segment that overlaps a visual
moment of the same file is the same moment, found both ways ("both"); otherwise it is a moment
of its own ("speech"), as a visual moment nobody speaks of is ("visual"). When no segment holds
the query's words (a visual query), the visual moments are returned as they were: a ranking
with no evidence never dilutes the other.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clipsearch.fusion import confident_head, gated_rrf
from clipsearch.store import sql_in, sql_str

AnnSearch = Callable[[np.ndarray, int, str], Sequence[tuple[str, float]]]

KIND = "speech"
HEAD = 5
WEIGHTS = (0.5, 1.0)  # vectors, keywords: CLIP's text tower is a weak sentence encoder
_COLUMNS = ["id", "source", "t_start", "t_end", "text", "extra"]


@dataclass
class SpeechHit:
    """One transcript segment: `score` the fused rank score (comparable within one query),
    `cosine` its text vector's similarity, `signals` the rankings that singled it out."""

    id: str
    source: str
    t_start: float
    t_end: float
    text: str
    score: float
    cosine: float | None = None
    signals: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class SpokenMoment:
    """A moment of the fused ranking: the span, where the evidence came from ("visual",
    "speech" or "both"), the words said there (if any) and the visual moment's thumbnail."""

    source: str
    t_start: float
    t_end: float
    score: float
    evidence: str
    text: str | None = None
    thumb: str | None = None
    visual_score: float | None = None


def _and(*conds: str | None) -> str | None:
    parts = [f"({c})" for c in conds if c]
    return " AND ".join(parts) or None


def vector_rows(table: Any, qvec: np.ndarray, n: int, where: str | None,
                ann_search: AnnSearch | None) -> list[dict[str, Any]]:
    """Best-first `speech` rows by cosine to the query, each with a `score`."""
    kind = f"kind = {sql_str(KIND)}"
    if ann_search is not None:
        pairs = list(ann_search(qvec, n, KIND))
        if not pairs:
            return []
        score = {str(i): float(s) for i, s in pairs}
        rows = table.to_lance().to_table(columns=_COLUMNS, filter=_and(kind, sql_in("id", score), where))
        by_id = {r["id"]: r for r in rows.to_pylist()}
        return [{**by_id[i], "score": s} for i, s in score.items() if i in by_id]
    rows = (table.search(np.asarray(qvec, np.float32), vector_column_name="vector").distance_type("dot")
            .where(_and(kind, where), prefilter=True).select(_COLUMNS).limit(n).to_list())
    for r in rows:
        r["score"] = 1.0 - float(r.pop("_distance"))
    return rows


def keyword_rows(table: Any, query: str, n: int, where: str | None, all_terms: bool) -> list[dict[str, Any]]:
    """Best-first BM25 matches among `speech` rows (`docsearch.keyword_search`)."""
    from clipsearch.docsearch import keyword_search

    rows = keyword_search(table, query, n, where=_and(f"kind = {sql_str(KIND)}", where), all_terms=all_terms)
    if rows:  # the keyword leg's rows name no span: one read for them all
        spans = table.to_lance().to_table(columns=["id", "t_start", "t_end"],
                                          filter=sql_in("id", (r["id"] for r in rows))).to_pylist()
        by_id = {s["id"]: s for s in spans}
        rows = [{**r, **by_id[r["id"]]} for r in rows if r["id"] in by_id]
    return rows


def _keyword_head(rows: list[dict[str, Any]], depth: int) -> int:
    """BM25 returns only matching rows: a handful of them is itself the evidence."""
    if 0 < len(rows) <= HEAD and len(rows) < depth:
        return len(rows)
    scores = [r["score"] for r in rows] + ([0.0] * (depth - len(rows)) if len(rows) < depth else [])
    return confident_head(scores, max_head=HEAD)


def search_speech(table: Any, qvec: np.ndarray, query: str, k: int, *, where: str | None = None,
                  ann_search: AnnSearch | None = None, depth: int | None = None,
                  all_terms: bool = False) -> list[SpeechHit]:
    """The `k` best transcript segments for a text query (`where`: a SQL prefilter, e.g. the
    folder and metadata filters). `all_terms` keeps keyword matches holding every word."""
    if k <= 0 or not query.strip():
        return []
    depth = depth or max(200, 20 * k)
    vec = vector_rows(table, qvec, depth, where, ann_search)
    kw = keyword_rows(table, query, depth, where, all_terms)
    legs = [vec, kw]
    rankings = [[r["id"] for r in leg] for leg in legs]
    heads = [confident_head([r["score"] for r in vec], max_head=HEAD), _keyword_head(kw, depth)]
    fused = gated_rrf(rankings, heads, weights=list(WEIGHTS))[:k]
    by_id = {r["id"]: r for r in kw + vec}
    cos = {r["id"]: r["score"] for r in vec}
    singled = [set(r[:h]) for r, h in zip(rankings, heads, strict=True)]
    out = []
    for rid, score in fused:
        r = by_id[rid]
        signals = tuple(n for n, s in zip(("vector", "keyword"), singled, strict=True) if rid in s)
        out.append(SpeechHit(rid, r["source"], float(r["t_start"]), float(r["t_end"]), r.get("text") or "",
                             float(score), cos.get(rid), signals))
    return out


def spoken_evidence(table: Any, query: str, depth: int,
                    where: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """(segments whose words hold every word of the query, best first; how many are singled
    out). For fusion with visual rankings: one word of a visual query said somewhere must not
    outrank what is seen, so only whole matches count."""
    if not re.findall(r"\w+", query):
        return [], 0
    rows = keyword_rows(table, query, depth, where, all_terms=True)
    return rows, _keyword_head(rows, depth)


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def fuse_moments(visual: Sequence[Any], spoken: list[dict[str, Any]], spoken_head: int,
                 k: int) -> list[SpokenMoment]:
    """Visual moments (best first, with source/t_start/t_end/score/thumb) fused with spoken
    segments (best first). See the module docstring; a "both" moment spans the words said, or
    the union with the visual span when the visual ranking singled that moment out too."""
    vis = [SpokenMoment(m.source, float(m.t_start), float(m.t_end), float(m.score), "visual",
                        thumb=getattr(m, "thumb", None), visual_score=float(m.score)) for m in visual]
    if not spoken_head:
        return vis[:k]
    visual_head = confident_head([m.score for m in vis], max_head=HEAD)
    keys_visual = list(range(len(vis)))
    moments: dict[int, SpokenMoment] = dict(enumerate(vis))
    keys_spoken: list[int] = []
    for r in spoken:
        a, b = float(r["t_start"]), float(r["t_end"])
        match = next((i for i, m in enumerate(vis) if m.source == r["source"]
                      and moments[i].evidence == "visual" and _overlap(a, b, m.t_start, m.t_end) > 0), None)
        if match is None:
            key = len(moments)
            moments[key] = SpokenMoment(r["source"], a, b, 0.0, "speech", text=r.get("text"))
        else:
            key, m = match, moments[match]
            span = (min(a, m.t_start), max(b, m.t_end)) if match < visual_head else (a, b)
            moments[key] = SpokenMoment(m.source, span[0], span[1], 0.0, "both", text=r.get("text"),
                                        thumb=m.thumb, visual_score=m.visual_score)
        keys_spoken.append(key)
    fused = gated_rrf([keys_visual, keys_spoken], [visual_head, spoken_head])[:k]
    out = []
    for key, score in fused:
        m = moments[key]
        m.score = float(score)
        out.append(m)
    return out
