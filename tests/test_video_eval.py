"""Moment retrieval quality floor with the bundled model, through the real indexer on real mp4s."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from clipsearch.model_registry import tiny_files

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    path = ROOT / "benchmarks" / "video_moments.py"
    spec = importlib.util.spec_from_file_location("video_moments_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not tiny_files()[1].is_file(), reason="clipsearch-tiny weights are not built yet")
def test_moment_retrieval_floor_through_indexer(tmp_path):
    res = _bench().run_benchmark(4, seed=1, min_len=40, max_len=60, through_indexer=True, workdir=tmp_path)
    assert res["queries"] >= 5
    assert res["R1@0.5"] >= 0.6, res
    assert res["mIoU"] >= 0.45, res
    assert res["video_R@1"] >= 0.6, res
