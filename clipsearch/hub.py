"""Weights from the Hugging Face hub: the local cache first, then the network, one-line errors.

Whether the hub can be reached is huggingface_hub's call, not ours: it knows HF_HUB_OFFLINE,
proxies, mirrors (HF_ENDPOINT) and tokens. clipsearch asks for a file from the cache, then for
real, and turns what huggingface_hub raises into a `ModelUnavailable` that says what to do.
CLIPSEARCH_OFFLINE=1 keeps clipsearch to the cache without switching huggingface_hub off.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from clipsearch.errors import ModelUnavailable
from clipsearch.model_registry import TINY_NAME, ModelSpec, preset_hub_file, tiny_files

OFFLINE_HINT = (
    "use the bundled model (--model clipsearch-tiny), or a local state dict "
    "(--model ARCH --checkpoint FILE), or run once with internet to fill the cache"
)
# open_clip's default weight file names in a hub repo; it prefers the safetensors one.
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPEN_CLIP_CONFIG = "open_clip_config.json"
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")


def clipsearch_offline() -> bool:
    return os.environ.get("CLIPSEARCH_OFFLINE", "0") not in ("", "0")


def cached_file(repo: str, filenames: Sequence[str]) -> str | None:
    """Path of the first of `filenames` already in the cache, without any network."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        hit = try_to_load_from_cache(repo, name)
        if isinstance(hit, str):
            return hit
    return None


def fetch_file(repo: str, filenames: Sequence[str], what: str) -> str:
    """Local path of the first of `filenames` in hub repo `repo`: from the cache when it is
    there, else downloaded. `what` names the thing for error messages ("weights for X")."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    for name in filenames:
        try:
            return hf_hub_download(repo, name, local_files_only=True)
        except LocalEntryNotFoundError:
            continue
        except Exception as e:  # a corrupt cache entry, an unreadable cache folder
            raise explain(e, repo, what) from e
    if clipsearch_offline():
        raise ModelUnavailable(f"{what} is not cached and CLIPSEARCH_OFFLINE is set", hint=OFFLINE_HINT)
    missing: Exception | None = None
    for name in filenames:
        try:
            return hf_hub_download(repo, name)
        except LocalEntryNotFoundError as e:  # offline, or the hub could not be reached
            raise explain(e, repo, what) from e
        except RemoteEntryNotFoundError as e:  # the repo has no such file: try the next name
            missing = e
        except Exception as e:
            raise explain(e, repo, what) from e
    assert missing is not None
    raise explain(missing, repo, what, filenames) from missing


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:160]


def _is_proxy_error(e: BaseException) -> bool:
    # huggingface_hub's HTTP client has changed (requests, httpx, httpx2); all call it ProxyError.
    return any(c.__name__ == "ProxyError" for c in type(e).__mro__)


def explain(e: BaseException, repo: str, what: str, filenames: Sequence[str] = ()) -> ModelUnavailable:
    """One-line `ModelUnavailable` for an exception from huggingface_hub."""
    from huggingface_hub import is_offline_mode
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cause = e.__cause__ or e.__context__
    login = "log in with `hf auth login` or set HF_TOKEN"
    offline = isinstance(cause, OfflineModeIsEnabled) or is_offline_mode()
    if isinstance(e, OfflineModeIsEnabled) or (isinstance(e, LocalEntryNotFoundError) and offline):
        return ModelUnavailable(f"{what} is not cached and HF_HUB_OFFLINE is set",
                                hint=OFFLINE_HINT + " (unset HF_HUB_OFFLINE to download)")
    if isinstance(e, GatedRepoError):
        return ModelUnavailable(f"{what}: {repo} is gated on the hub and this machine has no access to it",
                                hint=f"accept its terms on its hub page, then {login}")
    if isinstance(e, RepositoryNotFoundError):
        return ModelUnavailable(f"{what}: the hub has no repo {repo}, or it is private",
                                hint="check the model name (`clipsearch models` lists them); "
                                f"if it is private, {login}")
    if isinstance(e, RevisionNotFoundError):
        return ModelUnavailable(f"{what}: {repo} has no such revision", hint="check the model name")
    if isinstance(e, RemoteEntryNotFoundError):
        names = ", ".join(filenames) or "the file asked for"
        return ModelUnavailable(f"{what}: {repo} has no {names}",
                                hint="it is not an open_clip model repo; pick another model or tag")
    if isinstance(e, HfHubHTTPError) and _status(e) == 401:
        return ModelUnavailable(f"{what}: the hub refused the token (HTTP 401)",
                                hint=f"check HF_TOKEN, or {login} again")
    if isinstance(e, LocalEntryNotFoundError):
        code = _status(cause) if cause is not None else None
        if code:
            return ModelUnavailable(f"{what} is not cached and the hub answered HTTP {code}",
                                    hint="try again later; " + OFFLINE_HINT)
        why = f" ({type(cause).__name__}: {_first_line(cause)})" if cause is not None else ""
        return ModelUnavailable(f"{what} is not cached and the hub cannot be reached{why}",
                                hint=_network_hint())
    if _is_proxy_error(e):
        return ModelUnavailable(f"{what}: the proxy refused the download ({_first_line(e)})",
                                hint=_network_hint())
    if isinstance(e, HfHubHTTPError):
        return ModelUnavailable(f"{what}: the hub answered HTTP {_status(e)}", hint="try again later")
    if isinstance(e, OSError):
        return ModelUnavailable(f"{what} could not be stored: {_first_line(e)}",
                                hint="free disk space, or point HF_HUB_CACHE at a writable folder")
    return ModelUnavailable(f"{what} could not be downloaded: {type(e).__name__}: {_first_line(e)}",
                            hint=_network_hint())


def _network_hint() -> str:
    proxy = next((k for k in _PROXY_VARS if os.environ.get(k)), None)  # its value may hold a password
    check = (f"check that the proxy in {proxy} is up and lets the hub through" if proxy
             else "check the connection (behind a proxy, set HTTPS_PROXY)")
    return f"{check}; set HF_HUB_OFFLINE=1 to skip the hub; or " + OFFLINE_HINT


def pretrained_source(arch: str, tag: str) -> tuple[str, tuple[str, ...]] | None:
    """(hub repo, candidate file names) open_clip loads ARCH/TAG from; None if it is not on the hub.
    A preset's is known without importing open_clip."""
    hub = preset_hub_file(arch, tag)
    if hub is None:
        import open_clip

        hub = open_clip.get_pretrained_cfg(arch, tag).get("hf_hub", "")
    if not hub:
        return None
    repo, filename = os.path.split(hub)
    if not filename:
        return repo, OPEN_CLIP_WEIGHTS
    if filename.endswith((".bin", ".pth")):  # open_clip tries a safetensors twin first
        return repo, (filename[:-4] + ".safetensors", filename)
    return repo, (filename,)


