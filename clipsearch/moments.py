"""Text → moments in videos, training-free: similarity curves over frame vectors → segments.

Why this shape: a query is first matched against multi-scale `video_window` rows (cheap,
ANN-accelerated) to find *where* to look, then the per-frame similarity curve of those few
regions decides *exactly* where a moment starts and ends. The curve → segment step is a pure
function on arrays (`segments_from_curve`) so it can be tested without a model or a database.

Moment score (documented, shown to users): ``mean(inside) + 0.5·max(inside)`` over raw cosine
similarities of the frames: how well the span matches on average plus how well its best frame
matches. Higher is better; it is not a cosine. The span itself is found relative to the
video's own background (threshold between median and peak), but the *score* is absolute, so
moments of different videos compare. The design sketch's contrast term ``− mean(flanks)`` is
available as ``flank_weight=1``: it rewards a span for differing from its surroundings, which
says nothing about the query, and on the synthetic benchmark it put a wrong video's moment
first for most queries (benchmarks/RESULTS.md, "Moment retrieval").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipsearch.store import float32_vectors, sql_in, sql_str
from clipsearch.video_metrics import temporal_iou

AnnSearch = Callable[[np.ndarray, int, str], list[tuple[str, float]]]
"""Core-provided ANN: ``ann_search(vec, n, kind) -> [(row_id, cosine), ...]`` best first."""

REGION_PAD_S = 30.0
_WINDOW_COLS = ["id", "source", "t_start", "t_end", "thumb", "extra"]


@dataclass(frozen=True)
class Segment:
    """A span found on one similarity curve; `peak` is the time of its best smoothed sample."""

    t_start: float
    t_end: float
    score: float
    peak: float


@dataclass(frozen=True)
class Moment:
    """A retrieved moment: the video, its span in seconds, the moment score and a thumbnail."""

    source: str
    t_start: float
    t_end: float
    score: float
    thumb: str | None = None


@dataclass(frozen=True)
class VideoHit:
    """A whole-video result: best window cosine, where that window is, and its thumbnail."""

    source: str
    score: float
    t_start: float
    t_end: float
    thumb: str | None = None


# ---------------------------------------------------------------- pure curve → segments


def smooth_curve(times: np.ndarray, sims: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian (Nadaraya–Watson) smoothing on possibly uneven sample times.

    Uneven because the indexer adds a sample at every shot cut; normalising the kernel
    weights keeps the curve unbiased at region edges too. Works in blocks, so long curves
    never build an n×n matrix.
    """
    times = np.asarray(times, dtype=np.float64)
    sims = np.asarray(sims, dtype=np.float64)
    if sigma <= 0 or len(sims) < 2:
        return sims.copy()
    out = np.empty_like(sims)
    reach = 4.0 * sigma
    block = 512
    for b0 in range(0, len(times), block):
        b1 = min(b0 + block, len(times))
        lo = int(np.searchsorted(times, times[b0] - reach, side="left"))
        hi = int(np.searchsorted(times, times[b1 - 1] + reach, side="right"))
        d = times[b0:b1, None] - times[None, lo:hi]
        w = np.exp(-0.5 * (d / sigma) ** 2)
        out[b0:b1] = (w @ sims[lo:hi]) / w.sum(axis=1)
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive index ranges of consecutive True values."""
    idx = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return [(int(a), int(b) - 1) for a, b in zip(idx[::2], idx[1::2], strict=False)]


def _crossing(t0: float, t1: float, s0: float, s1: float, thr: float) -> float:
    """Time where the straight line from (t0, s0) to (t1, s1) crosses `thr`."""
    if s1 == s0:
        return 0.5 * (t0 + t1)
    frac = float(np.clip((thr - s0) / (s1 - s0), 0.0, 1.0))
    return t0 + frac * (t1 - t0)


def _snap(t: float, cuts: np.ndarray, tol: float) -> float:
    if cuts.size == 0:
        return t
    j = int(np.argmin(np.abs(cuts - t)))
    return float(cuts[j]) if abs(cuts[j] - t) <= tol else t


def segments_from_curve(
    times: Sequence[float] | np.ndarray,
    sims: Sequence[float] | np.ndarray,
    cuts: Sequence[float] | np.ndarray = (),
    *,
    sigma: float = 1.0,
    rel_threshold: float = 0.5,
    max_gap: float = 2.0,
    min_len: float = 2.0,
    snap: float = 1.0,
    max_segments: int = 3,
    flank_weight: float = 0.0,
) -> list[Segment]:
    """Turn one video's frame-similarity curve into scored segments, best first.

    Steps: smooth (Gaussian, `sigma` s); background = median of the smoothed curve;
    from the highest unused peak, threshold = background + `rel_threshold`·(peak − background);
    keep the above-threshold run holding the peak, bridging dips ≤ `max_gap` s; edges at the
    interpolated threshold crossings; pad to `min_len` s; snap edges to a shot cut within
    ± `snap` s. Repeat on the unused samples up to `max_segments` times. Score: mean(inside)
    + 0.5·max(inside) − `flank_weight`·mean(flanks) (see the module docstring).
    """
    t = np.asarray(times, dtype=np.float64)
    s = np.asarray(sims, dtype=np.float64)
    if t.shape != s.shape or t.ndim != 1:
        raise ValueError(f"times and sims must be 1-D of equal length, got {t.shape} and {s.shape}")
    if t.size == 0:
        return []
    order = np.argsort(t, kind="stable")
    t, s = t[order], s[order]
    cuts_arr = np.sort(np.asarray(cuts, dtype=np.float64))
    dt = float(np.median(np.diff(t))) if t.size > 1 else 1.0
    lo_t, hi_t = float(t[0]), float(t[-1] + dt)
    sm = smooth_curve(t, s, sigma)
    background = float(np.median(sm))
    used = np.zeros(t.size, dtype=bool)
    found: list[Segment] = []
    while len(found) < max_segments and not used.all():
        cand = np.where(used, -np.inf, sm)
        ip = int(np.argmax(cand))
        peak = float(sm[ip])
        if found and peak <= background:
            break
        thr = background + rel_threshold * (peak - background)
        above = (sm >= thr) & ~used
        runs = _runs(above)
        # Merge runs whose dip between them is at most max_gap seconds.
        merged: list[list[int]] = []
        for a, b in runs:
            if merged and t[a] - t[merged[-1][1]] <= max_gap + 1e-9 and not used[merged[-1][1] : a].any():
                merged[-1][1] = b
            else:
                merged.append([a, b])
        i0, i1 = next((a, b) for a, b in merged if a <= ip <= b)
        start = _crossing(t[i0 - 1], t[i0], sm[i0 - 1], sm[i0], thr) if i0 > 0 else float(t[0])
        end = _crossing(t[i1], t[i1 + 1], sm[i1], sm[i1 + 1], thr) if i1 < t.size - 1 else float(t[-1] + dt)
        if end - start < min_len:
            mid = 0.5 * (start + end)
            start, end = mid - 0.5 * min_len, mid + 0.5 * min_len
            if start < lo_t:
                start, end = lo_t, lo_t + min_len
            if end > hi_t:
                start, end = max(lo_t, hi_t - min_len), hi_t
        start, end = _snap(start, cuts_arr, snap), _snap(end, cuts_arr, snap)
        if end - start < min_len:  # snapping must not undo the minimum length
            end = min(hi_t, start + min_len)
        inside = (t >= start - 1e-9) & (t < end - 1e-9)
        inside[ip] = True
        flank_w = float(np.clip(end - start, 2.0, 10.0))
        flanks = ((t >= start - flank_w) & (t < start)) | ((t >= end) & (t < end + flank_w))
        flank_mean = float(s[flanks].mean()) if flanks.any() else float(np.median(s))
        score = float(s[inside].mean()) - flank_weight * flank_mean + 0.5 * float(s[inside].max())
        found.append(Segment(float(start), float(end), score, float(t[ip])))
        used |= inside
        used[i0 : i1 + 1] = True
    found.sort(key=lambda g: -g.score)
    return found


def nms(moments: Sequence[Moment], iou: float = 0.5) -> list[Moment]:
    """Greedy non-maximum suppression per video: drop a moment overlapping a better one."""
    kept: list[Moment] = []
    by_source: dict[str, list[Moment]] = {}
    for m in sorted(moments, key=lambda m: -m.score):
        same = by_source.setdefault(m.source, [])
        if all(temporal_iou((k.t_start, k.t_end), (m.t_start, m.t_end)) < iou for k in same):
            same.append(m)
            kept.append(m)
    return kept


def merge_hits(
    hits: Sequence[tuple[float, float, float]], pad: float = REGION_PAD_S
) -> list[tuple[float, float, float]]:
    """Merge one video's window hits (t_start, t_end, z) into regions padded by ± `pad` s.

    Returns (start, end, best z) per region, in time order.
    """
    regions: list[list[float]] = []
    for a, b, z in sorted(hits):
        a, b = max(0.0, float(a) - pad), float(b) + pad
        if regions and a <= regions[-1][1]:
            regions[-1][1] = max(regions[-1][1], b)
            regions[-1][2] = max(regions[-1][2], z)
        else:
            regions.append([a, b, z])
    return [(r[0], r[1], r[2]) for r in regions]


def standardise_per_scale(scores: np.ndarray, scales: Sequence[str]) -> np.ndarray:
    """z-score hit scores within each window scale: long windows score lower than short ones."""
    scores = np.asarray(scores, dtype=np.float64)
    z = np.zeros_like(scores)
    keys = np.asarray([str(x) for x in scales])
    for key in np.unique(keys):
        m = keys == key
        sd = scores[m].std()
        z[m] = (scores[m] - scores[m].mean()) / sd if sd > 1e-9 else 0.0
    return z


# ---------------------------------------------------------------- table access


def _scan(table: Any, where: str, columns: list[str]) -> pa.Table:
    """Filtered read of a few rows. The Lance dataset underneath a local table answers this
    several times faster than the query builder (measured in benchmarks/moments_scale.py)."""
    to_lance = getattr(table, "to_lance", None)
    if to_lance is not None:
        from clipsearch.store import read_table

        return read_table(to_lance(), columns, where)
    return table.search().where(where).select(columns).limit(None).to_arrow()


class WindowCatalog:
    """In-memory metadata of every `video_window` row, for one table version.

    Why: turning ANN hits (row ids) into spans by an `id IN (...)` scan costs more than the
    rest of a moment query on large collections (random reads; see benchmarks/RESULTS.md).
    A long-lived process (UI, server, benchmark) builds this once per table version
    (~60 bytes a window, i.e. ~0.4 GiB at 1,000 video-hours) and passes it to `find_moments`.
    """

    def __init__(self, rows: pa.Table, version: int | None = None) -> None:
        ids = np.asarray(rows.column("id").to_pylist(), dtype="S32")
        order = np.argsort(ids)
        self.ids = ids[order]
        self.version = version
        src = rows.column("source").to_pylist()
        self.sources, codes = np.unique(np.asarray(src, dtype=object), return_inverse=True)
        self.codes = codes.astype(np.int32)[order]
        self.t_start = rows.column("t_start").to_numpy(zero_copy_only=False).astype(np.float64)[order]
        self.t_end = rows.column("t_end").to_numpy(zero_copy_only=False).astype(np.float64)[order]
        self.scale = np.asarray([_scale_of(e) for e in rows.column("extra").to_pylist()], dtype=object)[order]
        self.thumb = np.asarray(rows.column("thumb").to_pylist(), dtype=object)[order]

    @classmethod
    def build(cls, table: Any) -> WindowCatalog:
        cols = ["id", "source", "t_start", "t_end", "thumb", "extra"]
        return cls(_scan(table, "kind = 'video_window'", cols), getattr(table, "version", None))

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def nbytes(self) -> int:
        """Approximate memory held (arrays plus one pointer per row for the object columns)."""
        return sum(a.nbytes for a in (self.ids, self.codes, self.t_start, self.t_end)) + 16 * len(self)

    def rows(self, pairs: Sequence[tuple[str, float]]) -> list[dict[str, Any]]:
        """Hit dicts (as `_window_hits` returns) for (id, score) pairs; unknown ids are dropped."""
        keys = np.asarray([rid for rid, _ in pairs], dtype="S32")
        pos = np.clip(np.searchsorted(self.ids, keys), 0, max(len(self) - 1, 0))
        out = []
        for (rid, sc), p, key in zip(pairs, pos, keys, strict=True):
            if len(self) and self.ids[p] == key:
                out.append({"id": rid, "source": self.sources[self.codes[p]], "t_start": self.t_start[p],
                            "t_end": self.t_end[p], "thumb": self.thumb[p], "scale": self.scale[p],
                            "score": float(sc)})
        return out


class VideoCatalog(WindowCatalog):
    """A `WindowCatalog` that also knows where every frame row is and each video's shot cuts.

    Why: at 1,000 video-hours, reading the frame vectors of a query's ~20 candidate regions
    through a filtered scan was nearly all of a moment query's time (benchmarks/RESULTS.md).
    With the frames' row offsets in memory (~20 bytes a frame), the same rows come from one
    `take` on the pinned table version, and the cuts need no read at all.
    """

    def __init__(self, snapshot: Any) -> None:
        super().__init__(snapshot.to_table(columns=_WINDOW_COLS, filter="kind = 'video_window'"),
                         int(snapshot.version))
        self._snapshot = snapshot
        t = snapshot.to_table(columns=["kind", "source", "t_start"])
        offsets = np.flatnonzero(pc.equal(t.column("kind"), "video_frame").to_numpy(zero_copy_only=False))
        frames = t.take(offsets)
        src = pc.dictionary_encode(frames.column("source").combine_chunks())
        self._frame_sources = np.asarray(src.dictionary.to_pylist(), dtype=object)
        self._code_of = {s: i for i, s in enumerate(self._frame_sources)}
        codes = src.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        times = frames.column("t_start").to_numpy(zero_copy_only=False).astype(np.float64)
        order = np.lexsort((times, codes))
        self._f_code, self._f_t, self._f_off = codes[order], times[order], offsets[order]
        videos = snapshot.to_table(columns=["source", "extra"], filter="kind = 'video'")
        self._cuts = _cuts_from(videos)

    @classmethod
    def build(cls, table: Any) -> VideoCatalog:
        return cls(table.to_lance())

    @property
    def nbytes(self) -> int:
        return super().nbytes + sum(a.nbytes for a in (self._f_code, self._f_t, self._f_off))

    def cuts(self, sources: Sequence[str]) -> dict[str, np.ndarray]:
        return {s: self._cuts[s] for s in sources if s in self._cuts}

    def frames(self, regions: Sequence[tuple[str, float, float]]) -> _Frames:
        """(sources, times, thumbs, float32 vectors) of the frames inside the regions."""
        picks = []
        for src, a, b in regions:
            code = self._code_of.get(src)
            if code is None:
                continue
            lo, hi = np.searchsorted(self._f_code, [code, code + 1])
            t = self._f_t[lo:hi]
            i0, i1 = np.searchsorted(t, a, side="left"), np.searchsorted(t, b, side="right")
            picks.append(np.arange(lo + i0, lo + i1))
        sel = np.unique(np.concatenate(picks)) if picks else np.zeros(0, np.int64)
        if not len(sel):
            return np.zeros(0, object), np.zeros(0), [], np.zeros((0, 0), np.float32)
        rows = self._snapshot.take(self._f_off[sel], columns=["thumb", "vector"])
        return (self._frame_sources[self._f_code[sel]], self._f_t[sel], rows.column("thumb").to_pylist(),
                float32_vectors(rows.column("vector")))


# (sources, times, thumbs, float32 vectors) of frame rows.
_Frames = tuple[np.ndarray, np.ndarray, list[str], np.ndarray]


def _window_hits(
    query: np.ndarray, table: Any, n: int, ann_search: AnnSearch | None, catalog: WindowCatalog | None = None
) -> list[dict[str, Any]]:
    """Top-`n` `video_window` rows for the query, as dicts with a `score` (cosine)."""
    if ann_search is not None:
        pairs = ann_search(query, n, "video_window")
        if not pairs:
            return []
        if catalog is not None:
            rows = catalog.rows(pairs)
        else:
            score_of = {rid: float(sc) for rid, sc in pairs}
            rows = _scan(table, sql_in("id", score_of), _WINDOW_COLS).to_pylist()
            for r in rows:
                r["score"] = score_of[r["id"]]
    else:
        rows = (
            table.search(query.astype(np.float32))
            .distance_type("dot")
            .where("kind = 'video_window'", prefilter=True)
            .select([*_WINDOW_COLS, "_distance"])
            .limit(n)
            .to_arrow()
            .to_pylist()
        )
        for r in rows:
            r["score"] = 1.0 - float(r.pop("_distance"))
    rows.sort(key=lambda r: -r["score"])
    return rows


def _scale_of(extra: str | None) -> str:
    try:
        return str(json.loads(extra or "{}").get("scale", "?"))
    except (ValueError, AttributeError):
        return "?"


def _load_cuts(table: Any, sources: Sequence[str]) -> dict[str, np.ndarray]:
    if not sources:
        return {}
    where = f"kind = 'video' AND {sql_in('source', sources)}"
    return _cuts_from(_scan(table, where, ["source", "extra"]))


def _cuts_from(rows: pa.Table) -> dict[str, np.ndarray]:
    """Shot cuts per video from `video` rows (source, extra)."""
    out: dict[str, np.ndarray] = {}
    for src, extra in zip(rows.column("source").to_pylist(), rows.column("extra").to_pylist(), strict=False):
        try:
            out[src] = np.asarray(json.loads(extra or "{}").get("cuts", []), dtype=np.float64)
        except ValueError:
            out[src] = np.zeros(0)
    return out


def _load_frames(table: Any, regions: Sequence[tuple[str, float, float]]) -> _Frames:
    """One scan for the frame rows of all regions (source, start, end)."""
    clauses = " OR ".join(
        f"(source = {sql_str(src)} AND t_start >= {a:.6f} AND t_start <= {b:.6f})" for src, a, b in regions
    )
    frames = _scan(table, f"kind = 'video_frame' AND ({clauses})", ["source", "t_start", "thumb", "vector"])
    return (np.asarray(frames.column("source").to_pylist(), dtype=object),
            frames.column("t_start").to_numpy(zero_copy_only=False).astype(np.float64),
            frames.column("thumb").to_pylist(), float32_vectors(frames.column("vector")))


# ---------------------------------------------------------------- public queries


def find_moments(
    query_vec: np.ndarray,
    table: Any,
    k: int = 10,
    *,
    candidates: int = 300,
    ann_search: AnnSearch | None = None,
    max_regions: int | None = None,
    sigma: float = 1.0,
    catalog: WindowCatalog | None = None,
    flank_weight: float = 0.0,
) -> list[Moment]:
    """Top-`k` moments in the whole collection for an L2-normalised query vector.

    1) ANN over `video_window` rows (top `candidates`); 2) z-score per scale, group by video,
    merge into ± 30 s regions; 3) frame-similarity curve of the best regions; 4) segments via
    `segments_from_curve` (shot cuts from the `video` row); 5) NMS at IoU 0.5.
    With `ann_search`, a `catalog` (`WindowCatalog.build(table)`, rebuilt when the table
    version changes) replaces the per-query id lookup.
    """
    q = np.asarray(query_vec, dtype=np.float32).reshape(-1)
    hits = _window_hits(q, table, candidates, ann_search, catalog)
    if not hits:
        return []
    scales = [h["scale"] if "scale" in h else _scale_of(h.get("extra")) for h in hits]
    z = standardise_per_scale(np.array([h["score"] for h in hits]), scales)
    by_source: dict[str, list[tuple[float, float, float]]] = {}
    for h, zi in zip(hits, z, strict=False):
        by_source.setdefault(h["source"], []).append((float(h["t_start"]), float(h["t_end"]), float(zi)))
    regions = [(src, a, b, zr) for src, hs in by_source.items() for a, b, zr in merge_hits(hs)]
    regions.sort(key=lambda r: -r[3])
    regions = regions[: max_regions or max(2 * k, 10)]
    spans = [(src, a, b) for src, a, b, _ in regions]
    video_cat = catalog if isinstance(catalog, VideoCatalog) else None
    f_src, f_t, f_thumb, f_vec = video_cat.frames(spans) if video_cat else _load_frames(table, spans)
    if len(f_t) == 0:
        return []
    f_sim = f_vec @ q
    sources = sorted({r[0] for r in regions})
    cuts = video_cat.cuts(sources) if video_cat else _load_cuts(table, sources)
    moments: list[Moment] = []
    for src, a, b, _ in regions:
        idx = np.flatnonzero((f_src == src) & (f_t >= a) & (f_t <= b))
        if idx.size == 0:
            continue
        idx = idx[np.argsort(f_t[idx], kind="stable")]
        segs = segments_from_curve(f_t[idx], f_sim[idx], cuts.get(src, ()), sigma=sigma,
                                   flank_weight=flank_weight)
        for seg in segs:
            j = idx[int(np.argmin(np.abs(f_t[idx] - seg.peak)))]
            moments.append(Moment(src, seg.t_start, seg.t_end, seg.score, f_thumb[j]))
    return nms(moments, 0.5)[:k]


def rank_videos(
    query_vec: np.ndarray,
    table: Any,
    k: int = 10,
    *,
    candidates: int = 300,
    ann_search: AnnSearch | None = None,
    catalog: WindowCatalog | None = None,
) -> list[VideoHit]:
    """Videos ranked by their best-matching window (cosine), with that window as the pointer."""
    q = np.asarray(query_vec, dtype=np.float32).reshape(-1)
    best: dict[str, dict[str, Any]] = {}
    for h in _window_hits(q, table, candidates, ann_search, catalog):
        if h["source"] not in best or h["score"] > best[h["source"]]["score"]:
            best[h["source"]] = h
    ranked = sorted(best.values(), key=lambda h: -h["score"])[:k]
    return [
        VideoHit(h["source"], h["score"], float(h["t_start"]), float(h["t_end"]), h["thumb"])
        for h in ranked
    ]
