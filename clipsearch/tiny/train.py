"""Train clipsearch-tiny: a small open_clip CLIP for the coloured-shapes world, on CPU.

No weights can be downloaded where clipsearch is developed and tested, so the project
trains its own demo model here. Data is rendered on the fly by ``clipsearch.tiny.synth``;
every batch is a pure function of (seed, step), so a run is reproducible.

    python -m clipsearch.tiny.train --out out/tiny --seed 0      # 3,300 steps, <= 20 min

``--steps`` fixes the schedule; when the wall-clock cap ``--minutes`` binds first (a busy
shared CPU), the cosine schedule follows the clock instead and the run stops at the cap.
Stage 2 (``clipsearch.tiny.tune``, when the cap leaves time for it) then tunes the top of
both towers on frozen features for image-to-image search (timings: benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from clipsearch.tiny import tune
from clipsearch.tiny.captions import write_captions
from clipsearch.tiny.data import ATTRS, TRAIN_NEG_RATE, TRAIN_NEG_WEIGHTS, BatchSource, batch_loader
from clipsearch.tiny.losses import PositionProbe, clip_loss
from clipsearch.tiny.model import MODEL_NAME, build_model, model_config, save_weights, write_config

TRAIN_PROBE_WEIGHT = 0.1
TRAIN_PROBE_SMOOTHING = 0.0
TRAIN_EMA_DECAY = 0.0
TRAIN_PROBE_FROM = 0.0
TRAIN_VARIETY = 0.0  # share of images drawn with synth.variety (issue #22 recipe: --variety 0.6)
TRAIN_VARIETY_FROM = 0.0  # fraction of the run after which --variety applies



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
          tune_lr: float | None = None, tune_i2i_weight: float | None = None,
          variety: float = TRAIN_VARIETY, curriculum: float = 0.2,
          variety_from: float = TRAIN_VARIETY_FROM) -> dict:
    """Train, save config + weights + log into ``out``, and return the log dict.

    Position is taught by a linear probe shared by both towers (``probe_weight``) plus
    position-only hard-negative captions for ``neg_rate`` of the samples from ``neg_from`` of
    the run on (0 = from the start). Without the probe the model ranked positions at chance;
    hard negatives alone (any mix) cost colour+shape precision. Trial runs: benchmarks/RESULTS.md.

    ``steps`` fixes the schedule (reproducible); ``minutes`` is only a safety cap that
    stops early on a slow machine (recorded in the log as ``stopped_early``).

    Stage 2 (``clipsearch.tiny.tune``, ~2 min; ``tune_batches=0`` skips it) then tunes the
    top of both towers on frozen features with a heavier image-image term. It runs only if the
    cap leaves it time, so the whole run (evaluations aside) stays within ``minutes``.
    """
    tune_batches = tune.TUNE_BATCHES if tune_batches is None else tune_batches
    tune_epochs = tune.TUNE_EPOCHS if tune_epochs is None else tune_epochs
    tune_lr = tune.TUNE_LR if tune_lr is None else tune_lr
    tune_i2i_weight = tune.TUNE_I2I_WEIGHT if tune_i2i_weight is None else tune_i2i_weight
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    cfg_path = write_config(out, cfg or model_config())
    write_captions(out)  # what centering reads beside the weights
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
                         neg_rate=neg_rate, neg_weights=neg_weights, variety=variety,
                         curriculum=curriculum, variety_from=variety_from)
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
    if tune_batches and tune_epochs and left_s < tune.TUNE_MIN_SECONDS:
        # The cap is a promise about the whole run: a machine too slow for both stages gets
        # the stage-1 model, and says so.
        tune_log = {"skipped": f"{left_s:.0f} s of the {minutes:g}-minute cap left; stage 2 needs "
                               f"~{tune.TUNE_MIN_SECONDS} s"}
        print(f"stage 2 skipped: {tune_log['skipped']}", flush=True)
    elif tune_batches and tune_epochs:
        if eval_n:  # keep stage 1 next to the result, so the log shows what stage 2 changed
            stage1_dir = out / "stage1"
            write_config(stage1_dir, json.loads(cfg_path.read_text()))
            save_weights(final, stage1_dir / f"{MODEL_NAME}.safetensors")
        tune_log = tune.tune_top(final, source, first_step=steps, seed=seed, batches=tune_batches,
                                      epochs=tune_epochs, lr=tune_lr, i2i_weight=tune_i2i_weight,
                                      workers=2 * workers)
    size = save_weights(final, out / f"{MODEL_NAME}.safetensors")
    log = {"model": MODEL_NAME, "seed": seed, "steps_planned": steps, "steps_done": done,
           "stopped_early": stopped_early, "batch_size": batch_size, "lr": lr,
           "i2i_weight": i2i_weight, "i2i_keep_position": i2i_keep_position,
           "probe_weight": probe_weight, "probe_smoothing": probe_smoothing, "probe_from": probe_from,
           "probe_image": probe_image,
           "ema_decay": ema_decay, "variety": variety, "variety_from": variety_from,
           "curriculum": curriculum,
           "neg_from": neg_from,
           "neg_rate": neg_rate, "neg_weights": neg_weights,
           "train_seconds": round(train_s, 1), "tune": tune_log,
           "total_seconds": round(time.time() - start, 1),
           "weights_bytes": size, "torch_threads": torch.get_num_threads(),
           "params": sum(p.numel() for p in model.parameters()), "history": history}
    if eval_n:
        from clipsearch.tiny.eval import evaluate
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
    """CLI entry point: ``python -m clipsearch.tiny.train --out DIR --seed 0``."""
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
    ap.add_argument("--variety", type=float, default=TRAIN_VARIETY,
                    help="share of training images drawn with varied proportions, fills, colours and "
                         "resampling chains (clipsearch.tiny.synth.variety; 0 = the canonical drawing)")
    ap.add_argument("--variety-from", type=float, default=TRAIN_VARIETY_FROM,
                    help="fraction of the run after which --variety applies (before it the batches are "
                         "the canonical stream's, draw for draw; stage 2 is after it)")
    ap.add_argument("--curriculum", type=float, default=0.2,
                    help="fraction of the run that starts on plain backgrounds (0 to continue from --init)")
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
                tune_i2i_weight=args.tune_i2i_weight, variety=args.variety,
                curriculum=args.curriculum, variety_from=args.variety_from)
    print(json.dumps({k: v for k, v in log.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
