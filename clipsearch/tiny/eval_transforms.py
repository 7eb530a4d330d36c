"""Measure whether embedding-space transforms help, on a labelled image folder.

    python -m clipsearch.tiny.eval_transforms FOLDER --model clipsearch-tiny [--make-shapes]

FOLDER has one sub-folder per class. Every image queries all the others (leave-one-out);
an item is relevant when it shares the query's class. Reported side by side: image->image
mAP and P@10 for raw, whiten, center and invert (OTI), with the time each takes, then
text->image for raw vs center (a few phrasings of "a <class name>"), and OTI's closeness
to its target.

Whitening and centering are fitted on the same images they are evaluated on, as in the
product (they are fitted on the user's own collection); OTI uses no fitting at all.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clipsearch.errors import ClipsearchError, UsageError
from clipsearch.tiny.model import encoder_identity
from clipsearch.tiny.synth import shapes
from clipsearch.transforms import TransformSet, embed_builtin_captions

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
TEXT_PHRASINGS = ("{}", "a photo of {}", "an image of {}", "a drawing of {}")
OTI_TEMPLATES = ("a photo of {}", "{}")  # inversion templates compared by default


# --------------------------------------------------------------------------- data


def _maybe(rng: np.random.Generator, options: Sequence[str]) -> str | None:
    """One of ``options`` half of the time, else None (unconstrained)."""
    return options[int(rng.integers(len(options)))] if rng.random() < 0.5 else None


def make_shapes_dataset(folder: str | Path, per_class: int = 40, seed: int = 0, image_size: int = 224) -> int:
    """Render a labelled shapes set: FOLDER/<colour>_<shape>/NNNN.png, random size/position/background.

    Existing files are kept, so the call is idempotent; returns how many images it wrote.
    """
    root = Path(folder)
    written = 0
    for ci, color in enumerate(shapes.COLORS):
        for si, shape in enumerate(shapes.SHAPES):
            sub = root / f"{color}_{shape}"
            sub.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, ci, si])
            for i in range(per_class):
                size = _maybe(rng, shapes.SIZES)
                pos = _maybe(rng, shapes.POSITIONS)
                path = sub / f"{i:04d}.png"
                img = shapes.render_shape(shapes.ShapeSpec(shape, color, size, pos), rng, size=image_size)
                if not path.exists():
                    img.save(path)
                    written += 1
    return written


def load_labeled_folder(folder: str | Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image paths, integer labels and class names from a one-sub-folder-per-class tree."""
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory", hint="pass a folder with one sub-folder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels = [], []
    for ci, name in enumerate(classes):
        for p in sorted((root / name).iterdir()):
            if p.suffix.lower() in IMAGE_EXTS:
                paths.append(p)
                labels.append(ci)
    used = sorted(set(labels))
    if len(used) < 2 or len(paths) < 4:
        raise UsageError(
            f"{root} needs images in at least two class sub-folders (found {len(paths)} images "
            f"in {len(used)} classes)",
            hint="or generate a shapes set with --make-shapes",
        )
    return paths, np.asarray(labels), classes


# --------------------------------------------------------------------------- metrics


def retrieval_metrics(
    scores: np.ndarray,
    q_labels: np.ndarray,
    db_labels: np.ndarray,
    q_index: np.ndarray | None = None,
    k: int = 10,
) -> tuple[float, float]:
    """mAP and P@k of a (queries, db) score matrix; ``q_index[i]`` (the query's own db row) is excluded."""
    s = np.array(scores, dtype=np.float64, copy=True)
    if q_index is not None:
        s[np.arange(len(s)), q_index] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")
    rel = db_labels[order] == q_labels[:, None]
    if q_index is not None:
        rel[:, -1] = False  # the excluded self-match sorts last
    hits = np.cumsum(rel, axis=1)
    ranks = np.arange(1, rel.shape[1] + 1)
    n_rel = np.maximum(rel.sum(axis=1), 1)
    ap = (rel * hits / ranks).sum(axis=1) / n_rel
    return float(ap.mean()), float(rel[:, :k].mean())


