"""Long-CLIP checkpoints, and long text that never gets silently truncated.

Long-CLIP (Zhang et al., 2024) stretches CLIP's text context from 77 to 248 tokens by
keeping the first 20 learned positions and interpolating the rest. Its checkpoints use
OpenAI's key layout plus a second table ``positional_embedding_res``; its model adds
``pe * mask1 + pe_res * mask2`` where ``mask1`` selects positions 0..19. That sum is just
one table, ``cat(pe[:20], pe_res[20:])``, so a Long-CLIP checkpoint is an ordinary
open_clip CLIP whose text context length is 248.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from clipsearch.errors import ModelUnavailable, UsageError

KEPT_POSITIONS = 20  # positions Long-CLIP copies verbatim from CLIP
LONGCLIP_CONTEXT = 248
_OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")


def is_longclip(state_dict: dict[str, Any]) -> bool:
    """Whether a state dict is laid out like a Long-CLIP checkpoint (with or without ``module.``)."""
    return any(k == "positional_embedding_res" or k.endswith(".positional_embedding_res") for k in state_dict)


def longclip_to_openclip(state_dict: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Convert a Long-CLIP state dict to open_clip's CLIP layout; returns it and the context length.

    The result loads with ``strict=True`` into the base architecture built with
    ``text_cfg.context_length`` equal to the returned length (248 for released models), e.g.
    ``open_clip.create_model(arch, force_context_length=ctx)``. The input is not modified.
    """
    prefix = ""
    if "positional_embedding_res" not in state_dict:
        if "module.positional_embedding_res" in state_dict:
            prefix = "module."
        else:
            raise ModelUnavailable("not a Long-CLIP checkpoint: no positional_embedding_res key")
    sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    pe, pe_res = sd.pop("positional_embedding", None), sd.pop("positional_embedding_res")
    if pe is None:
        raise ModelUnavailable("Long-CLIP checkpoint has positional_embedding_res "
                               "but no positional_embedding")
    if pe.ndim != 2 or pe.shape != pe_res.shape:
        raise ModelUnavailable(
            f"Long-CLIP positional tables disagree: {tuple(pe.shape)} vs {tuple(pe_res.shape)}"
        )
    ctx = int(pe.shape[0])
    if ctx <= KEPT_POSITIONS:
        raise ModelUnavailable(f"Long-CLIP positional table has only {ctx} positions")
    sd["positional_embedding"] = torch.cat([pe[:KEPT_POSITIONS], pe_res[KEPT_POSITIONS:]], dim=0)
    for key in _OPENAI_META_KEYS:
        sd.pop(key, None)
    return sd, ctx


# --------------------------------------------------------------------------- long text


def warn_if_truncated(encoder: Any, text: str) -> bool:
    """Warn (``UserWarning``) and return True when ``text`` exceeds the encoder's context."""
    n = encoder.count_tokens(text)
    if n > encoder.context_length:
        warnings.warn(
            f"text has {n} tokens but {encoder.model_id} reads {encoder.context_length}; "
            "the rest would be dropped (use encode_long_text to keep it)",
            stacklevel=2,
        )
        return True
    return False


def _markers(encoder: Any) -> int:
    """Tokens an empty text takes: CLIP adds start and end (2), SigLIP only an end (1)."""
    return encoder.count_tokens("")


def _word_tokens(encoder: Any, word: str, markers: int) -> int:
    return max(encoder.count_tokens(word) - markers, 1)


def split_by_tokens(encoder: Any, text: str, max_tokens: int | None = None) -> list[str]:
    """Greedy split on whitespace into chunks that each fit the context (markers included).

    A single word longer than the whole context is cut into character pieces that fit.
    """
    markers = _markers(encoder)
    limit = max_tokens or encoder.context_length
    budget = limit - markers
    if budget < 1:
        raise UsageError(f"chunk size {max_tokens} leaves no room for text tokens")
    chunks: list[str] = []
    cur: list[str] = []
    used = 0
    for word in text.split():
        n = _word_tokens(encoder, word, markers)
        if n > budget:  # pathological: one "word" longer than the context
            step = max(1, len(word) * budget // n)
            pieces = [word[i:i + step] for i in range(0, len(word), step)]
        else:
            pieces = [word]
        for piece in pieces:
            m = n if piece is word else _word_tokens(encoder, piece, markers)
            if cur and used + m > budget:
                chunks.append(" ".join(cur))
                cur, used = [], 0
            cur.append(piece)
            used += m
    if cur:
        chunks.append(" ".join(cur))
    # Per-word counts can differ from in-context BPE; re-split any chunk that still overflows.
    out: list[str] = []
    for chunk in chunks:
        words = chunk.split(" ")
        if encoder.count_tokens(chunk) <= limit or len(words) == 1:
            out.append(chunk)
        else:
            half = len(words) // 2
            out += split_by_tokens(encoder, " ".join(words[:half]), limit)
            out += split_by_tokens(encoder, " ".join(words[half:]), limit)
    return out


def encode_long_text(encoder: Any, text: str) -> np.ndarray:
    """One L2-normalised vector for text of any length: never silently truncated.

    Text that fits is encoded as is. Longer text is split on whitespace into chunks that
    each fit the context; the chunk vectors are averaged, weighted by their token counts
    (so a short tail chunk does not count as much as a full one), and re-normalised.
    """
    if not text.strip():
        raise UsageError("cannot encode empty text")
    if encoder.count_tokens(text) <= encoder.context_length:
        return np.asarray(encoder.encode_texts([text])[0], dtype=np.float32)
    chunks = split_by_tokens(encoder, text)
    vecs = np.asarray(encoder.encode_texts(chunks), dtype=np.float64)
    markers = _markers(encoder)
    weights = np.array([max(encoder.count_tokens(c) - markers, 1) for c in chunks], dtype=np.float64)
    pooled = (vecs * weights[:, None]).sum(0) / weights.sum()
    return (pooled / max(np.linalg.norm(pooled), 1e-12)).astype(np.float32)
