"""Every checkpoint layout the loader claims, written from a small model and loaded through
`Encoder.load(..., checkpoint=...)`: the vectors are the source model's, load after load and
process after process, and nothing is ever filled in at random."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from hub_fixtures import fill_hub_cache
from safetensors.torch import save_file

from clipsearch.encoders import Encoder
from clipsearch.errors import ModelUnavailable

ARCH = "cs-layout-test"  # GELU, like open_clip's ViT-B-16 config
ORPHAN = "cs-layout-orphan"  # same shapes, but open_clip knows no pretrained weights for it
BASE_REPO = "cs-test/tiny-openai"
CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TEXTS = ["a red star", "a blue circle on green grass", "x"]
TESTS = Path(__file__).resolve().parent


def register_archs(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in (ARCH, ORPHAN):
        (folder / f"{name}.json").write_text(json.dumps(CFG))
    open_clip.add_model_config(folder)


def openai_pretrained_cfg() -> dict:
    """What open_clip's table says for ViT-B-16/openai, pointing at a repo of our making."""
    return {"hf_hub": BASE_REPO + "/", "quick_gelu": True, "url": "",
            "mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711)}


def source_model(seed: int, quick_gelu: bool, context_length: int | None = None) -> torch.nn.Module:
    """A random model whose every tensor differs from a fresh init of the same seed."""
    torch.manual_seed(seed)
    model = open_clip.create_model(ARCH, pretrained=None, force_quick_gelu=quick_gelu,
                                   force_context_length=context_length)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def vifi_checkpoint(src: torch.nn.Module, prefix: str = "module.") -> dict[str, torch.Tensor]:
    """ViFi-CLIP's layout: towers renamed, prompt buffers added, no token table."""
    out = {prefix + "logit_scale": src.logit_scale.detach().clone()}
    for k, v in src.state_dict().items():
        if k.startswith("visual."):
            out[prefix + "image_encoder." + k[len("visual."):]] = v.clone()
        elif k not in ("token_embedding.weight", "logit_scale"):
            out[prefix + "text_encoder." + k] = v.clone()
    out[prefix + "prompt_learner.token_prefix"] = torch.zeros(3, 1, 64)
    out[prefix + "prompt_learner.token_suffix"] = torch.zeros(3, 72, 64)
    return out


def with_openai_meta(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**sd, "input_resolution": torch.tensor(32), "context_length": torch.tensor(77),
            "vocab_size": torch.tensor(49408)}


def write_jit(src: torch.nn.Module, path: Path) -> None:
    """An OpenAI-style TorchScript archive: the traced model, its config kept as buffers."""
    for key, value in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(src, key):  # open_clip keeps context_length as a plain attribute
            delattr(src, key)
        src.register_buffer(key, torch.tensor(value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(src, {"encode_text": torch.zeros(1, 77, dtype=torch.long),
                                              "encode_image": torch.zeros(1, 3, 32, 32)})
    traced.save(str(path))


def reference_vectors(model: torch.nn.Module, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    tok = open_clip.get_tokenizer(ARCH, context_length=model.context_length)
    with torch.no_grad():
        t = model.encode_text(tok(TEXTS))
        i = model.encode_image(pixels)
    return (torch.nn.functional.normalize(t, dim=-1).numpy(),
            torch.nn.functional.normalize(i, dim=-1).numpy())


def build_layout(layout: str, folder: Path) -> tuple[Path, torch.nn.Module]:
    """Write `layout` to a file; return it and the model whose vectors loading it must give."""
    quick = layout not in ("openclip", "openclip-ddp", "openclip-safetensors")
    src = source_model(seed=sum(map(ord, layout)), quick_gelu=quick)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    path = folder / f"{layout}.pt"
    if layout == "openclip":
        torch.save(sd, path)
    elif layout == "openclip-safetensors":
        path = path.with_suffix(".safetensors")
        save_file(sd, str(path))
    elif layout == "openclip-ddp":
        torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, path)
    elif layout == "openai":
        torch.save(with_openai_meta(sd), path)
    elif layout == "openai-jit":
        write_jit(source_model(seed=sum(map(ord, layout)), quick_gelu=True), path)
    elif layout in ("vificlip", "vificlip-wrapped", "vificlip-bare"):
        ckpt = vifi_checkpoint(src, prefix="" if layout == "vificlip-bare" else "module.")
        if layout == "vificlip-wrapped":  # ViFi-CLIP's own training checkpoint
            ckpt = {"model": ckpt, "optimizer": {"state": {}, "param_groups": []}, "epoch": 10,
                    "max_accuracy": 0.5}
        torch.save(ckpt, path)
        with torch.no_grad():  # the token table comes from the base weights
            src.token_embedding.weight.copy_(base_state_dict()["token_embedding.weight"])
    elif layout in ("clip4clip", "clip4clip-ddp"):
        ckpt = {"clip." + k: v for k, v in with_openai_meta(sd).items()}
        ckpt["frame_position_embeddings.weight"] = torch.zeros(12, 32)
        ckpt["transformerClip.resblocks.0.attn.in_proj_weight"] = torch.zeros(96, 32)
        if layout == "clip4clip-ddp":
            ckpt = {"module." + k: v for k, v in ckpt.items()}
        torch.save(ckpt, path)
    elif layout == "longclip":
        src = source_model(seed=5, quick_gelu=True, context_length=248)
        sd = with_openai_meta({k: v.clone() for k, v in src.state_dict().items()})
        pe = sd["positional_embedding"]
        sd["positional_embedding_res"] = pe.clone()
        sd["positional_embedding"] = torch.cat([pe[:20], torch.randn_like(pe[20:])])  # unused rows
        torch.save(sd, path)
    else:
        raise AssertionError(layout)
    return path, src


def base_state_dict() -> dict[str, torch.Tensor]:
    """The 'OpenAI weights' of ARCH: what ViFi-CLIP was fine-tuned from."""
    return {k: v.clone() for k, v in source_model(seed=99, quick_gelu=True).state_dict().items()}


def install_fake_openai(cache: Path, sd: dict[str, torch.Tensor] | None = None) -> None:
    """Make ARCH/openai a known pretrained tag whose weights sit in the cache at `cache`."""
    fill_hub_cache(cache, BASE_REPO, {"open_clip_model.safetensors": base_state_dict() if sd is None else sd})
    open_clip.pretrained._PRETRAINED[ARCH] = {"openai": openai_pretrained_cfg()}


@pytest.fixture(scope="module", autouse=True)
def archs(tmp_path_factory):
    register_archs(tmp_path_factory.mktemp("cfg"))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path; the real one is never touched."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("CLIPSEARCH_OFFLINE", "1")
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, ARCH, {})  # restored afterwards
    return cache


LAYOUTS = ["openclip", "openclip-safetensors", "openclip-ddp", "openai", "openai-jit", "vificlip",
           "vificlip-wrapped", "vificlip-bare", "clip4clip", "clip4clip-ddp", "longclip"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_to_the_source_models_vectors(layout, tmp_path, hub_cache):
    install_fake_openai(hub_cache)
    path, src = build_layout(layout, tmp_path)
    pixels = torch.randn(2, 3, 32, 32)
    want_text, want_image = reference_vectors(src, pixels)
    first = Encoder.load(ARCH, checkpoint=str(path), device="cpu")
    again = Encoder.load(ARCH, checkpoint=str(path), device="cpu")
    for enc in (first, again):
        np.testing.assert_allclose(enc.encode_texts(TEXTS), want_text, atol=1e-5, rtol=0)
        np.testing.assert_allclose(enc.encode_pixels(pixels), want_image, atol=1e-5, rtol=0)
    acts = {type(m).__name__ for m in first.model.modules()}
    assert ("QuickGELU" in acts) == (layout not in ("openclip", "openclip-safetensors", "openclip-ddp"))
    if layout.startswith("vificlip"):
        norm = first.preprocess.preprocess.transforms[-1]
        assert tuple(norm.mean) == (0.485, 0.456, 0.406)


_CHILD = r"""
import json, sys
from pathlib import Path
import test_checkpoint_loading as t
t.register_archs(Path(sys.argv[1]) / "cfg")
t.open_clip.pretrained._PRETRAINED[t.ARCH] = {"openai": t.openai_pretrained_cfg()}
from clipsearch.encoders import Encoder
from clipsearch.errors import ModelUnavailable
from hub_fixtures import fill_hub_cache
enc = Encoder.load(t.ARCH, checkpoint=sys.argv[2], device="cpu")
out = {"text": enc.encode_texts(t.TEXTS).tolist(), "model_id": enc.model_id}
try:
    Encoder.load("ViT-B-32/laion2b_s34b_b79k", device="cpu")
except ModelUnavailable as e:
    out["uncached"] = [str(e), e.hint]
print(json.dumps(out))
"""


def test_vificlip_vectors_are_the_same_in_two_processes_offline_behind_a_proxy(tmp_path, hub_cache):
    """The token table is the base model's, not a fresh random one per process; it comes from the
    cache with HF_HUB_OFFLINE=1 and a proxy that nothing could get through."""
    install_fake_openai(hub_cache)
    path, src = build_layout("vificlip-wrapped", tmp_path)
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("CLIPSEARCH_OFFLINE", None)
    runs = []
    for _ in range(2):
        p = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path), str(path)], env=env,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    a, b = (np.asarray(r["text"]) for r in runs)
    assert np.array_equal(a, b)
    np.testing.assert_allclose(a, reference_vectors(src, torch.zeros(1, 3, 32, 32))[0], atol=1e-5)
    assert runs[0]["model_id"] == runs[1]["model_id"]
    message, hint = runs[0]["uncached"]
    assert "not cached" in message and "HF_HUB_OFFLINE" in message and "\n" not in message
    assert "clipsearch-tiny" in hint and "HF_HUB_OFFLINE" in hint


def test_vificlip_without_cached_base_weights_is_refused_offline(tmp_path, hub_cache):
    open_clip.pretrained._PRETRAINED[ARCH] = {"openai": openai_pretrained_cfg()}  # known, not cached
    path, _ = build_layout("vificlip", tmp_path)
    with pytest.raises(ModelUnavailable) as e:
        Encoder.load(ARCH, checkpoint=str(path), device="cpu")
    assert "token_embedding.weight" in str(e.value) and "not cached" in str(e.value)
    assert "clipsearch-tiny" in e.value.hint


def test_vificlip_on_an_arch_without_openai_weights_is_refused(tmp_path, hub_cache):
    path, _ = build_layout("vificlip", tmp_path)
    with pytest.raises(ModelUnavailable, match="no 'openai' weights") as e:
        Encoder.load(ORPHAN, checkpoint=str(path), device="cpu")
    assert "--model" in e.value.hint


def test_missing_weights_are_named_never_filled_at_random(tmp_path, hub_cache):
    src = source_model(seed=1, quick_gelu=False)
    sd = {k: v for k, v in src.state_dict().items() if k != "ln_final.weight"}
    path = tmp_path / "holey.pt"
    torch.save(sd, path)
    with pytest.raises(ModelUnavailable, match=r"1 weights missing \(ln_final.weight\)"):
        Encoder.load(ARCH, checkpoint=str(path), device="cpu")
    # ViFi-CLIP may leave out only what its base has: a base without the table is refused too
    base = base_state_dict()
    del base["token_embedding.weight"]
    install_fake_openai(hub_cache, base)
    vifi, _ = build_layout("vificlip", tmp_path)
    with pytest.raises(ModelUnavailable, match="lacks token_embedding.weight, and so does"):
        Encoder.load(ARCH, checkpoint=str(vifi), device="cpu")


def test_a_wrapper_that_is_not_a_state_dict_is_refused_in_one_line(tmp_path):
    path = tmp_path / "ema.pt"
    torch.save({"ema": {"visual.proj": torch.zeros(2)}, "epoch": 3}, path)
    with pytest.raises(ModelUnavailable, match="not a state dict: ema, epoch are not tensors") as e:
        Encoder.load(ARCH, checkpoint=str(path), device="cpu")
    assert "\n" not in str(e.value)
