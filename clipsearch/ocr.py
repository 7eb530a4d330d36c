"""Reading the words in a picture (OCR): a cheap text gate, then RapidOCR.

The engine is RapidOCR (PaddleOCR's PP-OCR detection, direction and recognition models run on
ONNX Runtime), from the `ocr` extra (`pip install 'clipsearch[ocr]'`). Its wheel ships the three
models, so it reads offline from the first use and nothing is ever downloaded. It is imported
on first use only: a collection without OCR never loads OpenCV or the models.

`maybe_text` is the gate run before the engine on every picture: the detector alone costs
about as much as encoding dozens of images with a small CLIP, so a collection of photos
without words would pay for OCR on every file. The gate looks for what print looks like at
low resolution: tiles dense with strong, short edges in both directions. It is tuned to let
through anything that might be text (a false "maybe" costs one engine call, a false "no"
loses the words), so photos with fine texture pass and the engine decides.

`Engine.read` gives `Line`s: the words of one detected line, its box (fractions of the
picture, so it fits any rendering of it) and the recogniser's confidence.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from clipsearch.errors import ClipsearchError

log = logging.getLogger(__name__)

ENGINE_MODULE = "rapidocr_onnxruntime"
ENGINE_NAME = "rapidocr"  # what the rows' marker records (extra["ocr"])
MIN_CONFIDENCE = 0.5  # lines the recogniser is less sure of are noise more often than words
READ_SIDE = 1024  # longest side the detector sees: cost stays bounded whatever the picture's size
CROP_SIDE = 2048  # longest side of the picture lines are cut from for the recogniser (small print)
MIN_SIDE = 640  # smaller pictures are enlarged to this for the detector
GATE_SIDE = 320  # longest side the gate looks at
GATE_TILE = 8  # gate tile side, in gate pixels
GATE_EDGE = 32  # grey-level step that counts as an edge
GATE_DENSITY = 0.15  # edge starts per pixel in two neighbouring tiles that look like print
OCR_MODES = ("auto", "on", "off")


class OcrUnavailable(ClipsearchError):
    """OCR was asked for and the engine is not installed (or does not load)."""


@dataclass(frozen=True)
class Line:
    """One line of words: `box` is (x0, y0, x1, y1) as fractions of the picture's size."""

    text: str
    box: tuple[float, float, float, float]
    confidence: float


def installed() -> bool:
    """Whether the OCR engine can be imported (asked without importing it)."""
    try:
        return importlib.util.find_spec(ENGINE_MODULE) is not None
    except (ImportError, ValueError):
        return False


def resolve_mode(mode: str | None) -> bool:
    """Whether OCR runs for `--ocr on|off|auto` (auto: when the engine is installed; None: the
    `CLIPSEARCH_OCR` environment variable, else auto). `on` without the engine raises
    OcrUnavailable with the install hint."""
    mode = (mode or os.environ.get("CLIPSEARCH_OCR") or "auto").strip().lower()
    if mode not in OCR_MODES:
        from clipsearch.errors import UsageError

        raise UsageError(f"--ocr {mode}: unknown mode", hint="one of: " + ", ".join(OCR_MODES))
    if mode == "off":
        return False
    if installed():
        return True
    if mode == "on":
        raise OcrUnavailable("--ocr on: the OCR engine (rapidocr_onnxruntime) is not installed",
                             hint="pip install 'clipsearch[ocr]'")
    return False


def maybe_text(image: Image.Image) -> bool:
    """The cheap first pass: False when the picture surely holds no legible print.

    Print is where strokes begin again and again along a line: in tiles of `GATE_TILE` pixels,
    the share of pixels where a strong edge starts (left to right, and top to bottom for
    vertical lines), high in two neighbouring tiles. A shape's outline starts an edge once per
    row; a word of ten letters, twenty times."""
    g = image.convert("L")
    if max(g.size) > GATE_SIDE:
        g = g.copy()
        g.thumbnail((GATE_SIDE, GATE_SIDE), Image.Resampling.BILINEAR)
    a = np.asarray(g, dtype=np.int16)
    return _edge_runs(a) >= GATE_DENSITY or _edge_runs(a.T) >= GATE_DENSITY


