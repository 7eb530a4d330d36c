"""Which encoder a command gets: `--backend auto|torch|onnx|openvino`, `--precision ...`.

`auto` keeps a GPU on PyTorch as before (fp16 autocast, nvJPEG). On a CPU it uses the fastest
installed runtime whose export passed its probe (`export.py`), as timed when the model was
exported and remembered in the export's manifest; with neither runtime installed, PyTorch. A
backend asked for by name that cannot serve the model (the export was refused, the probe
failed) falls back to PyTorch with one warning line saying why. Flags win over
$CLIPSEARCH_BACKEND / $CLIPSEARCH_PRECISION. `describe` says what a command would get without
importing torch (for `info` and `models`).
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipsearch.backends import cache, runtime
from clipsearch.errors import MissingDependency, UsageError
from clipsearch.model_registry import ModelSpec

if TYPE_CHECKING:
    from clipsearch.backends.exported import ExportedEncoder
    from clipsearch.encoders import Encoder

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
EXPORTED = ("onnx", "openvino")


def requested(backend: str | None = None, precision: str | None = None) -> tuple[str, str]:
    """(backend, precision) from the arguments, else the environment, else auto; checked."""
    b = (backend or os.environ.get("CLIPSEARCH_BACKEND") or "auto").strip().lower()
    p = (precision or os.environ.get("CLIPSEARCH_PRECISION") or "auto").strip().lower()
    if b not in BACKENDS:
        raise UsageError(f"--backend {b}: unknown backend", hint="use one of " + ", ".join(BACKENDS))
    if p not in PRECISIONS:
        raise UsageError(f"--precision {p}: unknown precision", hint="use one of " + ", ".join(PRECISIONS))
    if b == "torch" and p not in ("auto", "fp32"):
        raise UsageError(f"--precision {p}: the torch backend runs fp32 (fp16 autocast on CUDA)",
                         hint="use --backend onnx (int8) or --backend openvino (bf16, fp16)")
    if b in EXPORTED and p != "auto" and p not in runtime.PRECISIONS[b]:
        raise UsageError(f"--precision {p}: the {b} backend runs " + ", ".join(runtime.PRECISIONS[b]),
                         hint="pick one of those, or --precision auto")
    return b, p


def _gpu_possible(device: str | None) -> bool:
    """Whether the device might be a GPU, judged without importing torch."""
    d = (device or "auto").lower()
    if d == "cpu":
        return False
    if d != "auto":
        return True
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return True  # mps
    return Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists()


def _candidates(backend: str, precision: str, present: list[str]) -> list[tuple[str, str]]:
    """The (backend, precision) pairs a request may be served by, among installed runtimes."""
    from clipsearch.backends.export import PROBED_AT_EXPORT

    out = []
    for b in present:
        if backend not in ("auto", b):
            continue
        if precision == "auto":
            out += [(b, p) for p in PROBED_AT_EXPORT[b]]
        elif precision in runtime.PRECISIONS[b]:
            out.append((b, precision))
    return out


def _fastest(export: cache.Export, pairs: list[tuple[str, str]]) -> tuple[str, str] | None:
    ok = [((v.get("images_per_s") or 0.0), pair) for pair in pairs
          if (v := export.variant(*pair)) is not None and v.get("passed")]
    return max(ok)[1] if ok else None


def _why_not(export: cache.Export, pairs: list[tuple[str, str]]) -> str:
    if export.manifest.get("refused"):
        return str(export.manifest["refused"])
    for pair in pairs:
        v = export.variant(*pair)
        if v is not None and v.get("reason"):
            return f"{'/'.join(pair)}: {v['reason']}"
    return "no variant passed its probe"


def load_encoder(spec: ModelSpec, device: str | None = "auto", backend: str | None = None,
                 precision: str | None = None, batch_size: int = 64) -> Encoder | ExportedEncoder:
    """The encoder for `spec` on the requested backend (see the module docstring)."""
    b, p = requested(backend, precision)
    if b == "torch":
        return _torch(spec, device, batch_size)
    if _gpu_possible(device):
        from clipsearch.encoders import pick_device

        dev = pick_device(device)
        if dev != "cpu":
            if b != "auto":
                raise UsageError(f"--backend {b} runs on the CPU, but the device is {dev}",
                                 hint="add --device cpu, or use --backend auto (torch on a GPU)")
            return _torch(spec, dev, batch_size)
    present = [x for x in EXPORTED if runtime.installed(x) and (b in ("auto", x))]
    if not present or not runtime_can_export_or_run(spec):
        if b == "auto":
            return _torch(spec, "cpu", batch_size)
        raise MissingDependency(f"--backend {b} needs {runtime.MODULES[b]}, which is not installed",
                                hint="pip install 'clipsearch[cpu-fast]'")
    return Chooser(spec, b, p, present, batch_size).encoder()


def runtime_can_export_or_run(spec: ModelSpec) -> bool:
    """An export exists already, or this machine can make one (onnx and tokenizers installed)."""
    import importlib.util

    if cache.export_dir(spec.model_id()).is_dir():
        return True
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "tokenizers"))


def _torch(spec: ModelSpec, device: str | None, batch_size: int) -> Encoder:
    from clipsearch.encoders import Encoder

    return Encoder.load(spec, device=device, batch_size=batch_size)


class Chooser:
    """Finds or makes the export of one model and picks its variant for one request."""

    def __init__(self, spec: ModelSpec, backend: str, precision: str, present: list[str],
                 batch_size: int) -> None:
        self.spec, self.backend, self.precision = spec, backend, precision
        self.present, self.batch_size = present, batch_size
        self.model_id = spec.model_id()
        self.pairs = _candidates(backend, precision, present)
        self._torch: Encoder | None = None

    def torch_encoder(self) -> Encoder:
        if self._torch is None:
            self._torch = _torch(self.spec, "cpu", self.batch_size)
        return self._torch

    def _usable(self, export: cache.Export) -> bool:
        """Whether a cached export can serve this request as it is (else it is redone)."""
        if export.manifest.get("refused"):  # retried when the exporter or runtimes changed
            return bool(export.manifest.get("versions") == runtime.versions())
        return True

    def _make(self, folder: Path) -> dict[str, Any]:
        from clipsearch.backends import export

        log.info("exporting %s to ONNX (once per model)", self.spec.name)
        return export.make(self.torch_encoder(), folder, self.present)

    def export(self, fresh: bool = False) -> cache.Export:
        """The export, with every candidate variant probed (missing ones are probed now)."""
        found = None if fresh else cache.load(self.model_id)
        if found is None or not self._usable(found):
            if fresh:
                with cache.locked(self.model_id):
                    cache.discard(cache.export_dir(self.model_id))
            found = cache.build(self.model_id, self._make, self._usable)
        if found.manifest.get("refused"):
            return found
        missing = [pair for pair in self.pairs if found.variant(*pair) is None]
        if missing:
            from clipsearch.backends import export

            with cache.locked(self.model_id):
                found = cache.load(self.model_id) or found
                for pair in missing:
                    if found.variant(*pair) is None:
                        found = export.add_variant(found, self.torch_encoder(), *pair)
        return found

    def encoder(self) -> Encoder | ExportedEncoder:
        from clipsearch.backends.cache import CorruptExport
        from clipsearch.backends.exported import ExportedEncoder

        try:
            found = self.export()
        except CorruptExport as e:  # a file went bad between the check and its use: redo once
            log.warning("%s; exporting %s again", e, self.spec.name)
            found = self.export(fresh=True)
        pair = _fastest(found, self.pairs)
        if pair is None:
            what = "auto" if self.backend == "auto" else self.backend
            log.warning("%s: the %s backend cannot run it (%s); using torch instead",
                        self.spec.name, what, _why_not(found, self.pairs))
            return self.torch_encoder()
        # auto on OpenVINO: its text tower compiles slowly, and a query encodes one text, so
        # the text tower runs on ONNX Runtime when that passed its probe too
        text_on = (("onnx", "fp32") if self.backend == "auto" and pair[0] == "openvino"
                   and runtime.installed("onnx") else None)
        enc = ExportedEncoder(self.spec, found, *pair, batch_size=self.batch_size,
                              rebuild=lambda: self.export(fresh=True), text_on=text_on)
        return enc


def describe(spec: ModelSpec, device: str | None = "auto", backend: str | None = None,
             precision: str | None = None) -> dict[str, Any]:
    """What `load_encoder` would give, from the export's manifest alone (no torch, no export):
    {"backend", "precision", "note"}."""
    b, p = requested(backend, precision)
    if b == "torch":
        return {"backend": "torch", "precision": "fp32", "note": "asked for"}
    if _gpu_possible(device) and b == "auto":
        return {"backend": "torch", "precision": "auto", "note": "torch on a GPU, when there is one"}
    present = [x for x in EXPORTED if runtime.installed(x) and b in ("auto", x)]
    if not present:
        return {"backend": "torch", "precision": "fp32", "note": "onnxruntime/openvino not installed "
                "(pip install 'clipsearch[cpu-fast]')"}
    found = cache.load(spec.model_id())
    if found is None:
        return {"backend": b, "precision": p, "note": "exported and probed on first use"}
    pairs = _candidates(b, p, present)
    pair = _fastest(found, pairs)
    if pair is None:
        if any(found.variant(*x) is None for x in pairs) and not found.manifest.get("refused"):
            return {"backend": b, "precision": p, "note": "probed on first use"}
        return {"backend": "torch", "precision": "fp32", "note": "fallback: " + _why_not(found, pairs)}
    v = found.variant(*pair) or {}
    return {"backend": pair[0], "precision": pair[1],
            "note": f"min cosine vs torch {min(v['image_min_cos'], v['text_min_cos']):.5f}, "
                    f"{v.get('images_per_s', 0):.1f} images/s at export"}
