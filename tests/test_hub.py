"""Reaching the hub is huggingface_hub's call: cache first, then its real download, and each of
its errors becomes one line that says what to do. No raw socket decides "no network"."""

from __future__ import annotations

import json
import socket

import numpy as np
import open_clip
import pytest
import torch
from hub_fixtures import fill_hub_cache
from huggingface_hub import errors as hf_errors

from clipsearch import hub
from clipsearch.encoders import Encoder
from clipsearch.errors import ModelUnavailable

ARCH, TAG, REPO = "cs-hub-test", "fake", "cs-test/hub-tiny"
TAG_CFG = {"hf_hub": REPO + "/", "url": "", "mean": (0.5, 0.25, 0.125), "std": (0.5, 0.5, 0.5),
           "interpolation": "bicubic", "resize_mode": "squash"}
CFG = {"embed_dim": 16,
       "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
       "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module", autouse=True)
def arch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cfg")
    (folder / f"{ARCH}.json").write_text(json.dumps(CFG))
    open_clip.add_model_config(folder)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A private, empty HF cache; ARCH/TAG known to open_clip; clipsearch's own switch off."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("CLIPSEARCH_OFFLINE", raising=False)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, ARCH, {TAG: TAG_CFG})


def response(code: int):
    import httpx2

    return httpx2.Response(code, request=httpx2.Request("HEAD", f"https://huggingface.co/{REPO}/resolve/main/x"))


def raised_from(error: Exception, cause: Exception) -> Exception:
    try:
        raise error from cause
    except Exception as e:
        return e


def local_miss() -> Exception:
    return hf_errors.LocalEntryNotFoundError("Cannot find the requested files in the disk cache")


class FakeDownload:
    """Stands in for huggingface_hub.hf_hub_download: misses the cache, then does `then`."""

    def __init__(self, then):
        self.then = then
        self.calls: list[tuple[str, bool]] = []

    def __call__(self, repo_id, filename, local_files_only=False, **kw):
        self.calls.append((filename, local_files_only))
        if local_files_only:
            raise local_miss()
        return self.then(filename)


def fails_with(error):
    def then(filename):
        raise error() if callable(error) else error
    return then


def _connection():
    import httpx2

    return raised_from(local_miss(), httpx2.ConnectError("[Errno 111] Connection refused"))


CASES = {
    "offline": (lambda: raised_from(local_miss(), hf_errors.OfflineModeIsEnabled("offline")),
                "not cached and HF_HUB_OFFLINE is set", "clipsearch-tiny"),
    "no-connection": (_connection, "hub cannot be reached (ConnectError: [Errno 111] Connection refused)",
                      "HF_HUB_OFFLINE=1"),
    "hub-down": (lambda: raised_from(local_miss(), hf_errors.HfHubHTTPError("503", response=response(503))),
                 "the hub answered HTTP 503", "try again later"),
    "proxy": (lambda: __import__("httpx2").ProxyError("407 Proxy Authentication Required"),
              "the proxy refused the download (407 Proxy Authentication Required)", "HTTPS_PROXY"),
    "no-repo-404": (lambda: hf_errors.RepositoryNotFoundError("404 Client Error", response=response(404)),
                    "the hub has no repo cs-test/hub-tiny, or it is private", "hf auth login"),
    "no-repo-401": (lambda: hf_errors.RepositoryNotFoundError("401 Client Error", response=response(401)),
                    "the hub has no repo cs-test/hub-tiny, or it is private", "HF_TOKEN"),
    "bad-token": (lambda: hf_errors.HfHubHTTPError("401 Client Error", response=response(401)),
                  "refused the token (HTTP 401)", "HF_TOKEN"),
    "gated": (lambda: hf_errors.GatedRepoError("403 Client Error", response=response(403)),
              "is gated on the hub", "accept its terms"),
    "no-file": (lambda: hf_errors.RemoteEntryNotFoundError("404", response=response(404)),
                "has no open_clip_model.safetensors, open_clip_pytorch_model.bin", "not an open_clip model"),
    "disk-full": (lambda: OSError(28, "No space left on device"), "could not be stored", "free disk space"),
}


