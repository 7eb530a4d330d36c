"""Load a local state dict into an open_clip architecture, whatever layout it was saved in.

Layouts: open_clip's own, OpenAI's (state dict or JIT archive), Long-CLIP (248-token text),
ViFi-CLIP and CLIP4Clip video fine-tunes, each bare, under `module.` (DistributedDataParallel)
or inside a training checkpoint (`{"model": ...}`, `{"state_dict": ...}`). Detection is by key
names; each conversion lives in `checkpoint_formats` / `longclip`.

Every weight of the built model comes from a file, never from random init: the load is strict.
The one layout that leaves weights out on purpose (ViFi-CLIP saves no token table) gets them from
the OpenAI weights of the same architecture, which it was fine-tuned from, fetched like any
pretrained weights; when those cannot be had, loading stops with what to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch

from clipsearch.checkpoint_formats import OPENAI_META_KEYS
from clipsearch.errors import ModelUnavailable

# Models fine-tuned from OpenAI's CLIP; their missing weights come from ARCH/<this tag>.
VIFICLIP_BASE_TAG = "openai"


def read_state_dict(path: str, weights_only: bool = True) -> dict[str, torch.Tensor]:
    """Read .pt/.bin/.pth/.safetensors or a TorchScript archive; unwrap training checkpoints."""
    from clipsearch.checkpoint_formats import unwrap_state_dict

    p = Path(path)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p))
        else:
            with warnings.catch_warnings():  # torch's "call torch.jit.load directly" notes
                warnings.simplefilter("ignore")
                try:
                    obj = torch.load(str(p), map_location="cpu", weights_only=weights_only)
                except RuntimeError as e:
                    if "TorchScript" not in str(e) and "jit" not in str(e):
                        raise
                    obj = torch.jit.load(str(p), map_location="cpu")
    except Exception as e:  # corrupt, truncated, or not a checkpoint at all
        hint = "check the file is a complete .pt/.bin/.safetensors state dict"
        if weights_only and "weights_only" in str(e):
            hint = "it pickles objects; if you trust it, set CLIPSEARCH_UNSAFE_PICKLE=1 to load it"
        raise ModelUnavailable(f"cannot read checkpoint {path}: {str(e).splitlines()[0][:160]}",
                               hint=hint) from e
    if isinstance(obj, torch.nn.Module):  # an OpenAI JIT archive is the model itself
        obj = obj.state_dict()
    sd = unwrap_state_dict(obj) if isinstance(obj, dict) else None
    if not sd:
        raise ModelUnavailable(f"{path} holds no state dict", hint="give an open_clip/OpenAI state dict")
    odd = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise ModelUnavailable(
            f"{path} is not a state dict: {', '.join(map(str, odd[:4]))} are not tensors",
            hint="save the model's state_dict(), or wrap it as {'state_dict': ...} or {'model': ...}")
    return sd


def detect_layout(sd: dict) -> str:
    """One of longclip, vificlip, clip4clip, openai, openclip."""
    from clipsearch.checkpoint_formats import is_clip4clip, is_openai, is_vificlip
    from clipsearch.longclip import is_longclip

    if is_longclip(sd):
        return "longclip"
    if is_vificlip(sd):
        return "vificlip"
    if is_clip4clip(sd):
        return "clip4clip"
    if is_openai(sd):
        return "openai"
    return "openclip"


def _convert(sd: dict, layout: str) -> tuple[dict, int | None, dict]:
    """Returns (state_dict, forced context length, extra create kwargs) for one layout.

    OpenAI's CLIP and everything fine-tuned from it (Long-CLIP, ViFi-CLIP, CLIP4Clip) use
    QuickGELU, whatever activation the open_clip config of the same name has.
    """
    quick = {"force_quick_gelu": True}
    if layout == "longclip":
        from clipsearch.longclip import longclip_to_openclip

        sd, ctx = longclip_to_openclip(sd)
        return sd, ctx, quick
    if layout == "vificlip":
        from clipsearch.checkpoint_formats import (
            VIFICLIP_IMAGE_MEAN,
            VIFICLIP_IMAGE_STD,
            vificlip_to_openclip,
        )

        return vificlip_to_openclip(sd), None, {
            **quick, "image_mean": VIFICLIP_IMAGE_MEAN, "image_std": VIFICLIP_IMAGE_STD}
    if layout == "clip4clip":
        from clipsearch.checkpoint_formats import clip4clip_to_openclip

        return clip4clip_to_openclip(sd), None, quick
    if layout == "openai":
        return sd, None, quick
    return sd, None, {}


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(old)


def _fit_keys(model: torch.nn.Module, sd: dict) -> dict:
    """Key and shape fixes every layout needs before a strict load into an open_clip model."""
    import open_clip

    from clipsearch.checkpoint_formats import strip_module_prefix

    sd = open_clip.factory.convert_state_dict(model, strip_module_prefix(sd))
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = open_clip.factory.convert_to_custom_text_state_dict(sd)
    wanted = model.state_dict()
    for key in list(sd):
        # OpenAI's saved config, and buffers that a JIT archive keeps but open_clip rebuilds
        if key in OPENAI_META_KEYS or (key.endswith("attn_mask") and key not in wanted):
            sd.pop(key)
    if "logit_scale" in sd and model.logit_scale.ndim != sd["logit_scale"].ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
    return sd


def _base_weights(arch: str, keys: Iterable[str], path: str) -> dict[str, torch.Tensor]:
    """`keys` from the OpenAI weights of `arch` (or of its -quickgelu twin), for a ViFi-CLIP file."""
    import open_clip

    from clipsearch import hub

    keys = sorted(keys)
    plain = arch.removesuffix("-quickgelu")
    names = [a for a in dict.fromkeys((arch, plain, plain + "-quickgelu"))
             if open_clip.is_pretrained_cfg(a, VIFICLIP_BASE_TAG)]
    if not names:
        raise ModelUnavailable(
            f"{path} (ViFi-CLIP) has no {', '.join(keys[:3])}, and {arch} has no "
            f"'{VIFICLIP_BASE_TAG}' weights to take them from",
            hint="give the architecture it was fine-tuned from, e.g. --model ViT-B-16 --checkpoint FILE")
    base = names[0]
    what = f"{base}/{VIFICLIP_BASE_TAG} (ViFi-CLIP checkpoints leave out {', '.join(keys[:3])})"
    file = hub.pretrained_file(base, VIFICLIP_BASE_TAG, what=what)
    if file is None:
        raise ModelUnavailable(f"{what}: no hub source to fetch it from", hint=hub.OFFLINE_HINT)
    found = _read_keys(file, keys)
    if len(found) < len(keys):
        lost = [k for k in keys if k not in found]
        raise ModelUnavailable(f"{path} (ViFi-CLIP) lacks {', '.join(lost[:4])}, and so does {file}",
                               hint="the checkpoint does not fit this architecture; pass the one it "
                               "was trained as: --model ARCH --checkpoint FILE")
    return found


def _read_keys(file: str, keys: list[str]) -> dict[str, torch.Tensor]:
    """Just `keys` from a weights file: a safetensors file is read lazily, not whole."""
    if file.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(file, framework="pt") as f:
            present = set(f.keys())
            return {k: f.get_tensor(k) for k in keys if k in present}
    from clipsearch.checkpoint_formats import strip_module_prefix

    sd = strip_module_prefix(read_state_dict(file))
    return {k: sd[k] for k in keys if k in sd}


def _load_strict(model: torch.nn.Module, sd: dict, path: str, arch: str, layout: str) -> None:
    """Load every weight of `model` from `sd`, or refuse naming what is missing or left over."""
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in sd]
    extra = [k for k in sd if k not in wanted]
    shapes = [k for k in wanted if k in sd and tuple(sd[k].shape) != tuple(wanted[k].shape)]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} weights missing ({', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} unexpected ({', '.join(extra[:3])})")
        if shapes:
            k = shapes[0]
            got, want = tuple(sd[k].shape), tuple(wanted[k].shape)
            parts.append(f"{len(shapes)} of another shape ({k}: {got} vs {want})")
        raise ModelUnavailable(
            f"{path} does not fit architecture {arch} ({layout} layout): {'; '.join(parts)}",
            hint="pass the architecture it was trained as: --model ARCH --checkpoint FILE")
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)


def load_checkpoint_into(arch: str, path: str, device: str):
    """Build `arch` and load the file at `path` into it, strictly. Returns (model, preprocess, ctx)."""
    import open_clip

    unsafe = os.environ.get("CLIPSEARCH_UNSAFE_PICKLE") == "1"
    sd = read_state_dict(path, weights_only=not unsafe)
    layout = detect_layout(sd)
    try:
        sd, ctx, kwargs = _convert(sd, layout)
    except ValueError as e:  # a converter refusing a variant it cannot express
        raise ModelUnavailable(f"{path} ({layout} layout): {e}",
                               hint="use a checkpoint of a supported layout (see the README)") from e
    image_mean = kwargs.pop("image_mean", None)
    image_std = kwargs.pop("image_std", None)
    with _quiet_root_logger():  # open_clip warns "initialized randomly": every weight is loaded below
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=None, device="cpu", force_context_length=ctx,
            image_mean=image_mean, image_std=image_std, pretrained_text=False, **kwargs)
    sd = _fit_keys(model, sd)
    if layout == "vificlip":
        lacking = [k for k in model.state_dict() if k not in sd]
        if lacking:
            sd.update(_base_weights(arch, lacking, path))
    _load_strict(model, sd, path, arch, layout)
    return model.to(device).eval(), preprocess, ctx
