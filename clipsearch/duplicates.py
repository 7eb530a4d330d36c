"""Near-duplicates: groups of files that show the same picture, found through the ANN index.

Exact duplicates share a content hash. Near-duplicates (resized, re-encoded, lightly cropped,
burst shots; a photo that is a frame of an indexed video) are pairs whose vectors lie within a
similarity threshold of each other: every item asks the ANN index (the saved FAISS shards plus
the rows written since, `ann_live.LiveAnn`) for its k nearest neighbours, and the neighbours at
or above the threshold are its pairs, a k-nearest search cut at a radius. So the work is n ANN
queries, never n² comparisons, and it scales with the index. Pairs are joined into groups by
connected components (a union-find over the pairs).

The `auto` threshold comes from the collection's own nearest-neighbour similarity
distribution (`auto_threshold`, docs in README "Near-duplicates"): most items' nearest
neighbour is a *different* picture, so the bulk of the log-distances to the nearest neighbour
describes "distinct"; the cut lies where fewer than one distinct item of n is expected.

Each group names a suggested keeper and why (`choose_keeper`). Nothing here changes a file:
moving the others is `duplicate_moves`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from clipsearch.duplicate_split import split_component
from clipsearch.errors import UsageError
from clipsearch.store import Store, float32_vectors

KINDS = ("image", "video", "all")
NEIGHBOURS = 16  # k of each item's nearest-neighbour query: a group larger than this still joins
FRAME_NEIGHBOURS = 4  # frames a photo is compared with (frames of one video are alike)
# IVF lists each duplicate query probes: a copy lies in its original's list or the next few, so
# far fewer than an ordinary query's `ann.probes` (which looks for neighbours at cos ~0.8)
DUPLICATE_PROBES = 8
AUTO_MIN, AUTO_MAX = 0.80, 0.9995  # the auto threshold stays within these
AUTO_FALLBACK = 0.95  # too few items to fit a distribution
AUTO_MIN_ITEMS = 20
QUERY_BATCH = 4096
_COLUMNS = ["id", "source", "source_raw", "kind", "content_hash", "width", "height", "taken_at", "thumb"]

# (queries, k, kinds) -> per query, (row id, cosine) best first: LiveAnn.search / AnnIndex.search
Search = Callable[..., list[list[tuple[str, float]]]]
# (queries, k, kind, nprobe) -> (scores, ids) arrays, best first, None ids pad short rows:
# LiveAnn.search_arrays / AnnIndex.search_arrays
ArraySearch = Callable[[np.ndarray, int, str, "int | None"], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class DuplicateFile:
    """One file of a group; `similarity` is its best link inside the group (1.0: same bytes)."""

    source: str
    kind: str  # image or video
    id: str  # the row that stands for the file (its thumbnail)
    width: int | None
    height: int | None
    taken_at: datetime | None
    content_hash: str | None
    thumb: str | None
    similarity: float
    exact: bool  # same content hash as another file of the group

    @property
    def pixels(self) -> int:
        return (self.width or 0) * (self.height or 0)


@dataclass(frozen=True)
class DuplicateGroup:
    """Files that show the same picture, the suggested keeper first, and why it is kept."""

    files: list[DuplicateFile]
    keeper: DuplicateFile
    reason: str
    exact: bool  # every file has the same bytes

    @property
    def others(self) -> list[DuplicateFile]:
        """What `--move-to` would move: every file but the keeper."""
        return [f for f in self.files if f.source != self.keeper.source]

    def to_dict(self) -> dict[str, Any]:
        def one(f: DuplicateFile) -> dict[str, Any]:
            d = asdict(f)
            d["taken_at"] = f.taken_at.isoformat() if f.taken_at else None
            d["similarity"] = round(f.similarity, 6)
            d["keeper"] = f.source == self.keeper.source
            return d

        return {"keeper": self.keeper.source, "reason": self.reason, "exact": self.exact,
                "files": [one(f) for f in self.files]}


@dataclass
class DuplicateReport:
    """The groups, and the threshold they were cut at (with how `auto` chose it)."""

    groups: list[DuplicateGroup]
    threshold: float
    auto: bool
    how: str  # one line: where the threshold came from
    kind: str
    items: int  # files compared
    nn_quantiles: dict[str, float] = field(default_factory=dict)  # of the nearest-neighbour similarity
    pixel_cut: float | None = None  # the miniature distance that confirmed pairs (None: vectors only)

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": round(self.threshold, 6), "auto": self.auto, "how": self.how,
                "pixel_cut": None if self.pixel_cut is None else round(self.pixel_cut, 6),
                "kind": self.kind, "items": self.items, "nn_quantiles": self.nn_quantiles,
                "groups": [g.to_dict() for g in self.groups],
                "duplicates": sum(len(g.others) for g in self.groups)}


def parse_threshold(value: str | float | None) -> float | None:
    """`auto` (or None) -> None; else a similarity in (0, 1]. A bad value is a usage error."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--threshold {value!r} is neither 'auto' nor a number",
                         hint="give auto, or a cosine similarity such as 0.97") from None
    if not 0.0 < t <= 1.0 or math.isnan(t):
        raise UsageError(f"--threshold {value!r} is outside (0, 1]",
                         hint="a cosine similarity: 1.0 groups identical vectors only") from None
    return t


