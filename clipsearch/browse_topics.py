"""Browsing without a query by topic: clusters of the collection's image-like vectors, each
labelled with the words (`clipsearch.browse_vocabulary`) its centre is closest to.

k-means (faiss, spherical) runs on a bounded sample; every row is then assigned to its nearest
centre. A topic's items are one per file (a video's frames, a document's page count once), the
closest to its centre first. Labels are the words whose text vectors match this centre more
than they match the others (the modality gap makes every image a bit like every word, so the
raw cosine would give every topic the same generic word).

Derived state, persisted in ``<collection>/topics.<kinds>.npz`` keyed by the model, the
table's version and row count and the constants here; written atomically; a damaged file is
logged and computed again. The built-in vocabulary's text vectors are kept per model in
``<collection>/topics.vocabulary.npz``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch import derived_npz
from clipsearch.browse_vocabulary import VOCABULARY, collection_words, vocabulary_hash, words_of

if TYPE_CHECKING:
    from clipsearch.store import Store

log = logging.getLogger(__name__)

FORMAT = 1
PREFIX = "topics."
MAX_SAMPLE = 50_000  # k-means trains on at most this many vectors
MIN_TOPICS, MAX_TOPICS = 2, 48
ITERATIONS = 20
# k-means runs from this many starts (the tightest is kept): many on a small collection, where
# a bad start is likely and runs are cheap, two on a large one (rows x topics bounds the work)
MIN_RESTARTS, MAX_RESTARTS, RESTART_WORK = 2, 20, 1_200_000
POINTS_PER_TOPIC = 256  # k-means trains on at most this many vectors per topic (faiss' default)
LABEL_WORDS = 3  # words per label
EXAMPLES = 4  # example item ids per topic
SEED = 0
CONSTANTS = {"max_sample": MAX_SAMPLE, "min_topics": MIN_TOPICS, "max_topics": MAX_TOPICS,
             "iterations": ITERATIONS, "restarts": [MIN_RESTARTS, MAX_RESTARTS, RESTART_WORK],
             "points_per_topic": POINTS_PER_TOPIC, "label_words": LABEL_WORDS, "examples": EXAMPLES,
             "seed": SEED}
TEXT_KINDS = ("ocr", "doc_text", "doc_page")  # rows whose `text` is the collection's own words

Encode = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class Topic:
    """One cluster: its id (0 is the largest), label (its words joined), how many items (one
    per file or page) and a few example item ids, the most central first."""

    id: int
    label: str
    words: tuple[str, ...]
    size: int
    examples: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["words"], d["examples"] = list(self.words), list(self.examples)
        return d


@dataclass(frozen=True)
class Topics:
    """Every topic, largest first, and each one's items (row ids, most central first)."""

    topics: list[Topic]
    members: np.ndarray  # row ids as bytes, topic after topic
    scores: np.ndarray  # each member's cosine to its topic's centre
    offsets: np.ndarray  # topic t's members are members[offsets[t]:offsets[t + 1]]

    def items(self, topic: int, k: int, offset: int) -> list[tuple[str, float]]:
        """(row id, cosine to the centre) of `k` items of `topic` from `offset` on."""
        lo, hi = int(self.offsets[topic]), int(self.offsets[topic + 1])
        start, stop = min(lo + offset, hi), min(lo + offset + k, hi)
        return [(self.members[i].decode(), float(self.scores[i])) for i in range(start, stop)]


def topic_count(n: int) -> int:
    """How many topics n items make: about sqrt(n) / 2, from 2 to 48 (never more than n)."""
    return int(min(n, max(MIN_TOPICS, min(MAX_TOPICS, round(np.sqrt(n) / 2)))))


