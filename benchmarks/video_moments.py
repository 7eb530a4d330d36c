"""Synthetic moment-retrieval benchmark: shape segments in videos with exact ground truth.

The harness is `clipsearch.tiny.eval_moments` (the tests run it too); this is its command line.
Every result names the model_id and weights sha256 it was measured with.

    .venv/bin/python -m benchmarks.video_moments --videos 20 --model clipsearch-tiny
    .venv/bin/python -m benchmarks.video_moments --speed 360,1080      # indexing speed instead
    .venv/bin/python -m benchmarks.video_moments --through-indexer --renderer independent
"""

from __future__ import annotations

import argparse
import json

from clipsearch.tiny.eval_moments import indexing_speed, run_benchmark


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=20)
    ap.add_argument("--model", default="clipsearch-tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--through-indexer", action="store_true")
    ap.add_argument("--renderer", choices=("synth", "independent"), default="synth",
                    help="who draws the videos: the training renderer or world2 (160 px, CRF 32)")
    ap.add_argument("--speed", default="", help="measure indexing speed instead, e.g. 360,1080")
    ap.add_argument("--speed-seconds", type=float, default=60.0)
    ap.add_argument("--flank-weight", type=float, default=0.0,
                    help="moment score's contrast term (1 = the design sketch's mean-of-flanks penalty)")
    args = ap.parse_args()
    if args.speed:
        for h in args.speed.split(","):
            print(json.dumps(indexing_speed(int(h), args.speed_seconds, model=args.model)))
        return
    res = run_benchmark(args.videos, model=args.model, seed=args.seed, through_indexer=args.through_indexer,
                        flank_weight=args.flank_weight, renderer=args.renderer)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}, indent=2))


if __name__ == "__main__":
    main()
