"""Token-aware chunking: limits hold under CLIP's real BPE, spans map back, overlap works."""

from __future__ import annotations

import bisect
import random
import re

import numpy as np
import open_clip
import pytest

from clipsearch.chunking import chunk_text, stream_chunks

_TOK = open_clip.get_tokenizer("RN50")  # OpenAI CLIP BPE; needs no weights


def clip_count(text: str) -> int:
    return len(_TOK.encode(text)) + 2


def word_count(text: str) -> int:
    return len(text.split()) + 2


def _corpus(seed: int, n_words: int) -> str:
    rng = np.random.default_rng(seed)
    vocab = [
        "revenue", "quarterly", "the", "of", "Zürich", "naïve", "co-operation", "3.14159", "(see",
        "Fig.", "2)", "https://example.com/a/very/long/path?with=query&and=more", "—", "emoji🙂",
        "antidisestablishmentarianism", "x", "a", "“quoted”", "tab\tseparated", "line\nbreak",
    ]
    words = rng.choice(vocab, size=n_words)
    seps = rng.choice([" ", "  ", "\n", "\r\n", "\t"], size=n_words)
    return "".join(w + s for w, s in zip(words, seps, strict=True))


@pytest.mark.parametrize("max_tokens,overlap", [(77, 0), (77, 16), (32, 8), (12, 3), (5, 1)])
def test_chunks_never_exceed_the_token_limit(max_tokens: int, overlap: int) -> None:
    text = _corpus(max_tokens, 600)
    chunks = chunk_text(text, clip_count, max_tokens, overlap)
    assert len(chunks) > 1
    assert max(clip_count(c.text) for c in chunks) <= max_tokens


def test_spans_map_back_to_the_source_and_cover_every_word() -> None:
    text = _corpus(7, 400)
    chunks = chunk_text(text, clip_count, 24, 6)
    covered = np.zeros(len(text), bool)
    for i, c in enumerate(chunks):
        assert text[c.start : c.end] == c.text
        assert c.index == i
        assert c.text == c.text.strip()
        covered[c.start : c.end] = True
    non_space = np.array([not ch.isspace() for ch in text])
    assert covered[non_space].all()
    assert all(a.start < b.start and a.end < b.end for a, b in zip(chunks, chunks[1:], strict=False))


def test_overlap_repeats_trailing_words_within_the_overlap_budget() -> None:
    text = " ".join(f"w{i}" for i in range(200))
    chunks = chunk_text(text, word_count, max_tokens=12, overlap_tokens=3)  # 10 words a chunk
    for a, b in zip(chunks, chunks[1:], strict=False):
        shared = set(a.text.split()) & set(b.text.split())
        assert len(shared) == 3
        assert b.start < a.end
    no_overlap = chunk_text(text, word_count, max_tokens=12, overlap_tokens=0)
    assert all(a.end < b.start for a, b in zip(no_overlap, no_overlap[1:], strict=False))
    assert sum(len(c.text.split()) for c in no_overlap) == 200


def test_a_phrase_cut_at_a_boundary_survives_whole_in_some_chunk() -> None:
    words = [f"w{i}" for i in range(300)]
    text = " ".join(words)
    chunks = chunk_text(text, clip_count, 30, 8)
    checked = 0
    for n in (1, 2, 3):
        for i in range(0, 300 - n):
            phrase = " ".join(words[i : i + n])
            if clip_count(phrase) - 2 > 8:
                continue  # longer than the overlap: may legitimately straddle two chunks
            checked += 1
            assert any(re.search(rf"(^| ){phrase}( |$)", c.text) for c in chunks), phrase
    assert checked > 500


def test_page_is_attributed_and_empty_text_gives_no_chunks() -> None:
    chunks = chunk_text("alpha beta gamma " * 50, clip_count, 20, 4, page=7)
    assert chunks and {c.page for c in chunks} == {7}
    assert chunk_text("", clip_count, 20) == []
    assert chunk_text(" \n\t ", clip_count, 20) == []


def test_a_word_longer_than_the_budget_is_split_inside() -> None:
    blob = "".join(f"{i:x}" for i in range(2000))  # one 'word' of thousands of tokens
    text = f"before {blob} after"
    chunks = chunk_text(text, clip_count, 16, 0)
    assert max(clip_count(c.text) for c in chunks) <= 16
    pieces = "".join(c.text for c in chunks).replace("before", "").replace("after", "").replace(" ", "")
    assert pieces == blob
    assert all(text[c.start : c.end] == c.text for c in chunks)


def test_budget_must_leave_room_beside_the_markers() -> None:
    with pytest.raises(ValueError):
        chunk_text("some text", clip_count, 2)


def _pieces(text: str, rng: random.Random, most: int):
    i = 0
    while i < len(text):
        n = rng.randint(1, most)
        yield text[i : i + n]
        i += n


def _key(chunks):
    return [(c.text, c.start, c.end, c.index) for c in chunks]


@pytest.mark.parametrize("seed", range(6))
def test_streamed_chunks_are_the_chunks_of_the_whole_text(seed: int) -> None:
    """Cut anywhere (inside words, inside a long URL, between \r and \n), the pieces give the
    very chunks of the joined text, with offsets into it and its line numbers."""
    rng = random.Random(seed)
    text = _corpus(seed, 700)
    if seed % 3 == 0:
        text = "".join(f"{i:x}" for i in range(600)) + " " + text + "z" * 300  # over-long words at both ends
    count = clip_count if seed % 2 else word_count
    newlines = [m.start() for m in re.finditer("\n", text)]
    for max_tokens, overlap in [(77, 16), (24, 6), (12, 3), (5, 1), (20, 0)]:
        whole = chunk_text(text, count, max_tokens, overlap)
        streamed = list(stream_chunks(_pieces(text, rng, 300), count, max_tokens, overlap))
        assert _key(streamed) == _key(whole)
        for c in streamed:
            first, last = bisect.bisect_left(newlines, c.start), bisect.bisect_left(newlines, c.end - 1)
            assert c.lines == (first + 1, last + 1)


def test_streaming_text_without_whitespace_still_moves_on() -> None:
    """No word boundary for 20,000 characters: the window must not grow to hold all of it."""
    rng = random.Random(1)
    text = "".join(rng.choice("abcdefghij0123456789/.") for _ in range(20_000))
    seen = []

    def pieces():
        for i in range(0, len(text), 700):
            seen.append(i)
            yield text[i : i + 700]

    first = None
    for c in stream_chunks(pieces(), clip_count, 32, 8):
        first = first or (c, len(seen))
    assert first is not None and first[1] <= 3  # the first chunk came out before the 4th piece was read
    assert _key(stream_chunks(pieces(), clip_count, 32, 8)) == _key(chunk_text(text, clip_count, 32, 8))


def test_streaming_empty_or_blank_pieces_gives_nothing() -> None:
    assert list(stream_chunks([], clip_count, 20)) == []
    assert list(stream_chunks(["", "  \n", "\t", ""], clip_count, 20)) == []
    one = list(stream_chunks(["", "al", "pha", "", " beta"], clip_count, 20))
    assert [(c.text, c.start, c.end, c.lines) for c in one] == [("alpha beta", 0, 10, (1, 1))]
