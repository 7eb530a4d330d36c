"""Exporting an open_clip model's towers to ONNX, and the probe that decides whether to trust them.

The image tower (`model.encode_image` on pixels) and the text tower (`model.encode_text` on
token ids) are exported apart, each with a dynamic batch axis, so a text query loads the text
tower alone. Then every installed runtime and precision is probed: the exported path (this
package's numpy preprocessing and torch-free tokenizer included) encodes a batch of rendered,
JPEG-decoded images and a set of texts, and its vectors are compared with PyTorch's from
open_clip's own transform and tokenizer. A variant whose least agreeing vector falls below
`THRESHOLDS` is refused; the fastest variant that passed (a short timing of the image tower)
is what `--backend auto` picks. Needs torch, open_clip and onnx; running the result does not.
"""

from __future__ import annotations

import io
import logging
import statistics
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from clipsearch.backends import runtime
from clipsearch.backends.agreement import THRESHOLDS  # least cosine vs PyTorch, per precision
from clipsearch.backends.preprocess import ImageTransform, UnsupportedTransform
from clipsearch.backends.tokenizer import FILE as TOKENIZER_FILE
from clipsearch.backends.tokenizer import PROBE_TEXTS, TextTokenizer, UnsupportedTokenizer, verify
from clipsearch.backends.tokenizer import build as build_tokenizer

if TYPE_CHECKING:
    from clipsearch.backends.cache import Export
    from clipsearch.encoders import Encoder

log = logging.getLogger(__name__)

# What the export probes up front (the candidates of `auto`); others are probed when asked for.
PROBED_AT_EXPORT: dict[str, tuple[str, ...]] = {"onnx": ("fp32",), "openvino": ("fp32", "bf16")}
IMAGE_FILE, TEXT_FILE = "image.onnx", "text.onnx"
PROBE_SIZES = ((320, 240), (240, 320), (500, 500), (97, 131), (1024, 300), (64, 64), (640, 480), (150, 600))
TIMING_BATCH, TIMING_RUNS = 8, 3
RACE_ROUNDS = 5  # the export's race between the variants that passed (`race`)


class ExportRefused(Exception):
    """The model cannot be exported faithfully; the message says why."""


