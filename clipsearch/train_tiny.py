"""Train clipsearch-tiny: a small open_clip CLIP for the coloured-shapes world, on CPU.

No weights can be downloaded where clipsearch is developed and tested, so the project
trains its own demo model here. Data is rendered on the fly by ``clipsearch.synth``;
every batch is a pure function of (seed, step), so a run is reproducible.

    python -m clipsearch.train_tiny --out out/tiny --seed 0      # 3,300 steps, <= 20 min

``--steps`` fixes the schedule; when the wall-clock cap ``--minutes`` binds first (a busy
shared CPU), the cosine schedule follows the clock instead and the run stops at the cap.
Stage 2 (``clipsearch.tiny_tune``, ~2 min, when the cap leaves time for it) then tunes the
top of both towers on frozen features for image-to-image search; the whole run took 18-19
minutes on 2 idle cores.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from clipsearch.synth import (
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

MODEL_NAME = "clipsearch-tiny"
ATTRS = ("shape", "color", "size", "position")
_VOCABS = {"shape": SHAPES, "color": COLORS, "size": SIZES, "position": POSITIONS}
TRAIN_CANVAS = (64, 72, 80, 96)  # eval uses other canvas sizes on purpose
P_PAGE = 0.12
P_DEGRADE = 0.35


def model_config(image_size: int = 64, vision_width: int = 24, embed_dim: int = 128,
                 context_length: int = 32, text_width: int = 64, text_layers: int = 2) -> dict:
    """open_clip config: ModifiedResNet image tower (a layers tuple) and a small text tower.

    The vocabulary is open_clip's standard BPE one, so ``open_clip.get_tokenizer`` works.
    """
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": [1, 1, 1, 1], "width": vision_width,
                       "patch_size": None},
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": text_width,
                     "heads": max(1, text_width // 32), "layers": text_layers},
    }


def write_config(out_dir: Path, cfg: dict) -> Path:
    """Write ``OUT/clipsearch-tiny.json`` and register it with open_clip."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{MODEL_NAME}.json"
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    open_clip.add_model_config(str(path))
    return path


def build_model(cfg_path: Path, seed: int) -> tuple[torch.nn.Module, object, object]:
    """Fresh model, its inference transform and tokenizer, exactly as users will load them."""
    open_clip.add_model_config(str(cfg_path))
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=None)
    return model, preprocess, open_clip.get_tokenizer(MODEL_NAME)


# ----------------------------------------------------------------------------- data


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
TRAIN_PROBE_WEIGHT = 0.1
TRAIN_PROBE_SMOOTHING = 0.0
TRAIN_EMA_DECAY = 0.0
TRAIN_PROBE_FROM = 0.0


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
                easy: bool = False) -> tuple[Image.Image, str, ShapeSpec, dict[str, str | None]]:
    """One training pair: image, caption, the image's attributes and those the caption mentions.

    ``klass`` fixes (shape, color); size, position, background etc. stay random.
    ``easy`` draws on a plain grey background without degradation (curriculum warm-up).
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
        img = render_shape(spec, rng, size=canvas, degrade=bool(rng.random() < P_DEGRADE))
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
                 neg_rate: float = 1.0, neg_weights: dict[str, float] | None = None) -> None:
        self.seed, self.batch_size, self.steps, self.group = seed, batch_size, steps, group
        self.negatives, self.neg_rate, self.neg_weights = negatives, neg_rate, neg_weights
        self.preprocess, self.tokenizer = preprocess, tokenizer
        self.curriculum_steps = curriculum * steps

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
        samples = [make_sample(rng, k, bool(e)) for k, e in zip(classes, easy, strict=True)]
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


# ----------------------------------------------------------------------------- loss


def positives(attrs: torch.Tensor, mentioned: torch.Tensor) -> torch.Tensor:
    """pos[i, j]: caption j is true of image i (every attribute it mentions matches).

    Identical or less specific captions in a batch thus count as positives of each other,
    which keeps short captions like "a red star" from being pushed away from other red stars.
    """
    ok = (mentioned[None, :, :] == -1) | (mentioned[None, :, :] == attrs[:, None, :])
    return ok.all(dim=-1).float()


def _multi_positive_ce(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row against a uniform target over its positives."""
    keep = pos.sum(1) > 0
    target = pos[keep] / pos[keep].sum(1, keepdim=True)
    return -(target * F.log_softmax(logits[keep], dim=1)).sum(1).mean()


