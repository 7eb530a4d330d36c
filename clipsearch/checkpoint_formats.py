"""Key mappings from published fine-tune layouts to open_clip state dicts.

Each function takes the checkpoint's raw state dict and returns one that loads with
`strict=True` into the open_clip architecture named in its docstring. Nothing here builds
models or reads files: `clipsearch.checkpoint_loading` does that, and picks the function by
`detect_layout`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

# =====================================================================================
# Video fine-tunes: ViFi-CLIP and CLIP4Clip
# =====================================================================================

# ViFi-CLIP normalises frames with ImageNet statistics, not CLIP's.
VIFICLIP_IMAGE_MEAN = (0.485, 0.456, 0.406)
VIFICLIP_IMAGE_STD = (0.229, 0.224, 0.225)
# Buffers the OpenAI CLIP module keeps in its state dict but open_clip does not.
OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")


WRAPPER_KEYS = ("model", "state_dict")


def unwrap_state_dict(state_dict: Mapping) -> dict:
    """Training checkpoints nest the weights under 'model' or 'state_dict' (beside optimizer
    state, epoch, config...), sometimes twice; return the innermost weights."""
    sd = state_dict
    while isinstance(sd, Mapping):
        inner = next((sd[k] for k in WRAPPER_KEYS if isinstance(sd.get(k), Mapping) and sd[k]), None)
        if inner is None:
            break
        sd = inner
    return dict(sd)


def strip_module_prefix(state_dict: Mapping) -> dict:
    """DistributedDataParallel saves every key under 'module.'; drop it when all keys have it."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def is_vificlip(state_dict: Mapping) -> bool:
    """ViFi-CLIP keeps CLIP's towers as image_encoder/text_encoder (Apple's MobileCLIP also says
    image_encoder, but as image_encoder.model.*: CLIP's conv1 tells them apart)."""
    return any(k.removeprefix("module.") == "image_encoder.conv1.weight" for k in state_dict)


def is_clip4clip(state_dict: Mapping) -> bool:
    return any(k.removeprefix("module.").startswith("clip.") for k in state_dict)


def is_openai(state_dict: Mapping) -> bool:
    """OpenAI's CLIP module saves its config next to the weights; open_clip's never does."""
    return any(k.removeprefix("module.") in OPENAI_META_KEYS for k in state_dict)


def vificlip_to_openclip(
    state_dict: Mapping[str, torch.Tensor], base_state_dict: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """ViFi-CLIP (`module.image_encoder.*`, `module.text_encoder.*`) → open_clip keys.

    Load into the `-quickgelu` variant of the base architecture (ViFi-CLIP fine-tunes the
    OpenAI weights), with ImageNet mean/std preprocessing (`VIFICLIP_IMAGE_MEAN/STD`).
    The text encoder it saves has no `token_embedding`: ViFi-CLIP's prompt learner embeds
    tokens with the frozen base CLIP's table, so that table is taken from `base_state_dict`
    (the pretrained OpenAI/open_clip model of the same architecture); without one, the result
    lacks it and the caller must fill it (`checkpoint_loading` does, from `ARCH/openai`).
    `prompt_learner.*` holds per-class prompt buffers, not weights, and is dropped.
    """
    sd = unwrap_state_dict(state_dict)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        k = key[len("module."):] if key.startswith("module.") else key
        if k.startswith("image_encoder."):
            out["visual." + k[len("image_encoder."):]] = value
        elif k.startswith("text_encoder."):
            out[k[len("text_encoder."):]] = value
        elif k == "logit_scale":
            out[k] = value
    if not any(k.startswith("visual.") for k in out):
        raise ValueError("not a ViFi-CLIP state dict: no 'module.image_encoder.*' keys")
    if not any(k.startswith("transformer.") for k in out):
        raise ValueError("ViFi-CLIP state dict has no 'module.text_encoder.transformer.*' keys")
    if base_state_dict is None:
        return out
    if "token_embedding.weight" not in base_state_dict:
        raise ValueError("base_state_dict lacks 'token_embedding.weight' (pass the base CLIP's state dict)")
    out.setdefault("token_embedding.weight", base_state_dict["token_embedding.weight"])
    if "logit_scale" not in out and "logit_scale" in base_state_dict:
        out["logit_scale"] = base_state_dict["logit_scale"]
    return out


def clip4clip_to_openclip(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIP4Clip (`clip.*`, `module.clip.*`) → open_clip keys; load with QuickGELU.

    Only the CLIP towers are kept: CLIP4Clip's temporal modules (`frame_position_embeddings`,
    `transformerClip.*` of its seqTransf head) have no open_clip counterpart, so the result is
    its mean-pooling ("meanP") model; clipsearch pools frames itself. The 3-D patch variant
    (`clip.visual.conv2`) cannot be expressed as a 2-D open_clip ViT and is refused.
    """
    sd = unwrap_state_dict(state_dict)
    out = {
        k[len("clip."):]: v
        for k, v in ((key[len("module."):] if key.startswith("module.") else key, v) for key, v in sd.items())
        if k.startswith("clip.")
    }
    if not out:
        raise ValueError("not a CLIP4Clip state dict: no 'clip.*' keys")
    if "visual.conv2.weight" in out:
        raise ValueError("CLIP4Clip with linear_patch='3d' (visual.conv2) has no open_clip equivalent; "
                         "use a checkpoint trained with linear_patch='2d'")
    for key in OPENAI_META_KEYS:
        out.pop(key, None)
    return out
