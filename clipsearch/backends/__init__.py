"""Encoder backends: the PyTorch model as is, or its towers exported to ONNX and run on ONNX
Runtime or OpenVINO (fast on CPUs, and a text query needs no torch).

    from clipsearch.backends import load_encoder
    enc = load_encoder(spec, backend="onnx", precision="fp32")   # or "auto", "openvino", "torch"

Modules: `export` (ONNX export + probe against PyTorch), `cache` (where exports live, atomic and
checked), `preprocess` and `tokenizer` (torch-free inputs), `runtime` (sessions), `exported`
(`ExportedEncoder`), `choose` (which backend a request gets), `agreement` (which backends'
vectors a collection may mix).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipsearch.backends.choose import BACKENDS, PRECISIONS, describe, load_encoder, requested

if TYPE_CHECKING:
    from typing import TypeAlias

    from clipsearch.backends.exported import ExportedEncoder
    from clipsearch.encoders import Encoder

    # What indexers, the pipeline and searches take: either encoder (the same surface).
    AnyEncoder: TypeAlias = Encoder | ExportedEncoder

__all__ = ["BACKENDS", "PRECISIONS", "AnyEncoder", "describe", "load_encoder", "requested"]
