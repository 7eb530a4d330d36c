"""Long-CLIP checkpoints load into open_clip with 248-token text."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from clipsearch.errors import ModelUnavailable
from clipsearch.longclip import (
    KEPT_POSITIONS,
    LONGCLIP_CONTEXT,
    is_longclip,
    longclip_to_openclip,
)

ARCH = "test-longclip-mini"
WIDTH = 32


@pytest.fixture(scope="module", autouse=True)
def mini_arch(tmp_path_factory):
    """Register a small open_clip architecture (CLIP layout, 77-token text by default)."""
    cfg = {
        "embed_dim": 24,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": WIDTH, "heads": 2, "layers": 2},
    }
    path = tmp_path_factory.mktemp("cfg") / f"{ARCH}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(str(path))


def longclip_checkpoint(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict laid out like Long-CLIP's release: OpenAI keys plus positional_embedding_res."""
    torch.manual_seed(seed)
    model = open_clip.create_model(ARCH, pretrained=None, force_context_length=LONGCLIP_CONTEXT)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["positional_embedding"] = torch.randn(LONGCLIP_CONTEXT, WIDTH) * 0.01
    sd["positional_embedding_res"] = torch.randn(LONGCLIP_CONTEXT, WIDTH) * 0.01
    sd["input_resolution"] = torch.tensor(32)  # OpenAI checkpoints may carry these
    sd["context_length"] = torch.tensor(LONGCLIP_CONTEXT)
    sd["vocab_size"] = torch.tensor(49408)
    return sd


def reference_encode_text(model, sd: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """Long-CLIP's own formula: token + pe * mask1 + pe_res * mask2, then the CLIP text path."""
    mask1 = torch.zeros(LONGCLIP_CONTEXT, 1)
    mask1[:KEPT_POSITIONS] = 1
    mask2 = 1 - mask1
    x = model.token_embedding(ids)
    x = x + sd["positional_embedding"] * mask1 + sd["positional_embedding_res"] * mask2
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), ids.argmax(dim=-1)]
    return x @ model.text_projection


def test_detection():
    sd = longclip_checkpoint()
    assert is_longclip(sd)
    assert is_longclip({"module." + k: v for k, v in sd.items()})
    plain = open_clip.create_model(ARCH, pretrained=None).state_dict()
    assert not is_longclip(plain)
    with pytest.raises(ModelUnavailable, match="not a Long-CLIP"):
        longclip_to_openclip(plain)


def test_conversion_loads_strictly_and_matches_longclip_text_path():
    sd = longclip_checkpoint()
    converted, ctx = longclip_to_openclip(sd)
    assert ctx == LONGCLIP_CONTEXT
    assert "positional_embedding_res" not in converted and "input_resolution" not in converted
    assert "positional_embedding_res" in sd  # input left alone
    model = open_clip.create_model(ARCH, pretrained=None, force_context_length=ctx).eval()
    model.load_state_dict(converted, strict=True)
    tok = open_clip.get_tokenizer(ARCH, context_length=ctx)
    long_text = " ".join(["a red star next to a blue circle on a white page"] * 14)
    ids = tok(["a red star", long_text])
    assert int(ids[1].argmax()) > 77  # really longer than CLIP's context
    with torch.no_grad():
        got = model.encode_text(ids)
        want = reference_encode_text(model, sd, ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_module_prefix_is_stripped():
    sd = longclip_checkpoint()
    converted, _ = longclip_to_openclip({"module." + k: v for k, v in sd.items()})
    assert set(converted) == set(longclip_to_openclip(sd)[0])


def test_mismatched_tables_are_rejected():
    sd = longclip_checkpoint()
    sd["positional_embedding_res"] = sd["positional_embedding_res"][:100]
    with pytest.raises(ModelUnavailable, match="disagree"):
        longclip_to_openclip(sd)


def test_lead_checkpoint_loader_autodetects_longclip(tmp_path):
    from clipsearch.checkpoint_loading import load_checkpoint_into

    sd = longclip_checkpoint(seed=2)
    path = tmp_path / "longclip-mini.pt"
    torch.save(sd, path)
    model, _, ctx = load_checkpoint_into(ARCH, str(path), "cpu")
    assert ctx == LONGCLIP_CONTEXT and model.context_length == LONGCLIP_CONTEXT
    ids = open_clip.get_tokenizer(ARCH, context_length=ctx)(["a purple diamond " * 40])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids), reference_encode_text(model, sd, ids),
                                   atol=1e-5, rtol=1e-5)
