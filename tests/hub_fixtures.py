"""A Hugging Face cache entry laid out by hand, so tests load "cached" weights with no network."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import save_file


def fill_hub_cache(cache: Path, repo: str, files: dict[str, dict[str, torch.Tensor]]) -> None:
    """Write `files` (name -> state dict) as huggingface_hub leaves a download of `repo` in `cache`."""
    entry = cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    snapshot = entry / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (entry / "refs").mkdir(exist_ok=True)
    (entry / "refs" / "main").write_text(commit)
    for name, sd in files.items():
        save_file({k: v.contiguous() for k, v in sd.items()}, str(snapshot / name))
