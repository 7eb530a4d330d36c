"""An ONNX tower laid out to start fast: a cold `InferenceSession` over one 254 MB protobuf
(ViT-B's text tower) parses it for seconds; over the same graph, already optimised, with its
weights in an external file, ONNX Runtime memory-maps the weights and starts in a fraction.

The fast copy is derived from the export's checked file the first time a process needs the
tower (under the model's export lock; the session that writes it is the one used), recorded
with the stat it has then (`cache.Export.record_derived`), and made again whenever the source
changes, the copy is touched, or ONNX Runtime's version differs. A cache folder that cannot be
written, or a copy ONNX Runtime refuses, falls back to the source file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from clipsearch.backends import cache
from clipsearch.backends.runtime import OnnxRuntimeRunner

log = logging.getLogger(__name__)


def fast_names(source: str) -> tuple[str, str]:
    """(graph, weights) file names of `source`'s fast copy for the installed ONNX Runtime."""
    from importlib.metadata import version

    stem = f"{Path(source).stem}.ort-{version('onnxruntime')}"
    return f"{stem}.onnx", f"{stem}.weights"


def onnx_runner(export: cache.Export, source: str) -> OnnxRuntimeRunner:
    """A runner for the export's listed ONNX file `source` (already checked), from its fast copy."""
    names = list(fast_names(source))
    graph = export.folder / names[0]
    if export.derived_current(names, source):
        try:
            return OnnxRuntimeRunner(graph)
        except Exception as e:  # ONNX Runtime's own errors; the source still serves
            log.warning("%s: %s; deriving it again from %s", graph, e, source)
    try:
        with cache.locked(export.model_id):
            if export.derived_current(names, source):  # another process made it meanwhile
                return OnnxRuntimeRunner(graph)
            for name in names:  # a reader still mapping the old weights keeps their inode
                (export.folder / name).unlink(missing_ok=True)
            tmp = graph.with_name(f".tmp-{os.getpid()}-{graph.name}")
            try:
                runner = OnnxRuntimeRunner(export.folder / source, save_optimized=(tmp, names[1]))
                os.replace(tmp, graph)
            finally:
                tmp.unlink(missing_ok=True)
            export.record_derived(names, source)
            return runner
    except Exception as e:  # a full or read-only cache, ONNX Runtime refusing to save
        log.info("no fast copy of %s (%s): loading it as exported", source, e)
    return OnnxRuntimeRunner(export.folder / source)
