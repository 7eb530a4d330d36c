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

import time
from collections.abc import Callable, Sequence
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
            model.token_embedding, model.positional_embedding, model.transformer,  # type: ignore[arg-type]
            getattr(model, "attn_mask", None), model.ln_final, model.text_projection,  # type: ignore[arg-type]
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
        return int((ids[0] == tower.eos_id).int().argmax())  # type: ignore[attr-defined]  # a Tensor
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


@dataclass
class InversionResult:
    """``features``: (n, dim) L2-normalised float32 features; ``cosines``: their cosine with
    the targets; ``loss_curve``: mean loss per step of the last batch; ``seconds``: wall time."""

    features: np.ndarray
    cosines: np.ndarray
    loss_curve: list[float]
    seconds: float



def _as_targets(targets: np.ndarray | torch.Tensor, steps: int, batch_size: int) -> torch.Tensor:
    target = torch.as_tensor(np.asarray(targets, dtype=np.float32))
    if target.ndim == 1:
        target = target[None]
    if target.ndim != 2 or target.shape[0] == 0:
        raise TransformError(f"targets must be a non-empty (n, dim) array, got shape {tuple(target.shape)}")
    if steps < 1 or batch_size < 1:
        raise TransformError("steps and batch_size must be positive")
    return F.normalize(target, dim=-1)


