"""Real architectures on ONNX Runtime and OpenVINO: ViT-B-32, ViT-B-32-256, ViT-B-16 and MobileCLIP-S2,
random-init weights saved as local checkpoints, image and text towers against PyTorch.

Each architecture is exported once (minutes on a small CPU), so this file runs only when asked:
    CLIPSEARCH_TEST_ARCHS=1 .venv/bin/pytest -q tests/test_backends_archs.py
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from clipsearch.backends import agreement, export, load_encoder, runtime
from clipsearch.backends.exported import ExportedEncoder
from clipsearch.encoders import Encoder
from clipsearch.model_registry import resolve

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("CLIPSEARCH_TEST_ARCHS"),
                       reason="exports four real architectures: set CLIPSEARCH_TEST_ARCHS=1"),
]
ARCHS = ["ViT-B-32", "ViT-B-32-256", "ViT-B-16", "MobileCLIP-S2"]
TEXTS = ["a dog on a beach", "a red car parked in the snow", "über café 東京 🗼", "a photo of " * 30]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """One random-init state dict per architecture, saved as a local checkpoint."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("ckpt")
    out = {}
    for arch in ARCHS:
        torch.manual_seed(0)
        model = open_clip.create_model(arch)
        path = folder / f"{arch}.pt"
        torch.save(model.state_dict(), path)
        out[arch] = str(path)
    return out


@pytest.fixture(scope="module")
def references(checkpoints) -> dict[str, tuple[Encoder, np.ndarray, np.ndarray]]:
    """PyTorch's vectors for decoded probe images (another seed than the export's) and texts."""
    images = export.probe_images(seed=11)
    out = {}
    for arch, ckpt in checkpoints.items():
        enc = Encoder.load(resolve(arch, ckpt), device="cpu")
        out[arch] = (enc, enc.encode_images(images), enc.encode_texts(TEXTS))
    return out


@pytest.mark.parametrize("backend,precision", [("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")])
@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_agrees_with_pytorch(arch, backend, precision, checkpoints, references):
    if not runtime.installed(backend):
        pytest.skip(f"{runtime.MODULES[backend]} is not installed")
    ref, ref_images, ref_texts = references[arch]
    enc = load_encoder(resolve(arch, checkpoints[arch]), device="cpu", backend=backend, precision=precision)
    assert isinstance(enc, ExportedEncoder), f"{arch} fell back to torch on {backend}"
    threshold = agreement.THRESHOLDS[precision]
    images = export.probe_images(seed=11)
    img_cos = export.min_cosine(enc.encode_images(images), ref_images)
    txt_cos = export.min_cosine(enc.encode_texts(TEXTS), ref_texts)
    print(f"{arch} {backend} {precision}: image {img_cos:.6f} text {txt_cos:.6f} "
          f"({enc.variant.get('images_per_s', 0):.1f} images/s at export)")
    assert img_cos >= threshold and txt_cos >= threshold
    assert (enc.dim, enc.image_size, enc.context_length) == (ref.dim, ref.image_size, ref.context_length)
    assert enc.count_tokens(TEXTS[-1]) == ref.count_tokens(TEXTS[-1])
