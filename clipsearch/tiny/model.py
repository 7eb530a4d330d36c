"""The clipsearch-tiny model: its open_clip config, a fresh model, and the shipped weight format.

Shared by stage 1 (``clipsearch.tiny.train``) and stage 2 (``clipsearch.tiny.tune``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

from clipsearch.model_registry import TINY_NAME, file_fingerprint, tiny_files

MODEL_NAME = TINY_NAME


def model_config(image_size: int = 64, vision_width: int = 24, embed_dim: int = 128,
                 context_length: int = 32, text_width: int = 64, text_layers: int = 2) -> dict:
    """open_clip config: ModifiedResNet image tower (a layers tuple) and a small text tower.

    The vocabulary is open_clip's standard BPE one, so ``open_clip.get_tokenizer`` works.
    """
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": [1, 1, 1, 1], "width": vision_width,
                       "patch_size": None},
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": text_width,
                     "heads": max(1, text_width // 32), "layers": text_layers},
    }


def write_config(out_dir: Path, cfg: dict) -> Path:
    """Write ``OUT/clipsearch-tiny.json`` and register it with open_clip."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{MODEL_NAME}.json"
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    open_clip.add_model_config(str(path))
    return path


def build_model(cfg_path: Path, seed: int) -> tuple[torch.nn.Module, object, object]:
    """Fresh model, its inference transform and tokenizer, exactly as users will load them."""
    open_clip.add_model_config(str(cfg_path))
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=None)
    return model, preprocess, open_clip.get_tokenizer(MODEL_NAME)



def save_weights(model: torch.nn.Module, path: Path) -> int:
    """Save the state dict as fp16 safetensors (loads into the fp32 model); returns bytes."""
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous().clone()
          for k, v in model.state_dict().items()}
    save_file(sd, str(path), metadata={"format": "pt", "model": MODEL_NAME})
    return path.stat().st_size


def weights_identity(model_dir: str | Path) -> dict[str, str]:
    """The model_id a collection records for these weights, and their sha256.

    Every evaluation prints both, so a figure measured on weights other than the shipped ones
    shows it.
    """
    weights = Path(model_dir) / f"{MODEL_NAME}.safetensors"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    return {"model_id": f"{MODEL_NAME}#{file_fingerprint(weights)}", "weights_sha256": sha}


def encoder_identity(encoder) -> dict[str, str | None]:
    """model_id of any loaded encoder, and the sha256 of its weights file when it has a local one."""
    spec = getattr(encoder, "spec", None)
    path = None
    if spec is not None:
        path = spec.checkpoint or (tiny_files()[1] if spec.arch == TINY_NAME else None)
    sha = hashlib.sha256(Path(path).read_bytes()).hexdigest() if path and Path(path).is_file() else None
    return {"model_id": getattr(encoder, "model_id", None), "weights_sha256": sha}
