"""Stage 2 of clipsearch-tiny training: tune the top of both towers on frozen features.

Stage 1 (``clipsearch.tiny.train``) trains everything end to end for 3,300 steps. It leaves
image->image search weaker than text->image: images of one colour+shape at different sizes,
positions and backgrounds do not all cluster. A heavier image-image term from the start made
every metric worse (run I in benchmarks/RESULTS.md), because it disturbs the low-level
features while they form. Here the low-level features are settled, so stage 2 freezes the image
tower up to ``layer3`` and the text transformer, caches their outputs for fresh training
renders once, and tunes only the last image block, the attention pool and the text projection
with the image-image term weighted up. Caching makes each pass over ~25k samples take seconds
of compute instead of a full forward pass. The result is an ordinary open_clip state dict.

``clipsearch.tiny.train`` runs this stage itself. Alone, on a model trained with ``--tune-batches 0``:

    python -m clipsearch.tiny.tune --model-dir /tmp/stage1 --seed 1 --out /tmp/tuned
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool

from clipsearch.tiny.captions import write_captions
from clipsearch.tiny.data import TRAIN_NEG_RATE, TRAIN_NEG_WEIGHTS, BatchSource, batch_loader
from clipsearch.tiny.losses import clip_loss
from clipsearch.tiny.model import MODEL_NAME, save_weights, write_config

TUNE_BATCHES = 400
TUNE_EPOCHS = 3
TUNE_LR = 5e-4
TUNE_I2I_WEIGHT = 3.0
# Stage 2 took 104-110 s on an idle 2-core CPU; a run starts it only with this much of its
# wall-clock cap left.
TUNE_MIN_SECONDS = 120


def tuned_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What stage 2 trains: the last image block, the attention pool and the text projection."""
    visual = model.visual
    return [*visual.layer4.parameters(), *visual.attnpool.parameters(), model.text_projection]


