"""Document search: one ranked hit per (source, page), from three kinds of evidence.

A text query is matched three ways, each giving a ranking of rows:
1. against `doc_page` vectors (the rendered page: figures, layout, big titles);
2. against `doc_text` vectors (CLIP text-to-text over token-limited chunks);
3. by keyword (BM25 full-text search over `doc_text.text`), for names, numbers and
   exact phrases that CLIP's text tower blurs.
Rows are grouped into pages (a page ranks where its best row ranks) and the page rankings
are fused with reciprocal rank fusion (`clipsearch.fusion`), in two tiers: pages that a
ranking singles out (its scores stand clear of the rest) come before pages that only float
up by consensus, so a ranking that knows nothing about the query (CLIP text vectors asked
for a rare name, page images asked for a phrase) cannot outvote one that does. Each hit
carries the best matching chunk of its page as a snippet and the page thumbnail.
Plain-text files have no pages: their hits have `page=None` and stand for the whole file.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.failures import detail
from clipsearch.fsutil import folder_prefix
from clipsearch.fusion import RRF_K, best_member, confident_head, gated_rrf, group_ranking, rrf
from clipsearch.store import sql_in, sql_str

if TYPE_CHECKING:
    from lancedb.table import Table

    from clipsearch.backends import AnyEncoder

log = logging.getLogger(__name__)

AnnSearch = Callable[[np.ndarray, int, str], Sequence[tuple[str, float]]]
PageKey = tuple[str, int | None]

_COLUMNS = ["id", "source", "page", "kind", "text", "thumb", "extra", "t_start", "t_end"]
SNIPPET_CHARS = 240
LEGS = ("page", "chunk", "keyword")
HEAD = 5  # at most this many pages per ranking can be singled out
# Page image, chunk vectors, keywords. The chunk ranking counts half: CLIP's text tower is a weak
# sentence encoder (it mostly re-finds what BM25 finds, and is noise for visual queries).
DEFAULT_WEIGHTS = (1.0, 0.5, 1.0)
# Chunk-ranking weight factor when BM25 matches nothing (see search_documents): 0.2 still
# gave figure R@1 0.475, 0 gives 0.825 (benchmarks/doc_pages.py, seed 0).
NO_KEYWORD_CHUNK_SCALE = 0.0


@dataclass
class DocHit:
    """One document page (or whole text file when `page` is None).

    `score` is the fused rank score (`fusion.gated_rrf`): above 1 when some ranking singled
    the page out, a plain RRF score below 1 otherwise; comparable only within one query.
    `cosine` is the best cosine similarity among the page's vector matches, for display.
    `signals` names the rankings that singled the page out: "page" (its image), "chunk" (CLIP
    text vectors) and/or "keyword" (BM25); empty when it ranks by consensus only.
    """

    source: str
    page: int | None
    text: str | None
    score: float
    thumb: str | None
    cosine: float | None = None
    signals: tuple[str, ...] = field(default_factory=tuple)


FTS_MAX_SEGMENTS = 8  # index segments (one per update) before an update merges them


def ensure_fts_index(table: Table, *, rebuild: bool = False) -> bool:
    """Full-text indexes brought up to date; the maintainer calls this after each index run.

    LanceDB's native inverted index (stemmed, lower-cased, stop words removed) over `text`
    (document chunks; with positions so "quoted phrases" work) and over `source` (paths:
    folder and file-name words, for `--hybrid` image and video search). A missing index is
    created; an existing one gets the rows added since as a segment of its own (Lance's index
    optimisation: the cost follows the new rows, not the table; deleted rows are never
    matched), and every `FTS_MAX_SEGMENTS` updates its segments are merged. `rebuild` builds
    them anew (a damaged index, `clipsearch optimize`). Rows not yet folded in are still
    searched, unindexed. Returns False for an empty table.
    """
    from lancedb.index import FTS

    if table.count_rows() == 0:
        return False
    have = {ix.columns[0]: ix for ix in table.list_indices()
            if str(ix.index_type).upper() == "FTS" and len(ix.columns) == 1}
    wanted = {"source": FTS()}
    if "text" in have or table.count_rows("text IS NOT NULL") > 0:
        wanted["text"] = FTS(with_position=True)
    for column, config in wanted.items():
        if rebuild or column not in have:
            table.create_index(column, config=config, replace=True)
            continue
        ix = have[column]
        stats = table.index_stats(ix.name)
        if stats is not None and stats.num_unindexed_rows == 0:
            continue
        segments = int(getattr(ix, "num_segments", None) or 1)
        # 0: the new rows become a segment of their own; past a few, the segments are merged
        merge = segments if segments >= FTS_MAX_SEGMENTS else 0
        table.to_lance().optimize.optimize_indices(index_names=[ix.name], num_indices_to_merge=merge)
    return True


FTS_PROBE = "clipsearchfulltextprobe"  # a word no collection holds: the query reads the index only


def fts_problem(table: Table) -> str | None:
    """Why a full-text index `ensure_fts_index` makes is missing or unreadable (one line), or None.

    A deleted index folder still appears in the table's index list, so each index is also asked
    one query."""
    if table.count_rows() == 0:
        return None
    have = {tuple(ix.columns) for ix in table.list_indices() if str(ix.index_type).upper() == "FTS"}
    wanted = ["source"]
    if ("text",) in have or table.count_rows("text IS NOT NULL") > 0:  # counting scans: only if needed
        wanted.append("text")
    for column in wanted:
        if (column,) not in have:
            return f"the full-text index on {column!r} is missing"
        try:
            table.search(FTS_PROBE, query_type="fts", fts_columns=column).limit(1).to_list()
        except Exception as e:  # lancedb raises RuntimeError/OSError/lance errors alike
            return f"the full-text index on {column!r} is unreadable ({detail(e)})"
    return None


_warned_keyword: set[tuple[str, str]] = set()


def _warn_keyword(table: Table, column: str, error: Exception) -> None:
    """One warning per table, column and process: keyword matches are being left out."""
    key = (str(getattr(table, "uri", id(table))), column)
    if key not in _warned_keyword:
        _warned_keyword.add(key)
        log.warning("keyword matches on %s are left out: the full-text index is unusable (%s); the next "
                    "`clipsearch index` rebuilds it", column, detail(error))


def search_documents(
    table: Table,
    encoder: AnyEncoder,
    query: str,
    k: int,
    *,
    under: str | None = None,
    where: str | None = None,
    ann_search: AnnSearch | None = None,
    depth: int | None = None,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    rrf_k: float = RRF_K,
) -> list[DocHit]:
    """The `k` best document pages for a text query.

    `under` keeps only sources at or below that path; `where` only rows matching that SQL
    predicate (the metadata filters, `Filters.sql`), a prefilter of every ranking.
    `ann_search(vector, n, kind)` is the core's ANN index returning best-first (row id,
    cosine), restricted to the same rows; without it LanceDB searches exactly with a `kind`
    filter. `depth` is how many rows each ranking considers
    (default max(200, 20 k)); `weights` weigh the page, chunk and keyword rankings in RRF.
    """
    if k <= 0 or not query.strip():
        return []
    depth = depth or max(200, 20 * k)
    where_rows = _and(under_clause(under), where) or None
    qvec = encoder.encode_texts([query])[0].astype(np.float32)

    page_rows = vector_leg(table, qvec, "doc_page", depth, where_rows, ann_search)
    chunk_rows = vector_leg(table, qvec, "doc_text", depth, where_rows, ann_search)
    keyword_rows = keyword_search(table, query, depth, where=_and("kind = 'doc_text'", where_rows))
    legs = [page_rows, chunk_rows, keyword_rows]
    if not keyword_rows and len(weights) == 3:
        # No word of the query occurs in any text: a visual query ("a green triangle") or
        # one about something the documents do not say. CLIP's text-vs-text ranking is then
        # close to noise and, fused at full weight, buried the page-image ranking's answer
        # (figure R@1 0.10 vs 0.82 for the page ranking alone; benchmarks/RESULTS.md).
        weights = (weights[0], weights[1] * NO_KEYWORD_CHUNK_SCALE, weights[2])

    pages = [group_ranking(rows, _page_key) for rows in legs]
    heads = [
        _confident_pages(rows, depth, keyword=(name == "keyword")) if w > 0 else 0
        for name, rows, w in zip(LEGS, legs, weights, strict=True)
    ]
    fused = gated_rrf(pages, heads, k=rrf_k, weights=list(weights))[:k]
    if not fused:
        return []

    # The snippet is the page's best chunk by chunk-level fusion of the two text rankings.
    chunk_order = rrf([[r["id"] for r in chunk_rows], [r["id"] for r in keyword_rows]], k=rrf_k)
    by_id = {r["id"]: r for r in chunk_rows + keyword_rows}
    best_chunk = best_member((by_id[i] for i, _ in chunk_order), _page_key)
    best_page = best_member(page_rows, _page_key)
    cosines = _best_cosines(page_rows + chunk_rows)
    singled = [set(p[:h]) for p, h in zip(pages, heads, strict=True)]
    missing = [key for key, _ in fused if key not in best_chunk or key not in best_page]
    details = page_details(table, missing)

    hits = []
    for key, score in fused:
        chunk = best_chunk.get(key) or details.get(key, {}).get("chunk")
        page = best_page.get(key) or details.get(key, {}).get("page")
        hits.append(
            DocHit(
                source=key[0],
                page=key[1],
                text=snippet(chunk["text"], query) if chunk and chunk.get("text") else None,
                score=float(score),
                thumb=page.get("thumb") if page else None,
                cosine=cosines.get(key),
                signals=tuple(name for name, keys in zip(LEGS, singled, strict=True) if key in keys),
            )
        )
    return hits


def keyword_search(
    table: Table, query: str, n: int, *, where: str | None = None, column: str = "text",
    all_terms: bool = False,
) -> list[dict[str, Any]]:
    """Best-first BM25 matches of `query` in one column, as row dicts with `score`.

    `column` is "text" (document chunks) or "source" (paths; what `--hybrid` uses for images
    and videos, with `where="kind = 'image'"` and `fusion.hybrid_rerank`). `all_terms` keeps
    only rows holding every word of the query (stop words aside), as plain words.

    Quoted parts are phrase queries. If the query does not parse or there is no full-text
    index yet, it is retried as plain words, then gives up with an empty list (logged).
    """
    from lancedb.query import FullTextOperator, MatchQuery

    plain = " ".join(re.findall(r"\w+", query))
    error = None
    for q in dict.fromkeys([plain] if all_terms else [query, plain]):
        if not q.strip():
            continue
        try:
            fts = MatchQuery(q, column, operator=FullTextOperator.AND) if all_terms else q  # type: ignore[call-arg]
            builder = table.search(fts, query_type="fts", fts_columns=None if all_terms else column)
            if where:
                builder = builder.where(where, prefilter=True)
            rows = builder.select([*_COLUMNS, "_score"]).limit(n).to_list()
        except Exception as e:  # lancedb raises ValueError/RuntimeError/lance errors alike
            log.info("keyword search for %r failed: %s", q, e)
            error = e
            continue
        for r in rows:
            r["score"] = float(r.pop("_score", 0.0))
        return rows
    if error is not None and fts_problem(table) is not None:
        _warn_keyword(table, column, error)
    return []


@dataclass
class TextEvidence:
    """What the documents' words say about a query, as rankings of pages (`fusion.gated_rrf`
    inputs): chunk vectors and keywords, how many leading pages each singles out, their
    weights, and each ranked page's best chunk (for a snippet)."""

    rankings: list[list[PageKey]]
    heads: list[int]
    weights: list[float]
    chunks: dict[PageKey, dict[str, Any]]

    @property
    def decisive(self) -> bool:
        """Whether any ranking singles a page out (otherwise it has nothing to add)."""
        return any(self.heads)


