"""Training data for clipsearch-tiny: rendered (image, caption) batches and hard negatives.

Every batch is a pure function of (seed, step), so stage 1 and stage 2 can draw the same
distribution, and a run is reproducible.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from clipsearch.tiny.synth import (
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapeSpec,
    caption_from_attrs,
    caption_with_attrs,
    random_spec,
    render_page,
    render_shape,
)

ATTRS = ("shape", "color", "size", "position")
_VOCABS = {"shape": SHAPES, "color": COLORS, "size": SIZES, "position": POSITIONS}
TRAIN_CANVAS = (64, 72, 80, 96)  # eval uses other canvas sizes on purpose
P_PAGE = 0.12
P_DEGRADE = 0.35


def encode_attrs(attrs: dict[str, str | None]) -> list[int]:
    """Attribute values as vocabulary indices, -1 for "not set / not mentioned"."""
    return [_VOCABS[a].index(attrs[a]) if attrs[a] else -1 for a in ATTRS]


# Which attribute a hard-negative caption changes. Position gets the most weight: it is the
# attribute a CLIP learns last (a run without these negatives ranked positions at chance).
_NEG_WEIGHTS = {"position": 0.7, "size": 0.1, "color": 0.1, "shape": 0.1}
# What the shipped model trained with: position-only negatives for half the samples, next to the
# position probe (without the probe they taught nothing: position stayed at chance).
TRAIN_NEG_WEIGHTS = {"position": 1.0}
TRAIN_NEG_RATE = 0.5


def hard_negative(spec: ShapeSpec, mentioned: dict[str, str | None], rng: np.random.Generator,
                  weights: dict[str, float] | None = None) -> tuple[str, dict[str, str | None]] | None:
    """A caption like the positive one but with one attribute of the image changed
    ("... on the left" -> "... at the top"), NegCLIP-style.

    In-batch negatives rarely differ from an image in one attribute only, so without these
    the loss barely rewards fine distinctions such as position.
    """
    weights = weights or _NEG_WEIGHTS
    options = [a for a in weights if weights[a] > 0 and getattr(spec, a) is not None]
    if not options:  # e.g. position-only negatives for an image placed anywhere
        return None
    p = np.asarray([weights[a] for a in options])
    attr = options[int(rng.choice(len(options), p=p / p.sum()))]
    current = getattr(spec, attr)
    others = [v for v in _VOCABS[attr] if v != current]
    neg = dict(mentioned)
    neg[attr] = others[int(rng.integers(len(others)))]
    return caption_from_attrs(neg, rng), neg


def make_sample(rng: np.random.Generator, klass: tuple[str, str] | None = None,
                easy: bool = False, variety: float = 0.0
                ) -> tuple[Image.Image, str, ShapeSpec, dict[str, str | None]]:
    """One training pair: image, caption, the image's attributes and those the caption mentions.

    ``klass`` fixes (shape, color); size, position, background etc. stay random.
    ``easy`` draws on a plain grey background without degradation (curriculum warm-up).
    ``variety`` is the share of shape images drawn with training-time variety (proportions,
    fills, colour drift, resampling: clipsearch.tiny.synth.variety); 0 keeps the old stream.
    """
    spec = random_spec(rng, p_size=0.7, p_pos=0.7)
    if klass:
        spec = replace(spec, shape=klass[0], color=klass[1])
    if easy:
        canvas = TRAIN_CANVAS[int(rng.integers(len(TRAIN_CANVAS)))]
        img = render_shape(spec, rng, size=canvas, background="neutral")
    elif rng.random() < P_PAGE:
        w = int(rng.integers(96, 200))
        img = render_page(spec, rng, size=(w, int(w * rng.uniform(1.2, 1.5))))
        spec = ShapeSpec(spec.shape, spec.color)  # size/position words mean nothing on a page
    else:
        canvas = TRAIN_CANVAS[int(rng.integers(len(TRAIN_CANVAS)))]
        varied = bool(variety) and bool(rng.random() < variety)
        img = render_shape(spec, rng, size=canvas, degrade=bool(rng.random() < P_DEGRADE), variety=varied)
    text, mentioned = caption_with_attrs(spec, rng)
    return img, text, spec, mentioned


CLASSES = [(s, c) for s in SHAPES for c in COLORS]


def batch_classes(rng: np.random.Generator, batch_size: int, group: int) -> list[tuple[str, str]]:
    """Colour+shape class of every sample: ``group`` samples per class, so each batch holds
    several true positives per caption and per image (a much stronger signal early on)."""
    n_cls = min(len(CLASSES), -(-batch_size // group))
    picked = rng.choice(len(CLASSES), size=n_cls, replace=False)
    labels = [CLASSES[int(c)] for c in picked for _ in range(group)][:batch_size]
    return [labels[int(i)] for i in rng.permutation(len(labels))]


class BatchSource(torch.utils.data.Dataset):
    """Batch ``step`` of a run; a pure function of (seed, step), so workers keep determinism."""

    def __init__(self, seed: int, batch_size: int, preprocess, tokenizer, steps: int,
                 group: int = 4, curriculum: float = 0.2, negatives: bool = True,
                 neg_rate: float = 1.0, neg_weights: dict[str, float] | None = None,
                 variety: float = 0.0, variety_from: float = 0.0) -> None:
        self.seed, self.batch_size, self.steps, self.group = seed, batch_size, steps, group
        self.negatives, self.neg_rate, self.neg_weights = negatives, neg_rate, neg_weights
        self.preprocess, self.tokenizer = preprocess, tokenizer
        self.curriculum_steps = curriculum * steps
        self.variety = variety
        # before this step no sample is varied, and the stream is the canonical one draw for draw
        self.variety_from_step = variety_from * steps

    def easy_fraction(self, step: int) -> float:
        """Share of plain-background samples: 0.8 at the start, 0 after the curriculum phase.

        Plain backgrounds make colour and shape obvious, so the towers align quickly before
        the clutter (textures, photos, pages, blur/JPEG) arrives.
        """
        if self.curriculum_steps <= 0:
            return 0.0
        return 0.8 * max(0.0, 1.0 - step / self.curriculum_steps)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        classes = batch_classes(rng, self.batch_size, self.group)
        easy = rng.random(len(classes)) < self.easy_fraction(step)
        variety = self.variety if step >= self.variety_from_step else 0.0
        samples = [make_sample(rng, k, bool(e), variety) for k, e in zip(classes, easy, strict=True)]
        batch = {
            "images": torch.stack([self.preprocess(s[0]) for s in samples]),
            "tokens": self.tokenizer([s[1] for s in samples]),
            "attrs": torch.tensor([encode_attrs(vars(s[2])) for s in samples]),
            "mentioned": torch.tensor([encode_attrs(s[3]) for s in samples]),
        }
        if self.negatives:  # their own rng stream: images and captions do not depend on this
            neg_rng = np.random.default_rng([self.seed, step, 1])
            chosen = [s for s, r in zip(samples, neg_rng.random(len(samples)), strict=True)
                      if r < self.neg_rate]
            negs = [n for s in chosen if (n := hard_negative(s[2], s[3], neg_rng, self.neg_weights))]
            batch["neg_tokens"] = self.tokenizer([n[0] for n in negs])
            batch["neg_mentioned"] = torch.tensor([encode_attrs(n[1]) for n in negs],
                                                  dtype=torch.long).reshape(-1, len(ATTRS))
        return batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def batch_loader(source: BatchSource, workers: int) -> torch.utils.data.DataLoader:
    """Render in a background process so the 2 cores overlap drawing and backprop."""
    return torch.utils.data.DataLoader(
        source, batch_size=None, shuffle=False, num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None, persistent_workers=False)

