"""The one-word-variant check: does a text query's answer exist, or only half of it?

A query whose answer is absent still has hits that match part of it ("a yellow circle" on a
collection of yellow squares and white circles, or a yellowish blur that has no shape at all).
They can stand as far above the query's bulk as real matches do, so the z cut keeps them. What
a real match has and a half-match lacks: the query describes it better than the query's own
one-word *variants* do ("a yellow square", "a white circle", "a yellow star", ...).

Variants come from a word bank built from caption text (the caption bank of
`Searcher.caption_texts`: the model's own captions and generic ones; never a list of the
test world's words): each word's nearest words by the contexts it shares in those captions
(colours with colours, shapes with shapes, places with places). A variant that ranks the
collection as the query does (a paraphrase: "tiny" for "small", "at" for "on") is no
alternative and is dropped. Each word of the query is a *slot*; its importance is how much its
variants change the query's ranking of the background. Only the important slots are checked,
those within IMPORTANT of the most important one: a model that reads a word weakly (size,
position) changes little when it is swapped, and its true matches would tie with the variants.

The check is a gate on the whole answer, not a per-hit cut: the query keeps anything only if
at least one of the hits it would keep beats every variant of every important slot by
MARGIN reference spreads (in z, each text against its own bulk). Otherwise every hit is capped
below the cut. How it was tuned and what it costs: docs/relevance.md, benchmarks/RESULTS.md.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from clipsearch.relevance import AUTO, Z_AUTO, relevance_of_z

NEIGHBOURS = 7  # alternatives per word (a colour has 7 other colours in a small palette)
MIN_SIMILARITY = 0.5  # context similarity a neighbour needs (0..1)
MIN_CAPTIONS = 3  # a word must appear in this many captions to be in the bank
MAX_SHARE = 0.2  # a word in more than this share of captions is a function word ("a", "of")
PARAPHRASE = 0.25  # a variant whose scores move less than this (reference spreads) is a paraphrase
IMPORTANT = 0.8  # slots checked: importance at least this share of the most important slot's
MARGIN = 0.15  # reference spreads by which some hit must beat every checked variant

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


class WordBank:
    """Words of a caption set and their nearest words by shared contexts.

    Two words are alike when they appear between the same words: the similarity is the mean
    of the cosines of their left-neighbour and right-neighbour counts. Pure text statistics,
    so it works for any model's captions."""

    def __init__(self, captions: Sequence[str]) -> None:
        share: Counter[str] = Counter()
        contexts: dict[str, Counter[str]] = defaultdict(Counter)
        for caption in captions:
            tokens = words_of(caption)
            share.update(set(tokens))
            for i, t in enumerate(tokens):
                contexts[t]["L" + (tokens[i - 1] if i else "^")] += 1
                contexts[t]["R" + (tokens[i + 1] if i + 1 < len(tokens) else "$")] += 1
        n = max(len(captions), 1)
        self.words = sorted(w for w, c in share.items() if MIN_CAPTIONS <= c <= MAX_SHARE * n)
        self._index = {w: i for i, w in enumerate(self.words)}
        self._similar = self._similarity([contexts[w] for w in self.words])

    @staticmethod
    def _similarity(contexts: list[Counter[str]]) -> np.ndarray:
        features = sorted({f for c in contexts for f in c})
        column = {f: j for j, f in enumerate(features)}
        counts = np.zeros((len(contexts), len(features)))
        for i, c in enumerate(contexts):
            for f, k in c.items():
                counts[i, column[f]] = k
        left = counts * np.array([f.startswith("L") for f in features], dtype=float)
        sims = []
        for side in (left, counts - left):
            unit = side / np.maximum(np.linalg.norm(side, axis=1, keepdims=True), 1e-12)
            sims.append(unit @ unit.T)
        out: np.ndarray = (sims[0] + sims[1]) / 2
        return out

    def neighbours(self, word: str) -> list[str]:
        """Up to NEIGHBOURS words most alike to `word` (none when it is not in the bank)."""
        i = self._index.get(word)
        if i is None:
            return []
        order = [j for j in np.argsort(-self._similar[i], kind="stable") if j != i]
        return [self.words[j] for j in order[:NEIGHBOURS] if self._similar[i, j] >= MIN_SIMILARITY]

    def variants(self, text: str) -> list[tuple[int, str]]:
        """(slot, variant) for each word of `text` in the bank and each of its neighbours: the
        text with that one word swapped (slot: the word's position among the text's words)."""
        out: list[tuple[int, str]] = []
        for slot, m in enumerate(_WORD.finditer(text)):
            for alt in self.neighbours(m.group().lower()):
                out.append((slot, text[:m.start()] + alt + text[m.end():]))
        return out


