"""Does the `auto` relevance cut keep what a query asks for, and nothing when there is nothing?

A labelled world: the quick start's sample collection (`clipsearch.tiny.sample`) plus more
rendered shapes of a random subset of the colour x shape classes (the rest are absent) plus
distractor images that hold no shape at all. Queries of five types, each with its true set
among the indexed images:

- ``colour+shape``: "a red star" -> every red star;
- ``full-attribute``: "a small red star on the left" -> red stars not contradicting the size
  or position (an image drawn with no size or position constraint is compatible);
- ``image``: a freshly rendered picture of a present class -> that class's images;
- ``gibberish``: random strings -> nothing;
- ``absent``: a colour x shape class the world does not hold -> nothing.

Each query ranks every indexed image (`kind="image"`, no cut); the `auto` cut keeps the hits
with relevance >= `relevance.AUTO`. The baseline is the single cosine threshold that maximises
the mean F1 over all queries, chosen with hindsight on the same data. A query with an empty true
set scores F1 = 1 when nothing is kept, else 0.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipsearch.tiny.sample import make_sample
from clipsearch.tiny.synth.shapes import (
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapeSpec,
    canonical_query,
    render_shape,
)

TYPES = ("colour+shape", "full-attribute", "image", "gibberish", "absent")


@dataclass
class Query:
    kind: str
    text: str | None
    image: Path | None
    truth: set[str]


@dataclass
class World:
    db: Path
    labels: dict[str, tuple[str, str, str | None, str | None] | None]  # file -> (colour, shape, size, pos)
    present: list[tuple[str, str]]
    absent: list[tuple[str, str]]
    queries: list[Query]


def _distractor(rng: np.random.Generator, px: int = 224) -> Image.Image:
    """A blurry colour field with no shape in it: a photo-like distractor."""
    cells = rng.integers(0, 256, size=(int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3), dtype=np.uint8)
    return Image.fromarray(cells).resize((px, px), Image.Resampling.BICUBIC)


def _gibberish(rng: np.random.Generator) -> str:
    letters = string.ascii_lowercase
    words = ["".join(rng.choice(list(letters), size=int(rng.integers(3, 9))))
             for _ in range(int(rng.integers(1, 4)))]
    if rng.random() < 0.5:
        words.append(str(int(rng.integers(10, 99999))))
    if rng.random() < 0.3:
        words.append(str(rng.choice(["☃", "§", "%%", "#", "~~"])))
    return " ".join(words)


def build_world(root: Path, seed: int = 0, present: int = 20, per_class: int = 5, distractors: int = 40,
                n_gibberish: int = 20, n_absent: int = 20, n_image: int = 20, n_full: int = 20,
                model: str = "clipsearch-tiny") -> World:
    """Write and index the labelled world under `root` (deterministic for a seed)."""
    from clipsearch import Collection

    rng = np.random.default_rng(1000 + seed)
    files = root / "files"
    manifest = make_sample(files / "sample", seed=seed)
    labels: dict[str, tuple[str, str, str | None, str | None] | None] = {}
    for row in manifest["images"]:
        colour, shape = Path(row["file"]).stem.split("_")[:2]
        labels[str(Path(row["file"]).resolve())] = next(
            (colour, shape, size, pos) for size in (None, *SIZES) for pos in (None, *POSITIONS)
            if canonical_query(ShapeSpec(shape, colour, size, pos), full=True) == row["full_query"])
    classes = [(c, s) for c in COLORS for s in SHAPES]
    order = rng.permutation(len(classes))
    sample_classes = {(lab[0], lab[1]) for lab in labels.values() if lab}
    chosen = [classes[i] for i in order if classes[i] not in sample_classes][:present]
    present_set = sorted(sample_classes | set(chosen))
    absent = [c for c in classes if c not in present_set]
    extra = files / "extra"
    extra.mkdir(parents=True, exist_ok=True)
    for colour, shape in chosen:
        for i in range(per_class):
            size = SIZES[int(rng.integers(2))] if rng.random() < 0.6 else None
            pos = POSITIONS[int(rng.integers(len(POSITIONS)))] if rng.random() < 0.6 else None
            path = extra / f"{colour}_{shape}_{i}.jpg"
            render_shape(ShapeSpec(shape, colour, size, pos), rng, size=224).save(path, quality=90)
            labels[str(path.resolve())] = (colour, shape, size, pos)
    for i in range(distractors):
        path = extra / f"distractor_{i}.jpg"
        _distractor(rng).save(path, quality=90)
        labels[str(path.resolve())] = None
    db = root / "db"
    col = Collection.create(db, model=model, device="cpu")
    col.add([files], workers=2)

    def members(colour: str, shape: str, size: str | None = None, pos: str | None = None) -> set[str]:
        return {f for f, lab in labels.items() if lab and lab[:2] == (colour, shape)
                and (size is None or lab[2] in (None, size)) and (pos is None or lab[3] in (None, pos))}

    queries = [Query("colour+shape", canonical_query(ShapeSpec(s, c)), None, members(c, s))
               for c, s in present_set]
    for _ in range(n_full):
        c, s = present_set[int(rng.integers(len(present_set)))]
        spec = ShapeSpec(s, c, SIZES[int(rng.integers(2))], POSITIONS[int(rng.integers(len(POSITIONS)))])
        queries.append(Query("full-attribute", canonical_query(spec, full=True), None,
                             members(c, s, spec.size, spec.position)))
    qdir = root / "queries"
    qdir.mkdir(parents=True, exist_ok=True)
    for i in range(n_image):
        c, s = present_set[int(rng.integers(len(present_set)))]
        path = qdir / f"query_{i}_{c}_{s}.jpg"
        render_shape(ShapeSpec(s, c), rng, size=224).save(path, quality=90)
        queries.append(Query("image", None, path, members(c, s)))
    queries += [Query("gibberish", _gibberish(rng), None, set()) for _ in range(n_gibberish)]
    for i in rng.permutation(len(absent))[:n_absent]:
        c, s = absent[int(i)]
        queries.append(Query("absent", canonical_query(ShapeSpec(s, c)), None, set()))
    return World(db, labels, present_set, absent, queries)


def prf(kept: set[str], truth: set[str]) -> tuple[float, float, float]:
    """(precision, recall, F1); an empty truth scores 1 when nothing is kept, else 0."""
    if not truth:
        return (1.0, 1.0, 1.0) if not kept else (0.0, 1.0, 0.0)
    tp = len(kept & truth)
    p = tp / len(kept) if kept else 1.0
    r = tp / len(truth)
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def rank_all(world: World) -> list[list[tuple[str, float, float]]]:
    """Per query, (source, cosine, relevance) of every indexed image, best first."""
    from clipsearch import Collection

    col = Collection.open(world.db, device="cpu")
    n = sum(1 for _ in world.labels)
    out = []
    for q in world.queries:
        hits = col.search(text=q.text, image=q.image, k=n, kind="image", min_relevance="off")
        out.append([(str(Path(h.source).resolve()), float(h.score), float(h.relevance or 0.0)) for h in hits])
    return out


def evaluate(world: World, ranked: list[list[tuple[str, float, float]]], auto: float | None = None
             ) -> dict[str, Any]:
    """Per query type: mean P, R, F1 of the auto cut and of the best global cosine threshold,
    and the share of empty-truth queries that keep nothing."""
    from clipsearch.relevance import AUTO

    auto = AUTO if auto is None else auto

    def scores(keep) -> list[tuple[float, float, float]]:
        return [prf({s for s, cos, rel in r if keep(cos, rel)}, q.truth)
                for q, r in zip(world.queries, ranked, strict=True)]

    best_t, best_f1 = _best_global(world, ranked)
    auto_scores = scores(lambda cos, rel: rel >= auto)
    global_scores = scores(lambda cos, rel: cos >= best_t)
    kept_auto = [sum(1 for _, _, rel in r if rel >= auto) for r in ranked]
    kept_global = [sum(1 for _, cos, _ in r if cos >= best_t) for r in ranked]
    out: dict[str, Any] = {"global_threshold": best_t, "types": {}}
    for t in TYPES:
        idx = [i for i, q in enumerate(world.queries) if q.kind == t]
        if not idx:
            continue
        row: dict[str, Any] = {"queries": len(idx)}
        for name, sc, kept in (("auto", auto_scores, kept_auto), ("global", global_scores, kept_global)):
            row[name] = {m: round(float(np.mean([sc[i][j] for i in idx])), 3) for j, m in enumerate("prf")}
            if t in ("gibberish", "absent"):
                row[name]["none_kept"] = round(float(np.mean([kept[i] == 0 for i in idx])), 3)
        out["types"][t] = row
    out["mean_f1"] = {"auto": round(float(np.mean([f for _, _, f in auto_scores])), 3),
                      "global": round(float(np.mean([f for _, _, f in global_scores])), 3)}
    out["mean_f1_by_type"] = {n: round(float(np.mean([out["types"][t][n]["f"] for t in out["types"]])), 3)
                              for n in ("auto", "global")}
    return out


def _best_global(world: World, ranked: list[list[tuple[str, float, float]]]) -> tuple[float, float]:
    """The cosine threshold with the best mean F1 over all queries (hindsight), and that F1."""
    cos = [np.array([c for _, c, _ in r]) for r in ranked]
    hit = [np.array([s in q.truth for s, _, _ in r]) for q, r in zip(world.queries, ranked, strict=True)]
    grid = np.unique(np.round(np.concatenate(cos), 4))
    grid = np.append(grid, np.inf)
    total = np.zeros(len(grid))
    for c, h in zip(cos, hit, strict=True):
        kept = (c[None, :] >= grid[:, None])  # (thresholds, hits)
        n_kept, tp, n_true = kept.sum(1), (kept & h[None, :]).sum(1), int(h.sum())
        if n_true == 0:
            total += n_kept == 0
        else:
            p = np.where(n_kept > 0, tp / np.maximum(n_kept, 1), 1.0)
            r = tp / n_true
            total += np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    i = int(np.argmax(total))
    return float(grid[i]), float(total[i] / len(cos))


def sweep(world: World, ranked: list[list[tuple[str, float, float]]],
          cuts: list[float]) -> dict[float, float]:
    """Mean F1 over all queries for other relevance cuts (tuning)."""
    return {c: evaluate(world, ranked, auto=c)["mean_f1"]["auto"] for c in cuts}


def run(root: Path, seed: int = 0, **sizes: Any) -> dict[str, Any]:
    world = build_world(root, seed=seed, **sizes)
    ranked = rank_all(world)
    result = evaluate(world, ranked)
    result.update(seed=seed, images=len(world.labels), present_classes=len(world.present),
                  queries=len(world.queries))
    return result


if __name__ == "__main__":  # pragma: no cover
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(Path(tmp), seed=int(sys.argv[1]) if len(sys.argv) > 1 else 0), indent=2))