def probe_images(seed: int = 0) -> list[Image.Image]:
    """Rendered pictures (gradients, shapes, text, noise) of several sizes and aspect ratios,
    JPEG-encoded and decoded as a photo would be."""
    rng = np.random.default_rng(seed)
    out = []
    for w, h in PROBE_SIZES:
        x = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
        y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        base = rng.random(3, dtype=np.float32) * x + rng.random(3, dtype=np.float32) * y
        noise = rng.normal(0, 0.05, (h, w, 3)).astype(np.float32)
        im = Image.fromarray((np.clip(base / 2 + noise, 0, 1) * 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(im)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            x1, y1 = x0 + int(rng.integers(4, max(5, w // 2))), y0 + int(rng.integers(4, max(5, h // 2)))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = (draw.ellipse, draw.rectangle)[int(rng.integers(0, 2))]
            shape((x0, y0, x1, y1), fill=colour)
        draw.text((w // 8, h // 2), "clipsearch", fill=(255, 255, 255))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=88)
        out.append(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out


def _onnx_export(module: Any, example: Any, path: Path, input_name: str) -> None:
    import torch

    kwargs: dict[str, Any] = dict(input_names=[input_name], output_names=["features"], opset_version=17,
                                  dynamic_axes={input_name: {0: "batch"}, "features": {0: "batch"}},
                                  do_constant_folding=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (example,), str(path), dynamo=False, **kwargs)
        except TypeError:  # a torch from before the `dynamo` switch: TorchScript is its only exporter
            torch.onnx.export(module, (example,), str(path), **kwargs)


def export_towers(encoder: Encoder, folder: Path, pixels: np.ndarray, ids: np.ndarray) -> None:
    """Write the image and text towers of `encoder` as ONNX files into `folder`."""
    import torch

    model = encoder.model

    class ImageTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.model.encode_image(pixels)

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.model.encode_text(tokens)

    # With gradients off, nn.MultiheadAttention takes its fused inference kernel, which the
    # TorchScript exporter cannot translate; traced with gradients on, it exports as plain ops.
    model.requires_grad_(True)
    try:
        with torch.enable_grad():
            _onnx_export(ImageTower().eval(), torch.from_numpy(pixels[:2]), folder / IMAGE_FILE, "pixels")
            _onnx_export(TextTower().eval(), torch.from_numpy(ids[:2]), folder / TEXT_FILE, "tokens")
    except Exception as e:
        raise ExportRefused(f"the ONNX exporter could not trace it ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:160] if str(e) else ''})") from e
    finally:
        model.eval().requires_grad_(False)


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(_normalised(a) * _normalised(b), axis=1)))


class Probe:
    """The probe batch and PyTorch's vectors for it, made once per export."""

    def __init__(self, encoder: Encoder, transform: ImageTransform, tokenizer: TextTokenizer) -> None:
        images = probe_images()
        self.texts = list(PROBE_TEXTS)
        self.ref_images = encoder.encode_images(images)
        self.ref_texts = encoder.encode_texts(self.texts)
        self.pixels = np.stack([transform(im) for im in images])
        self.ids = tokenizer(self.texts)
        theirs = np.stack([np.asarray(encoder.preprocess.preprocess(im)) for im in images])
        self.pixel_diff = float(np.abs(theirs - self.pixels).max())
        self.runners: dict[str, runtime.Runner] = {}  # passed, untimed variants (see `race`)

    def run(self, backend: str, precision: str, folder: Path, files: dict[str, str],
            timed: bool = True) -> dict[str, Any]:
        """Probe one variant: agreement with PyTorch, then (if it passed and `timed`) images/s.
        Untimed, a passed variant's image runner is kept in `runners` for `race`."""
        threshold = THRESHOLDS[precision]
        out: dict[str, Any] = {"files": files, "threshold": threshold}
        try:
            image = runtime.runner(backend, folder / files["image"], precision)
            text = runtime.runner(backend, folder / files["text"], precision)
            out["image_min_cos"] = min_cosine(image(self.pixels), self.ref_images)
            out["text_min_cos"] = min_cosine(text(self.ids), self.ref_texts)
        except Exception as e:
            out.update(passed=False, reason=f"{backend} could not run it ({type(e).__name__}: "
                                            f"{str(e).splitlines()[0][:160] if str(e) else ''})")
            return out
        worst = min(out["image_min_cos"], out["text_min_cos"])
        out["passed"] = bool(worst >= threshold)
        out["reason"] = None if out["passed"] else (
            f"its vectors drift from PyTorch's (min cosine {worst:.5f} < {threshold})")
        if out["passed"] and timed:
            out["images_per_s"] = images_per_second(image, self.pixels)
        elif out["passed"]:
            self.runners[f"{backend}/{precision}"] = image
        return out


def race(runners: dict[str, runtime.Runner | Any], pixels: np.ndarray,
         rounds: int = RACE_ROUNDS) -> dict[str, float]:
    """images/s of each runner: its best of `rounds` timed batches, the runners taking turns,
    so that a burst of load from elsewhere slows every candidate alike instead of one (what
    `auto` picks must not depend on which variant happened to be timed during the burst)."""
    batch = np.ascontiguousarray(np.resize(pixels, (TIMING_BATCH, *pixels.shape[1:])))
    for run in runners.values():
        run(batch)  # warm-up: first-call allocations and kernel selection
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(rounds):
        for key, run in runners.items():
            t0 = time.perf_counter()
            run(batch)
            best[key] = min(best[key], time.perf_counter() - t0)
    return {key: TIMING_BATCH / max(t, 1e-9) for key, t in best.items()}


def images_per_second(run: runtime.Runner | Any, pixels: np.ndarray) -> float:
    batch = np.ascontiguousarray(np.resize(pixels, (TIMING_BATCH, *pixels.shape[1:])))
    run(batch)  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(TIMING_RUNS):
        t0 = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - t0)
    return TIMING_BATCH / max(statistics.median(times), 1e-9)


def variant_files(backend: str, precision: str) -> dict[str, str]:
    if precision == "int8":
        return {"image": "image.int8.onnx", "text": "text.int8.onnx"}
    return {"image": IMAGE_FILE, "text": TEXT_FILE}


def make_int8(folder: Path, dest: Path, prefix: str = "") -> None:
    """The int8 towers, quantised from the fp32 ones in `folder`, written into `dest`."""
    for src, name in ((IMAGE_FILE, "image.int8.onnx"), (TEXT_FILE, "text.int8.onnx")):
        runtime.quantize_int8(folder / src, dest / f"{prefix}{name}")


def choose(variants: dict[str, dict[str, Any]]) -> dict[str, str] | None:
    """What `auto` runs: the fastest of the variants probed up front (`PROBED_AT_EXPORT`) that
    passed: {"backend", "precision"}, or None."""
    auto = {f"{b}/{p}" for b, ps in PROBED_AT_EXPORT.items() for p in ps}
    ok = [(v.get("images_per_s") or 0.0, k) for k, v in variants.items() if v.get("passed") and k in auto]
    if not ok:
        return None
    backend, precision = max(ok)[1].split("/")
    return {"backend": backend, "precision": precision}


def make(encoder: Encoder, folder: Path, backends: list[str]) -> dict[str, Any]:
    """Export `encoder` into `folder` and probe it: the manifest's fields (see cache.build).
    A model that cannot be exported gets a manifest that says why (`refused`) and no files."""
    fields: dict[str, Any] = {"model_name": encoder.spec.name, "versions": runtime.versions(),
                              "created": time.time()}
    try:
        transform = ImageTransform.from_open_clip(encoder.preprocess.preprocess)
        tok_config = build_tokenizer(encoder.tokenizer, folder)
        tokenizer = TextTokenizer(folder / TOKENIZER_FILE, tok_config)
        verify(encoder.tokenizer, tokenizer)
        probe = Probe(encoder, transform, tokenizer)
        if probe.pixel_diff > 1e-4:
            raise ExportRefused(f"the numpy preprocessing differs from open_clip's (max abs diff "
                                f"{probe.pixel_diff:.2g})")
        export_towers(encoder, folder, probe.pixels, probe.ids)
    except (ExportRefused, UnsupportedTransform, UnsupportedTokenizer) as e:
        for p in folder.iterdir():
            p.unlink()
        return {**fields, "refused": str(e)}
    variants = {}
    for backend in backends:
        for precision in PROBED_AT_EXPORT[backend]:
            variants[f"{backend}/{precision}"] = probe.run(backend, precision, folder,
                                                           variant_files(backend, precision), timed=False)
    import torch

    with torch.inference_mode():
        speeds = race({**probe.runners, "torch": lambda x: encoder.encode_pixels(torch.from_numpy(x))},
                      probe.pixels)
    torch_speed = speeds.pop("torch")
    for key, speed in speeds.items():
        variants[key]["images_per_s"] = speed
    return {**fields, "dim": int(encoder.dim), "image_size": transform.image_size,
            "context_length": int(encoder.context_length), "preprocess": transform.to_dict(),
            "tokenizer": tok_config, "pixel_max_abs_diff": probe.pixel_diff, "variants": variants,
            "torch_images_per_s": torch_speed, "choice": choose(variants)}


def add_variant(export: Export, encoder: Encoder, backend: str, precision: str) -> Export:
    """Probe a variant the export did not (int8, fp16, a runtime installed since), making its
    files if it needs its own, and record it in the manifest. The caller holds the lock."""
    from clipsearch.backends import cache

    transform = ImageTransform.from_dict(export.manifest["preprocess"])
    tokenizer = TextTokenizer(export.file(TOKENIZER_FILE), export.manifest["tokenizer"])
    probe = Probe(encoder, transform, tokenizer)
    files = variant_files(backend, precision)
    new: dict[str, Path] = {}
    if precision == "int8" and not all(n in export.manifest["files"] for n in files.values()):
        for name in (IMAGE_FILE, TEXT_FILE):  # checked before they are quantised
            export.file(name)
        make_int8(export.folder, export.folder, prefix=".tmp-")
        new = {n: export.folder / f".tmp-{n}" for n in files.values()}
    staged = {k: (f".tmp-{n}" if new else n) for k, n in files.items()}
    result = probe.run(backend, precision, export.folder, staged)
    result["files"] = files

    def update(manifest: dict[str, Any]) -> None:
        manifest.setdefault("variants", {})[f"{backend}/{precision}"] = result
        manifest["versions"] = runtime.versions()
        manifest["choice"] = choose(manifest["variants"])

    return cache.add_files(export, new, update)