def _optimise(
    forward: Callable[[torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    init_std: float,
    target: torch.Tensor,
    *,
    steps: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
) -> InversionResult:
    """Shared loop: per-target pseudo parameters of ``shape``, cosine loss, AdamW, frozen model.

    Gradients are taken with respect to the pseudo parameters only (``torch.autograd.grad``),
    so the model is never touched: no ``requires_grad`` or train/eval flips, no ``.grad`` on its
    parameters. Other threads may encode with the same model meanwhile. The model is used in
    the mode it is in (`Encoder` keeps it in eval mode).

    Targets in a batch are independent (each parameter only affects its own loss and AdamW
    is element-wise), so batching changes speed, not results.
    """
    gen = torch.Generator().manual_seed(seed)
    feats: list[torch.Tensor] = []
    curve: list[float] = []
    t0 = time.perf_counter()
    for start in range(0, target.shape[0], batch_size):
        tgt = target[start:start + batch_size]
        init = torch.randn(tgt.shape[0], *shape, generator=gen) * init_std
        pseudo = nn.Parameter(init.to(tgt.device))
        opt = torch.optim.AdamW([pseudo], lr=lr, weight_decay=weight_decay)
        curve = []
        with torch.enable_grad():
            for _ in range(steps):
                loss = (1.0 - F.cosine_similarity(forward(pseudo).float(), tgt, dim=-1)).mean()
                (pseudo.grad,) = torch.autograd.grad(loss, [pseudo])
                opt.step()
                curve.append(float(loss.detach()))
        with torch.no_grad():
            feats.append(F.normalize(forward(pseudo).float(), dim=-1))
    features = torch.cat(feats)
    cos = (features * target).sum(-1)
    return InversionResult(
        features.cpu().numpy().astype(np.float32),
        cos.cpu().numpy().astype(np.float32),
        curve,
        time.perf_counter() - t0,
    )


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
) -> InversionResult:
    """Optimise one pseudo-token per target image feature so the text tower reproduces it.

    Returns text-side features (search them against the image index like a text query).
    """
    tower = text_tower(model)
    target = _as_targets(targets, steps, batch_size).to(tower.token_embedding.weight.device)
    placeholder_ids(tokenizer, template, placeholder)  # validate before the loop

    def forward(pseudo: torch.Tensor) -> torch.Tensor:
        return encode_text_with_pseudo_token(model, tokenizer, template, pseudo,
                                             placeholder=placeholder, truncate=True)

    init_std = float(tower.token_embedding.weight.detach().float().std())
    return _optimise(forward, (tower.token_embedding.embedding_dim,), init_std, target,
                     steps=steps, lr=lr, weight_decay=weight_decay, batch_size=batch_size, seed=seed)


def torch_side(encoder: Any) -> Any:
    """The PyTorch encoder behind `encoder`: inversion needs autograd, which an exported
    (ONNX, OpenVINO) encoder does not have; it loads the same model in torch for it."""
    loader = getattr(encoder, "torch_encoder", None)
    return loader() if callable(loader) else encoder


def invert_features(encoder: Any, image_features: np.ndarray, **kwargs: Any) -> np.ndarray:
    """OTI text features (n, dim), L2-normalised, for already-computed image features."""
    enc = torch_side(encoder)
    return oti(enc.model, enc.tokenizer, image_features, **kwargs).features


def invert_images(encoder: Any, images: Sequence[Any], **kwargs: Any) -> np.ndarray:
    """Image queries (PIL images) -> OTI text features to search the image index with.

    ``kwargs`` go to :func:`oti` (template, steps, lr, weight_decay, batch_size, seed).
    """
    if len(images) == 0:
        raise TransformError("invert_images needs at least one image")
    return invert_features(encoder, encoder.encode_images(list(images)), **kwargs)


# --------------------------------------------------------------------------- OVI (text -> image side)


def _vision_transformer(model: nn.Module) -> nn.Module:
    from open_clip.transformer import VisionTransformer  # noqa: PLC0415

    visual = getattr(model, "visual", None)
    if not isinstance(visual, VisionTransformer):
        raise TransformError(
            f"visual inversion needs a ViT image tower; this model has {type(visual).__name__}",
            hint="use a ViT-based model, or search without visual inversion",
        )
    return visual


def encode_image_with_pseudo_tokens(model: nn.Module, pseudo_tokens: torch.Tensor) -> torch.Tensor:
    """Image features (B, dim), un-normalised, for a ViT fed ``pseudo_tokens`` (B, P, width)
    instead of patch embeddings (at the first P patch positions).

    Mirrors open_clip's ``VisionTransformer.forward`` after the patch convolution, so the
    real patch embeddings of an image give exactly ``model.encode_image``.
    """
    visual = _vision_transformer(model)
    from open_clip.transformer import _expand_token  # noqa: PLC0415

    n_pos = visual.positional_embedding.shape[0] - 1
    if pseudo_tokens.ndim != 3 or not 1 <= pseudo_tokens.shape[1] <= n_pos:
        raise TransformError(
            f"pseudo_tokens must be (B, 1..{n_pos}, width), got {tuple(pseudo_tokens.shape)}"
        )
    x = pseudo_tokens
    x = torch.cat([_expand_token(visual.class_embedding, x.shape[0]).to(x.dtype), x], dim=1)
    x = x + visual.positional_embedding[: x.shape[1]].to(x.dtype)
    x = visual.patch_dropout(x)
    x = visual.ln_pre(x)
    x = visual.transformer(x)
    pooled, _ = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled


def ovi(
    model: nn.Module,
    targets: np.ndarray | torch.Tensor,
    *,
    n_tokens: int = 4,
    steps: int = 150,
    lr: float = 2e-2,
    weight_decay: float = 0.01,
    batch_size: int = 32,
    seed: int = 0,
) -> InversionResult:
    """Optimisation-based visual inversion: text features -> image-side features.

    ``n_tokens`` pseudo patch embeddings per target are optimised (cosine loss, AdamW, model
    frozen) so the image tower's output matches each text feature; the result lives in the
    image modality, for text -> text search. Optional; ViT image towers only.
    """
    visual = _vision_transformer(model)
    target = _as_targets(targets, steps, batch_size).to(visual.class_embedding.device)  # type: ignore[arg-type]
    width = visual.class_embedding.shape[-1]

    def forward(pseudo: torch.Tensor) -> torch.Tensor:
        return encode_image_with_pseudo_tokens(model, pseudo)

    return _optimise(forward, (n_tokens, width), 0.02, target,  # type: ignore[arg-type]
                     steps=steps, lr=lr, weight_decay=weight_decay, batch_size=batch_size, seed=seed)


def invert_texts(encoder: Any, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
    """Text queries -> OVI image-side features (n, dim), L2-normalised; ``kwargs`` go to :func:`ovi`."""
    if len(texts) == 0:
        raise TransformError("invert_texts needs at least one text")
    return ovi(torch_side(encoder).model, encoder.encode_texts(list(texts)), **kwargs).features
