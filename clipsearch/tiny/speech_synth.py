"""Spoken test media: phrases synthesised with espeak-ng, put at known times into audio files
and into videos of drifting shapes (the sample world's), for the speech tests and benchmark.

The truth span of a phrase is where its synthesised samples are louder than the speech gate,
not the whole clip espeak returns (which has silence at both ends). espeak-ng is a Debian
package (`apt-get install espeak-ng`); `have_espeak()` says whether it is here.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from clipsearch.audio_stream import RATE, frame_levels
from clipsearch.tiny.synth.shapes import ShapeSpec, canonical_query, draw_shape_on

VOICE = "en-us+klatt"  # of espeak-ng's voices, the one PocketSphinx's model hears best
WPM = 165
VIDEO_RATE = 8
FRAME = 224

PHRASES = (
    "the weather is nice today",
    "where is the train station",
    "the children are playing football",
    "please open the kitchen window",
    "my brother bought a new car",
    "the music was very loud",
    "we walked along the river",
    "she reads a book every night",
    "the doctor will see you now",
    "turn off the lights please",
    "our team won the game",
    "the coffee is too hot",
    "the airport is closed today",
    "he plays the piano every evening",
    "the garden needs more water",
    "they sold the old house",
    "the bus leaves at noon",
    "my sister lives in london",
    "the dog is sleeping outside",
    "we need more paper for the printer",
    "the movie starts at eight",
    "the market opens early on sunday",
    "this bread tastes very good",
    "the mountain road is dangerous",
)


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str, voice: str = VOICE, wpm: int = WPM) -> np.ndarray:
    """float32 16 kHz mono samples of `text` as espeak-ng says it."""
    out = subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "--stdout", text],
                         check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(out)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    # linear resampling is plenty for a test voice
    n = int(round(len(pcm) * RATE / rate))
    return np.interp(np.linspace(0, len(pcm) - 1, n), np.arange(len(pcm)), pcm).astype(np.float32)


def voiced_span(pcm: np.ndarray, gate_dbfs: float = -45.0) -> tuple[float, float]:
    """(first, last) second of `pcm` that is louder than the gate."""
    loud = np.flatnonzero(frame_levels(pcm) > gate_dbfs)
    if not len(loud):
        return 0.0, 0.0
    return loud[0] * 480 / RATE, (loud[-1] + 1) * 480 / RATE


def place(track_s: float, spoken: list[tuple[float, str]]) -> tuple[np.ndarray, list[dict]]:
    """A track of `track_s` seconds of silence with each (start second, phrase) spoken there;
    returns the samples and the truth [{"phrase", "t_start", "t_end"}] (voiced spans)."""
    track = np.zeros(int(track_s * RATE), np.float32)
    truth = []
    for t0, phrase in spoken:
        pcm = speak(phrase)
        a = int(t0 * RATE)
        pcm = pcm[: max(0, len(track) - a)]
        track[a:a + len(pcm)] += pcm
        v0, v1 = voiced_span(pcm)
        truth.append({"phrase": phrase, "t_start": round(t0 + v0, 3), "t_end": round(t0 + v1, 3)})
    return track, truth


def write_audio(path: Path, pcm: np.ndarray, codec: str | None = None) -> Path:
    """Write mono samples as the file's extension says (wav, flac, mp3, ogg/opus, m4a)."""
    import av

    ext = path.suffix.lower()
    codec = codec or {".wav": "pcm_s16le", ".flac": "flac", ".mp3": "libmp3lame", ".ogg": "libopus",
                      ".opus": "libopus", ".m4a": "aac"}[ext]
    rate = 48000 if codec == "libopus" else RATE
    if rate != RATE:
        n = int(len(pcm) * rate / RATE)
        pcm = np.interp(np.linspace(0, len(pcm) - 1, n), np.arange(len(pcm)), pcm).astype(np.float32)
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=rate)
        s.layout = "mono"
        _mux_audio(out, s, pcm, rate)
    return path


def _mux_audio(out, stream, pcm: np.ndarray, rate: int) -> None:
    import av

    fmt = stream.codec_context.format.name
    size = stream.codec_context.frame_size or 1024
    for i in range(0, len(pcm), size):
        block = pcm[i:i + size]
        if len(block) < size and stream.codec_context.frame_size:
            block = np.pad(block, (0, size - len(block)))
        if fmt.startswith("s16"):
            arr = (np.clip(block, -1, 1) * 32767).astype(np.int16)[None]
        elif fmt.startswith("s32"):
            arr = (np.clip(block, -1, 1) * 2147483647).astype(np.int32)[None]
        else:
            arr = block.astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(arr, format=fmt, layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, i, Fraction(1, rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def write_spoken_video(path: Path, segments: list[tuple[str, str, int]], spoken: list[tuple[float, str]],
                       rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    """A video of shape segments (color, shape, seconds), as `sample.write_video` draws them,
    whose audio says each (start second, phrase). Returns (visual truth, spoken truth)."""
    import av

    total = sum(s for _, _, s in segments)
    track, said = place(total, spoken)
    ys, xs = np.mgrid[0:FRAME, 0:FRAME]
    bg = np.stack([90 + 60 * xs / FRAME, 110 + 40 * ys / FRAME, np.full_like(xs, 150.0)], -1).astype(np.uint8)
    seen, t0 = [], 0.0
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=VIDEO_RATE)
        vs.width = vs.height = FRAME
        vs.pix_fmt = "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "24"}
        aus = out.add_stream("aac", rate=RATE)
        aus.layout = "mono"
        i = 0
        for color, shape, secs in segments:
            spec = ShapeSpec(shape, color)
            n = secs * VIDEO_RATE
            for j in range(n):
                u = j / max(n - 1, 1)
                x = int(20 + u * (FRAME - 100)) + int(rng.integers(-2, 3))
                img = Image.fromarray(bg)
                draw_shape_on(img, spec, (x, 40, x + 80, 120), rng, angle=float(rng.normal(0, 3)))
                frame = av.VideoFrame.from_image(img)
                frame.pts, frame.time_base = i, Fraction(1, VIDEO_RATE)
                out.mux(vs.encode(frame))
                i += 1
            seen.append({"query": canonical_query(spec), "t_start": t0, "t_end": t0 + secs})
            t0 += secs
        out.mux(vs.encode(None))
        _mux_audio(out, aus, track, RATE)
    return seen, said
