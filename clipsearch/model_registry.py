"""Model names users can type: presets, the bundled model, and how each one resolves.

A name resolves to a `ModelSpec`: which open_clip architecture, where the weights come from,
and (for presets) where to get weights that are not on this machine.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from clipsearch.errors import UsageError

MODELS_DIR = Path(__file__).resolve().parent / "models"
TINY_NAME = "clipsearch-tiny"
DEFAULT_MODEL = "ViT-B-32/laion2b_s34b_b79k"


@dataclass(frozen=True)
class Preset:
    name: str
    model: str
    note: str
    needs_checkpoint: str | None = None  # where to get weights when the user must supply the file
    # open_clip's hub file for the preset's ARCH/TAG, "repo/filename" ("repo/" = default names):
    # `clipsearch models` checks the cache with it without importing open_clip (and torch).
    hub_file: str | None = None


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tiny", TINY_NAME, "bundled shapes model: demos and tests only, not real photos"),
        Preset("fast", "MobileCLIP-S2/datacompdr", "MobileCLIP-S2, reparameterised: fast on CPU",
               hub_file="apple/MobileCLIP-S2-OpenCLIP/"),
        Preset("balanced", "ViT-B-32/laion2b_s34b_b79k", "ViT-B-32 LAION-2B: the default",
               hub_file="laion/CLIP-ViT-B-32-laion2B-s34B-b79K/"),
        Preset(
            "retrieval",
            "ViT-L-14-336-quickgelu",
            "MCIP retrieval-optimised ViT-L-14-336 (bring the state dict: --checkpoint FILE)",
            needs_checkpoint="the MCIP release of 'Optimizing CLIP Models for Image Retrieval with "
            "Maintained Joint-Embedding Alignment' (ViT-L-14-336 openai layout)",
        ),
        Preset(
            "long-text",
            "ViT-B-16",
            "Long-CLIP-B: 248-token text (bring longclip-B.pt: --checkpoint FILE)",
            needs_checkpoint="the Long-CLIP release (longclip-B.pt or longclip-L.pt; use ViT-L-14 for L)",
        ),
    )
}


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: enough to build it again and to tell two models apart."""

    arch: str  # open_clip model name, or "hf-hub:org/repo"
    pretrained: str | None = None  # open_clip tag, or None
    checkpoint: str | None = None  # local file with a state dict
    pooling: str = "mean"  # how video frames are pooled into clip vectors
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def name(self) -> str:
        if self.arch == TINY_NAME:
            return TINY_NAME
        if self.checkpoint:
            return f"{self.arch} --checkpoint {self.checkpoint}"
        if self.pretrained:
            return f"{self.arch}/{self.pretrained}"
        return self.arch

    def model_id(self) -> str:
        """Identity used to refuse mixing vectors of two models in one collection."""
        if self.checkpoint:
            return f"{self.arch}#{file_fingerprint(self.checkpoint)}"
        if self.arch == TINY_NAME:
            return f"{TINY_NAME}#{file_fingerprint(tiny_files()[1])}"
        if self.pretrained:
            return f"{self.arch}/{self.pretrained}"
        return self.arch

    def to_dict(self) -> dict:
        return {"arch": self.arch, "pretrained": self.pretrained, "checkpoint": self.checkpoint,
                "pooling": self.pooling}

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        return cls(arch=d["arch"], pretrained=d.get("pretrained"), checkpoint=d.get("checkpoint"),
                   pooling=d.get("pooling", "mean"))


def tiny_files() -> tuple[Path, Path]:
    """Config and weights of the bundled model; $CLIPSEARCH_TINY_DIR points at a retrained one."""
    d = Path(os.environ.get("CLIPSEARCH_TINY_DIR") or MODELS_DIR)
    return d / f"{TINY_NAME}.json", d / f"{TINY_NAME}.safetensors"


def captions_file(spec: ModelSpec) -> Path | None:
    """Where a model's own caption set may sit: beside its weights, ``<weights stem>.captions.txt``.

    Centering estimates the text-side mean from captions; a model trained on a narrow world
    (like the bundled one) ships captions of that world so the mean is not estimated on
    text the model never saw.
    """
    if spec.checkpoint:
        return Path(spec.checkpoint).with_suffix(".captions.txt")
    if spec.arch == TINY_NAME:
        return tiny_files()[0].with_name(f"{TINY_NAME}.captions.txt")
    return None


def domain_captions(spec: ModelSpec) -> list[str]:
    """The captions a model ships beside its weights (see `captions_file`), or none."""
    path = captions_file(spec)
    if path is None or not path.is_file():
        return []
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def preset_hub_file(arch: str, tag: str) -> str | None:
    """The hub file a preset's ARCH/TAG loads from (open_clip's `hf_hub`), if it is a preset."""
    return next((p.hub_file for p in PRESETS.values() if p.model == f"{arch}/{tag}" and p.hub_file), None)


def file_fingerprint(path: str | Path) -> str:
    """Size plus a hash of the first and last MiB: cheap for multi-GB checkpoints, still specific."""
    p = Path(path)
    h = hashlib.blake2b(digest_size=8)
    size = p.stat().st_size
    h.update(str(size).encode())
    with p.open("rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), 2)
            h.update(f.read())
    return h.hexdigest()


def resolve(name: str | None, checkpoint: str | None = None, pooling: str = "mean") -> ModelSpec:
    """Turn what the user typed into a ModelSpec. Raises UsageError for malformed names."""
    name = (name or DEFAULT_MODEL).strip()
    if name in PRESETS:
        preset = PRESETS[name]
        if preset.needs_checkpoint and not checkpoint:
            raise UsageError(
                f"preset '{name}' needs its weights file: {preset.needs_checkpoint}",
                hint=f"download it, then run with --model {name} --checkpoint FILE",
            )
        name = preset.model
    if checkpoint:
        ckpt = Path(checkpoint).expanduser()
        if not ckpt.is_file():
            raise UsageError(f"--checkpoint {checkpoint}: no such file",
                             hint="give the path of a .pt, .bin or .safetensors state dict")
        arch = name.split("/")[0]
        return ModelSpec(arch=arch, checkpoint=str(ckpt.resolve()), pooling=pooling)
    if name == TINY_NAME:  # the bundled file is found at load time: installs move
        return ModelSpec(arch=TINY_NAME, pooling=pooling)
    if name.startswith(("hf-hub:", "local-dir:")):
        return ModelSpec(arch=name, pooling=pooling)
    if "/" in name:
        arch, tag = name.split("/", 1)
        return ModelSpec(arch=arch, pretrained=tag, pooling=pooling)
    return ModelSpec(arch=name, pooling=pooling)