@torch.no_grad()
def _frozen_image_features(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    v = model.visual
    return v.layer3(v.layer2(v.layer1(v.stem(images))))


@torch.no_grad()
def _frozen_text_features(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The pooled text features right before ``text_projection`` (mirrors ``CLIP.encode_text``)."""
    x = model.token_embedding(tokens) + model.positional_embedding
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    pooled = text_global_pool(x, tokens, model.text_pool_type,
                              eos_token_id=getattr(model, "text_eos_id", None))
    return pooled[0] if isinstance(pooled, tuple) else pooled


def cache_features(model: torch.nn.Module, source: BatchSource, first_step: int, batches: int,
                   workers: int) -> list[dict[str, torch.Tensor]]:
    """Frozen features of ``batches`` fresh training batches (steps ``first_step``..), with the
    hard-negative captions appended to each batch's captions as in stage 1."""

    class _Steps(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return batches

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return source[first_step + i]

    model.eval()
    cached = []
    for batch in batch_loader(_Steps(), workers):
        tokens, mentioned = batch["tokens"], batch["mentioned"]
        if "neg_tokens" in batch:
            tokens = torch.cat([tokens, batch["neg_tokens"]])
            mentioned = torch.cat([mentioned, batch["neg_mentioned"]])
        images = batch["images"].contiguous(memory_format=torch.channels_last)
        cached.append({"image": _frozen_image_features(model, images).half(),
                       "text": _frozen_text_features(model, tokens),
                       "attrs": batch["attrs"], "mentioned": mentioned})
    return cached


def tune_top(model: torch.nn.Module, source: BatchSource, first_step: int, seed: int,
             batches: int = TUNE_BATCHES, epochs: int = TUNE_EPOCHS, lr: float = TUNE_LR,
             i2i_weight: float = TUNE_I2I_WEIGHT, workers: int = 2, threads: int = 2,
             log: bool = True) -> dict:
    """Tune ``tuned_parameters(model)`` in place; returns timings and the loss per epoch.

    ``source`` yields the training distribution; batches from ``first_step`` on were never seen
    by stage 1. Deterministic given ``seed`` (render steps and shuffling order).
    """
    start = time.time()
    cached = cache_features(model, source, first_step, batches, workers)
    cache_s = time.time() - start
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    for p in model.parameters():
        p.requires_grad_(False)
    params = tuned_parameters(model)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scale = model.logit_scale.exp().detach()
    order = torch.Generator().manual_seed(seed)
    visual = model.visual
    visual.layer4.train()  # its batch norms follow the new features, as in stage 1
    total, done, losses = epochs * len(cached), 0, []
    for epoch in range(epochs):
        running = 0.0
        for j in torch.randperm(len(cached), generator=order).tolist():
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * done / total))
            done += 1
            b = cached[j]
            img = F.normalize(visual.attnpool(visual.layer4(b["image"].float())), dim=-1)
            txt = F.normalize(b["text"] @ model.text_projection, dim=-1)
            loss, _ = clip_loss(img, txt, scale, b["attrs"], b["mentioned"], i2i_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item()
        losses.append(round(running / max(1, len(cached)), 4))
        if log:
            print(f'{{"tune_epoch": {epoch}, "loss": {losses[-1]}, '
                  f'"elapsed_s": {time.time() - start:.1f}}}', flush=True)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    torch.set_num_threads(previous_threads)
    return {"batches": len(cached), "epochs": epochs, "lr": lr, "i2i_weight": i2i_weight,
            "cache_seconds": round(cache_s, 1), "seconds": round(time.time() - start, 1),
            "epoch_loss": losses}


def main(argv: list[str] | None = None) -> None:
    """CLI: stage 2 alone on the model in --model-dir; writes --out and prints its evaluation."""
    ap = argparse.ArgumentParser(description="Run stage 2 of clipsearch-tiny training alone on a "
                                             "trained model (one trained with --tune-batches 0).")
    ap.add_argument("--model-dir", type=Path, required=True, help="clipsearch-tiny.json + .safetensors")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0, help="the seed stage 1 was trained with")
    ap.add_argument("--first-step", type=int, default=3300,
                    help="stage 1's --steps: stage 2 renders that run's batches from here on")
    ap.add_argument("--batch-size", type=int, default=64, help="stage 1's --batch-size")
    ap.add_argument("--batches", type=int, default=TUNE_BATCHES)
    ap.add_argument("--epochs", type=int, default=TUNE_EPOCHS)
    ap.add_argument("--lr", type=float, default=TUNE_LR)
    ap.add_argument("--i2i-weight", type=float, default=TUNE_I2I_WEIGHT)
    ap.add_argument("--workers", type=int, default=2, help="render processes (0 = inline)")
    ap.add_argument("--variety", type=float, default=0.0, help="stage 1's --variety")
    ap.add_argument("--eval-n", type=int, default=600, help="0 skips the evaluation")
    args = ap.parse_args(argv)
    from clipsearch.tiny.eval import evaluate, load_model

    model, preprocess, tokenizer = load_model(args.model_dir)
    source = BatchSource(args.seed, args.batch_size, preprocess, tokenizer, args.first_step,
                         neg_rate=TRAIN_NEG_RATE, neg_weights=TRAIN_NEG_WEIGHTS, variety=args.variety)
    log = tune_top(model, source, args.first_step, args.seed, batches=args.batches, epochs=args.epochs,
                   lr=args.lr, i2i_weight=args.i2i_weight, workers=args.workers)
    write_config(args.out, json.loads((args.model_dir / f"{MODEL_NAME}.json").read_text()))
    write_captions(args.out)
    save_weights(model, args.out / f"{MODEL_NAME}.safetensors")
    if args.eval_n:
        for name, d in (("before", args.model_dir), ("after", args.out)):
            res = evaluate(d, n=args.eval_n, seed=12345)
            log[f"eval_{name}"] = {k: res[k] for k in ("t2i_p10", "full_r1", "i2i_p10", "position_acc")}
    (args.out / "tune_log.json").write_text(json.dumps(log, indent=2) + "\n")
    print(json.dumps(log, indent=2))


if __name__ == "__main__":
    main()