def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, attrs: torch.Tensor,
              mentioned: torch.Tensor, i2i_weight: float = 0.5, i2i_temp: float = 0.1,
              i2i_keep_position: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """Multi-positive image<->text loss plus a supervised image<->image term.

    ``txt``/``mentioned`` may hold more captions than there are images: the hard negatives.
    They join both softmaxes; which caption is true of which image is decided by attributes
    alone, so a negative that fits another image in the batch is that image's positive. The
    image term (same colour+shape = positive) makes image-to-image search group by object
    rather than by background. With ``i2i_keep_position`` a same-object pair at two different
    known positions is left out of that term (neither pulled together nor pushed apart), so
    it does not teach the image tower to forget where the shape is.
    """
    pos = positives(attrs, mentioned)
    logits = scale * img @ txt.t()
    l_i2t = _multi_positive_ce(logits, pos)
    l_t2i = _multi_positive_ce(logits.t(), pos.t())
    same = (attrs[:, None, :2] == attrs[None, :, :2]).all(-1).float()
    eye = torch.eye(len(img), dtype=torch.bool)
    same = same.masked_fill(eye, 0)
    drop = eye
    if i2i_keep_position:
        pos_i, pos_j = attrs[:, None, 3], attrs[None, :, 3]
        moved = (same > 0) & (pos_i >= 0) & (pos_j >= 0) & (pos_i != pos_j)
        same = same.masked_fill(moved, 0)
        drop = eye | moved
    sim = (img @ img.t() / i2i_temp).masked_fill(drop, -1e4)
    l_i2i = _multi_positive_ce(sim, same) if same.sum() > 0 else sim.new_zeros(())
    loss = (l_i2t + l_t2i) / 2 + i2i_weight * l_i2i
    parts = {"i2t": l_i2t.item(), "t2i": l_t2i.item(), "i2i": l_i2i.item()}
    return loss, parts


# ----------------------------------------------------------------------------- training


def _optimizer(model: torch.nn.Module, lr: float, wd: float, extra: torch.nn.Module | None = None
               ) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    named = list(model.named_parameters()) + (list(extra.named_parameters()) if extra else [])
    for name, p in named:
        skip = p.ndim < 2 or "token_embedding" in name or "positional" in name
        (no_decay if skip else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.98), eps=1e-6)


