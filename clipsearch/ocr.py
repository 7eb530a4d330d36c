"""Reading the words in a picture (OCR): a cheap text gate, then RapidOCR.

The engine is RapidOCR (PaddleOCR's PP-OCR detection, direction and recognition models run on
ONNX Runtime), from the `ocr` extra (`pip install 'clipsearch[ocr]'`). Its wheel ships the three
models, so it reads offline from the first use and nothing is ever downloaded. It is imported
on first use only: a collection without OCR never loads OpenCV or the models.

`maybe_text` is the gate run before the engine on every picture: the detector alone costs
about as much as encoding dozens of images with a small CLIP, so a collection of photos
without words would pay for OCR on every file. The gate looks for what print looks like at
low resolution: tiles dense with strong, short edges, along rows or columns. It is tuned to
let through anything that might be text (a false "no" loses the words), but a false "maybe"
costs a second or more (loading the engine, one call), so it asks two more things of the
dense tiles, only where some are found: more than one of them (a word is longer than a
shape's corner on a patterned backdrop), and most of them not a repeating pattern (dots,
checks, stripes repeat along the line; letters never do).

`Engine.read` gives `Line`s: the words of one detected line, its box (fractions of the
picture, so it fits any rendering of it) and the recogniser's confidence.
"""

from __future__ import annotations

import functools
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
GATE_PAIRS = 2  # dense tile pairs a picture needs (in one direction) to maybe hold a word
GATE_WINDOW = (32, 64)  # pixels around a dense pair tested for repetition (across, along the line)
GATE_WINDOWS = 64  # dense pairs tested per direction at most (evenly spread over them)
GATE_REPEAT = 0.6  # autocorrelation rise from half a shift to the shift that marks a repetition
GATE_REPEAT_PEAK = 0.5  # autocorrelation a repetition needs at its shift
GATE_MIN_LAG = 3  # shortest shift along the line that counts as a repetition (not just blur)
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
    row; a word of ten letters, twenty times. Where such pairs are found, at least
    `GATE_PAIRS` in one direction must be, and no more of them repeating (`repeats`) than not."""
    g = image.convert("L")
    if max(g.size) > GATE_SIDE:
        g = g.copy()
        g.thumbnail((GATE_SIDE, GATE_SIDE), Image.Resampling.BILINEAR)
    a = np.asarray(g)
    rows, rows_repeating = _dense_pairs(a)
    cols, cols_repeating = _dense_pairs(a.T)
    return max(rows, cols) >= GATE_PAIRS and rows + cols >= rows_repeating + cols_repeating


def _dense_pairs(a: np.ndarray) -> tuple[int, int]:
    """(pairs of side-by-side tiles of `a` dense with edge starts along its rows that are not
    a repeating pattern, pairs that are); (0, 0) at once when there are none (most photos)."""
    t = GATE_TILE
    h, w = a.shape
    th, tw = h // t, (w - 1) // t
    if th == 0 or tw < 2:
        return 0, 0
    step = np.subtract(a[: th * t, 1: tw * t + 1], a[: th * t, : tw * t])  # uint8: wraps around
    step -= GATE_EDGE
    edge = step <= 255 - 2 * GATE_EDGE  # |grey step| >= GATE_EDGE, in wrapped arithmetic
    starts = edge.copy()
    starts[:, 1:] &= ~edge[:, :-1]
    # tile counts (<= 64, fit a byte): summing one axis at a time is many times faster
    counts = starts.view(np.uint8).reshape(th, t, tw * t).sum(axis=1, dtype=np.uint8)
    counts = counts.reshape(th, tw, t).sum(axis=2, dtype=np.uint8)
    pairs = np.argwhere(np.minimum(counts[:, 1:], counts[:, :-1]) >= GATE_DENSITY * t * t)
    if len(pairs) == 0:
        return 0, 0
    wh, ww = GATE_WINDOW
    if h < wh or w < ww:
        return len(pairs), 0
    if len(pairs) > GATE_WINDOWS:
        pairs = pairs[np.linspace(0, len(pairs) - 1, GATE_WINDOWS).round().astype(int)]
    repeating = 0
    for ty, tx in pairs:
        y0 = min(max(0, ty * t + t // 2 - wh // 2), h - wh)
        x0 = min(max(0, tx * t + t - ww // 2), w - ww)
        repeating += repeats(a[y0:y0 + wh, x0:x0 + ww])
    return len(pairs) - repeating, repeating


def repeats(window: np.ndarray) -> bool:
    """Whether a window of grey pixels is a pattern that repeats along its rows: its
    autocorrelation peaks at some shift of `GATE_MIN_LAG` pixels or more along them (and at
    most a pixel across), with a dip at half that shift: a period. Lines of text repeat
    across the lines, never along them; dots, checks and stripes repeat along any row that
    crosses them."""
    f = window.astype(np.float32)
    f -= f.mean()
    spectrum = np.fft.rfft2(f)
    ac = np.fft.irfft2(spectrum * spectrum.conj(), s=f.shape)
    if ac[0, 0] <= 1e-6:
        return False  # a flat window
    ac /= ac[0, 0]
    ys, xs, half_ys, half_xs = _lags(f.shape)
    peak = ac[ys, xs]
    return bool(np.any((peak >= GATE_REPEAT_PEAK) & (peak - ac[half_ys, half_xs] >= GATE_REPEAT)))


@functools.lru_cache(maxsize=4)
def _lags(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The shifts `repeats` looks at in a window of `shape` (rows, columns indices into the
    circular autocorrelation) and the shifts halfway to them."""
    h, w = shape
    ys, xs = np.mgrid[-1:2, GATE_MIN_LAG: w // 2]
    ys, xs = ys.ravel(), xs.ravel()
    half_ys, half_xs = np.round(ys / 2).astype(int), np.round(xs / 2).astype(int)
    return ys % h, xs, half_ys % h, half_xs


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
