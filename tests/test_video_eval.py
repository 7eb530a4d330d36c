"""Moment retrieval quality floor with the bundled model, through the real indexer on real mp4s."""

from __future__ import annotations

import pytest

from clipsearch.model_registry import tiny_files
from clipsearch.tiny.eval_moments import run_benchmark


@pytest.mark.skipif(not tiny_files()[1].is_file(), reason="clipsearch-tiny weights are not built yet")
def test_moment_retrieval_floor_through_indexer(tmp_path):
    """4 videos written as mp4 and indexed by VideoIndexer, 8 unique queries.

    Floors sit one query below what the shipped clipsearch-tiny measures here (R1@0.5 1.0,
    R5@0.5 1.0, R1@0.7 0.75, mIoU 0.85, video R@1 1.0, in-video R1@0.5 1.0; 2026-11-22, model
    G): a drop means the indexer or the moment search regressed, or a retrained model got worse.
    """
    res = run_benchmark(4, seed=1, min_len=40, max_len=60, through_indexer=True, workdir=tmp_path)
    assert res["queries"] >= 6, res
    assert res["model_id"].startswith("clipsearch-tiny#") and res["weights_sha256"], res
    assert res["R1@0.5"] >= 0.875, res
    assert res["R5@0.5"] >= 0.875, res
    assert res["R1@0.7"] >= 0.625, res
    assert res["mIoU"] >= 0.7, res
    assert res["video_R@1"] >= 0.875, res
    assert res["in_video_R1@0.5"] >= 0.875, res