def page_text_evidence(
    table: Table,
    qvec: np.ndarray,
    query: str,
    depth: int,
    *,
    under: str | None = None,
    where: str | None = None,
    ann_search: AnnSearch | None = None,
    weights: Sequence[float] = DEFAULT_WEIGHTS[1:],
) -> TextEvidence:
    """Document-text evidence for a query over all kinds (images, videos and pages).

    The chunk and keyword legs of `search_documents`, gated the same way, except that a
    keyword match must hold every word of the query: across all kinds a page naming one word
    of a visual query ("a dog on a beach") must not outrank the photos. When no page holds
    all the words nothing is decisive, and the chunk ranking (noise then) is not even run.
    `under`, `where` and `ann_search` restrict the rows as in `search_documents`.
    """
    return text_evidence(table, qvec, query, depth, kind="doc_text", key=_page_key, under=under,
                         where=where, ann_search=ann_search, weights=weights)


def text_evidence(
    table: Table,
    qvec: np.ndarray,
    query: str,
    depth: int,
    *,
    kind: str,
    key: Callable[[dict[str, Any]], Any],
    under: str | None = None,
    where: str | None = None,
    ann_search: AnnSearch | None = None,
    weights: Sequence[float] = DEFAULT_WEIGHTS[1:],
    glued: bool = False,
) -> TextEvidence:
    """`page_text_evidence` for the text rows of any `kind` (`doc_text`, `ocr`, ...), grouped
    into the items they belong to by `key(row)` (a page, the image an OCR row was read in).
    `glued`: when no row holds every word as a word, rows holding every word inside their text
    count as keyword matches (OCR drops the spaces between words: "meadowglacier")."""
    where_rows = _and(under_clause(under), where) or None
    keyword_rows = keyword_search(table, query, depth, where=_and(f"kind = {sql_str(kind)}", where_rows),
                                  all_terms=True)
    if not keyword_rows and glued:
        keyword_rows = substring_search(table, query, depth,
                                        where=_and(f"kind = {sql_str(kind)}", where_rows))
    if not keyword_rows:
        return TextEvidence([], [], [], {})
    chunk_rows = vector_leg(table, qvec, kind, depth, where_rows, ann_search)
    legs = [chunk_rows, keyword_rows]
    rankings = [group_ranking(rows, key) for rows in legs]
    heads = [_confident_pages(rows, depth, keyword=i == 1, key=key) if w > 0 else 0
             for i, (rows, w) in enumerate(zip(legs, weights, strict=True))]
    by_id = {r["id"]: r for r in chunk_rows + keyword_rows}
    order = rrf([[r["id"] for r in chunk_rows], [r["id"] for r in keyword_rows]])
    chunks = best_member((by_id[i] for i, _ in order), key)
    return TextEvidence(rankings, heads, list(weights), chunks)


