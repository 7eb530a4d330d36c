"""Quality floors of the bundled clipsearch-tiny on the independent renderer (clipsearch.tiny.world2).

The other floors (test_tiny_model, test_video_eval, test_doc_eval) draw with the renderer that
also drew the training data; these draw with code that shares nothing with it, so a model that
only learned its renderer fails here. The floors sit one query (or a few points) below what the
shipped model measures on these small sets; the issue's targets (#22: t2i 0.95 with every shape
class 0.9, i2i 0.85, full R@1 0.8, moments R1@0.5 0.9 / R1@0.7 0.7, figure pages 0.8) are not
met yet, see benchmarks/RESULTS.md "clipsearch-tiny on the independent renderer". Raise them with
the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipsearch.model_registry import tiny_files

pytestmark = pytest.mark.skipif(not tiny_files()[1].is_file(), reason="clipsearch-tiny weights not built yet")


def test_images_floor_on_the_independent_renderer() -> None:
    from clipsearch.tiny.eval import evaluate

    # shipped S, n=200 seed 777: t2i 0.822 (star 0.66, cross 0.69, others 0.84-0.94),
    # i2i 0.681, full R@1 0.882, position 0.98, size 0.99
    res = evaluate(Path(tiny_files()[1]).parent, n=200, seed=777, renderer="independent")
    assert res["renderer"] == "independent" and res["canvas"] == "160-320"
    assert res["t2i_p10"] >= 0.78, res
    assert min(res["t2i_by_shape"].values()) >= 0.6, res["t2i_by_shape"]
    assert res["i2i_p10"] >= 0.63, res
    assert res["full_r1"] >= 0.83, res
    assert res["position_acc"] >= 0.9 and res["size_acc"] >= 0.9, res


def test_moments_floor_on_the_independent_renderer(tmp_path: Path) -> None:
    from clipsearch.tiny.eval_moments import run_benchmark

    # 4 videos, 160 px frames, H.264 CRF 32, through VideoIndexer; shipped S: 8 queries,
    # R1@0.5 0.625, R1@0.7 0.5, R5@0.5 1.0, video R@1 0.75
    res = run_benchmark(4, seed=1, min_len=40, max_len=60, through_indexer=True, workdir=tmp_path,
                        renderer="independent")
    assert res["renderer"] == "independent" and res["queries"] >= 6, res
    assert res["R1@0.5"] >= 0.5, res
    assert res["R1@0.7"] >= 0.375, res
    assert res["R5@0.5"] >= 0.875, res
    assert res["video_R@1"] >= 0.625, res


def test_figure_pages_floor_on_the_independent_renderer(tmp_path: Path) -> None:
    from clipsearch.tiny import eval_docs

    # 3 PDFs, 17 pages; shipped S: figure R@1 0.588, R@5 0.706; text and both 1.0
    res = eval_docs.run(n_docs=3, pages=(5, 6), seed=1, work_dir=tmp_path, renderer="independent")
    print(json.dumps(res))
    fused = res["results"]["fused"]
    assert res["renderer"] == "independent"
    assert fused["figure"]["R@1"] >= 0.52, fused
    assert fused["figure"]["R@5"] >= 0.64, fused
    assert fused["text"]["R@1"] >= 0.85 and fused["both"]["R@1"] >= 0.85, fused
