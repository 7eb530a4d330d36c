"""Token-aware text chunking for the CLIP text encoder.

CLIP text towers see at most `context_length` tokens (77 for OpenAI CLIP) and silently
truncate the rest, so a page of text must be cut into chunks that each fit. Chunks break
only at whitespace (a word longer than the whole budget is split inside), overlap by a few
tokens so a phrase cut at a boundary still lands whole in one chunk, and keep the exact
character span they came from, so a hit can be shown and highlighted in its source.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_WORD = re.compile(r"\S+")

TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class Chunk:
    """One piece of text: `text == source[start:end]`; `index` counts chunks within one call."""

    text: str
    start: int
    end: int
    index: int
    page: int | None = None


def chunk_text(
    text: str,
    count_tokens: TokenCounter,
    max_tokens: int,
    overlap_tokens: int = 0,
    *,
    page: int | None = None,
) -> list[Chunk]:
    """Cut `text` into chunks of at most `max_tokens` tokens each, as `count_tokens` counts them.

    `count_tokens` must include the start/end markers (as `Encoder.count_tokens` does); the
    budget for words is what is left after the markers. Consecutive chunks share up to
    `overlap_tokens` tokens of trailing words. Whitespace-only text gives no chunks.
    """
    markers = count_tokens("")
    budget = max_tokens - markers
    if budget < 1:
        raise ValueError(f"max_tokens={max_tokens} leaves no room beside {markers} marker tokens")
    overlap = max(0, min(overlap_tokens, budget - 1))
    units = _units(text, count_tokens, markers, budget)
    chunks: list[Chunk] = []
    i, done = 0, 0  # next chunk's first unit; units already emitted
    while done < len(units):
        j = _fill(units, i, budget)
        # Token counts are additive for CLIP's BPE over whitespace-split words, but not for every
        # tokenizer; the exact count of the joined text is the authority, so shrink until it fits.
        while j > i + 1 and count_tokens(text[units[i][0] : units[j - 1][1]]) > max_tokens:
            j -= 1
        if j <= done:  # the overlap left no room for a new word: start fresh without it
            i = done
            continue
        start, end = units[i][0], units[j - 1][1]
        chunks.append(Chunk(text[start:end], start, end, len(chunks), page))
        done = j
        i = _overlap_start(units, i, j, overlap, budget)
    return chunks


def _units(text: str, count_tokens: TokenCounter, markers: int, budget: int) -> list[tuple[int, int, int]]:
    """Words as (start, end, tokens); a word over the budget is split into pieces that fit."""
    cache: dict[str, int] = {}
    units: list[tuple[int, int, int]] = []
    for m in _WORD.finditer(text):
        word = m.group()
        cost = cache.get(word)
        if cost is None:
            cost = cache[word] = max(count_tokens(word) - markers, 1)
        if cost <= budget:
            units.append((m.start(), m.end(), cost))
        else:
            units.extend(_split_word(text, m.start(), m.end(), count_tokens, markers, budget))
    return units


def _split_word(
    text: str, start: int, end: int, count_tokens: TokenCounter, markers: int, budget: int
) -> list[tuple[int, int, int]]:
    """Split one oversized word (a URL, a hash, glued-together text) into fitting pieces."""
    pieces = []
    while start < end:
        lo, hi = start + 1, end  # the longest prefix text[start:cut] within budget, by bisection
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count_tokens(text[start:mid]) - markers <= budget:
                lo = mid
            else:
                hi = mid - 1
        pieces.append((start, lo, max(count_tokens(text[start:lo]) - markers, 1)))
        start = lo
    return pieces


def _fill(units: list[tuple[int, int, int]], i: int, budget: int) -> int:
    """End index (exclusive) of the longest run of units from `i` whose tokens fit the budget."""
    used, j = 0, i
    while j < len(units) and used + units[j][2] <= budget:
        used += units[j][2]
        j += 1
    return max(j, i + 1)


def _overlap_start(units: list[tuple[int, int, int]], i: int, j: int, overlap: int, budget: int) -> int:
    """Start of the next chunk: back up from `j` over at most `overlap` tokens, always advancing
    and leaving room for the next new unit."""
    if j >= len(units):
        return j
    k, used, room = j, 0, budget - units[j][2]
    while k - 1 > i and used + units[k - 1][2] <= min(overlap, room):
        k -= 1
        used += units[k][2]
    return k