def _lr_at(step: int, progress: float, lr: float, warmup: int) -> float:
    """Linear warmup (in steps), then cosine decay over ``progress`` in [0, 1]."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _progress(step: int, steps: int, elapsed: float, budget_s: float) -> float:
    """Fraction of the run done: by steps, or by wall clock when the time cap binds first.

    On a free machine the step count decides and the run is bit-reproducible; on a busy
    shared CPU the schedule still anneals to zero before the cap instead of being cut off.
    """
    return max(step / max(1, steps), elapsed / budget_s)


class PositionProbe(torch.nn.Module):
    """One linear classifier of position, shared by both towers and dropped after training.

    Applied to image embeddings (the true position) and to text embeddings (the position the
    caption names), it makes both towers put position on the same directions of the joint
    space. Without it, neither tower starts to encode position (the text embeddings of "on the
    left" and "on the right" had cosine 1.000): while one tower ignores it, the contrastive
    loss gives the other no gradient to learn it either.
    """

    def __init__(self, embed_dim: int, smoothing: float = 0.0) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(embed_dim, len(POSITIONS))
        self.smoothing = smoothing

    def loss(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        known = labels >= 0
        if not known.any():
            return emb.new_zeros(())
        return F.cross_entropy(self.linear(emb[known]), labels[known], label_smoothing=self.smoothing)


def train_step(model: torch.nn.Module, batch: dict[str, torch.Tensor],
               opt: torch.optim.Optimizer, i2i_weight: float, negatives: bool = True,
               i2i_keep_position: bool = False, probe: PositionProbe | None = None,
               probe_weight: float = 0.0, probe_image: bool = True) -> dict[str, float]:
    """One optimisation step (with the batch's hard-negative captions, if it has them and
    ``negatives``); returns the loss parts for logging."""
    images = batch["images"].contiguous(memory_format=torch.channels_last)
    img = model.encode_image(images, normalize=True)
    tokens, mentioned = batch["tokens"], batch["mentioned"]
    if negatives and "neg_tokens" in batch:
        tokens = torch.cat([tokens, batch["neg_tokens"]])
        mentioned = torch.cat([mentioned, batch["neg_mentioned"]])
    txt = model.encode_text(tokens, normalize=True)
    loss, parts = clip_loss(img, txt, model.logit_scale.exp(), batch["attrs"], mentioned, i2i_weight,
                            i2i_keep_position=i2i_keep_position)
    if probe is not None and probe_weight > 0:
        pos_col = ATTRS.index("position")
        l_probe = probe.loss(txt, mentioned[:, pos_col])
        if probe_image:
            l_probe = l_probe + probe.loss(img, batch["attrs"][:, pos_col])
        loss = loss + probe_weight * l_probe
        parts["probe"] = l_probe.item()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return {"loss": loss.item(), **parts}


def save_weights(model: torch.nn.Module, path: Path) -> int:
    """Save the state dict as fp16 safetensors (loads into the fp32 model); returns bytes."""
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous().clone()
          for k, v in model.state_dict().items()}
    save_file(sd, str(path), metadata={"format": "pt", "model": MODEL_NAME})
    return path.stat().st_size


def train(out: Path, seed: int = 0, steps: int = 3300, minutes: float = 20.0,
          batch_size: int = 64, lr: float = 2e-3, workers: int = 1, i2i_weight: float = 1.0,
          eval_n: int = 600, log_every: int = 25, cfg: dict | None = None,
          threads: int = 1, save_every: int = 0, init: Path | None = None,
          neg_from: float = 0.0, neg_rate: float = TRAIN_NEG_RATE,
          neg_weights: dict[str, float] | None = None, i2i_keep_position: bool = False,
          probe_weight: float = TRAIN_PROBE_WEIGHT,
          probe_smoothing: float = TRAIN_PROBE_SMOOTHING, ema_decay: float = TRAIN_EMA_DECAY,
          probe_from: float = TRAIN_PROBE_FROM, probe_image: bool = True,
          tune_batches: int | None = None, tune_epochs: int | None = None,
          tune_lr: float | None = None, tune_i2i_weight: float | None = None) -> dict:
    """Train, save config + weights + log into ``out``, and return the log dict.

    Position is taught by a linear probe shared by both towers (``probe_weight``) plus
    position-only hard-negative captions for ``neg_rate`` of the samples from ``neg_from`` of
    the run on (0 = from the start). Without the probe the model ranked positions at chance;
    hard negatives alone (any mix) cost colour+shape precision. Trial runs: benchmarks/RESULTS.md.

    ``steps`` fixes the schedule (reproducible); ``minutes`` is only a safety cap that
    stops early on a slow machine (recorded in the log as ``stopped_early``).

    Stage 2 (``clipsearch.tiny_tune``, ~2 min; ``tune_batches=0`` skips it) then tunes the
    top of both towers on frozen features with a heavier image-image term. It runs only if the
    cap leaves it time, so the whole run (evaluations aside) stays within ``minutes``.
    """
    from clipsearch import tiny_tune

    tune_batches = tiny_tune.TUNE_BATCHES if tune_batches is None else tune_batches
    tune_epochs = tiny_tune.TUNE_EPOCHS if tune_epochs is None else tune_epochs
    tune_lr = tiny_tune.TUNE_LR if tune_lr is None else tune_lr
    tune_i2i_weight = tiny_tune.TUNE_I2I_WEIGHT if tune_i2i_weight is None else tune_i2i_weight
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    cfg_path = write_config(out, cfg or model_config())
    model, preprocess, tokenizer = build_model(cfg_path, seed)
    if init is not None:  # continue from earlier weights (same config), e.g. the shipped model
        from safetensors.torch import load_file

        model.load_state_dict({k: v.float() for k, v in load_file(str(init)).items()}, strict=True)
    # NHWC convolutions are ~30% faster on CPU (oneDNN) for this tower; weights are saved
    # contiguous, so the shipped file is layout-agnostic.
    model.to(memory_format=torch.channels_last)
    model.train()
    probe = (PositionProbe(model.text_projection.shape[1], probe_smoothing) if probe_weight > 0
             else None)
    opt = _optimizer(model, lr, wd=0.05, extra=probe)
    ema = None
    if ema_decay:  # the shipped weights are an exponential moving average of the trained ones
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
    warmup = max(1, min(60, steps // 10))
    neg_weights = neg_weights or TRAIN_NEG_WEIGHTS
    source = BatchSource(seed, batch_size, preprocess, tokenizer, steps, negatives=neg_from < 1,
                         neg_rate=neg_rate, neg_weights=neg_weights)
    history: list[dict] = []
    start, step = time.time(), 0
    stopped_early = False
    for step, batch in enumerate(batch_loader(source, workers)):
        progress = _progress(step, steps, time.time() - start, minutes * 60)
        if progress >= 1.0:
            stopped_early = True
            break
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, progress, lr, warmup)
        parts = train_step(model, batch, opt, i2i_weight, negatives=progress >= neg_from,
                           i2i_keep_position=i2i_keep_position, probe=probe,
                           probe_weight=probe_weight if progress >= probe_from else 0.0,
                           probe_image=probe_image)
        if ema is not None:
            ema.update_parameters(model)
        if save_every and step and step % save_every == 0:
            save_weights(model, out / f"{MODEL_NAME}.safetensors")  # snapshot for peeking
        if step % log_every == 0 or step == steps - 1:
            parts.update(step=step, elapsed_s=round(time.time() - start, 1),
                         scale=round(model.logit_scale.exp().item(), 2))
            history.append({k: round(v, 4) if isinstance(v, float) else v
                            for k, v in parts.items()})
            print(json.dumps(history[-1]), flush=True)
    train_s = time.time() - start
    final = ema.module if ema is not None else model
    final.eval()
    done = step + (0 if stopped_early else 1)
    tune_log, stage1_dir = None, None
    left_s = minutes * 60 - (time.time() - start)
    if tune_batches and tune_epochs and left_s < tiny_tune.TUNE_MIN_SECONDS:
        # The cap is a promise about the whole run: a machine too slow for both stages gets
        # the stage-1 model, and says so.
        tune_log = {"skipped": f"{left_s:.0f} s of the {minutes:g}-minute cap left; stage 2 needs "
                               f"~{tiny_tune.TUNE_MIN_SECONDS} s"}
        print(f"stage 2 skipped: {tune_log['skipped']}", flush=True)
    elif tune_batches and tune_epochs:
        if eval_n:  # keep stage 1 next to the result, so the log shows what stage 2 changed
            stage1_dir = out / "stage1"
            write_config(stage1_dir, json.loads(cfg_path.read_text()))
            save_weights(final, stage1_dir / f"{MODEL_NAME}.safetensors")
        tune_log = tiny_tune.tune_top(final, source, first_step=steps, seed=seed, batches=tune_batches,
                                      epochs=tune_epochs, lr=tune_lr, i2i_weight=tune_i2i_weight,
                                      workers=2 * workers)
    size = save_weights(final, out / f"{MODEL_NAME}.safetensors")
    log = {"model": MODEL_NAME, "seed": seed, "steps_planned": steps, "steps_done": done,
           "stopped_early": stopped_early, "batch_size": batch_size, "lr": lr,
           "i2i_weight": i2i_weight, "i2i_keep_position": i2i_keep_position,
           "probe_weight": probe_weight, "probe_smoothing": probe_smoothing, "probe_from": probe_from,
           "probe_image": probe_image,
           "ema_decay": ema_decay,
           "neg_from": neg_from,
           "neg_rate": neg_rate, "neg_weights": neg_weights,
           "train_seconds": round(train_s, 1), "tune": tune_log,
           "total_seconds": round(time.time() - start, 1),
           "weights_bytes": size, "torch_threads": torch.get_num_threads(),
           "params": sum(p.numel() for p in model.parameters()), "history": history}
    if eval_n:
        from clipsearch.eval_tiny import evaluate
        if stage1_dir is not None:
            log["stage1_eval"] = evaluate(stage1_dir, n=eval_n, seed=12345)
        log["final_eval"] = evaluate(out, n=eval_n, seed=12345)
    (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
    return log


def _parse_weights(text: str | None) -> dict[str, float] | None:
    """'position=1,size=0.2' -> {"position": 1.0, "size": 0.2}."""
    if not text:
        return None
    pairs = [kv.split("=") for kv in text.split(",")]
    bad = [k for k, *_ in pairs if k not in ATTRS]
    if bad or any(len(p) != 2 for p in pairs):
        raise SystemExit(f"--neg-weights: expected attr=weight pairs over {ATTRS}, got {text!r}")
    return {k: float(v) for k, v in pairs}


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: ``python -m clipsearch.train_tiny --out DIR --seed 0``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=3300)
    ap.add_argument("--minutes", type=float, default=20.0,
                    help="wall-clock cap on the whole run; stage 2 is skipped if it would not fit")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--workers", type=int, default=1, help="render processes (0 = inline)")
    ap.add_argument("--i2i-weight", type=float, default=1.0)
    ap.add_argument("--i2i-keep-position", action="store_true",
                    help="leave same-object pairs at different positions out of the image-image term")
    ap.add_argument("--probe-weight", type=float, default=TRAIN_PROBE_WEIGHT,
                    help="weight of the shared position probe on both towers (0 = off)")
    ap.add_argument("--probe-smoothing", type=float, default=TRAIN_PROBE_SMOOTHING,
                    help="label smoothing of the position probe: bounds how far it pushes position "
                         "apart in the embedding once it is learned")
    ap.add_argument("--probe-from", type=float, default=TRAIN_PROBE_FROM,
                    help="fraction of the run after which the position probe is used (0 = from the start)")
    ap.add_argument("--probe-text-only", action="store_true",
                    help="apply the position probe to caption embeddings only; the image tower then "
                         "learns position from the contrastive loss alone")
    ap.add_argument("--ema-decay", type=float, default=TRAIN_EMA_DECAY,
                    help="ship an exponential moving average of the weights (e.g. 0.998; 0 = off)")
    ap.add_argument("--neg-from", type=float, default=0.0,
                    help="fraction of the run after which hard-negative captions are used (1 = never)")
    ap.add_argument("--neg-rate", type=float, default=TRAIN_NEG_RATE,
                    help="share of samples that get a hard-negative caption")
    ap.add_argument("--neg-weights", default=None,
                    help="which attribute a negative changes, e.g. 'position=1' (default "
                         + ",".join(f"{k}={v}" for k, v in TRAIN_NEG_WEIGHTS.items()) + ")")
    ap.add_argument("--tune-batches", type=int, default=None,
                    help="stage 2: fresh training batches whose frozen features tune the top of both "
                         "towers (default 400; 0 skips stage 2)")
    ap.add_argument("--tune-epochs", type=int, default=None, help="stage 2: passes over them (default 3)")
    ap.add_argument("--tune-lr", type=float, default=None, help="stage 2: peak learning rate (default 5e-4)")
    ap.add_argument("--tune-i2i-weight", type=float, default=None,
                    help="stage 2: weight of the image-image term (default 3)")
    ap.add_argument("--eval-n", type=int, default=600, help="0 skips the final evaluation")
    ap.add_argument("--save-every", type=int, default=0, help="snapshot weights every N steps")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch compute threads; 1 + one render worker fills 2 cores, and on a "
                         "busy shared CPU 2 threads were 10x slower (OpenMP barrier stalls)")
    ap.add_argument("--init", type=Path, default=None,
                    help="start from these weights (.safetensors of the same config)")
    args = ap.parse_args(argv)
    log = train(args.out, args.seed, args.steps, args.minutes, args.batch_size, args.lr,
                args.workers, args.i2i_weight, args.eval_n, threads=args.threads,
                save_every=args.save_every, init=args.init, neg_from=args.neg_from,
                neg_rate=args.neg_rate, neg_weights=_parse_weights(args.neg_weights),
                i2i_keep_position=args.i2i_keep_position, probe_weight=args.probe_weight,
                probe_smoothing=args.probe_smoothing, ema_decay=args.ema_decay,
                probe_from=args.probe_from, probe_image=not args.probe_text_only,
                tune_batches=args.tune_batches, tune_epochs=args.tune_epochs, tune_lr=args.tune_lr,
                tune_i2i_weight=args.tune_i2i_weight)
    print(json.dumps({k: v for k, v in log.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
