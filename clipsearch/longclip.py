"""Long-CLIP checkpoints: 248-token text in an ordinary open_clip CLIP.

Long-CLIP (Zhang et al., 2024) stretches CLIP's text context from 77 to 248 tokens by
keeping the first 20 learned positions and interpolating the rest. Its checkpoints use
OpenAI's key layout plus a second table ``positional_embedding_res``; its model adds
``pe * mask1 + pe_res * mask2`` where ``mask1`` selects positions 0..19. That sum is just
one table, ``cat(pe[:20], pe_res[20:])``, so a Long-CLIP checkpoint is an ordinary
open_clip CLIP whose text context length is 248.
"""

from __future__ import annotations

from typing import Any

import torch

from clipsearch.checkpoint_formats import OPENAI_META_KEYS
from clipsearch.errors import ModelUnavailable

KEPT_POSITIONS = 20  # positions Long-CLIP copies verbatim from CLIP
LONGCLIP_CONTEXT = 248


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
    for key in OPENAI_META_KEYS:
        sd.pop(key, None)
    return sd, ctx
