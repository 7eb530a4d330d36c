"""Load a local state dict into an open_clip architecture, whatever layout it was saved in.

Layouts: open_clip's own, OpenAI's, Long-CLIP (248-token text), ViFi-CLIP and CLIP4Clip video
fine-tunes. Detection is by key names; each conversion lives in its own module.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from clipsearch.errors import ModelUnavailable

LONGCLIP_CONTEXT = 248


def read_state_dict(path: str, weights_only: bool = True) -> dict[str, torch.Tensor]:
    """Read .pt/.bin/.pth/.safetensors; unwrap {'state_dict': ...} and JIT archives."""
    p = Path(path)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            try:
                sd = torch.load(str(p), map_location="cpu", weights_only=weights_only)
            except RuntimeError:
                sd = torch.jit.load(str(p), map_location="cpu").state_dict()
    except Exception as e:  # corrupt, truncated, or not a checkpoint at all
        hint = "check the file is a complete .pt/.bin/.safetensors state dict"
        if weights_only and "weights_only" in str(e):
            hint = "it pickles objects; if you trust it, set CLIPSEARCH_UNSAFE_PICKLE=1 to load it"
        raise ModelUnavailable(f"cannot read checkpoint {path}: {str(e).splitlines()[0][:160]}",
                               hint=hint) from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise ModelUnavailable(f"{path} holds no state dict", hint="give an open_clip/OpenAI state dict")
    return sd


def detect_layout(sd: dict) -> str:
    from clipsearch.longclip import is_longclip

    keys = list(sd)
    if is_longclip(sd):
        return "longclip"
    if any(k.startswith("module.image_encoder.") for k in keys):
        return "vificlip"
    if any(k.startswith("clip.") for k in keys):
        return "clip4clip"
    return "openclip"


def _convert(arch: str, sd: dict, layout: str) -> tuple[dict, str, int | None, dict]:
    """Returns (state_dict, arch to build, forced context length, extra create kwargs)."""
    if layout == "longclip":
        from clipsearch.longclip import longclip_to_openclip

        sd, ctx = longclip_to_openclip(sd)
        return sd, arch, ctx, {}
    if layout == "vificlip":
        import open_clip

        from clipsearch.checkpoint_formats import vificlip_to_openclip

        base = open_clip.create_model(arch, pretrained=None).state_dict()
        sd = vificlip_to_openclip(sd, base)
        return sd, arch, None, {"force_quick_gelu": True,
                                "image_mean": (0.485, 0.456, 0.406), "image_std": (0.229, 0.224, 0.225)}
    if layout == "clip4clip":
        from clipsearch.checkpoint_formats import clip4clip_to_openclip

        base = arch if arch.endswith("-quickgelu") else f"{arch}-quickgelu"
        return clip4clip_to_openclip(sd), base, None, {}
    return sd, arch, None, {}


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(old)


def load_checkpoint_into(arch: str, path: str, device: str):
    """Build `arch` and load the file at `path` into it, strictly. Returns (model, preprocess, ctx)."""
    import os

    import open_clip

    unsafe = os.environ.get("CLIPSEARCH_UNSAFE_PICKLE") == "1"
    sd = read_state_dict(path, weights_only=not unsafe)
    layout = detect_layout(sd)
    sd, build_arch, ctx, kwargs = _convert(arch, sd, layout)
    image_mean = kwargs.pop("image_mean", None)
    image_std = kwargs.pop("image_std", None)
    with _quiet_root_logger():  # open_clip warns "initialized randomly" before we load the file
        model, _, preprocess = open_clip.create_model_and_transforms(
            build_arch, pretrained=None, device="cpu", force_context_length=ctx,
            image_mean=image_mean, image_std=image_std, **kwargs)
    if sd and next(iter(sd)).startswith("module."):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    sd = open_clip.factory.convert_state_dict(model, sd)
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = open_clip.factory.convert_to_custom_text_state_dict(sd)
    for key in ("input_resolution", "context_length", "vocab_size"):
        sd.pop(key, None)
    if "logit_scale" in sd and model.logit_scale.ndim != sd["logit_scale"].ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
    try:
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1:3]
        raise ModelUnavailable(
            f"{path} does not fit architecture {build_arch} ({layout} layout): {' '.join(first)[:200]}",
            hint="pass the architecture it was trained as: --model ARCH --checkpoint FILE") from e
    return model.to(device).eval(), preprocess, ctx
