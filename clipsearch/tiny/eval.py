"""Held-out retrieval evaluation of clipsearch-tiny.

The evaluation set is rendered with a different seed, a canvas size the training never
uses and a different background mix, so the figures measure generalisation within the
shapes world rather than memorised renders.

    python -m clipsearch.tiny.eval --model-dir clipsearch/models --n 600 --seed 12345
    python -m clipsearch.tiny.eval --renderer independent   # drawn by clipsearch.tiny.world2

``--renderer independent`` draws the set with code that shares nothing with the training
renderer (clipsearch.tiny.world2: other geometry, palette, fills, backgrounds, 160-320 px
canvases, JPEG/H.264/resampling chains), so the figures say whether the model learned the
shapes world rather than its renderer.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import torch

from clipsearch.tiny.model import MODEL_NAME, weights_identity
from clipsearch.tiny.synth import COLORS, POSITIONS, SHAPES, SIZES, ShapeSpec, canonical_query
from clipsearch.tiny.synth.shapes import render_shape

EVAL_CANVAS = 176  # training renders 64..128 px canvases
EVAL_BG_WEIGHTS = {"plain": 0.1, "gradient": 0.15, "textured": 0.25, "photo": 0.3, "page": 0.2}
P_DEGRADE = 0.25
TARGETS = {"t2i_p10": 0.95, "full_r1": 0.6, "i2i_p10": 0.85}
_POS_COMMA = {"left": "left side", "right": "right side", "center": "center", "top": "top",
              "bottom": "bottom"}


def load_model(model_dir: str | Path) -> tuple[torch.nn.Module, object, object]:
    """Load the shipped files through the same open_clip path the core uses."""
    model_dir = Path(model_dir)
    open_clip.add_model_config(str(model_dir / f"{MODEL_NAME}.json"))
    model, _, preprocess = open_clip.create_model_and_transforms(
        MODEL_NAME, pretrained=str(model_dir / f"{MODEL_NAME}.safetensors"))
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(MODEL_NAME)


def eval_specs(n: int, rng: np.random.Generator) -> list[ShapeSpec]:
    """n fully specified specs, colour+shape classes balanced so each has >= n // 48 images."""
    classes = [(s, c) for s in SHAPES for c in COLORS]
    order = np.concatenate([rng.permutation(len(classes)) for _ in range(n // len(classes) + 1)])
    return [ShapeSpec(*classes[int(i)], SIZES[int(rng.integers(len(SIZES)))],
                      POSITIONS[int(rng.integers(len(POSITIONS)))]) for i in order[:n]]


RENDERERS = ("synth", "independent")


def render_eval_set(n: int, seed: int, renderer: str = "synth") -> tuple[list[ShapeSpec], list]:
    """The held-out images (PIL) and their specs, drawn by the training renderer or the independent one."""
    rng = np.random.default_rng(seed)
    specs = eval_specs(n, rng)
    if renderer == "independent":
        from clipsearch.tiny.world2 import render_image

        return specs, [render_image(s, rng) for s in specs]
    if renderer != "synth":
        raise ValueError(f"unknown renderer {renderer!r}: use one of {', '.join(RENDERERS)}")
    images = [render_shape(s, rng, size=EVAL_CANVAS, bg_weights=EVAL_BG_WEIGHTS,
                           degrade=bool(rng.random() < P_DEGRADE)) for s in specs]
    return specs, images


@torch.no_grad()
def embed_images(model: torch.nn.Module, preprocess, images: list, batch: int = 128
                 ) -> torch.Tensor:
    """L2-normalised image embeddings."""
    out = [model.encode_image(torch.stack([preprocess(im) for im in images[i:i + batch]]),
                              normalize=True) for i in range(0, len(images), batch)]
    return torch.cat(out)


@torch.no_grad()
def embed_texts(model: torch.nn.Module, tokenizer, texts: list[str]) -> torch.Tensor:
    """L2-normalised text embeddings."""
    return model.encode_text(tokenizer(texts), normalize=True)


def precision_at_k(scores: torch.Tensor, relevant: torch.Tensor, k: int = 10) -> float:
    """Precision of the top-k; k is capped at the number of relevant items so small sets
    can still reach 1.0."""
    k = max(1, min(k, int(relevant.sum())))
    top = scores.topk(k).indices
    return float(relevant[top].float().mean())


def text_to_image(img_emb: torch.Tensor, model, tokenizer, specs: list[ShapeSpec],
                  template: str = "{}") -> tuple[float, dict[tuple[str, str], float]]:
    """Mean P@10 of colour+shape queries ("a red star") against same colour+shape images."""
    classes = [(s, c) for s in SHAPES for c in COLORS]
    queries = [template.format(canonical_query(ShapeSpec(s, c))) for s, c in classes]
    sims = embed_texts(model, tokenizer, queries) @ img_emb.t()
    labels = [(sp.shape, sp.color) for sp in specs]
    per_class = {}
    for q, cls in enumerate(classes):
        rel = torch.tensor([lab == cls for lab in labels])
        if rel.any():
            per_class[cls] = precision_at_k(sims[q], rel)
    return float(np.mean(list(per_class.values()))), per_class


def comma_query(spec: ShapeSpec) -> str:
    """Keyword-style query: "red star, small, left side"."""
    return f"{spec.color} {spec.shape}, {spec.size}, {_POS_COMMA[spec.position]}"


def full_attribute_recall(img_emb: torch.Tensor, model, tokenizer, specs: list[ShapeSpec],
                          comma: bool = False) -> float:
    """Recall@1 of full queries ("a small red star on the left"): is the top image an exact match?"""
    unique = sorted(set(specs), key=lambda s: (s.shape, s.color, s.size, s.position))
    texts = [comma_query(s) if comma else canonical_query(s, full=True) for s in unique]
    top1 = (embed_texts(model, tokenizer, texts) @ img_emb.t()).argmax(dim=1)
    return float(np.mean([specs[int(t)] == s for s, t in zip(unique, top1, strict=True)]))


def image_to_image_scores(img_emb: torch.Tensor, specs: list[ShapeSpec]) -> dict[int, float]:
    """P@10 per query image (by index) of its nearest other images sharing its colour+shape."""
    sims = img_emb @ img_emb.t()
    sims.fill_diagonal_(-2.0)
    labels = [(sp.shape, sp.color) for sp in specs]
    scores = {}
    for i, lab in enumerate(labels):
        rel = torch.tensor([other == lab for other in labels])
        rel[i] = False
        if rel.any():
            scores[i] = precision_at_k(sims[i], rel)
    return scores


def _mean_by(pairs: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Mean value per key of (key, value) pairs, e.g. per-class P@10 grouped by colour."""
    groups: dict[str, list[float]] = {}
    for key, v in pairs:
        groups.setdefault(key, []).append(v)
    return {k: round(float(np.mean(v)), 4) for k, v in groups.items()}


def attribute_accuracy(img_emb: torch.Tensor, model, tokenizer, specs: list[ShapeSpec],
                       attr: str) -> float:
    """How often the image's own full caption beats the same caption with ``attr`` changed
    ("... on the left" vs "... on the right", "at the top", ...): a diagnostic that shows
    which attribute a weak full-query recall comes from."""
    values = {"size": SIZES, "position": POSITIONS}[attr]
    texts = [canonical_query(replace(spec, **{attr: v}), full=True) for spec in specs for v in values]
    txt = embed_texts(model, tokenizer, texts).reshape(len(specs), len(values), -1)
    picked = torch.einsum("nvd,nd->nv", txt, img_emb).argmax(dim=1)
    return float(np.mean([values[int(i)] == getattr(s, attr) for s, i in zip(specs, picked, strict=True)]))


def evaluate(model_dir: str | Path, n: int = 600, seed: int = 12345, renderer: str = "synth") -> dict:
    """Render a held-out set, embed it with the model in ``model_dir`` and score retrieval."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, preprocess, tokenizer = load_model(model_dir)
    specs, images = render_eval_set(n, seed, renderer)
    img_emb = embed_images(model, preprocess, images)
    t2i, per_class = text_to_image(img_emb, model, tokenizer, specs)
    t2i_photo, _ = text_to_image(img_emb, model, tokenizer, specs, "a photo of {}")
    i2i = image_to_image_scores(img_emb, specs)
    return {
        **weights_identity(model_dir), "n": n, "seed": seed, "renderer": renderer,
        "canvas": EVAL_CANVAS if renderer == "synth" else "160-320",
        "t2i_p10": round(t2i, 4),
        "t2i_p10_photo_of": round(t2i_photo, 4),
        "full_r1": round(full_attribute_recall(img_emb, model, tokenizer, specs), 4),
        "full_r1_comma": round(full_attribute_recall(img_emb, model, tokenizer, specs, True), 4),
        "i2i_p10": round(float(np.mean(list(i2i.values()))), 4),
        "position_acc": round(attribute_accuracy(img_emb, model, tokenizer, specs, "position"), 4),
        "size_acc": round(attribute_accuracy(img_emb, model, tokenizer, specs, "size"), 4),
        "t2i_by_shape": _mean_by((cls[0], v) for cls, v in per_class.items()),
        "t2i_by_color": _mean_by((cls[1], v) for cls, v in per_class.items()),
        **{f"i2i_by_{a}": _mean_by((getattr(specs[i], a), v) for i, v in i2i.items())
           for a in ("shape", "color", "size", "position")},
    }


def format_table(res: dict) -> str:
    """Human-readable summary with the acceptance targets."""
    rows = [
        ("text->image P@10, 'a red star'", res["t2i_p10"], TARGETS["t2i_p10"]),
        ("text->image P@10, 'a photo of a red star'", res["t2i_p10_photo_of"], None),
        ("full query R@1, 'a small red star on the left'", res["full_r1"], TARGETS["full_r1"]),
        ("full query R@1, 'red star, small, left side'", res["full_r1_comma"], None),
        ("image->image P@10, same colour+shape", res["i2i_p10"], TARGETS["i2i_p10"]),
        ("position picked among 5 (chance 0.2)", res["position_acc"], None),
        ("size picked among 2 (chance 0.5)", res["size_acc"], None),
    ]
    lines = [f"clipsearch-tiny eval: renderer={res.get('renderer', 'synth')} n={res['n']} seed={res['seed']} "
             f"canvas={res['canvas']}px",
             f"model_id {res['model_id']}, weights sha256 {res['weights_sha256'][:16]}",
             f"{'metric':<50} {'value':>6} {'target':>7}"]
    for name, val, target in rows:
        mark = "" if target is None else (" ok" if val >= target else " LOW")
        lines.append(f"{name:<50} {val:6.3f} {'' if target is None else f'{target:7.2f}'}{mark}")
    for key in ("t2i_by_shape", "t2i_by_color"):
        lines.append(f"{key}: " + ", ".join(f"{k} {v:.2f}" for k, v in res[key].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: print the table (and the raw dict with --json)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default="clipsearch/models")
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--renderer", choices=RENDERERS, default="synth",
                    help="who draws the evaluation set: the training renderer or clipsearch.tiny.world2")
    ap.add_argument("--json", action="store_true", help="also print the result as JSON")
    args = ap.parse_args(argv)
    res = evaluate(args.model_dir, args.n, args.seed, args.renderer)
    print(format_table(res))
    if args.json:
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