def cached_pretrained(arch: str, tag: str) -> str | None:
    """The local file open_clip would load for ARCH/TAG, if it is already on disk."""
    source = pretrained_source(arch, tag)
    if source:
        return cached_file(*source)
    import open_clip

    url = open_clip.get_pretrained_cfg(arch, tag).get("url", "")
    cached = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url)) if url else ""
    return cached if cached and os.path.isfile(cached) else None


def pretrained_file(arch: str, tag: str, what: str | None = None) -> str | None:
    """Local path of ARCH/TAG's weights, downloading them if needed; None when open_clip fetches
    them from a plain URL itself (no hub repo). Raises ModelUnavailable with what to do."""
    source = pretrained_source(arch, tag)
    if source is None:
        return cached_pretrained(arch, tag)
    return fetch_file(*source, what=what or f"weights for {arch}/{tag}")


def weights_status(spec: ModelSpec) -> str:
    """'local' when weights are on disk, 'missing' when they are not, 'unknown' if we can't tell."""
    if spec.checkpoint:
        return "local" if os.path.isfile(spec.checkpoint) else "missing"
    if spec.arch == TINY_NAME:
        return "local" if tiny_files()[1].is_file() else "missing"
    if spec.pretrained:
        try:
            return "local" if cached_pretrained(spec.arch, spec.pretrained) else "missing"
        except Exception:
            return "unknown"
    if spec.arch.startswith("hf-hub:"):
        repo = spec.arch[len("hf-hub:"):]
        local = cached_file(repo, [OPEN_CLIP_CONFIG]) and cached_file(repo, OPEN_CLIP_WEIGHTS)
        return "local" if local else "missing"
    return "unknown"
