"""The one-word-variant check of the relevance cut (clipsearch.relevance_variants): the word bank
from caption text, the paraphrase filter, and the gate that caps a half-match below the cut.
Synthetic captions and vectors, in a vocabulary that is not the shapes world's."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from clipsearch.relevance import AUTO
from clipsearch.relevance_variants import MARGIN, WordBank, ceiling, gate_for, words_of

COLOURS = ("red", "blue", "green", "white", "black")
NOUNS = ("car", "bus", "boat", "train", "bike")
TEMPLATES = ("a photo of a {} {}", "a picture of a {} {}", "a {} {} on the road", "a {} {}")


def _captions() -> list[str]:
    return [t.format(c, n) for t, c, n in itertools.product(TEMPLATES, COLOURS, NOUNS)]


def test_word_bank_neighbours_share_contexts():
    bank = WordBank(_captions())
    assert set(bank.neighbours("red")) == set(COLOURS) - {"red"}
    assert set(bank.neighbours("boat")) == set(NOUNS) - {"boat"}
    assert bank.neighbours("a") == [] and bank.neighbours("zebra") == []  # a function word; not in the bank
    variants = bank.variants("A Red car")
    assert {"A blue car", "A Red bus"} <= {v for _, v in variants}  # the swapped word in the bank's case
    assert {slot for slot, _ in variants} == {1, 2}  # slots are word positions; "A" has none
    assert words_of("Ein grünes Auto, 2 Mal") == ["ein", "grünes", "auto", "mal"]


DIM = 16
AXIS = {w: i for i, w in enumerate(COLOURS + NOUNS)}  # one direction per word; "crimson" is red's paraphrase


def _vec(*words: str, rng: np.random.Generator | None = None) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[DIM - 1] = 1.0  # a shared component, as a modality gap gives
    for w in words:
        v[AXIS["red" if w == "crimson" else w]] += 1.0
    if rng is not None:
        v += rng.normal(scale=0.15, size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def _encode(texts: list[str]) -> np.ndarray:
    return np.stack([_vec(*[w for w in words_of(t) if w in AXIS or w == "crimson"]) for t in texts])


@pytest.fixture()
def background() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([_vec(c, n, rng=rng) for c, n in itertools.product(COLOURS, NOUNS) for _ in range(8)])


def test_a_half_match_is_capped_and_a_whole_match_is_not(background):
    bank = WordBank(_captions() + [t.format("crimson", n) for t in TEMPLATES for n in NOUNS])
    text = "a red car"
    query = _encode([text])[0]
    scale = float(np.median(np.abs(background @ query - np.median(background @ query)))) * 1.4826
    gate = gate_for(text, query, background, scale, bank, _encode)
    assert gate is not None and "crimson" in bank.neighbours("red")
    checked = _checked_texts(gate, bank, text)
    assert "a crimson car" not in checked  # it ranks everything as the query does: a paraphrase
    assert {"a blue car", "a red bus"} <= set(checked)
    whole = np.stack([_vec("red", "car")])
    halves = np.stack([_vec("red", "bus"), _vec("blue", "car")])
    assert gate.margins(whole)[0] >= MARGIN > gate.margins(halves).max()
    assert ceiling(lambda: gate, whole, [0.9]) is None
    cap = ceiling(lambda: gate, halves, [0.9, 0.8])
    assert cap is not None and cap < AUTO
    assert ceiling(lambda: gate, halves, [0.3, 0.2]) is None  # nothing above the cut: nothing to check


def _checked_texts(gate, bank, text):
    """The variant texts the gate checks (matched back by their vectors)."""
    candidates = [v for _, v in bank.variants(text)]
    vecs = _encode(candidates)
    return [c for c, v in zip(candidates, vecs, strict=True)
            if any(np.allclose(v, g) for g in gate.variants)]


def test_no_variant_no_gate(background):
    bank = WordBank(_captions())
    query = _encode(["a zebra"])[0]
    assert gate_for("a zebra", query, background, 0.05, bank, _encode) is None