def cluster(vectors: np.ndarray, k: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(unit centres, each row's centre) of a spherical k-means trained on a bounded sample
    (at most POINTS_PER_TOPIC rows per topic, MAX_SAMPLE in all)."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    rng = np.random.default_rng(seed)
    bound = min(MAX_SAMPLE, POINTS_PER_TOPIC * k)
    sample = x if len(x) <= bound else x[np.sort(rng.choice(len(x), bound, replace=False))]
    restarts = int(np.clip(RESTART_WORK // (len(sample) * k), MIN_RESTARTS, MAX_RESTARTS))
    km = faiss.Kmeans(x.shape[1], k, niter=ITERATIONS, nredo=restarts, seed=seed, spherical=True,
                      verbose=False, min_points_per_centroid=1, max_points_per_centroid=POINTS_PER_TOPIC)
    with one_thread(faiss):
        km.train(sample)
        centres = np.asarray(km.centroids, dtype=np.float32)
        centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(centres)
        _, nearest = index.search(x, 1)
    return centres, nearest[:, 0].astype(np.int64)


@contextmanager
def one_thread(faiss: Any) -> Iterator[None]:
    """faiss on one OpenMP thread for a while: a k-means this small is many short parallel
    loops, and on a busy machine their threads wait for each other far longer than they work."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def label_words(centres: np.ndarray, words: Sequence[str], word_vectors: np.ndarray,
                n: int = LABEL_WORDS, allowed: np.ndarray | None = None) -> list[tuple[str, ...]]:
    """Per centre, the `n` words that match it most more than they match the other centres;
    `allowed` (centres × words, bool) leaves out words a topic has no claim to."""
    if not len(words) or not len(centres):
        return [() for _ in centres]
    sim = centres @ np.asarray(word_vectors, dtype=np.float32).T  # (centres, words)
    if len(centres) > 1:  # what a word says about this topic rather than about all of them
        sim = sim - (sim.sum(axis=0, keepdims=True) - sim) / (len(centres) - 1)
    if allowed is not None:
        sim = np.where(allowed, sim, -np.inf)
    out = []
    for row in sim:
        best = [i for i in np.argsort(-row, kind="stable")[:n] if np.isfinite(row[i])]
        out.append(tuple(words[i] for i in best))
    return out


def claimed(topic_sources: Sequence[Sequence[str]], own: Sequence[str],
            words_by_source: dict[str, frozenset[str]]) -> np.ndarray:
    """(topics × own words, bool): whether a word of the collection's text belongs to a topic:
    in at least a tenth of its files and twice as common there as in the whole collection.
    A word of the text tower alone is no evidence: OCR misreadings embed somewhere too."""
    out = np.zeros((len(topic_sources), len(own)), bool)
    if not own:
        return out
    index = {w: j for j, w in enumerate(own)}
    counts = np.zeros((len(topic_sources), len(own)))
    sizes = np.zeros(len(topic_sources))
    for t, sources in enumerate(topic_sources):
        files = set(sources)
        sizes[t] = len(files)
        for src in files:
            for w in words_by_source.get(src, ()):
                j = index.get(w)
                if j is not None:
                    counts[t, j] += 1
    overall = counts.sum(axis=0) / max(1.0, sizes.sum())
    share = counts / np.maximum(sizes, 1)[:, None]
    return (share >= 0.1) & (share >= 2 * overall) & (counts >= 2)


def group_codes(kinds: Any, ids: Any, sources: Any, pages: Any) -> np.ndarray:
    """Per row (pyarrow columns), an integer naming the item it stands for, as search groups
    results: a video (its frames), a document page, else the row itself."""
    import pyarrow as pa
    import pyarrow.compute as pc

    page = pc.fill_null(pc.cast(pages, pa.string()), "")
    doc_page = pc.binary_join_element_wise(sources, page, "\x00")
    key = pc.if_else(pc.equal(kinds, "video_frame"), sources,
                     pc.if_else(pc.equal(kinds, "doc_page"), doc_page, ids))
    if isinstance(key, pa.ChunkedArray):  # one dictionary for all of it
        key = key.combine_chunks()
    return np.asarray(pc.dictionary_encode(key).indices.to_numpy(zero_copy_only=False), dtype=np.int64)


def first_of_each(rows: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The rows (in their order) that come first in their group."""
    _, first = np.unique(groups[rows], return_index=True)
    return rows[np.sort(first)]


def build(ids: np.ndarray, groups: np.ndarray, sources: Sequence[str], vectors: np.ndarray,
          word_vectors: np.ndarray, own: Sequence[str] = (), own_vectors: np.ndarray | None = None,
          words_by_source: dict[str, frozenset[str]] | None = None) -> Topics:
    """Cluster, assign, order topics by size, keep one item per group (file or page) per topic,
    and label each from the vocabulary (`word_vectors`) and the collection's own words (`own`,
    each a candidate only for the topics whose files hold it, `words_by_source`)."""
    if len(ids) == 0:
        return Topics([], np.zeros(0, "S1"), np.zeros(0, np.float32), np.zeros(1, np.int64))
    k = topic_count(len(ids))
    centres, assigned = cluster(vectors, k)
    x = np.asarray(vectors, dtype=np.float32)
    norms = np.maximum(np.linalg.norm(x, axis=1), 1e-12)
    score = np.einsum("ij,ij->i", x, centres[assigned]) / norms
    ids = np.asarray(ids)
    per_topic: list[np.ndarray] = []
    by_topic = np.argsort(assigned, kind="stable")
    bounds = np.searchsorted(assigned[by_topic], np.arange(k + 1))
    for t in range(k):
        in_topic = by_topic[bounds[t]:bounds[t + 1]]
        in_topic = in_topic[np.argsort(-score[in_topic], kind="stable")]
        per_topic.append(first_of_each(in_topic, groups))
    order = [t for t in sorted(range(k), key=lambda t: -len(per_topic[t])) if len(per_topic[t])]
    words = list(VOCABULARY) + list(own)
    vectors_of_words = word_vectors if not own else np.concatenate([word_vectors, own_vectors])
    topic_sources = [[sources[r] for r in per_topic[t].tolist()] for t in order] if own else []
    allowed = np.concatenate([np.ones((len(order), len(VOCABULARY)), bool), claimed(
        topic_sources, own, words_by_source or {}).reshape(len(order), len(own))], axis=1)
    labels = label_words(centres[order], words, vectors_of_words, allowed=allowed)
    topics: list[Topic] = []
    offsets = [0]
    for new_id, (t, chosen) in enumerate(zip(order, labels, strict=True)):
        rows = per_topic[t]
        topics.append(Topic(new_id, ", ".join(chosen), chosen, len(rows),
                            tuple(_text(ids[r]) for r in rows[:EXAMPLES])))
        offsets.append(offsets[-1] + len(rows))
    picked = np.concatenate([per_topic[t] for t in order]) if order else np.zeros(0, np.int64)
    return Topics(topics, ids[picked].astype("S"), score[picked].astype(np.float32),
                  np.asarray(offsets, dtype=np.int64))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class TopicFiles:
    """The persisted topics (and vocabulary vectors) of one collection (`folder`), one model."""

    def __init__(self, folder: Path, model_id: str, dim: int) -> None:
        self.folder = Path(folder)
        self.model_id = model_id
        self.dim = dim

    def path(self, kinds: tuple[str, ...]) -> Path:
        return self.folder / f"{PREFIX}{'+'.join(kinds)}.npz"

    @property
    def vocabulary_path(self) -> Path:
        return self.folder / f"{PREFIX}vocabulary.npz"

    def _key(self, kinds: tuple[str, ...], version: int, table_rows: int) -> dict[str, Any]:
        return {"format": FORMAT, "model_id": self.model_id, "dim": self.dim, "kinds": list(kinds),
                "version": int(version), "table_rows": int(table_rows), "constants": CONSTANTS,
                "vocabulary": vocabulary_hash(VOCABULARY)}

    def load(self, kinds: tuple[str, ...], version: int, table_rows: int) -> Topics | None:
        """The persisted topics if they are this table version's, else None (a stale file
        silently, a damaged one with a warning)."""
        path = self.path(kinds)
        try:
            got = derived_npz.read(path, ("members", "scores", "offsets"))
            if got is None:
                return None
            meta, arrays = got
            if not derived_npz.is_current(meta, self._key(kinds, version, table_rows)):
                return None  # stale: another version, model or set of constants
            members, scores = arrays["members"], arrays["scores"]
            topics = [Topic(int(t["id"]), str(t["label"]), tuple(map(str, t["words"])), int(t["size"]),
                            tuple(map(str, t["examples"]))) for t in meta["topics"]]
            offsets = arrays["offsets"].astype(np.int64, copy=False)
            if (len(offsets) != len(topics) + 1 or offsets[0] != 0 or offsets[-1] != len(members)
                    or len(scores) != len(members) or np.any(np.diff(offsets) < 0)
                    or any(t.size != offsets[i + 1] - offsets[i] for i, t in enumerate(topics))):
                raise ValueError("inconsistent topics")
        except Exception as e:  # truncated, garbage, another layout: compute them again
            log.warning("%s is unreadable (%s); computing the topics again", path, e)
            return None
        return Topics(topics, members, scores.astype(np.float32, copy=False), offsets)

    def save(self, kinds: tuple[str, ...], version: int, table_rows: int, topics: Topics) -> None:
        """Write atomically; a read-only or full disk only costs the next process the clustering."""
        meta = self._key(kinds, version, table_rows)
        meta["topics"] = [t.to_dict() for t in topics.topics]
        derived_npz.write(self.path(kinds), meta, {"members": topics.members, "scores": topics.scores,
                                                   "offsets": topics.offsets}, "topics")

    def vocabulary_vectors(self, encode: Encode) -> np.ndarray:
        """The built-in vocabulary's unit text vectors: read if kept for this model, else
        embedded once and kept."""
        key = {"format": FORMAT, "model_id": self.model_id, "dim": self.dim,
               "vocabulary": vocabulary_hash(VOCABULARY)}
        path = self.vocabulary_path
        try:
            got = derived_npz.read(path, ("vectors",))
            if got is not None:
                meta, arrays = got
                vectors = arrays["vectors"].astype(np.float32, copy=False)
                shape = (len(VOCABULARY), self.dim)
                if meta == key and vectors.shape == shape and np.isfinite(vectors).all():
                    return vectors
        except Exception as e:
            log.warning("%s is unreadable (%s); embedding the vocabulary again", path, e)
        vectors = unit(encode(list(VOCABULARY)))
        derived_npz.write(path, key, {"vectors": vectors}, "topics' vocabulary")
        return vectors


def unit(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def own_words(store: Store) -> dict[str, frozenset[str]]:
    """Per file, the words of its own text: its OCR and document text and its file name."""
    import os

    import pyarrow.compute as pc

    from clipsearch.store import sql_in

    words: dict[str, set[str]] = {}
    t = store.scan(["source", "text"], sql_in("kind", TEXT_KINDS) + " AND text IS NOT NULL")
    for src, text in zip(t.column("source").to_pylist(), t.column("text").to_pylist(), strict=True):
        words.setdefault(src, set()).update(words_of(text or ""))
    names = store.scan(["source"]).column("source").unique()
    stems = pc.replace_substring_regex(names, r"^.*[/\\]|\.[^./\\]*$", "")
    worded = pc.match_substring_regex(stems, r"\pL\pL\pL")  # only these can hold a word: skip the rest
    for src in pc.filter(names, worded).to_pylist():
        found = words_of(os.path.splitext(os.path.basename(src))[0])
        if found:
            words.setdefault(src, set()).update(found)
    return {src: frozenset(ws) for src, ws in words.items() if ws}


_lock = threading.Lock()
_cache: dict[tuple[str, int, tuple[str, ...]], Topics] = {}
_CACHE_SIZE = 4


def topics_of(store: Store, files: TopicFiles, kinds: tuple[str, ...], encode: Encode) -> Topics:
    """The topics of the rows of `kinds` at the table's current version: from memory, else from
    the persisted file, else computed (and persisted)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from clipsearch.store import sql_in

    snapshot = store.snapshot()
    version = int(snapshot.version)
    key = (str(files.folder), version, kinds)
    with _lock:  # one computation at a time: a second request waits and then reads the cache
        hit = _cache.get(key)
        if hit is not None:
            return hit
        rows = int(snapshot.count_rows())
        topics = files.load(kinds, version, rows)
        if topics is None:
            metas, parts = [], []
            for meta, vecs in store.vector_batches(snapshot, ["id", "kind", "source", "page"],
                                                   sql_in("kind", kinds)):
                metas.append(meta)
                parts.append(vecs)
            if metas:
                t = pa.Table.from_batches(metas)
                by_id = pc.sort_indices(t.column("id"))  # the same topics whatever order rows were written in
                t = t.take(by_id)
                ids = np.asarray(t.column("id").to_pylist(), dtype="S")
                groups = group_codes(t.column("kind"), t.column("id"), t.column("source"), t.column("page"))
                vectors = np.concatenate(parts)[by_id.to_numpy()]
                word_vectors = files.vocabulary_vectors(encode)
                by_source = own_words(store)
                own = collection_words(by_source.values())
                own_vectors = unit(encode(own)) if own else None
                sources = t.column("source").to_pylist() if own else []
                topics = build(ids, groups, sources, vectors, word_vectors, own, own_vectors, by_source)
            else:
                topics = build(np.zeros(0, "S1"), np.zeros(0, np.int64), [], np.zeros((0, files.dim)),
                               np.zeros((0, files.dim), np.float32))
            files.save(kinds, version, rows, topics)
        if len(_cache) >= _CACHE_SIZE:
            _cache.pop(next(iter(_cache)))
        _cache[key] = topics
        return topics


__all__ = ["Topic", "TopicFiles", "Topics", "build", "claimed", "cluster", "first_of_each", "group_codes",
           "label_words", "topic_count", "topics_of", "words_of"]
