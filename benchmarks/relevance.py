"""Relevance cut benchmark: precision/recall/F1 of `--min-relevance auto` per query type,
against the best single global cosine threshold chosen with hindsight on the same data.

The labelled world and the scoring are `clipsearch.tiny.eval_relevance` (the tests run a
smaller one). Z_AUTO in clipsearch/relevance.py was tuned on seed 0; report on another seed.

    python -m benchmarks.relevance --seed 1            # the figures in RESULTS.md
    python -m benchmarks.relevance --seed 0 --sweep    # tuning: mean F1 for other cuts
    python -m benchmarks.relevance --seed 1 --cost 5   # also what the variant check costs per query
    python -m benchmarks.relevance --seed 5 --without-variants   # and the same world without it
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from clipsearch.relevance import Z_AUTO, Z_WIDTH
from clipsearch.tiny.eval_relevance import World, build_world, evaluate, rank_all, sweep


def variant_cost(world: World, rounds: int) -> dict[str, Any]:
    """What the one-word-variant check costs a text query when it runs (some hit at or above
    the cut): per query, the median wall time (ms) over `rounds` of `relevance_variants.gate_for`
    (the variants' encoding and their scores over the background), after one warm-up round;
    the median and the largest over the queries, and how many variants were encoded."""
    from clipsearch import Collection
    from clipsearch.relevance_variants import WordBank, gate_for

    col = Collection.open(world.db, device="cpu")
    searcher = col.searcher
    bank = WordBank(searcher.caption_texts())
    background = searcher.calibrator.background(("image",)).vectors
    texts = [q.text for q in world.queries if q.text is not None and q.kind != "gibberish"]
    per_query, counts = [], []
    for t in texts:
        vec = col.encoder.encode_texts([t])[0]
        scale = searcher.calibrator.calibrate(vec, "text", ("image",)).scale
        took = []
        for r in range(rounds + 1):
            start = time.perf_counter()
            gate_for(t, vec, background, scale, bank, col.encoder.encode_texts)
            if r:
                took.append(1000 * (time.perf_counter() - start))
        per_query.append(statistics.median(took))
        counts.append(len(bank.variants(t)))
    return {"queries": len(texts), "rounds": rounds, "median_ms": round(statistics.median(per_query), 2),
            "max_ms": round(max(per_query), 2), "median_variants": statistics.median(counts),
            "max_variants": max(counts)}


def without_variants(world: World) -> dict[str, Any]:
    """The same world ranked and scored with the variant gate off (no word has neighbours)."""
    import clipsearch.relevance_variants as variants

    neighbours = variants.NEIGHBOURS
    variants.NEIGHBOURS = 0
    try:
        return evaluate(world, rank_all(world))
    finally:
        variants.NEIGHBOURS = neighbours


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--present", type=int, default=20, help="extra colour x shape classes drawn")
    ap.add_argument("--per-class", type=int, default=5)
    ap.add_argument("--distractors", type=int, default=40)
    ap.add_argument("--sweep", action="store_true", help="also the mean F1 at other z cuts")
    ap.add_argument("--cost", type=int, metavar="ROUNDS", help="also time the variant check per query")
    ap.add_argument("--without-variants", action="store_true",
                    help="also the same world's figures with the one-word-variant gate off")
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
        if args.without_variants:
            result["without_variants"] = without_variants(world)
        if args.cost:
            result["variant_cost"] = variant_cost(world, args.cost)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
