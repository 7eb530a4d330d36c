"""ViFi-CLIP and CLIP4Clip layouts, built from a small random open_clip model, load strictly."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from clipsearch.checkpoint_formats import (
    VIFICLIP_IMAGE_MEAN,
    VIFICLIP_IMAGE_STD,
    clip4clip_to_openclip,
    vificlip_to_openclip,
)

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def arch(tmp_path_factory) -> str:
    """Register a tiny ViT config and its -quickgelu twin with open_clip."""
    d = tmp_path_factory.mktemp("cfg")
    (d / "cs-video-test.json").write_text(json.dumps(TINY_CFG))
    (d / "cs-video-test-quickgelu.json").write_text(json.dumps({**TINY_CFG, "quick_gelu": True}))
    open_clip.add_model_config(d)
    return "cs-video-test"


def _random_sd(arch: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # make every tensor distinguishable from a fresh init
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_vificlip_layout_loads_strict_with_base_token_embedding(arch):
    src = _random_sd(arch + "-quickgelu", seed=1)
    base = _random_sd(arch, seed=2)
    vifi = {"module.logit_scale": src["logit_scale"]}
    for k, v in src.items():
        if k.startswith("visual."):
            vifi["module.image_encoder." + k[len("visual."):]] = v
        elif k != "token_embedding.weight" and k != "logit_scale":
            vifi["module.text_encoder." + k] = v
    vifi["module.prompt_learner.token_prefix"] = torch.zeros(3, 1, 64)
    vifi["module.prompt_learner.token_suffix"] = torch.zeros(3, 72, 64)

    sd = vificlip_to_openclip({"model": vifi, "epoch": 10}, base)
    model, _, preprocess = open_clip.create_model_and_transforms(
        arch, pretrained=None, force_quick_gelu=True,
        image_mean=VIFICLIP_IMAGE_MEAN, image_std=VIFICLIP_IMAGE_STD)
    model.load_state_dict(sd, strict=True)
    loaded = model.state_dict()
    for k, v in src.items():
        if k != "token_embedding.weight":
            assert torch.equal(loaded[k], v), k
    assert torch.equal(loaded["token_embedding.weight"], base["token_embedding.weight"])
    norm = next(t for t in preprocess.transforms if type(t).__name__ == "Normalize")
    assert tuple(norm.mean) == VIFICLIP_IMAGE_MEAN and tuple(norm.std) == VIFICLIP_IMAGE_STD
    acts = {type(m).__name__ for m in model.modules()}
    assert "QuickGELU" in acts


def test_clip4clip_layout_loads_strict_into_quickgelu(arch):
    src = _random_sd(arch + "-quickgelu", seed=3)
    c4c = {"clip." + k: v for k, v in src.items()}
    c4c["clip.input_resolution"] = torch.tensor(32)
    c4c["frame_position_embeddings.weight"] = torch.zeros(12, 32)
    c4c["transformerClip.resblocks.0.attn.in_proj_weight"] = torch.zeros(96, 32)

    sd = clip4clip_to_openclip(c4c)
    model = open_clip.create_model(arch + "-quickgelu", pretrained=None)
    model.load_state_dict(sd, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, src[k]), k
    assert "QuickGELU" in {type(m).__name__ for m in model.modules()}


def test_wrong_layouts_are_refused_with_a_reason(arch):
    base = _random_sd(arch, seed=4)
    with pytest.raises(ValueError, match="image_encoder"):
        vificlip_to_openclip({"visual.conv1.weight": torch.zeros(1)}, base)
    with pytest.raises(ValueError, match="clip"):
        clip4clip_to_openclip({"visual.conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="3d"):
        clip4clip_to_openclip({"clip.visual.conv2.weight": torch.zeros(1)})
