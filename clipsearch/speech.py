"""Speech recognition: what is said in an audio file or a video's audio track, and when.

One small engine interface (`SpeechEngine.transcribe`: 16 kHz mono PCM → (t_start, t_end,
text) segments) with two engines behind it:
- `WhisperEngine`: faster-whisper (CTranslate2), the real one. Weights come like any model:
  from the Hugging Face cache (or the hub), or a local folder (`--asr-model PATH`); what cannot
  be had is one `ModelUnavailable` line, as for CLIP weights (`clipsearch.hub`).
- `PocketSphinxEngine`: CMU PocketSphinx with the English model its wheel ships: works
  offline on first use, so the tests run it; much less accurate than Whisper.
`transcribe_file` streams a file through the energy gate (`clipsearch.audio_stream`), so
silence costs decoding only and memory is bounded by one voiced region.
`open_engine(mode, model, language)` decides which engine a run uses (`--asr on|off|auto`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from clipsearch.audio_stream import RATE, StreamInfo, pcm_blocks, voiced_regions
from clipsearch.errors import ClipsearchError, ModelUnavailable, UsageError

log = logging.getLogger(__name__)

ASR_MODES = ("auto", "on", "off")
DEFAULT_WHISPER = "base"
POCKETSPHINX = "pocketsphinx"
AUDIO_SUFFIXES = (".mp3", ".m4a", ".wav", ".flac", ".ogg", ".opus")
_FILLER = re.compile(r"^(<.*>|\[.*\]|\+\+.*\+\+)$")
_VARIANT = re.compile(r"\(\d+\)$")


class SpeechUnavailable(ClipsearchError):
    """`--asr on` and no engine can run (not installed, or its weights cannot be had)."""


@dataclass(frozen=True)
class Segment:
    """Words said between `t_start` and `t_end` seconds from the start of the file."""

    t_start: float
    t_end: float
    text: str


class SpeechEngine(Protocol):
    """What the indexers need of a recogniser. `id` names engine and model (it is recorded on
    the rows, so a collection knows what transcribed it)."""

    id: str

    def transcribe(self, pcm: np.ndarray, t0: float = 0.0) -> list[Segment]:
        """Segments of float32 16 kHz mono samples that start `t0` seconds into the file."""
        ...


@dataclass
class Transcript:
    """A file's segments, with how long its audio was and how much of it passed the gate."""

    segments: list[Segment]
    duration: float
    voiced: float
    has_audio: bool


def transcribe_file(path: Path, engine: SpeechEngine, *,
                    on_region: Callable[[float, float], None] | None = None) -> Transcript:
    """Stream `path`'s first audio track through the gate and `engine`. Raises SkipFile for
    audio that cannot be decoded; a file without an audio track gives no segments."""
    info = StreamInfo()
    segments: list[Segment] = []
    for region in voiced_regions(pcm_blocks(path, info), info):
        segments.extend(s for s in engine.transcribe(region.pcm, region.t0) if s.text.strip())
        if on_region is not None:
            on_region(region.t0 + region.seconds, info.duration)
    return Transcript(segments, info.duration, info.voiced, info.has_audio)


# ---------------------------------------------------------------- PocketSphinx