def check_kind(kind: str | None) -> str:
    k = (kind or "all").lower()
    if k not in KINDS:
        raise UsageError(f"--kind {kind!r} is not one of {', '.join(KINDS)}",
                         hint="image: photos; video: whole videos; all: both, and photos that are "
                              "video frames")
    return k


def auto_threshold(nn: np.ndarray) -> tuple[float, str]:
    """A similarity cut from each item's nearest-neighbour similarity `nn`.

    In log-distance ln(1 - s) the nearest neighbours of distinct items form one bulk; the
    duplicates lie far below it. The bulk's centre and spread are read from its 60th and 90th
    percentiles (duplicates sit in the low tail, so they barely move those), taken as a normal
    distribution, and the cut is where the expected count of distinct items below it is one
    in n: mu - z·sigma with z = Phi^-1(1 - 1/n). Clamped to [AUTO_MIN, AUTO_MAX]."""
    fit = _cut(1.0 - np.asarray(nn, np.float64))
    if fit is None:
        return AUTO_FALLBACK, f"{len(nn)} items are too few to fit: the fixed {AUTO_FALLBACK}"
    d, mu, sigma, z = fit
    cut = 1.0 - d
    t = min(max(cut, AUTO_MIN), AUTO_MAX)
    clamp = "" if t == cut else f" (clamped from {cut:.4f})"
    return t, (f"auto: nearest-neighbour distances of {len(nn)} items, bulk ln(1-s) ~ "
               f"N({mu:.2f}, {sigma:.2f}); cut {z:.2f} sigma below it = similarity {t:.4f}{clamp}")


def choose_keeper(files: Sequence[DuplicateFile]) -> tuple[DuplicateFile, str]:
    """The file to keep and why: a video over its frames, then the largest resolution, then
    the earliest date, then the shortest path (a stable tie-break)."""
    videos = [f for f in files if f.kind == "video"]
    if videos and len(videos) < len(files):
        pool = videos
        why = "a video (the photos are frames of it)"
    else:
        pool = list(files)
        why = ""
    best_px = max(f.pixels for f in pool)
    pool_px = [f for f in pool if f.pixels == best_px]
    if len(pool_px) < len(pool):
        k = pool_px[0]
        why = why or f"largest resolution ({k.width}×{k.height})"
    pool = pool_px
    dated = [(f, f.taken_at) for f in pool if f.taken_at is not None]
    if dated and len(pool) > 1:
        first = min(t for _, t in dated)
        early = [f for f, t in dated if t == first]
        if len(early) < len(pool):
            why = why or f"same resolution; earliest date ({first.isoformat()})"
        pool = early
    keeper = min(pool, key=lambda f: (len(f.source), f.source))
    if not why:
        why = "same resolution and date; shortest path" if len(pool) > 1 else "largest resolution"
    return keeper, why


