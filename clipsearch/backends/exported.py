"""`ExportedEncoder`: the encoder surface the rest of clipsearch uses, over exported ONNX towers.

It answers what `clipsearch.encoders.Encoder` answers (spec, dim, image_size, context_length,
preprocess, encode_pixels / encode_batch / encode_images / encode_texts, count_tokens) from an
export's manifest, and loads each tower the first time it is needed: a text query loads the
text tower and the tokenizer only, and imports neither torch nor open_clip. Textual inversion
needs autograd, so `torch_encoder()` loads the PyTorch model beside it, on demand.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from clipsearch.backends import fastload, runtime
from clipsearch.backends.cache import CorruptExport, Export
from clipsearch.backends.preprocess import ImageTransform
from clipsearch.backends.tokenizer import FILE as TOKENIZER_FILE
from clipsearch.backends.tokenizer import TextTokenizer
from clipsearch.model_registry import ModelSpec

if TYPE_CHECKING:
    from clipsearch.encoders import Encoder

log = logging.getLogger(__name__)


def _passed(export: Export, backend: str, precision: str) -> bool:
    variant = export.variant(backend, precision)
    return variant is not None and bool(variant.get("passed"))


class ExportedEncoder:
    """One model on ONNX Runtime or OpenVINO. Vectors come out float32 and L2-normalised."""

    device = "cpu"

    def __init__(self, spec: ModelSpec, export: Export, backend: str, precision: str,
                 batch_size: int = 64, rebuild: Callable[[], Export] | None = None,
                 text_on: tuple[str, str] | None = None) -> None:
        """`text_on`: another (backend, precision) that passed its probe, for the text tower
        alone (a query encodes one text: what matters there is how fast the tower starts)."""
        variant = export.variant(backend, precision)
        if variant is None or not variant.get("passed"):
            raise ValueError(f"{backend}/{precision} has not passed its probe for {spec.name}")
        self.spec = spec
        self.export = export
        self.backend, self.precision = backend, precision
        self.variant = variant
        self.text_on = text_on if text_on is not None and _passed(export, *text_on) else None
        self.batch_size = batch_size
        m = export.manifest
        self.model_id = export.model_id
        self.dim = int(m["dim"])
        self.image_size = int(m["image_size"])
        self.context_length = int(m["context_length"])
        self.preprocess = ImageTransform.from_dict(m["preprocess"])
        self._image: runtime.Runner | None = None
        self._text: runtime.Runner | None = None
        self._tokenizer: TextTokenizer | None = None
        self._torch: Encoder | None = None
        self._rebuild = rebuild
        self._lock = threading.RLock()
        self._tokenizer_lock = threading.Lock()  # apart: the tokenizer loads while a tower does

    @property
    def agreement(self) -> dict[str, float]:
        """Least cosine with PyTorch's vectors on the probe, per tower."""
        return {"image": float(self.variant["image_min_cos"]), "text": float(self.variant["text_min_cos"])}

    def describe(self) -> str:
        text = f" (text: {' '.join(self.text_on)})" if self.text_on else ""
        return f"{self.backend} {self.precision}{text}"

    # ---- lazily loaded parts -------------------------------------------------------------------
    def _file(self, name: str) -> Any:
        """A file of the export, checked; a damaged export is made again (once) and used."""
        try:
            return self.export.file(name)
        except CorruptExport as e:
            if self._rebuild is None:
                raise
            log.warning("%s; exporting %s again", e, self.spec.name)
            self.export = self._rebuild()
            variant = self.export.variant(self.backend, self.precision)
            if variant is None or not variant.get("passed"):
                raise
            self.variant = variant
            self._image = self._text = None
            self._tokenizer = None
            return self.export.file(name)

    def _runner(self, tower: str) -> runtime.Runner:
        attr = f"_{tower}"
        found: runtime.Runner | None = getattr(self, attr)
        if found is None:
            with self._lock:
                found = getattr(self, attr)
                if found is None:
                    backend, precision = (self.text_on if tower == "text" and self.text_on
                                          else (self.backend, self.precision))
                    variant = self.export.variant(backend, precision) or self.variant
                    if tower == "text" and self._tokenizer is None:
                        self._prefetch_tokenizer()
                    path = self._file(variant["files"][tower])
                    found = (fastload.onnx_runner(self.export, path.name) if backend == "onnx"
                             else runtime.runner(backend, path, precision))
                    setattr(self, attr, found)
        assert found is not None
        return found

    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            with self._tokenizer_lock:
                if self._tokenizer is None:
                    self._tokenizer = TextTokenizer(self._file(TOKENIZER_FILE),
                                                    self.export.manifest["tokenizer"])
        return self._tokenizer

    def _prefetch_tokenizer(self) -> None:
        """Load the tokenizer in a thread while the text tower loads: both release the GIL for
        most of it, so a cold query waits for the slower one, not for both. A failure here is
        left for the query's own call, which raises it."""
        def load() -> None:
            try:
                _ = self.tokenizer
            except Exception:  # raised again where the tokenizer is used
                log.debug("tokenizer prefetch failed", exc_info=True)
        threading.Thread(target=load, name="clipsearch-tokenizer", daemon=True).start()

    def torch_encoder(self) -> Encoder:
        """The same model in PyTorch (for textual inversion, which needs gradients)."""
        if self._torch is None:
            from clipsearch.encoders import Encoder

            with self._lock:
                if self._torch is None:
                    self._torch = Encoder.load(self.spec, device="cpu", batch_size=self.batch_size)
        return self._torch

    # ---- encoding ------------------------------------------------------------------------------
    @staticmethod
    def _normalise(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)

    def encode_pixels(self, batch: Any) -> np.ndarray:
        """Encode an already-preprocessed NCHW float32 batch."""
        return self._normalise(self._runner("image")(np.ascontiguousarray(batch, dtype=np.float32)))

    def encode_batch(self, items: Sequence[Any]) -> np.ndarray:
        """Stack what `preprocess` made (in the decode threads) and encode it."""
        return self.encode_pixels(np.stack(list(items)))

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = [np.zeros((0, self.dim), np.float32)]
        for i in range(0, len(images), self.batch_size):
            chunk = images[i:i + self.batch_size]
            out.append(self.encode_batch([self.preprocess(im.convert("RGB")) for im in chunk]))
        return np.concatenate(out)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        run = self._runner("text")  # first: the tokenizer loads meanwhile
        out = [np.zeros((0, self.dim), np.float32)]
        for i in range(0, len(texts), self.batch_size):
            chunk = list(texts[i:i + self.batch_size])
            for t in chunk:
                n = self.count_tokens(t)
                if n > self.context_length:  # callers are told through `truncation_note`
                    log.info("text of %d tokens truncated to the model's %d: %.60r...",
                             n, self.context_length, t)
            out.append(self._normalise(run(self.tokenizer(chunk))))
        return np.concatenate(out)

    def count_tokens(self, text: str) -> int:
        """Tokens including the start and end markers, as the text tower will see them."""
        return self.tokenizer.count(text)
