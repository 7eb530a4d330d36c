"""Relevance cut benchmark: precision/recall/F1 of `--min-relevance auto` per query type,
against the best single global cosine threshold chosen with hindsight on the same data.

The labelled world and the scoring are `clipsearch.tiny.eval_relevance` (the tests run a
smaller one). Z_AUTO in clipsearch/relevance.py was tuned on seed 0; report on another seed.

    python -m benchmarks.relevance --seed 1            # the figures in RESULTS.md
    python -m benchmarks.relevance --seed 0 --sweep    # tuning: mean F1 for other cuts
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

from clipsearch.relevance import Z_AUTO, Z_WIDTH
from clipsearch.tiny.eval_relevance import build_world, evaluate, rank_all, sweep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--present", type=int, default=20, help="extra colour x shape classes drawn")
    ap.add_argument("--per-class", type=int, default=5)
    ap.add_argument("--distractors", type=int, default=40)
    ap.add_argument("--sweep", action="store_true", help="also the mean F1 at other z cuts")
    ap.add_argument("--out", type=Path, help="write the JSON here too")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        world = build_world(Path(tmp), seed=args.seed, present=args.present, per_class=args.per_class,
                            distractors=args.distractors)
        ranked = rank_all(world)
        result = evaluate(world, ranked)
        result.update(seed=args.seed, images=len(world.labels), queries=len(world.queries), z_auto=Z_AUTO)
        if args.sweep:
            cuts = {z: 1 / (1 + math.exp(-(z - Z_AUTO) / Z_WIDTH)) for z in (1.5, 1.8, 2.0, 2.2, 2.4, 2.6)}
            f1 = sweep(world, ranked, list(cuts.values()))
            result["sweep_z"] = {z: f1[c] for z, c in cuts.items()}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