def _edge_runs(a: np.ndarray) -> float:
    """The highest density of edge starts shared by two side-by-side tiles of `a`."""
    t = GATE_TILE
    h, w = a.shape
    th, tw = h // t, (w - 1) // t
    if th == 0 or tw < 2:
        return 0.0
    edge = np.abs(np.diff(a, axis=1))[: th * t, : tw * t] >= GATE_EDGE
    starts = np.zeros_like(edge)
    starts[:, 1:] = edge[:, 1:] & ~edge[:, :-1]
    starts[:, 0] = edge[:, 0]
    d = starts.reshape(th, t, tw, t).mean(axis=(1, 3))
    return float(np.minimum(d[:, 1:], d[:, :-1]).max())


class Engine:
    """One loaded RapidOCR, shared by the threads of a process (calls are serialised)."""

    def __init__(self) -> None:
        try:
            module = importlib.import_module(ENGINE_MODULE)
            # "max": a picture is shrunk to fit, never blown up to 736 px as the default does
            self._ocr = module.RapidOCR(det_limit_type="max", det_limit_side_len=READ_SIDE)
        except ImportError as e:
            raise OcrUnavailable(f"the OCR engine ({ENGINE_MODULE}) cannot be imported: {e}",
                                 hint="pip install 'clipsearch[ocr]'") from None
        except Exception as e:  # its models missing or unreadable: say so, do not crash the run
            raise OcrUnavailable(f"the OCR engine's models cannot be loaded: {type(e).__name__}: {e}",
                                 hint="pip install --force-reinstall 'clipsearch[ocr]'") from None
        self._lock = threading.Lock()
        self.version = getattr(module, "__version__", "") or _dist_version()

    def read(self, image: Image.Image, side: int = CROP_SIDE) -> list[Line]:
        """The lines of words in `image`, top to bottom; [] when there are none. Pictures
        larger than `side` are shrunk to it first (the recogniser reads the lines' crops of
        that picture: a page of small print needs more than a photo's caption)."""
        im = image.convert("RGB")
        if max(im.size) > side:
            im = im.copy()
            im.thumbnail((side, side), Image.Resampling.LANCZOS)
        if max(im.size) < MIN_SIDE:  # a small picture's print is too small for the detector
            f = MIN_SIDE / max(im.size)
            im = im.resize((round(im.width * f), round(im.height * f)), Image.Resampling.BICUBIC)
        w, h = im.size
        arr = np.ascontiguousarray(np.asarray(im)[:, :, ::-1])  # the engine takes OpenCV's BGR
        with self._lock:
            result, _ = self._ocr(arr)
        return _lines(result or [], w, h)


def _lines(result: Sequence[Any], w: int, h: int) -> list[Line]:
    out = []
    for quad, text, confidence in result:
        text = " ".join(str(text).split())
        if not text or float(confidence) < MIN_CONFIDENCE:
            continue
        q = np.asarray(quad, dtype=np.float64)
        box = (float(np.clip(q[:, 0].min() / w, 0, 1)), float(np.clip(q[:, 1].min() / h, 0, 1)),
               float(np.clip(q[:, 0].max() / w, 0, 1)), float(np.clip(q[:, 1].max() / h, 0, 1)))
        out.append(Line(text, tuple(round(v, 4) for v in box), float(confidence)))  # type: ignore[arg-type]
    return out


def _dist_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rapidocr_onnxruntime")
    except PackageNotFoundError:
        return ""


_engine: Engine | None = None
_engine_lock = threading.Lock()


def engine() -> Engine:
    """The process's engine, loaded on first use (raises OcrUnavailable)."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = Engine()
        return _engine


def union_box(boxes: Sequence[Sequence[float]]) -> list[float]:
    """The smallest box holding all of `boxes` (fractions, as `Line.box`)."""
    a = np.asarray(boxes, dtype=np.float64)
    return [round(float(a[:, 0].min()), 4), round(float(a[:, 1].min()), 4),
            round(float(a[:, 2].max()), 4), round(float(a[:, 3].max()), 4)]
