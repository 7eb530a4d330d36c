"""One Encoder class over any open_clip model: pixels and text in, L2-normalised float32 out.

Weights are resolved (cache first, then huggingface_hub's download) before open_clip is asked to
load them, and open_clip is then given the files on disk: a machine that cannot reach the hub
gets a one-line, actionable error instead of a traceback, and a cached model loads without it.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipsearch import hub
from clipsearch.errors import ModelUnavailable, UsageError
from clipsearch.model_registry import TINY_NAME, ModelSpec, resolve, tiny_files
from clipsearch.tokens import count_tokens, truncation_note

__all__ = ["Encoder", "FastPreprocess", "pick_device", "truncation_note"]

log = logging.getLogger(__name__)


def pick_device(device: str | None = "auto") -> str:
    """cuda, then mps, then cpu; an explicit choice is checked, not trusted."""
    device = (device or "auto").lower()
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available here", hint="use --device cpu or auto")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise UsageError(f"--device {device}: unknown device", hint="use auto, cpu, cuda or mps")
    return device


def _check_arch(arch: str) -> None:
    import difflib

    import open_clip

    if arch.startswith(("hf-hub:", "local-dir:")) or arch in open_clip.list_models():
        return
    close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
    raise UsageError(f"unknown model architecture '{arch}'",
                     hint=("did you mean " + ", ".join(close) + "? " if close else "")
                     + "run `clipsearch models` for the list")


def _build(spec: ModelSpec, device: str):
    """Create (model, preprocess, tokenizer) for a spec, loading weights from a resolved source."""
    import open_clip

    from clipsearch.checkpoint_loading import load_checkpoint_into

    arch = spec.arch
    if arch == TINY_NAME:
        config, weights = tiny_files()
        open_clip.add_model_config(str(config))
        if not spec.checkpoint:
            if not weights.is_file():
                raise ModelUnavailable(f"the bundled model's weights are missing ({weights})",
                                       hint="reinstall clipsearch, or retrain it: "
                                       "python -m clipsearch.tiny.train")
            spec = ModelSpec(arch=TINY_NAME, checkpoint=str(weights), pooling=spec.pooling)
    _check_arch(arch)

    if spec.checkpoint:
        if not Path(spec.checkpoint).is_file():
            raise ModelUnavailable(f"checkpoint file not found: {spec.checkpoint}",
                                   hint="restore the file, or re-index with another --model")
        model, preprocess, context_length = load_checkpoint_into(arch, spec.checkpoint, device)
        return model, preprocess, _tokenizer(arch, context_length)

    if spec.pretrained:
        if not open_clip.is_pretrained_cfg(arch, spec.pretrained):
            tags = [t for a, t in open_clip.list_pretrained() if a == arch]
            raise UsageError(f"'{spec.pretrained}' is not a known pretrained tag for {arch}",
                             hint="known tags: " + (", ".join(tags) or "none; use --checkpoint FILE"))
    name, kwargs = _weights_source(spec)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, device=device, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError) as e:
        raise ModelUnavailable(f"could not load weights for {spec.name}: {str(e).splitlines()[0][:200]}",
                               hint=hub.OFFLINE_HINT) from e
    if spec.pretrained is None and not arch.startswith(("hf-hub:", "local-dir:")):
        warnings.warn(f"{arch} has random weights (no tag, no --checkpoint): fine for benchmarks, "
                      "useless for search", stacklevel=3)
    return model, preprocess, _tokenizer(name)


def _weights_source(spec: ModelSpec) -> tuple[str, dict]:
    """The model name and create kwargs that make open_clip load files already on disk, so it
    never goes to the hub a second time (where a flaky proxy would fail a cached model)."""
    import open_clip

    if spec.pretrained:
        file = hub.pretrained_file(spec.arch, spec.pretrained, what=f"weights for {spec.name}")
        if file is None:  # a plain-URL tag: open_clip downloads it itself
            return spec.arch, {"pretrained": spec.pretrained}
        cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)  # what the tag would set
        return spec.arch, {"pretrained": file, "image_mean": cfg.get("mean"), "image_std": cfg.get("std"),
                           "image_interpolation": cfg.get("interpolation"),
                           "image_resize_mode": cfg.get("resize_mode")}
    if spec.arch.startswith("hf-hub:"):
        repo = spec.arch[len("hf-hub:"):]
        config = hub.fetch_file(repo, [hub.OPEN_CLIP_CONFIG], what=f"the config of {spec.arch}")
        weights = hub.fetch_file(repo, hub.OPEN_CLIP_WEIGHTS, what=f"weights for {spec.name}")
        folder = Path(weights).parent
        if Path(config).parent == folder:  # one snapshot of the repo holds both
            return f"local-dir:{folder}", {}
    return spec.arch, {}


def _tokenizer(arch: str, context_length: int | None = None):
    """open_clip's tokenizer for `arch`; Hugging Face ones (SigLIP, multilingual) need transformers."""
    import open_clip

    try:
        return open_clip.get_tokenizer(arch, context_length=context_length)
    except ImportError as e:
        raise ModelUnavailable(f"{arch} uses a Hugging Face tokenizer and {e.name or 'transformers'} "
                               "is not installed", hint="pip install 'clipsearch[hf]'") from e
    except OSError as e:  # transformers could not find the tokenizer files, cached or online
        raise ModelUnavailable(f"the tokenizer of {arch} is not available: {str(e).splitlines()[0][:160]}",
                               hint=hub.OFFLINE_HINT) from e