@dataclass
class _Nodes:
    """The files compared: one row each (an image row, or a video's whole-video row)."""

    table: pa.Table
    vectors: np.ndarray
    kinds: list[str]  # per node: image or video
    by_raw: dict[bytes, int]

    @classmethod
    def read(cls, store: Store, row_kinds: Sequence[str]) -> _Nodes:
        where = " OR ".join(f"kind = '{k}'" for k in row_kinds)
        t = store.scan([*_COLUMNS, "vector"], where=where)
        vectors = float32_vectors(t.column("vector")) if t.num_rows else np.zeros((0, store.dim), np.float32)
        t = t.drop_columns(["vector"])
        raws = t.column("source_raw").to_pylist()
        return cls(t, vectors, t.column("kind").to_pylist(), {r: i for i, r in enumerate(raws)})


def arrays_of(search: Search) -> ArraySearch:
    """The array form (`ArraySearch`) of a search that returns (id, score) lists."""
    def arrays(q: np.ndarray, k: int, kind: str, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        hits = search(q, k, kinds=(kind,), nprobe=nprobe)
        width = max((len(h) for h in hits), default=0)
        scores = np.full((len(q), width), -np.inf, np.float32)
        ids = np.full((len(q), width), None, object)
        for row, found in enumerate(hits):
            for col, (rid, s) in enumerate(found):
                ids[row, col], scores[row, col] = rid, s
        return scores, ids
    return arrays


def neighbour_pairs(search: ArraySearch, vectors: np.ndarray, ids: Sequence[str], row_kind: str,
                    k: int, nprobe: int = DUPLICATE_PROBES
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, s) of each item's k nearest neighbours of its own kind (per i best first), and
    each item's nearest similarity (NaN when it has none), by ANN queries in batches, handled
    as arrays (a million items make some 16 million hits)."""
    index = {rid: i for i, rid in enumerate(ids)}
    ii: list[np.ndarray] = []
    jj: list[np.ndarray] = []
    ss: list[np.ndarray] = []
    nn = np.full(len(ids), np.nan)
    for lo in range(0, len(ids), QUERY_BATCH):
        scores, hit = search(vectors[lo:lo + QUERY_BATCH], k + 1, row_kind, nprobe)
        if not hit.size:
            continue
        flat = hit.ravel()
        j = np.fromiter((index.get(r, -1) for r in flat), np.int64, count=flat.size).reshape(hit.shape)
        i = np.broadcast_to(np.arange(lo, lo + len(hit))[:, None], hit.shape)
        ok = (j >= 0) & (j != i)
        has = ok.any(axis=1)
        rows = np.flatnonzero(has)
        nn[lo + rows] = scores[rows, ok[rows].argmax(axis=1)]
        ii.append(i[ok])
        jj.append(j[ok])
        ss.append(scores[ok].astype(np.float64))
    if not ii:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), nn
    return np.concatenate(ii), np.concatenate(jj), np.concatenate(ss), nn


def group_pairs(n: int, i: np.ndarray, j: np.ndarray) -> list[list[int]]:
    """Connected components of n nodes joined by the pairs (i, j): groups of two or more."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n == 0 or not len(i):
        return []
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    order = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    return [g.tolist() for g in np.split(order, cuts) if len(g) > 1]


def _cut(distances: np.ndarray, tests: int | None = None) -> tuple[float, float, float, float] | None:
    """(cut, mu, sigma, z) of the auto rule over nearest-neighbour `distances` (see
    `auto_threshold`), or None when they are too few to fit. `tests`: how many comparisons the
    cut will judge (default one per distance): z = Phi^-1(1 - 1/tests), so that fewer than one
    distinct pair is expected to pass over all of them."""
    from statistics import NormalDist

    d = np.asarray(distances, np.float64)
    d = d[np.isfinite(d)]
    n = len(d)
    if n < AUTO_MIN_ITEMS:
        return None
    ld = np.log(np.clip(d, 1e-7, 2.0))
    x60, x90 = np.quantile(ld, [0.6, 0.9])
    gauss = NormalDist()
    z60, z90 = gauss.inv_cdf(0.6), gauss.inv_cdf(0.9)
    sigma = max((x90 - x60) / (z90 - z60), 1e-3)
    mu = x60 - z60 * sigma
    z = gauss.inv_cdf(1.0 - 1.0 / max(n, tests or 0))
    return math.exp(mu - z * sigma), mu, sigma, z


def find(store: Store, search: Search, *, kind: str = "all", threshold: float | None = None,
         k: int = NEIGHBOURS, pixel_check: bool = True,
         picture_of: Callable[[str | None, str | None], str | None] | None = None,
         search_arrays: ArraySearch | None = None) -> DuplicateReport:
    """Groups of duplicate files in the collection (see the module docstring).

    `pixel_check`: candidate pairs (the ANN neighbours at or above the vector bar: `threshold`,
    or with auto the floor AUTO_MIN) are confirmed on miniatures of both pictures
    (`clipsearch.pixel_check`), at a distance cut fitted like the auto threshold on each file's
    nearest neighbour; a pair without pictures on both sides falls back to the vector threshold.
    `picture_of(source, thumb)`: the file to read a node's picture from (default: the source).
    `search_arrays`: the array form of `search` for the per-item queries (default: built
    from `search`)."""
    from clipsearch.pixel_check import RELATIVE_MAX, Miniatures, contrast, distance, relative

    kind = check_kind(kind)
    row_kinds = {"image": ["image"], "video": ["video"], "all": ["image", "video"]}[kind]
    nodes = _Nodes.read(store, row_kinds)
    n = nodes.table.num_rows
    ids = nodes.table.column("id").to_pylist()
    hashes = nodes.table.column("content_hash").to_pylist()
    sources = nodes.table.column("source").to_pylist()
    thumbs = nodes.table.column("thumb").to_pylist()
    hash_arr = np.array([h or "" for h in hashes], dtype=object)
    arrays = search_arrays or arrays_of(search)
    pi, pj, ps, nn_parts = [], [], [], []
    first: list[tuple[int, int]] = []  # each node's nearest neighbour of other bytes
    for rk in row_kinds:
        sel = np.flatnonzero(np.asarray(nodes.kinds, dtype=object) == rk)
        if len(sel) < 2:
            continue
        i, j, s, _ = neighbour_pairs(arrays, nodes.vectors[sel], [ids[x] for x in sel], rk, k)
        i, j = sel[i], sel[j]
        pi.append(i)
        pj.append(j)
        ps.append(s)
        # an item whose nearest neighbour has its bytes says nothing about distinct pictures
        other = ~((hash_arr[i] == hash_arr[j]) & (hash_arr[i] != ""))
        _, at = np.unique(i[other], return_index=True)  # per item, its best pair of other bytes
        at = np.flatnonzero(other)[at]
        first.extend(zip(i[at].tolist(), j[at].tolist(), strict=True))
        nn_parts.append(s[at])
    nn_all = np.concatenate(nn_parts) if nn_parts else np.zeros(0)
    if threshold is None:
        t, how = auto_threshold(nn_all)
    else:
        t, how = float(threshold), f"given: similarity ≥ {threshold}"
    fthumb: list[str | None] = []
    if kind == "all":
        fi, fj, fs, fthumb = _frame_pairs(store, search, nodes)
        pi.append(fi)
        pj.append(fj)
        ps.append(fs)
    i = np.concatenate(pi) if pi else np.zeros(0, np.int64)
    j = np.concatenate(pj) if pj else np.zeros(0, np.int64)
    s = np.concatenate(ps) if ps else np.zeros(0)
    pixel_cut = None
    if pixel_check and len(i):
        look = picture_of or (lambda src, thumb: src)
        minis = Miniatures()

        def mini(x: int) -> np.ndarray | None:
            return minis.get(x, look(sources[x], None) if nodes.kinds[x] == "image"
                             else look(None, thumbs[x]))

        bar = t if threshold is not None else AUTO_MIN
        n_frames = len(fthumb)
        frame_start = len(i) - n_frames
        dist = np.full(len(i), np.nan)  # miniature distance of each candidate pair (NaN: no pictures)
        rel = np.full(len(i), np.nan)  # the same as a share of the pictures' contrast
        for x, (a, b, s_ab) in enumerate(zip(i.tolist(), j.tolist(), s.tolist(), strict=True)):
            if s_ab < bar - 1e-9:
                continue
            ma = mini(a)
            mb = (minis.get(("frame", x), look(None, fthumb[x - frame_start]))
                  if x >= frame_start else mini(b))
            if ma is not None and mb is not None:
                dist[x] = distance(ma, mb)
                rel[x] = relative(dist[x], contrast(ma), contrast(mb))
        compared = s >= bar - 1e-9
        tests = int(compared.sum())  # every candidate pair is one comparison the cut judges
        # fitted on each file's nearest neighbour (mostly a distinct picture), not on every pair
        # compared: fitted on every pair the cut is far looser (precision 0.08-0.19, RESULTS.md)
        fit = _cut(np.array([distance(ma, mb) for a, b in first
                             if (ma := mini(a)) is not None and (mb := mini(b)) is not None]), tests)
        if fit is not None:
            pixel_cut = fit[0]
            keep = compared & np.where(np.isnan(dist), s >= t - 1e-9,
                                       (dist <= pixel_cut) & (rel <= RELATIVE_MAX))
            how += (f"; candidates ≥ {bar:.4f} confirmed on 16×16 miniatures: distance ≤ "
                    f"{pixel_cut:.4f} (fitted on nearest neighbours: ln d ~ N({fit[1]:.2f}, {fit[2]:.2f}), "
                    f"{fit[3]:.2f} sigma for {tests} pairs compared), and at most "
                    f"{RELATIVE_MAX} of the pictures' contrast")
    if pixel_cut is None:
        keep = s >= t - 1e-9
    i, j, s = i[keep], j[keep], s[keep]
    # exact duplicates: the same content hash, whatever the vectors say
    by_hash: dict[str, list[int]] = {}
    for x, h in enumerate(hashes):
        if h:
            by_hash.setdefault(h, []).append(x)
    ei = [g[0] for g in by_hash.values() for _ in g[1:]]
    ej = [y for g in by_hash.values() for y in g[1:]]
    all_i = np.concatenate([i, np.asarray(ei, np.int64)])
    all_j = np.concatenate([j, np.asarray(ej, np.int64)])
    # no chaining: a component splits into groups whose files are each alike (duplicate_split)
    if pixel_cut is not None:
        cut = pixel_cut
        link = np.where(np.isnan(dist[keep]), cut, dist[keep])
    else:
        cut = 1.0 - t
        link = 1.0 - s
    edge: dict[tuple[int, int], float] = {}
    for a, b, d in zip(i.tolist(), j.tolist(), link.tolist(), strict=True):
        key = (min(a, b), max(a, b))
        edge[key] = min(d, edge.get(key, math.inf))

    def alike(a: int, b: int) -> float:
        if hashes[a] and hashes[a] == hashes[b]:
            return 0.0
        d = edge.get((min(a, b), max(a, b)))
        if d is not None:
            return d
        if pixel_cut is not None and (ma := mini(a)) is not None and (mb := mini(b)) is not None:
            d_ab = distance(ma, mb)  # both checks, as for a pair: a low-contrast look-alike is not alike
            return d_ab if relative(d_ab, contrast(ma), contrast(mb)) <= RELATIVE_MAX else math.inf
        if pixel_cut is not None:  # no pictures to compare: the vectors decide, as for a pair
            return cut if float(nodes.vectors[a] @ nodes.vectors[b]) >= t - 1e-9 else math.inf
        return 1.0 - float(nodes.vectors[a] @ nodes.vectors[b])

    members_of = [g for comp in group_pairs(n, all_i, all_j) for g in split_component(comp, alike, cut)]
    label = np.full(n, -1)
    for x, g in enumerate(members_of):
        label[g] = x
    inside = (label[i] >= 0) & (label[i] == label[j])  # a file's best link inside its group
    best = np.zeros(n)
    np.maximum.at(best, i[inside], s[inside])
    np.maximum.at(best, j[inside], s[inside])
    groups = [_group(nodes, members, best, hashes) for members in members_of]
    groups.sort(key=lambda g: (-len(g.files), g.keeper.source))
    quant = ({f"p{q}": round(float(v), 6) for q, v in zip((50, 90, 99), np.quantile(nn_all, [.5, .9, .99]),
                                                       strict=True)} if len(nn_all) else {})
    return DuplicateReport(groups, t, threshold is None, how, kind, n, quant, pixel_cut)


def _frame_pairs(store: Store, search: Search,
                 nodes: _Nodes) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str | None]]:
    """(photo, video, s, frame thumbnail): each photo's nearest video frame, as a pair with
    the frame's video."""
    photos = np.flatnonzero(np.asarray(nodes.kinds, dtype=object) == "image")
    frames = store.scan(["id", "source_raw", "thumb"], where="kind = 'video_frame'")
    if not len(photos) or not frames.num_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), []
    fids = frames.column("id").to_pylist()
    video_of = dict(zip(fids, frames.column("source_raw").to_pylist(), strict=True))
    thumb_of = dict(zip(fids, frames.column("thumb").to_pylist(), strict=True))
    out_i: list[int] = []
    out_j: list[int] = []
    out_s: list[float] = []
    out_t: list[str | None] = []
    for lo in range(0, len(photos), QUERY_BATCH):
        batch = photos[lo:lo + QUERY_BATCH]
        found_all = search(nodes.vectors[batch], FRAME_NEIGHBOURS, kinds=("video_frame",),
                           nprobe=DUPLICATE_PROBES)
        for p, found in zip(batch, found_all, strict=True):
            for rid, s in found[:1]:  # the best frame names the video
                v = nodes.by_raw.get(video_of.get(rid, b""))
                if v is not None:
                    out_i.append(int(p))
                    out_j.append(v)
                    out_s.append(s)
                    out_t.append(thumb_of.get(rid))
    return (np.asarray(out_i, np.int64), np.asarray(out_j, np.int64), np.asarray(out_s, np.float64),
            out_t)


def _group(nodes: _Nodes, members: list[int], best: np.ndarray, hashes: list[str | None]) -> DuplicateGroup:
    t = nodes.table
    counts: dict[str, int] = {}
    for m in members:
        h = hashes[m]
        if h:
            counts[h] = counts.get(h, 0) + 1
    files = []
    for m in members:
        exact = bool(hashes[m]) and counts.get(hashes[m] or "", 0) > 1
        w, h = t.column("width")[m].as_py(), t.column("height")[m].as_py()
        files.append(DuplicateFile(
            source=t.column("source")[m].as_py(), kind=nodes.kinds[m], id=t.column("id")[m].as_py(),
            width=w, height=h, taken_at=t.column("taken_at")[m].as_py(), content_hash=hashes[m],
            thumb=t.column("thumb")[m].as_py(), similarity=1.0 if exact else float(best[m]), exact=exact))
    keeper, why = choose_keeper(files)
    files.sort(key=lambda f: (f.source != keeper.source, -f.similarity, f.source))
    return DuplicateGroup(files, keeper, why, all(f.exact for f in files))
