"""Reciprocal rank fusion against hand-computed cases, and row-to-page grouping."""

from __future__ import annotations

import numpy as np
import pytest

from clipsearch.fusion import (
    best_member,
    confident_head,
    dedupe,
    gated_rrf,
    group_ranking,
    hybrid_rerank,
    rrf,
)


def test_rrf_matches_hand_computed_scores() -> None:
    fused = dict(rrf([["a", "b", "c"], ["b", "c", "d"]], k=60))
    assert fused["a"] == pytest.approx(1 / 61)
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 62)
    assert fused["d"] == pytest.approx(1 / 63)
    assert [key for key, _ in rrf([["a", "b", "c"], ["b", "c", "d"]], k=60)] == ["b", "c", "a", "d"]


def test_agreement_beats_a_single_first_place() -> None:
    # x is first in one list only; y is second in both: 2/62 > 1/61.
    order = [key for key, _ in rrf([["x", "y"], ["z", "y"]], k=60)]
    assert order[0] == "y"


def test_weights_and_k_change_the_order_as_computed() -> None:
    # k=0: scores are weighted reciprocal ranks. a: 3*(1/1) = 3; b: 3*(1/2) + 1*(1/1) = 2.5.
    fused = rrf([["a", "b"], ["b"]], k=0, weights=[3.0, 1.0])
    assert fused == [("a", pytest.approx(3.0)), ("b", pytest.approx(2.5))]
    # Unweighted, b wins: a = 1/1 = 1, b = 1/2 + 1/1 = 1.5.
    assert rrf([["a", "b"], ["b"]], k=0)[0][0] == "b"
    with pytest.raises(ValueError):
        rrf([["a"]], weights=[1.0, 2.0])


def test_ties_break_by_best_rank_then_first_appearance() -> None:
    fused = rrf([["a", "b"], ["b", "a"]], k=60)  # a and b both 1/61 + 1/62
    assert fused[0][1] == pytest.approx(fused[1][1])
    assert [key for key, _ in fused] == ["a", "b"]  # same best rank 1, a seen first
    fused = rrf([["s"], ["t"]], k=60)
    assert [key for key, _ in fused] == ["s", "t"]


def test_repeated_keys_count_once_at_their_best_rank() -> None:
    # a page with many matching chunks must not outvote pages with one: ranks 1,2,3 of a = one vote.
    fused = dict(rrf([["a", "a", "b", "a"]], k=60))
    assert fused["a"] == pytest.approx(1 / 61)
    assert fused["b"] == pytest.approx(1 / 62)
    assert rrf([]) == []
    assert rrf([[], []]) == []


def test_grouping_rows_into_pages() -> None:
    rows = [("doc1", 3, "chunk A"), ("doc2", 1, "chunk B"), ("doc1", 3, "chunk C"), ("doc1", 2, "chunk D")]
    key = lambda r: (r[0], r[1])  # noqa: E731
    assert group_ranking(rows, key) == [("doc1", 3), ("doc2", 1), ("doc1", 2)]
    best = best_member(rows, key)
    assert best[("doc1", 3)][2] == "chunk A"
    assert dedupe([3, 1, 3, 2, 1]) == [3, 1, 2]


def test_hybrid_rerank_fuses_vector_and_keyword_hits() -> None:
    vector = [("img1", 0.31), ("img2", 0.30), ("img3", 0.29)]
    keyword = [("img3", 12.0), ("img4", 3.0)]
    out = hybrid_rerank(vector, keyword, k=3)
    # img3: 1/63 + 1/61 = 0.03227; img1: 1/61; img2: 1/62; img4: 1/62 (img2 wins the tie: seen first).
    assert [i for i, _ in out] == ["img3", "img1", "img2"]
    assert out[0][1] == pytest.approx(1 / 63 + 1 / 61)
    only_vector = hybrid_rerank(vector, [], k=2)
    assert only_vector == [("img1", pytest.approx(1 / 61)), ("img2", pytest.approx(1 / 62))]


def test_confident_head_finds_planted_outliers_and_ignores_noise() -> None:
    rng = np.random.default_rng(0)
    noise_hits = 0
    for _ in range(200):
        tail = np.sort(rng.standard_normal(5000))[::-1][:100]  # top 100 of pure noise
        noise_hits += confident_head(tail) > 0
    assert noise_hits <= 20  # under 10 % by design (threshold 3.5)
    tail = np.sort(rng.standard_normal(5000))[::-1][:100]
    planted = np.concatenate([[tail[0] + 3.0, tail[0] + 2.9], tail])  # two items far above the pack
    assert confident_head(planted) == 2
    assert confident_head(tail[:10]) == 0  # too short to judge
    bm25 = [12.0, 3.1, 2.0] + [1.0] * 30  # one strong match, a long tail of ties
    assert confident_head(bm25) == 0  # nothing to measure the gap against


def test_gated_rrf_puts_confident_evidence_above_noise() -> None:
    signal = ["p1", "p2", "p3", "p4"]  # singles out p1
    noise_a = ["p4", "p3", "p2", "p1"]
    noise_b = ["p3", "p4", "p1", "p2"]
    plain = [key for key, _ in rrf([signal, noise_a, noise_b])]
    assert plain[0] != "p1"  # consensus of the noise wins plain RRF
    gated = gated_rrf([signal, noise_a, noise_b], [1, 0, 0])
    assert gated[0][0] == "p1"
    assert gated[0][1] == pytest.approx(1 + 1 / 61)
    assert [key for key, _ in gated[1:]] == plain[: plain.index("p1")] + plain[plain.index("p1") + 1 :]
    assert gated_rrf([signal, noise_a], [0, 0]) == rrf([signal, noise_a])  # nobody confident: plain RRF