def stratified_subset(labels: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` indices spread round-robin over the classes (first items of each class)."""
    per_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    out: list[int] = []
    depth = 0
    while len(out) < n and any(depth < len(ix) for ix in per_class):
        out += [int(ix[depth]) for ix in per_class if depth < len(ix)]
        depth += 1
    return np.asarray(sorted(out[:n]))


OUTLIER_KINDS = ("noise", "flat", "stripes", "collage")


def outlier_images(per_kind: int = 3, size: int = 128, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """(kind, image) pairs unlike one-shape photos: noise, flat colour, stripes (no content)
    and a 2x2 collage of four rendered shapes (familiar content, unusual composition)."""
    rng = np.random.default_rng(seed)
    out = []
    for kind in OUTLIER_KINDS:
        for _ in range(per_kind):
            if kind == "noise":
                img = Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))
            elif kind == "flat":
                img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, size=3)))
            elif kind == "stripes":
                band = ((np.arange(size) // int(rng.integers(4, 17))) % 2)[:, None, None]
                arr = band * rng.integers(0, 256, size=3) + (1 - band) * 255
                img = Image.fromarray(np.ascontiguousarray(np.broadcast_to(arr, (size, size, 3)), np.uint8))
            else:
                img = Image.new("RGB", (size, size))
                half = size // 2
                for j in range(4):
                    spec = shapes.random_spec(rng, p_size=0, p_pos=0)
                    tile = shapes.render_shape(spec, rng, size=half)
                    img.paste(tile, ((j % 2) * half, (j // 2) * half))
            out.append((kind, img))
    return out


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    diff = pos[:, None] - neg[None, :]
    return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


# --------------------------------------------------------------------------- evaluation


@dataclass
class Row:
    method: str
    queries: int
    map: float
    p10: float
    fit_s: float
    query_ms: float  # per query: transform (and inversion) time, not the search itself


def _class_text(name: str) -> str:
    words = name.replace("_", " ").replace("-", " ").strip()
    return ("an " if words[:1] in "aeiou" else "a ") + words


def evaluate(
    folder: str | Path,
    encoder,
    *,
    invert_queries: int = 96,
    steps: int = 150,
    batch_size: int = 32,
    betas: Sequence[float] = (1.0,),
    keep_dims: int | None = None,
    caption_limit: int = 3000,
    n_outliers_per_kind: int = 3,
    templates: Sequence[str] = OTI_TEMPLATES,
) -> dict:
    """Run every comparison; returns a dict of tables and figures (see :func:`to_markdown`)."""
    from clipsearch.inversion import oti  # noqa: PLC0415 (torch only when evaluating)

    paths, labels, classes = load_labeled_folder(folder)
    t0 = time.perf_counter()
    x = encoder.encode_images([Image.open(p).convert("RGB") for p in paths])
    embed_s = time.perf_counter() - t0
    n = len(paths)
    own = np.arange(n)
    rows: list[Row] = []
    notes: list[str] = []

    raw_map, raw_p10 = retrieval_metrics(x @ x.T, labels, labels, own)
    rows.append(Row("raw", n, raw_map, raw_p10, 0.0, 0.0))

    for beta in betas:
        t0 = time.perf_counter()
        try:
            ts = TransformSet.fit(x, model_id=encoder.model_id, dim=encoder.dim, center=False,
                                  beta=beta, keep_dims=keep_dims)
        except ClipsearchError as exc:
            notes.append(f"whiten beta={beta:g} not fitted: {exc}")
            continue
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        q = ts.apply_query(x, "image", whiten=True)
        per_q = (time.perf_counter() - t0) / n * 1e3
        db = ts.apply_db(x, whiten=True)
        m, p = retrieval_metrics(q @ db.T, labels, labels, own)
        w = ts.whitening
        rows.append(Row(f"whiten (beta={beta:g}, {w.keep_dims}/{encoder.dim} dims)", n, m, p, fit_s, per_q))
        if ts.params["whiten"].get("note"):
            notes.append(ts.params["whiten"]["note"])

    t0 = time.perf_counter()
    texts = embed_builtin_captions(encoder, caption_limit)
    ts_c = TransformSet.fit(x, texts, model_id=encoder.model_id, dim=encoder.dim, whiten=False)
    fit_c = time.perf_counter() - t0
    t0 = time.perf_counter()
    qc = ts_c.apply_query(x, "image", center=True)
    per_q = (time.perf_counter() - t0) / n * 1e3
    dbc = ts_c.apply_db(x, center=True)
    m, p = retrieval_metrics(qc @ dbc.T, labels, labels, own)
    rows.append(Row("center (image mean)", n, m, p, fit_c, per_q))

    # OTI on a class-stratified subset; raw on the same subset for a fair comparison.
    sub = stratified_subset(labels, invert_queries)
    m_raw, p_raw = retrieval_metrics(x[sub] @ x.T, labels[sub], labels, sub)
    rows.append(Row("raw (same queries as invert)", len(sub), m_raw, p_raw, 0.0, 0.0))
    # OTI known answer: closer to its target than the best class caption.
    cap_vecs = encoder.encode_texts([_class_text(c) for c in classes])
    best_caption = (x[sub] @ cap_vecs.T).max(axis=1)
    oti_figs = []
    for template in templates:
        res = oti(encoder.model, encoder.tokenizer, x[sub], steps=steps, batch_size=batch_size,
                  template=template)
        per_q = res.seconds / len(sub) * 1e3
        shown = template.format("*")
        m, p = retrieval_metrics(res.features @ x.T, labels[sub], labels, sub)
        rows.append(Row(f"invert (OTI '{shown}', {steps} steps)", len(sub), m, p, 0.0, per_q))
        qi = ts_c.apply_query(res.features, "text", center=True)
        m, p = retrieval_metrics(qi @ dbc.T, labels[sub], labels, sub)
        rows.append(Row(f"invert '{shown}' + center", len(sub), m, p, fit_c, per_q))
        oti_figs.append({
            "template": shown,
            "oti_cos_mean": float(res.cosines.mean()),
            "oti_cos_min": float(res.cosines.min()),
            "best_caption_cos_mean": float(best_caption.mean()),
            "frac_oti_beats_caption": float(np.mean(res.cosines > best_caption)),
            "oti_ms_per_query": per_q,
            "oti_batch_size": batch_size,
            "n": len(sub),
        })

    # Text -> image: a few phrasings per class, raw vs modality-gap centering.
    q_text = [p.format(_class_text(c)) for c in classes for p in TEXT_PHRASINGS]
    q_lab = np.repeat(np.arange(len(classes)), len(TEXT_PHRASINGS))
    t_vecs = encoder.encode_texts(q_text)
    t_raw = retrieval_metrics(t_vecs @ x.T, q_lab, labels)
    t_cen = retrieval_metrics(ts_c.apply_query(t_vecs, "text", center=True) @ dbc.T, q_lab, labels)
    text_rows = [Row("raw", len(q_text), *t_raw, 0.0, 0.0), Row("center", len(q_text), *t_cen, fit_c, 0.0)]
    # Typicality: planted outliers should get the largest ||w||^2 (the fit includes them).
    typ = None
    planted = outlier_images(n_outliers_per_kind)
    odd = encoder.encode_images([im for _, im in planted])
    kinds = np.array([k for k, _ in planted])
    try:
        both = np.vstack([x, odd])
        ts_t = TransformSet.fit(both, model_id=encoder.model_id, dim=encoder.dim, center=False)
        scores = ts_t.typicality(both)
        order = np.argsort(-scores)[: len(odd)]
        typ = {"n_outliers": len(odd), "auroc": auroc(scores[n:], scores[:n]),
               "top_k_hits": int(np.sum(order >= n)),
               "by_kind": {k: auroc(scores[n:][kinds == k], scores[:n]) for k in OUTLIER_KINDS}}
    except ClipsearchError as exc:
        notes.append(f"typicality not measured: {exc}")
    return {
        **encoder_identity(encoder),
        "dim": encoder.dim,
        "n_images": n,
        "n_classes": len(classes),
        "embed_s": embed_s,
        "image_rows": rows,
        "text_rows": text_rows,
        "oti": oti_figs,
        "typicality": typ,
        "notes": notes,
    }


def _table(rows: list[Row]) -> list[str]:
    out = [
        "| method | queries | mAP | P@10 | fit time (s) | per-query time (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r.method} | {r.queries} | {r.map:.4f} | {r.p10:.4f} | {r.fit_s:.2f} | {r.query_ms:.3f} |"
        )
    return out


def to_markdown(result: dict) -> str:
    """The report as markdown tables."""
    lines = [
        f"Model `{result['model_id']}` (weights sha256 `{(result['weights_sha256'] or 'unknown')[:16]}`, "
        f"dim {result['dim']}), {result['n_images']} images in "
        f"{result['n_classes']} classes; embedding took {result['embed_s']:.1f} s.",
        "",
        "Image -> image (leave-one-out):",
        "",
        *_table(result["image_rows"]),
        "",
        "Text -> image (four phrasings per class: \"a <class>\", \"a photo of a <class>\", ...):",
        "",
        *_table(result["text_rows"]),
    ]
    for o in result["oti"]:
        lines += [
            "",
            f"OTI known answer, template '{o['template']}' ({o['n']} queries): mean cosine(OTI text "
            f"feature, target image) = {o['oti_cos_mean']:.4f} (min {o['oti_cos_min']:.4f}); mean best "
            f"class-caption cosine = {o['best_caption_cos_mean']:.4f}; OTI closer on "
            f"{100 * o['frac_oti_beats_caption']:.0f}% of queries. OTI wall time "
            f"{o['oti_ms_per_query']:.1f} ms per query (batches of {o['oti_batch_size']}, CPU).",
        ]
    t = result.get("typicality")
    if t:
        lines += [
            "",
            f"Typicality (||w||^2, higher = less typical): {t['n_outliers']} planted outliers among the "
            f"collection: AUROC {t['auroc']:.3f} ("
            + ", ".join(f"{k} {v:.2f}" for k, v in t["by_kind"].items())
            + f"); {t['top_k_hits']} of them among the {t['n_outliers']} least typical items.",
        ]
    lines += [f"\nNote: {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m clipsearch.tiny.eval_transforms", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("folder", help="labelled image folder: one sub-folder per class")
    ap.add_argument("--model", default="clipsearch-tiny")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--make-shapes", action="store_true", help="first render a shapes set into FOLDER")
    ap.add_argument("--per-class", type=int, default=40, help="images per class for --make-shapes")
    ap.add_argument("--image-size", type=int, default=224, help="canvas size for --make-shapes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--invert-queries", type=int, default=96, help="queries to invert with OTI")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--template", action="append", default=None,
                    help="OTI template, {} marks the pseudo-word (repeatable; "
                    "default: 'a photo of {}' and '{}')")
    ap.add_argument("--batch-size", type=int, default=32, help="OTI queries optimised together")
    ap.add_argument("--betas", default="1", help="comma-separated whitening strengths to compare")
    ap.add_argument("--keep-dims", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (1 is much faster on an oversubscribed machine)")
    ap.add_argument("--markdown", default=None, help="also write the report to this file")
    args = ap.parse_args(argv)
    if args.threads:
        import torch  # noqa: PLC0415

        torch.set_num_threads(args.threads)
    try:
        from clipsearch.encoders import Encoder  # noqa: PLC0415

        if args.make_shapes:
            wrote = make_shapes_dataset(args.folder, args.per_class, args.seed, args.image_size)
            print(f"shapes set: {wrote} new images in {args.folder}", file=sys.stderr)
        enc = Encoder.load(args.model, checkpoint=args.checkpoint, device=args.device)
        betas = [float(b) for b in args.betas.split(",") if b.strip()]
        result = evaluate(args.folder, enc, invert_queries=args.invert_queries, steps=args.steps,
                          batch_size=args.batch_size, betas=betas, keep_dims=args.keep_dims,
                          templates=args.template or OTI_TEMPLATES)
    except ClipsearchError as exc:
        print(f"error: {exc}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return exc.exit_code
    report = to_markdown(result)
    print(report)
    if args.markdown:
        Path(args.markdown).write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