@pytest.mark.parametrize("case", CASES)
def test_each_hub_error_is_one_actionable_line(case, monkeypatch):
    error, message, hint = CASES[case]
    monkeypatch.setenv("HTTPS_PROXY", "http://user:secret@127.0.0.1:9")
    fake = FakeDownload(fails_with(error))
    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake)
    with pytest.raises(ModelUnavailable) as e:
        Encoder.load(f"{ARCH}/{TAG}", device="cpu")
    text = str(e.value)
    assert text.startswith(f"weights for {ARCH}/{TAG}") and message in text, text
    assert "\n" not in text and hint in e.value.hint
    assert "secret" not in text + e.value.hint
    assert fake.calls[0] == ("open_clip_model.safetensors", True)  # the cache was asked first
    assert any(not local for _, local in fake.calls)  # then huggingface_hub, for real


def source_weights(path) -> torch.nn.Module:
    from safetensors.torch import save_file

    torch.manual_seed(3)
    model = open_clip.create_model(ARCH, pretrained=None).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


def no_sockets(monkeypatch):
    def refuse(*a, **k):
        raise OSError("this test allows no network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_behind_a_proxy_the_download_is_tried_not_judged_by_a_socket(tmp_path, monkeypatch):
    """The old check opened a raw socket to the hub and, behind a proxy, said "no network"."""
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    no_sockets(monkeypatch)
    model = source_weights(tmp_path / "open_clip_model.safetensors")
    fake = FakeDownload(lambda filename: str(tmp_path / filename))  # "downloaded through the proxy"
    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake)
    enc = Encoder.load(f"{ARCH}/{TAG}", device="cpu")
    tok = open_clip.get_tokenizer(ARCH)
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.encode_text(tok(["a red star"])), dim=-1).numpy()
    np.testing.assert_allclose(enc.encode_texts(["a red star"]), want, atol=1e-6)
    assert fake.calls == [("open_clip_model.safetensors", True), ("open_clip_pytorch_model.bin", True),
                          ("open_clip_model.safetensors", False)]
    norm = enc.preprocess.preprocess.transforms[-1]  # the tag's preprocessing, as open_clip would set it
    assert tuple(norm.mean) == TAG_CFG["mean"]


def test_a_cached_model_loads_with_hf_hub_offline_and_a_dead_proxy(tmp_path, monkeypatch):
    """Real huggingface_hub, real cache layout, HF_HUB_OFFLINE=1: no download is attempted."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    no_sockets(monkeypatch)
    model = source_weights(tmp_path / "w.safetensors")
    fill_hub_cache(tmp_path / "hub", REPO, {"open_clip_model.safetensors": model.state_dict()})
    enc = Encoder.load(f"{ARCH}/{TAG}", device="cpu")
    assert enc.model_id == f"{ARCH}/{TAG}"
    with pytest.raises(ModelUnavailable, match="not cached and HF_HUB_OFFLINE is set") as e:
        Encoder.load("ViT-B-32/laion2b_s34b_b79k", device="cpu")
    assert "--checkpoint" in e.value.hint


def test_clipsearch_offline_keeps_to_the_cache(monkeypatch):
    monkeypatch.setenv("CLIPSEARCH_OFFLINE", "1")
    fake = FakeDownload(fails_with(AssertionError("must not download")))
    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake)
    with pytest.raises(ModelUnavailable, match="not cached and CLIPSEARCH_OFFLINE is set"):
        hub.pretrained_file(ARCH, TAG)
    assert all(local for _, local in fake.calls)


def test_a_bin_only_repo_falls_back_to_the_second_name(tmp_path, monkeypatch):
    def then(filename):
        if filename.endswith(".safetensors"):
            raise hf_errors.RemoteEntryNotFoundError("404", response=response(404))
        return str(tmp_path / filename)

    fake = FakeDownload(then)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake)
    assert hub.pretrained_file(ARCH, TAG) == str(tmp_path / "open_clip_pytorch_model.bin")
