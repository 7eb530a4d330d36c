"""Model resolution and loading: every failure is a one-line error that says what to do."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipsearch.encoders import Encoder, pick_device
from clipsearch.errors import ModelUnavailable, UsageError
from clipsearch.model_registry import DEFAULT_MODEL, resolve


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("CLIPSEARCH_OFFLINE", "1")


def test_resolve_forms(tmp_path):
    assert resolve(None).name == DEFAULT_MODEL
    spec = resolve("ViT-B-32/laion2b_s34b_b79k")
    assert (spec.arch, spec.pretrained) == ("ViT-B-32", "laion2b_s34b_b79k")
    assert resolve("hf-hub:org/repo").arch == "hf-hub:org/repo"
    assert resolve("balanced").name == "ViT-B-32/laion2b_s34b_b79k"
    f = tmp_path / "w.pt"
    f.write_bytes(b"x")
    assert resolve("ViT-B-32", checkpoint=str(f)).checkpoint == str(f)
    with pytest.raises(UsageError, match="needs its weights file"):
        resolve("retrieval")
    with pytest.raises(UsageError, match="no such file"):
        resolve("ViT-B-32", checkpoint=str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("name", ["ViT-B-32/laion2b_s34b_b79k",
                                  "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"])
def test_offline_pretrained_is_actionable(name):
    with pytest.raises(ModelUnavailable) as e:
        Encoder.load(name, device="cpu")
    assert "clipsearch-tiny" in e.value.hint and "--checkpoint" in e.value.hint


def test_unknown_arch_and_tag():
    with pytest.raises(UsageError, match="unknown model architecture"):
        Encoder.load("ViT-B-33", device="cpu")
    with pytest.raises(UsageError, match="not a known pretrained tag"):
        Encoder.load("ViT-B-32/no_such_tag", device="cpu")


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ModelUnavailable, match="cannot read checkpoint"):
        Encoder.load("RN50", checkpoint=str(bad), device="cpu")
    wrong = tmp_path / "wrong.pt"
    torch.save({"visual.proj": torch.zeros(3)}, wrong)
    with pytest.raises(ModelUnavailable, match="does not fit architecture"):
        Encoder.load("ViT-B-32", checkpoint=str(wrong), device="cpu")


def test_local_checkpoint_roundtrip(tmp_path):
    import open_clip

    from clipsearch.model_registry import tiny_files

    open_clip.add_model_config(str(tiny_files()[0]))
    model = open_clip.create_model("clipsearch-tiny")
    f = tmp_path / "mine.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, f)
    enc = Encoder.load("clipsearch-tiny", checkpoint=str(f), device="cpu")
    v = enc.encode_texts(["a red star", "a blue circle"])
    assert v.shape == (2, enc.dim)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert enc.model_id != Encoder.load("clipsearch-tiny", device="cpu").model_id


def test_tiny_encodes_normalised_vectors():
    from PIL import Image

    enc = Encoder.load("clipsearch-tiny", device="cpu")
    imgs = enc.encode_images([Image.new("RGB", (50, 70), (255, 0, 0))] * 3)
    assert imgs.dtype == np.float32 and imgs.shape == (3, enc.dim)
    assert np.allclose(np.linalg.norm(imgs, axis=1), 1.0, atol=1e-5)
    assert enc.count_tokens("a red star") == 5


def test_device_choice():
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError):
            pick_device("cuda")
    with pytest.raises(UsageError):
        pick_device("tpu")