def words_of(text: str) -> list[str]:
    """The lower-cased words of a text (letters only)."""
    return [m.group().lower() for m in _WORD.finditer(text)]


@dataclass(frozen=True)
class VariantGate:
    """The important slots' variants of one query, ready to test hits against.

    `query` and `variants` are unit text vectors; `loc`/`variant_locs` their medians over the
    background; `slots` the slot of each variant; `scale` the reference spread."""

    query: np.ndarray
    loc: float
    variants: np.ndarray
    variant_locs: np.ndarray
    slots: np.ndarray
    scale: float

    def margins(self, vectors: np.ndarray) -> np.ndarray:
        """Per hit vector, by how many spreads the query beats its best checked variant (its
        z minus the best variant's z, each against its own bulk)."""
        h = np.asarray(vectors, np.float32)
        zq = (h @ self.query - self.loc) / self.scale
        zv = (h @ self.variants.T - self.variant_locs[None, :]) / self.scale
        return np.asarray(zq - zv.max(axis=1))

    def best_margin(self, vectors: np.ndarray) -> float:
        """The largest margin among these hits (-inf without hits)."""
        return float(self.margins(vectors).max()) if len(vectors) else float("-inf")


def gate_for(text: str, query: np.ndarray, background: np.ndarray, scale: float, bank: WordBank,
             encode: Callable[[list[str]], np.ndarray]) -> VariantGate | None:
    """The gate of a text query, or None when it has no checkable variant (no word of it in
    the bank, or only paraphrases): then nothing is checked."""
    pairs = bank.variants(text)
    if not pairs or scale <= 0 or not len(background):
        return None
    vecs = np.asarray(encode([v for _, v in pairs]), np.float32)
    q = np.asarray(query, np.float32)
    base = background @ q
    scores = background @ vecs.T
    diff = scores - base[:, None]
    moved = 1.4826 * np.median(np.abs(diff - np.median(diff, axis=0)), axis=0) / scale
    slots = np.array([s for s, _ in pairs])
    alternative = moved >= PARAPHRASE
    importance = {int(s): float(np.median(moved[alternative & (slots == s)]))
                  for s in np.unique(slots[alternative])}
    if not importance:
        return None
    top = max(importance.values())
    checked = alternative & np.isin(slots, [s for s, v in importance.items() if v >= IMPORTANT * top])
    return VariantGate(q, float(np.median(base)), vecs[checked], np.median(scores[:, checked], axis=0),
                       slots[checked], float(scale))


def ceiling(gate_of: Callable[[], VariantGate | None], vectors: np.ndarray,
            relevances: Sequence[float]) -> float | None:
    """The relevance every hit is capped at when the query's answer is absent, else None.

    `vectors` and `relevances` are the hits' (a zero vector for a hit without one); `gate_of`
    gives the query's gate, asked only when some hit is at or above the cut (its variants cost
    an encoding). Absent: no such hit beats every checked variant by MARGIN. The cap is where
    z would be with the cut raised by MARGIN minus the best such margin: below the cut, and
    lower the worse the best hit fares against its variants."""
    above = [i for i, r in enumerate(relevances) if r >= AUTO and np.any(vectors[i])]
    if not above:
        return None
    gate = gate_of()
    if gate is None:
        return None
    best = gate.best_margin(vectors[above])
    if best >= MARGIN:
        return None
    return relevance_of_z(Z_AUTO + min(best - MARGIN, -1e-6))
