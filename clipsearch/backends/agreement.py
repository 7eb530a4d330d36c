"""Which backends' vectors one collection may hold and be queried with.

A collection records every backend and precision that wrote its vectors, with the agreement its
probe measured against PyTorch (`writer_record`). Vectors of backends that each agree with
PyTorch within their precision's threshold agree with each other: a collection indexed on
OpenVINO bf16 can be searched from ONNX Runtime fp32 or PyTorch. A writer without such
agreement can only be queried by the same backend and precision (`check`), like a model mismatch.
"""

from __future__ import annotations

from typing import Any

from clipsearch.errors import ModelMismatch

THRESHOLDS = {"fp32": 0.9995, "bf16": 0.999, "fp16": 0.999, "int8": 0.999}


def writer_record(encoder: Any) -> dict[str, Any]:
    """What a collection keeps about the encoder that writes its vectors."""
    backend = getattr(encoder, "backend", "torch")
    if backend == "torch":
        cuda = str(getattr(encoder, "device", "cpu")).startswith("cuda")
        return {"backend": "torch", "precision": "fp16" if cuda else "fp32"}
    agree = encoder.agreement
    return {"backend": backend, "precision": encoder.precision,
            "image_min_cos": round(float(agree["image"]), 6), "text_min_cos": round(float(agree["text"]), 6)}


def trusted(record: dict[str, Any]) -> bool:
    """Whether a writer's vectors agree with PyTorch's within its precision's threshold."""
    if record.get("backend") == "torch":
        return True
    threshold = THRESHOLDS.get(str(record.get("precision")), 1.0)
    try:
        return min(float(record["image_min_cos"]), float(record["text_min_cos"])) >= threshold
    except (KeyError, TypeError, ValueError):
        return False


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a.get("backend"), a.get("precision")) == (b.get("backend"), b.get("precision"))


def check(writers: list[dict[str, Any]], encoder: Any, where: str) -> None:
    """Refuse an encoder whose vectors may not match what `writers` wrote (see the docstring)."""
    mine = writer_record(encoder)
    for w in writers:
        if same(w, mine) or (trusted(w) and trusted(mine)):
            continue
        name = f"{w.get('backend')} {w.get('precision')}"
        raise ModelMismatch(
            f"the collection at {where} holds vectors written by {name}, which does not agree with "
            f"PyTorch within its threshold, and this query runs on {mine['backend']} {mine['precision']}",
            hint=f"use --backend {w.get('backend')} --precision {w.get('precision')}, or re-index into a "
                 "new --db")
