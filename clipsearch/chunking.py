"""Token-aware text chunking for the CLIP text encoder.

CLIP text towers see at most `context_length` tokens (77 for OpenAI CLIP) and silently
truncate the rest, so a page of text must be cut into chunks that each fit. Chunks break
only at whitespace (a word longer than the whole budget is split inside), overlap by a few
tokens so a phrase cut at a boundary still lands whole in one chunk, and keep the exact
character span they came from, so a hit can be shown and highlighted in its source.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass

_WORD = re.compile(r"\S+")
_NEWLINE = re.compile("\n")

TokenCounter = Callable[[str], int]
# A word longer than this many characters per token of budget is split before the tokenizer
# sees it whole: bisection then tokenizes bounded prefixes, not the rest of a megabyte "word".
MAX_CHARS_PER_TOKEN = 32


@dataclass(frozen=True)
class Chunk:
    """One piece of text: `text == source[start:end]`; `index` counts chunks within one call.

    `lines` (1-based first and last line of the chunk) is set by `stream_chunks` only."""

    text: str
    start: int
    end: int
    index: int
    page: int | None = None
    lines: tuple[int, int] | None = None


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
    markers, budget, overlap = _budget(count_tokens, max_tokens, overlap_tokens)
    units = _units(text, count_tokens, markers, budget)
    chunks: list[Chunk] = []
    for i, j, _ in _spans(text, units, count_tokens, max_tokens, overlap, budget):
        start, end = units[i][0], units[j - 1][1]
        chunks.append(Chunk(text[start:end], start, end, len(chunks), page))
    return chunks


def stream_chunks(
    pieces: Iterable[str], count_tokens: TokenCounter, max_tokens: int, overlap_tokens: int = 0
) -> Generator[Chunk, None, None]:
    """The chunks `chunk_text` gives for `"".join(pieces)`, holding about one piece at a time.

    For text too big to hold whole (a 200 MB log): each piece is chunked with the unfinished
    tail of the previous one; only chunks whose every deciding word lies before the window's
    last (maybe cut) word are given out, and the window restarts where the next chunk starts.
    Offsets are into the whole text; `lines` gives each chunk's first and last line.
    """
    markers, budget, overlap = _budget(count_tokens, max_tokens, overlap_tokens)
    window, base, lines_before, done, index = "", 0, 0, 0, 0
    source = iter(pieces)
    more = True
    while more:
        piece = next(source, None)
        more = piece is not None
        window += piece or ""
        if more and len(window) == 0:
            continue
        units = _units(window, count_tokens, markers, budget)
        newlines = [m.start() for m in _NEWLINE.finditer(window)]
        limit = _settled(units, len(window), MAX_CHARS_PER_TOKEN * budget)
        restart = None  # (unit index, units already given out from there) of the first unsafe chunk
        for i, j, _ in _spans(window, units, count_tokens, max_tokens, overlap, budget, done):
            if more and j >= limit:  # a unit it holds, or the one that stopped it, may change with more text
                restart = (i, done - i)
                break
            start, end = units[i][0], units[j - 1][1]
            first = lines_before + bisect.bisect_left(newlines, start) + 1
            last = lines_before + bisect.bisect_left(newlines, end - 1) + 1
            yield Chunk(window[start:end], base + start, base + end, index, lines=(first, last))
            index, done = index + 1, j
        if restart is None:  # every unit given out: keep nothing but what follows the last one
            cut, done = (units[-1][1] if units else len(window)), 0
        else:
            cut, done = units[restart[0]][0], restart[1]
        lines_before += bisect.bisect_left(newlines, cut)
        window, base = window[cut:], base + cut


def _settled(units: list[tuple[int, int, int]], length: int, reach: int) -> int:
    """How many leading units of a window of `length` characters more text cannot change: all
    but the last word, whose pieces (an over-long word is split) count only while the split
    looked `reach` characters ahead and not past the window's end."""
    k = len(units) - 1  # the last unit may be a word cut by the window's end
    while k > 0 and units[k - 1][1] == units[k][0] and units[k - 1][0] + reach > length:
        k -= 1  # contiguous units are pieces of one word
    return max(k, 0)


def _budget(count_tokens: TokenCounter, max_tokens: int, overlap_tokens: int) -> tuple[int, int, int]:
    """(marker tokens, tokens left for words, overlap clamped so each chunk adds a word)."""
    markers = count_tokens("")
    budget = max_tokens - markers
    if budget < 1:
        raise ValueError(f"max_tokens={max_tokens} leaves no room beside {markers} marker tokens")
    return markers, budget, max(0, min(overlap_tokens, budget - 1))


def _spans(
    text: str,
    units: list[tuple[int, int, int]],
    count_tokens: TokenCounter,
    max_tokens: int,
    overlap: int,
    budget: int,
    done: int = 0,
) -> Iterator[tuple[int, int, int]]:
    """(first unit, end unit, next chunk's first unit) of each chunk, in order; `done` counts
    units already given out by an earlier window (the overlap may not start a chunk)."""
    i = 0  # next chunk's first unit
    while done < len(units):
        j = _fill(units, i, budget)
        # Token counts are additive for CLIP's BPE over whitespace-split words, but not for every
        # tokenizer; the exact count of the joined text is the authority, so shrink until it fits.
        while j > i + 1 and count_tokens(text[units[i][0] : units[j - 1][1]]) > max_tokens:
            j -= 1
        if j <= done:  # the overlap left no room for a new word: start fresh without it
            i = done
            continue
        nxt = _overlap_start(units, i, j, overlap, budget)
        yield i, j, nxt
        done, i = j, nxt


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
        # the longest prefix text[start:cut] within budget, by bisection
        lo, hi = start + 1, min(end, start + MAX_CHARS_PER_TOKEN * budget)
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