def _maybe_reparameterize(model: torch.nn.Module) -> torch.nn.Module:
    """MobileCLIP-style models fuse branches for inference; a no-op for everything else."""
    try:
        from timm.utils.model import reparameterize_model
    except ImportError:
        return model
    return reparameterize_model(model)


class FastPreprocess:
    """An open_clip preprocess with its ToTensor + Normalize tail done in numpy: the same numbers
    (bit for bit), without torch's intra-op thread team per tiny op. Called from decode threads
    on a busy CPU, that tail cost far more in torch than the whole rest of the preprocess.

    Anything that is not a PIL image, or a pipeline not ending in ToTensor + Normalize, goes
    through the original transform unchanged. Picklable (for process pools)."""

    def __init__(self, preprocess) -> None:
        from torchvision.transforms import Normalize

        self.preprocess = preprocess
        self.transforms = list(getattr(preprocess, "transforms", []))
        self.head: list | None = None
        tail = self.transforms[-2:]
        if (len(tail) == 2 and type(tail[0]).__name__ in ("ToTensor", "MaybeToTensor")
                and isinstance(tail[1], Normalize) and not tail[1].inplace):
            self.head = self.transforms[:-2]
            self.mean = np.asarray(tail[1].mean, dtype=np.float32).reshape(-1, 1, 1)
            self.std = np.asarray(tail[1].std, dtype=np.float32).reshape(-1, 1, 1)

    def __call__(self, image) -> torch.Tensor:
        if self.head is None or not isinstance(image, Image.Image):
            return self.preprocess(image)
        im = image
        for t in self.head:
            im = t(im)
        if not isinstance(im, Image.Image) or im.mode != "RGB":
            return self.preprocess(image)
        a = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
        return torch.from_numpy(np.ascontiguousarray((a - self.mean) / self.std))

    def __repr__(self) -> str:
        return repr(self.preprocess)


class Encoder:
    """Wraps one open_clip model. Vectors come out float32 and L2-normalised (inner product = cosine)."""

    backend = "torch"

    def __init__(self, spec: ModelSpec, model, preprocess, tokenizer, device: str, batch_size: int = 64):
        self.spec = spec
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess if isinstance(preprocess, FastPreprocess) else FastPreprocess(preprocess)
        self.tokenizer = tokenizer
        # Hugging Face fast tokenizers refuse concurrent calls ("Already borrowed"): one at a time.
        self._tokenize_lock = threading.Lock()
        self.device = device
        self.batch_size = batch_size
        self.context_length = int(getattr(tokenizer, "context_length", None) or model.context_length)
        self.model_id = spec.model_id()
        size = getattr(model.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, tuple | list) else size)
        with torch.inference_mode():
            self.dim = int(self.encode_texts(["a"]).shape[1])

    @classmethod
    def load(cls, model: str | ModelSpec | None = None, checkpoint: str | None = None,
             device: str | None = "auto", batch_size: int = 64, pooling: str = "mean") -> Encoder:
        spec = model if isinstance(model, ModelSpec) else resolve(model, checkpoint, pooling)
        dev = pick_device(device)
        m, preprocess, tokenizer = _build(spec, dev)
        if spec.arch.startswith("MobileCLIP"):
            m = _maybe_reparameterize(m)
        return cls(spec, m, preprocess, tokenizer, dev, batch_size)

    def _autocast(self):
        if self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast("cpu", enabled=False)

    @staticmethod
    def _normalise(x: torch.Tensor) -> np.ndarray:
        x = x.float()
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return x.cpu().numpy().astype(np.float32)

    def encode_pixels(self, batch: torch.Tensor) -> np.ndarray:
        """Encode an already-preprocessed NCHW batch."""
        with torch.inference_mode(), self._autocast():
            return self._normalise(self.model.encode_image(batch.to(self.device, non_blocking=True)))

    @property
    def precision(self) -> str:
        return "fp16" if self.device.startswith("cuda") else "fp32"

    def describe(self) -> str:
        return f"torch {self.precision} on {self.device}"

    def encode_batch(self, items: Sequence[torch.Tensor]) -> np.ndarray:
        """Stack what `preprocess` made (in the decode threads) and encode it."""
        return self.encode_pixels(torch.stack(list(items)))

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = [np.zeros((0, getattr(self, "dim", 0)), np.float32)]
        for i in range(0, len(images), self.batch_size):
            chunk = images[i:i + self.batch_size]
            batch = torch.stack([self.preprocess(im.convert("RGB")) for im in chunk])
            out.append(self.encode_pixels(batch))
        return np.concatenate(out) if len(out) > 1 else out[0]

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        vecs = []
        for i in range(0, len(texts), self.batch_size):
            chunk = list(texts[i:i + self.batch_size])
            for t in chunk:
                if hasattr(self, "dim") and self.count_tokens(t) > self.context_length:
                    # callers of a search are told through `truncation_note`; this is for the log
                    log.info("text of %d tokens truncated to the model's %d: %.60r...",
                                self.count_tokens(t), self.context_length, t)
            with self._tokenize_lock:
                tokens = self.tokenizer(chunk)
            tokens = tokens.to(self.device)
            with torch.inference_mode(), self._autocast():
                vecs.append(self._normalise(self.model.encode_text(tokens)))
        return np.concatenate(vecs)

    def count_tokens(self, text: str) -> int:
        """Tokens including the start and end markers, as the text tower will see them."""
        with self._tokenize_lock:
            return count_tokens(self.tokenizer, text)