# Words too common to say anything when found inside another word.
_GLUE_STOP = frozenset("the and for with from that this into onto over under near of on in at to by"
                       " an a or is".split())


def substring_search(table: Table, query: str, n: int, *,
                     where: str | None = None) -> list[dict[str, Any]]:
    """Rows whose text holds every word of `query` (three letters or more, common words aside)
    anywhere, glued to others or not, as `keyword_search` rows (score: the words' letters)."""
    words = [w for w in dict.fromkeys(re.findall(r"\w+", query.lower()))
             if len(w) >= 3 and w not in _GLUE_STOP]
    if not words:
        return []
    like = " AND ".join(f"lower(text) LIKE {sql_str('%' + w + '%')}" for w in words)
    try:
        rows = _scan(table, _and(where, "text IS NOT NULL", like))[:n]
    except Exception as e:  # a filter Lance cannot run: no glued matches, the rest of the query stands
        log.info("substring search for %r failed: %s", query, e)
        return []
    for r in rows:
        r["score"] = float(sum(len(w) for w in words))
    return rows


def snippet(text: str, query: str, width: int = SNIPPET_CHARS) -> str:
    """`text` with whitespace collapsed, cut to about `width` chars around the first query word."""
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    words = [w for w in re.findall(r"\w+", query.lower()) if len(w) >= 3]
    low = flat.lower()
    hits = [p for p in (low.find(w) for w in words) if p >= 0]
    start = max(0, min(hits) - width // 4) if hits else 0
    start = min(start, len(flat) - width)
    if start > 0:  # begin at a word boundary
        space = flat.find(" ", start)
        start = space + 1 if 0 <= space < start + 20 else start
    out = flat[start : start + width]
    return ("…" if start > 0 else "") + out + ("…" if start + width < len(flat) else "")


# --- internals ---------------------------------------------------------------------------


def _page_key(row: dict[str, Any]) -> PageKey:
    page = row.get("page")
    return row["source"], None if page is None else int(page)


def vector_leg(
    table: Table, qvec: np.ndarray, kind: str, n: int, where_rows: str | None, ann_search: AnnSearch | None
) -> list[dict[str, Any]]:
    """Best-first rows of one kind by cosine to the query, each with a `score`."""
    if ann_search is not None:
        hits = list(ann_search(qvec, n * (4 if where_rows else 1), kind))
        if not hits:
            return []
        # the kind again: the table is the truth, whatever the index says
        ids = sql_in("id", (str(i) for i, _ in hits))
        rows = {r["id"]: r for r in _scan(table, _and(f"kind = {sql_str(kind)}", ids, where_rows))}
        out = []
        for i, s in hits:
            if str(i) in rows:
                out.append({**rows[str(i)], "score": float(s)})
        return out[:n]
    builder = (
        table.search(qvec, vector_column_name="vector")
        .distance_type("dot")  # type: ignore[attr-defined]  # a vector query; lancedb annotates the base class
        .where(_and(f"kind = {sql_str(kind)}", where_rows), prefilter=True)
        .select(_COLUMNS)
        .limit(n)
    )
    rows = builder.to_list()
    for r in rows:
        r["score"] = 1.0 - float(r.pop("_distance"))  # LanceDB's dot distance is 1 - <q, v>
    return rows


def _confident_pages(rows: list[dict[str, Any]], depth: int, *, keyword: bool,
                     key: Callable[[dict[str, Any]], Any] = _page_key) -> int:
    """How many leading pages of a row ranking stand out (`fusion.confident_head` on each
    page's best score). BM25 returns only matching rows; when it returned them all, a handful
    of matching pages is itself the evidence, and the rest of the table scores 0."""
    scores = [r["score"] for r in best_member(rows, key).values()]
    if keyword and len(rows) < depth:
        if 0 < len(scores) <= HEAD:
            return len(scores)
        scores += [0.0] * (depth - len(scores))
    return confident_head(scores, max_head=HEAD)


def page_details(table: Table, keys: list[PageKey]) -> dict[PageKey, dict[str, dict[str, Any]]]:
    """The `doc_page` row (thumbnail) and first `doc_text` chunk of each page, in one query:
    {key: {"page": row, "chunk": row}} (either may be missing)."""
    if not keys:
        return {}
    conds = []
    for source, page in keys:
        page_cond = "page IS NULL" if page is None else f"page = {int(page)}"
        conds.append(f"(source = {sql_str(source)} AND {page_cond})")
    out: dict[PageKey, dict[str, dict[str, Any]]] = {}
    rows = _scan(table, f"{sql_in('kind', ('doc_page', 'doc_text'))} AND ({' OR '.join(conds)})")
    for r in sorted(rows, key=lambda r: json.loads(r.get("extra") or "{}").get("chunk", 0)):
        slot = out.setdefault(_page_key(r), {})
        slot.setdefault("page" if r["kind"] == "doc_page" else "chunk", r)
    return out


def _best_cosines(rows: list[dict[str, Any]]) -> dict[PageKey, float]:
    out: dict[PageKey, float] = {}
    for r in rows:
        key = _page_key(r)
        out[key] = max(out.get(key, -1.0), r["score"])
    return out


def _scan(table: Table, where: str) -> list[dict[str, Any]]:
    from clipsearch.store import read_table

    return read_table(table.to_lance(), _COLUMNS, where).to_pylist()  # around a damaged scalar index


def under_clause(under: str | None) -> str | None:
    """Sources equal to `under` or inside it (a path-component prefix, not a string prefix)."""
    if not under:
        return None
    base = os.path.abspath(os.path.expanduser(under)).rstrip(os.sep) or os.sep
    return f"(source = {sql_str(base)} OR starts_with(source, {sql_str(folder_prefix(base))}))"


def _and(*conds: str | None) -> str:
    return " AND ".join(f"({c})" for c in conds if c)
