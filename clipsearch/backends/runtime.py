"""Running an exported ONNX tower: ONNX Runtime or OpenVINO, each imported only when used.

A `Runner` takes one input array (pixels or token ids) and returns the tower's features.
ONNX Runtime runs on its CPU provider with one intra-op thread per core; OpenVINO compiles the
same ONNX file for its CPU plugin with the requested inference precision (bf16 uses the CPU's
bf16 units where it has them). int8 is an ONNX Runtime dynamic quantisation of the graph,
made once at export time (`quantize_int8`).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Protocol

import numpy as np

# Which precisions each runtime runs. fp32 is the export itself.
PRECISIONS: dict[str, tuple[str, ...]] = {
    "onnx": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "fp16"),
}
MODULES = {"onnx": "onnxruntime", "openvino": "openvino"}
_OV_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class Runner(Protocol):
    def __call__(self, x: np.ndarray) -> np.ndarray: ...


def installed(backend: str) -> bool:
    """Whether the backend's runtime is installed (found, not imported)."""
    return importlib.util.find_spec(MODULES[backend]) is not None


def threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class OnnxRuntimeRunner:
    def __init__(self, path: Path, save_optimized: tuple[Path, str] | None = None) -> None:
        """`save_optimized` = (graph path, weights file name beside it): also write the graph
        as ONNX Runtime's extended optimisations leave it (portable across CPUs, unlike the
        layout ones it then adds in memory) with its weights in an external file, which later
        sessions memory-map instead of parsing (`clipsearch.backends.fastload`)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if save_optimized is not None:
            graph, weights = save_optimized
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            opts.optimized_model_filepath = str(graph)
            opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", weights)
            opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                          "1024")
        self.path = path  # the file the session was made from (a fast copy, or the export's own)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input: x})[0])


class OpenVinoRunner:
    def __init__(self, path: Path, precision: str) -> None:
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": _OV_HINT[precision], "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": threads()}
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: one call at a time

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            out = self.request.infer({0: x})
            return np.array(out[self.compiled.output(0)], dtype=np.float32)


def runner(backend: str, path: Path, precision: str) -> Runner:
    """A runner for the ONNX file at `path` (for int8, already the quantised file)."""
    if backend == "onnx":
        return OnnxRuntimeRunner(path)
    if backend == "openvino":
        return OpenVinoRunner(path, precision)
    raise ValueError(f"unknown backend {backend!r}")


def quantize_int8(src: Path, dest: Path) -> None:
    """ONNX Runtime's dynamic int8 quantisation of the weights of MatMul/Gemm layers."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dest), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Gemm"])


def versions() -> dict[str, str | None]:
    """Installed versions of the exporter and the runtimes (read from metadata: no imports)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for pkg in ("torch", "onnx", "open_clip_torch", "onnxruntime", "openvino", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out
