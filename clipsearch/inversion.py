"""Optimization-based textual inversion (OTI): turn an image query into a text query.

CLIP's image->image neighbours are worse than its image->text ones ("intra-modal
misalignment", Cross the Gap, ICLR 2025): the contrastive loss only ever aligned images
with texts. OTI maps the query image into the text modality without training anything:
the model stays frozen and one pseudo-word embedding ``*`` in "a photo of *" is optimised
so that the text encoder's output matches the image feature. The resulting *text* feature
is then searched against the image index like any text query.

This needs the text tower with an injected token embedding; :func:`encode_text_with_pseudo_token`
reproduces open_clip's ``CLIP.encode_text`` (and ``TextTransformer.forward``) for that.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipsearch.errors import TransformError

DEFAULT_TEMPLATE = "a photo of {}"
DEFAULT_PLACEHOLDER = "*"


@dataclass
class _TextTower:
    """The pieces of an open_clip text encoder that ``encode_text`` uses, in order."""

    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor
    transformer: nn.Module
    attn_mask: torch.Tensor | None
    ln_final: nn.Module
    text_projection: Any
    pool_type: str
    eos_id: int | None


def text_tower(model: nn.Module) -> _TextTower:
    """Locate the text tower of an open_clip ``CLIP`` or ``CustomTextCLIP`` model.

    Raises ``TransformError`` for towers whose forward pass differs from plain CLIP's
    (Hugging Face text models, CoCa-style appended class tokens, padding masks).
    """
    from open_clip.transformer import TextTransformer  # noqa: PLC0415

    text = getattr(model, "text", None)
    if isinstance(text, TextTransformer):
        if text.cls_emb is not None or getattr(text, "use_pad_mask", False):
            raise TransformError("textual inversion does not support text towers with class tokens "
                                 "or pad masks")
        return _TextTower(
            text.token_embedding, text.positional_embedding, text.transformer, text.attn_mask,
            text.ln_final, text.text_projection, text.pool_type, getattr(text, "eos_id", None),
        )
    if text is None and all(hasattr(model, a) for a in ("token_embedding", "transformer", "ln_final")):
        return _TextTower(
            model.token_embedding, model.positional_embedding, model.transformer,
            getattr(model, "attn_mask", None), model.ln_final, model.text_projection,
            getattr(model, "text_pool_type", "argmax"), getattr(model, "text_eos_id", None),
        )
    raise TransformError(
        f"textual inversion needs an open_clip text transformer; {type(model).__name__} "
        f"({type(text).__name__ if text is not None else 'no text tower'}) is not supported"
    )


def placeholder_ids(
    tokenizer: Any, template: str, placeholder: str = DEFAULT_PLACEHOLDER
) -> tuple[torch.Tensor, int]:
    """Token ids (1, context_length) of ``template`` with the placeholder, and its position."""
    if template.count("{}") != 1:
        raise TransformError(f"template must contain exactly one '{{}}', got {template!r}")
    alone = tokenizer([placeholder])[0]
    inner = alone[alone != 0][1:-1]  # strip start/end markers and padding
    if inner.numel() != 1:
        raise TransformError(f"placeholder {placeholder!r} must be a single token, got {inner.numel()}")
    ids = tokenizer([template.format(placeholder)])
    where = (ids[0] == inner[0]).nonzero().flatten()
    if where.numel() != 1:
        raise TransformError(f"placeholder {placeholder!r} must occur once in {template!r} after tokenising")
    return ids, int(where[0])


def _pool_index(tower: _TextTower, ids: torch.Tensor) -> int:
    """Sequence position whose output becomes the text feature (same rule as open_clip)."""
    if tower.pool_type == "argmax":
        return int(ids[0].argmax())
    if tower.pool_type == "eos":
        return int((ids[0] == tower.eos_id).int().argmax())
    if tower.pool_type == "first":
        return 0
    if tower.pool_type == "last":
        return ids.shape[1] - 1
    raise TransformError(f"text pool type {tower.pool_type!r} is not supported for inversion")


def encode_text_with_pseudo_token(
    model: nn.Module,
    tokenizer: Any,
    template: str,
    pseudo_embeds: torch.Tensor,
    *,
    placeholder: str = DEFAULT_PLACEHOLDER,
    truncate: bool = False,
) -> torch.Tensor:
    """Text features (B, dim), un-normalised, for ``template`` with ``pseudo_embeds`` (B, width)
    in place of the placeholder token's embedding.

    Mirrors open_clip's ``encode_text`` step for step, so with a real token's embedding it
    returns exactly ``model.encode_text``. ``truncate=True`` runs the transformer only up
    to the pooled (end-of-text) position: with a causal mask later positions cannot affect
    it, so the result is the same up to float rounding and the pass is several times cheaper.
    """
    tower = text_tower(model)
    ids, pos = placeholder_ids(tokenizer, template, placeholder)
    device = tower.token_embedding.weight.device
    ids = ids.to(device)
    if pseudo_embeds.ndim != 2 or pseudo_embeds.shape[1] != tower.token_embedding.embedding_dim:
        raise TransformError(
            f"pseudo_embeds must be (B, {tower.token_embedding.embedding_dim}), "
            f"got {tuple(pseudo_embeds.shape)}"
        )
    batch = pseudo_embeds.shape[0]
    pool = _pool_index(tower, ids)
    length = ids.shape[1]
    if truncate and tower.attn_mask is not None and tower.pool_type in ("argmax", "eos"):
        length = pool + 1
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(ids[:, :length]).to(cast_dtype).expand(batch, -1, -1)
    x = torch.cat([x[:, :pos], pseudo_embeds[:, None, :].to(device, cast_dtype), x[:, pos + 1:]], dim=1)
    x = x + tower.positional_embedding[:length].to(cast_dtype)
    mask = tower.attn_mask
    if mask is not None and length != mask.shape[0]:
        mask = mask[:length, :length]
    x = tower.transformer(x, attn_mask=mask)
    x = tower.ln_final(x)
    x = x[:, pool]
    proj = tower.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
    return x


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients for the duration; restores the previous state."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        model.eval()
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


@dataclass
class OTIResult:
    """``features``: (n, dim) L2-normalised float32 text features; ``cosines``: their cosine
    with the targets; ``loss_curve``: mean loss per step of the last batch; ``seconds``: wall time."""

    features: np.ndarray
    cosines: np.ndarray
    loss_curve: list[float]
    seconds: float


def oti(
    model: nn.Module,
    tokenizer: Any,
    targets: np.ndarray | torch.Tensor,
    *,
    template: str = DEFAULT_TEMPLATE,
    steps: int = 150,
    lr: float = 2e-2,
    weight_decay: float = 0.01,
    batch_size: int = 32,
    seed: int = 0,
    placeholder: str = DEFAULT_PLACEHOLDER,
) -> OTIResult:
    """Optimise one pseudo-token per target feature (cosine loss, AdamW); model stays frozen.

    Queries in a batch are independent (each pseudo-token only affects its own loss, and
    AdamW is element-wise), so batching changes speed, not results.
    """
    target = torch.as_tensor(np.asarray(targets, dtype=np.float32))
    if target.ndim == 1:
        target = target[None]
    if target.ndim != 2 or target.shape[0] == 0:
        raise TransformError(f"targets must be a non-empty (n, dim) array, got shape {tuple(target.shape)}")
    if steps < 1 or batch_size < 1:
        raise TransformError("steps and batch_size must be positive")
    tower = text_tower(model)
    device = tower.token_embedding.weight.device
    target = F.normalize(target.to(device), dim=-1)
    width = tower.token_embedding.embedding_dim
    init_std = float(tower.token_embedding.weight.detach().float().std())
    gen = torch.Generator().manual_seed(seed)
    feats, curve = [], []
    t0 = time.perf_counter()
    with _frozen(model):
        for start in range(0, target.shape[0], batch_size):
            tgt = target[start:start + batch_size]
            init = torch.randn(tgt.shape[0], width, generator=gen) * init_std
            pseudo = nn.Parameter(init.to(device))
            opt = torch.optim.AdamW([pseudo], lr=lr, weight_decay=weight_decay)
            curve = []
            with torch.enable_grad():
                for _ in range(steps):
                    opt.zero_grad(set_to_none=True)
                    out = encode_text_with_pseudo_token(
                        model, tokenizer, template, pseudo, placeholder=placeholder, truncate=True
                    )
                    loss = (1.0 - F.cosine_similarity(out.float(), tgt, dim=-1)).mean()
                    loss.backward()
                    opt.step()
                    curve.append(float(loss.detach()))
            with torch.no_grad():
                out = encode_text_with_pseudo_token(
                    model, tokenizer, template, pseudo, placeholder=placeholder, truncate=True
                )
                feats.append(F.normalize(out.float(), dim=-1))
    features = torch.cat(feats)
    cos = (features * target).sum(-1)
    return OTIResult(
        features.cpu().numpy().astype(np.float32),
        cos.cpu().numpy().astype(np.float32),
        curve,
        time.perf_counter() - t0,
    )


def invert_features(encoder: Any, image_features: np.ndarray, **kwargs: Any) -> np.ndarray:
    """OTI text features (n, dim), L2-normalised, for already-computed image features."""
    return oti(encoder.model, encoder.tokenizer, image_features, **kwargs).features


def invert_images(encoder: Any, images: Sequence[Any], **kwargs: Any) -> np.ndarray:
    """Image queries (PIL images) -> OTI text features to search the image index with.

    ``kwargs`` go to :func:`oti` (template, steps, lr, weight_decay, batch_size, seed).
    """
    if len(images) == 0:
        raise TransformError("invert_images needs at least one image")
    return invert_features(encoder, encoder.encode_images(list(images)), **kwargs)