class PocketSphinxEngine:
    """PocketSphinx with its bundled US English model; one decoder, used under a lock."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self.id = "pocketsphinx:en-us"
        self._decoder = Decoder(samprate=RATE, loglevel="FATAL")
        self._lock = threading.Lock()

    def transcribe(self, pcm: np.ndarray, t0: float = 0.0) -> list[Segment]:
        """One utterance per region; segments break where the words pause for 0.5 s."""
        raw = (np.clip(pcm, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        with self._lock:
            d = self._decoder
            d.start_utt()
            d.process_raw(raw, full_utt=True)
            d.end_utt()
            words = [(s.word, s.start_frame / 100.0, (s.end_frame + 1) / 100.0) for s in d.seg()]
        return _group_words(words, t0)


def _group_words(words: list[tuple[str, float, float]], t0: float, pause: float = 0.5) -> list[Segment]:
    out: list[Segment] = []
    cur: list[tuple[str, float, float]] = []
    for w, a, b in words:
        if _FILLER.match(w):
            continue
        w = _VARIANT.sub("", w)
        if cur and a - cur[-1][2] > pause:
            out.append(_segment(cur, t0))
            cur = []
        cur.append((w, a, b))
    if cur:
        out.append(_segment(cur, t0))
    return out


def _segment(words: list[tuple[str, float, float]], t0: float) -> Segment:
    return Segment(round(t0 + words[0][1], 3), round(t0 + words[-1][2], 3), " ".join(w for w, _, _ in words))


# ---------------------------------------------------------------- faster-whisper


def whisper_repo(name: str) -> str:
    """The hub repo of a faster-whisper model name ("base", "small", "large-v3", "ORG/REPO")."""
    if "/" in name:
        return name
    return f"Systran/faster-whisper-{name}"


WHISPER_FILES = ("config.json", "model.bin", "tokenizer.json")


def whisper_folder(model: str, *, download: bool = True) -> str | None:
    """The local folder of a Whisper model: `model` itself when it is a folder, else its hub
    snapshot from the cache (downloaded when `download` and the hub can be reached). Raises
    ModelUnavailable (one line) when it cannot be had; None when not cached and not `download`."""
    from clipsearch import hub

    if os.path.isdir(os.path.expanduser(model)):
        folder = os.path.expanduser(model)
        if not os.path.isfile(os.path.join(folder, "model.bin")):
            raise ModelUnavailable(f"Whisper model folder {folder} has no model.bin",
                                   hint="point --asr-model at a CTranslate2 Whisper folder "
                                        "(e.g. a snapshot of Systran/faster-whisper-base)")
        return folder
    repo = whisper_repo(model)
    what = f"Whisper weights {model!r} ({repo})"
    if not download:
        found = [hub.cached_file(repo, [f]) for f in WHISPER_FILES]
        weights = found[1]
        return os.path.dirname(weights) if weights is not None and all(found) else None
    paths = [hub.fetch_file(repo, [f], what) for f in WHISPER_FILES]
    for optional in ("vocabulary.txt", "vocabulary.json", "preprocessor_config.json"):
        if hub.cached_file(repo, [optional]) is None and not hub.clipsearch_offline():
            try:
                hub.fetch_file(repo, [optional], what)
            except ModelUnavailable:
                pass  # not every model folder has them
    return os.path.dirname(paths[1])


class WhisperEngine:
    """faster-whisper (on CUDA when CTranslate2 sees one), with its own VAD (vad_filter)."""

    def __init__(self, model: str = DEFAULT_WHISPER, language: str | None = None,
                 device: str = "auto") -> None:
        folder = whisper_folder(model)
        from faster_whisper import WhisperModel

        try:  # CTranslate2 picks CUDA when it has one, and the fastest precision the device runs
            self._model = WhisperModel(folder, device=device, compute_type="auto")
        except Exception as e:  # CTranslate2 raises RuntimeError/ValueError for a bad folder
            raise ModelUnavailable(f"Whisper model {model!r} could not be loaded from {folder}: {e}",
                                   hint="check the folder, or pick another --asr-model") from e
        self.language = language
        self.id = f"whisper:{os.path.basename(str(model).rstrip('/'))}"
        self._lock = threading.Lock()

    def transcribe(self, pcm: np.ndarray, t0: float = 0.0) -> list[Segment]:
        with self._lock:
            segs, _ = self._model.transcribe(np.asarray(pcm, np.float32), language=self.language,
                                             vad_filter=True, beam_size=5)
            return [Segment(round(t0 + s.start, 3), round(t0 + s.end, 3), s.text.strip()) for s in segs]


# ---------------------------------------------------------------- choosing


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def engine_name(model: str | None) -> str:
    """"pocketsphinx" or "whisper" for an `--asr-model` value (None: the best available)."""
    if model is not None and model.lower() == POCKETSPHINX:
        return POCKETSPHINX
    return "whisper"


def check_mode(mode: str | None) -> str:
    mode = (mode or "auto").lower()
    if mode not in ASR_MODES:
        raise UsageError(f"--asr {mode!r}: expected one of {', '.join(ASR_MODES)}", hint="use --asr auto")
    return mode


def available(model: str | None = None) -> str | None:
    """The engine `--asr auto` would use with this `--asr-model`, or None; imports nothing
    heavy and never touches the network."""
    if model is None or engine_name(model) == "whisper":
        if installed("faster_whisper"):
            try:
                if whisper_folder(model or DEFAULT_WHISPER, download=False):
                    return "whisper"
            except ModelUnavailable:
                return None
        if model is not None:
            return None
    return POCKETSPHINX if installed("pocketsphinx") else None


def open_engine(mode: str | None = "auto", model: str | None = None,
                language: str | None = None) -> SpeechEngine | None:
    """The engine of a run: None when `mode` is off, or auto and none is available. With
    `on`, an engine that cannot run raises SpeechUnavailable or ModelUnavailable (one line)."""
    mode = check_mode(mode)
    if mode == "off":
        return None
    if mode == "auto":
        choice = available(model)
    elif engine_name(model) == POCKETSPHINX or (model is None and available(None) == POCKETSPHINX):
        choice = POCKETSPHINX
    else:
        choice = "whisper"
    if choice is None:
        return None
    if choice == POCKETSPHINX:
        if not installed("pocketsphinx"):
            raise SpeechUnavailable("speech recognition needs pocketsphinx or faster-whisper; "
                                    "neither is installed",
                                    hint="pip install 'clipsearch[speech]', or index with --asr off")
        if language and not language.lower().startswith("en"):
            raise UsageError(f"--language {language}: the PocketSphinx engine knows English only",
                             hint="use a Whisper model (--asr-model base) for other languages")
        return PocketSphinxEngine()
    if not installed("faster_whisper"):
        raise SpeechUnavailable("speech recognition with Whisper needs faster-whisper, "
                                "which is not installed",
                                hint="pip install 'clipsearch[speech]', or index with --asr off")
    return WhisperEngine(model or DEFAULT_WHISPER, language)


class EngineSlot:
    """The run's engine, opened on first use (so a run with no audio to read loads none);
    an engine that cannot be opened is remembered with its reason, and asked once."""

    def __init__(self, mode: str | None, model: str | None, language: str | None) -> None:
        self.mode, self.model, self.language = check_mode(mode), model, language
        self._engine: SpeechEngine | None = None
        self._opened = False
        self.problem: str | None = None
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.mode != "off"

    def get(self) -> SpeechEngine | None:
        with self._lock:
            if not self._opened:
                self._opened = True
                try:
                    self._engine = open_engine(self.mode, self.model, self.language)
                except ClipsearchError as e:
                    self.problem = f"speech not transcribed: {e}" + (f" ({e.hint})" if e.hint else "")
                    log.warning("%s", self.problem)
            return self._engine


_SLOTS: dict[tuple[str, str | None, str | None], EngineSlot] = {}
_SLOTS_LOCK = threading.Lock()


def engine_slot(options: dict[str, Any]) -> EngineSlot | None:
    """The process's `EngineSlot` for an indexing run's options (`asr`, `asr_model`,
    `language`), or None when ASR is off: an engine is loaded once per process (a watcher's
    runs share it), and one that cannot be had is reported once."""
    key = (check_mode(options.get("asr")), options.get("asr_model"), options.get("language"))
    if key[0] == "off":
        return None
    with _SLOTS_LOCK:
        slot = _SLOTS.get(key)
        if slot is None:
            slot = _SLOTS[key] = EngineSlot(*key)
    return slot
