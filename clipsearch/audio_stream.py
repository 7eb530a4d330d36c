"""Audio as speech engines want it: 16 kHz mono PCM, decoded as a stream, silence dropped.

Why a stream with a gate in it: an audio track can be ten hours of nothing. PyAV decodes and
resamples it a frame at a time; an energy gate (RMS per 30 ms frame against a dBFS floor,
with a short hangover so the pauses inside a sentence do not cut it) keeps only the stretches
that may hold speech, and gives each out as soon as it ends (or reaches `max_region_s`). So
memory is bounded by one region, and a silent file costs one decode pass and no recognition.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipsearch.errors import SkipFile
from clipsearch.lazy import lazy_import

if TYPE_CHECKING:
    import av
else:
    av = lazy_import("av")

RATE = 16_000
FRAME = 480  # 30 ms at 16 kHz
GATE_DBFS = -45.0  # a 30 ms frame louder than this may be speech
HANGOVER_S = 0.6  # silence inside a region before it ends
PAD_S = 0.15  # kept either side of a region, so word onsets are not clipped
MIN_REGION_S = 0.25
MAX_REGION_S = 30.0


@dataclass
class Region:
    """A stretch of audio that may hold speech: `t0` seconds from the start, float32 samples."""

    t0: float
    pcm: np.ndarray

    @property
    def seconds(self) -> float:
        return len(self.pcm) / RATE


@dataclass
class StreamInfo:
    """Filled in while a stream is read: how much audio there was and how much passed the gate."""

    duration: float = 0.0
    voiced: float = 0.0
    has_audio: bool = False


def frame_levels(pcm: np.ndarray) -> np.ndarray:
    """dBFS of each whole 30 ms frame of float32 samples in [-1, 1]."""
    n = len(pcm) // FRAME
    if n == 0:
        return np.zeros(0)
    frames = pcm[: n * FRAME].reshape(n, FRAME).astype(np.float64)
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1e-10))


def has_audio(path: Path) -> bool:
    """Whether a file has an audio stream (header only); False for what PyAV cannot open."""
    try:
        with av.open(str(path), metadata_errors="ignore") as c:
            return bool(c.streams.audio)
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError):
        return False


_FULL_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0,
               np.dtype(np.float32): 1.0, np.dtype(np.float64): 1.0}


def quiet_frame(samples: np.ndarray, gate_dbfs: float = GATE_DBFS) -> bool:
    """Whether a decoded frame (any channels, at its own rate) is below the gate throughout:
    its peak is, so every 30 ms RMS is too. Such frames are never resampled."""
    scale = _FULL_SCALE.get(samples.dtype)
    if scale is None or not samples.size:
        return False
    peak = float(max(abs(float(samples.max())), abs(float(samples.min())))) / scale
    return peak < 10 ** (gate_dbfs / 20)


def pcm_blocks(path: Path, info: StreamInfo) -> Iterator[np.ndarray | int]:
    """float32 16 kHz mono blocks of the first audio stream of `path`, decoded as a stream;
    a frame below the gate comes as the number of 16 kHz samples it lasts (silence costs a
    decode and a peak, not a resample).

    Raises SkipFile for a file PyAV cannot read as audio; a file without an audio stream
    yields nothing (`info.has_audio` stays False)."""
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise SkipFile(f"{path}: not a readable audio file ({e})") from e
    with container:
        if not container.streams.audio:
            return
        stream = container.streams.audio[0]
        info.has_audio = True
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        samples = 0
        try:
            for frame in container.decode(stream):
                if frame.sample_rate and quiet_frame(frame.to_ndarray()):
                    n = int(round(frame.samples * RATE / frame.sample_rate))
                    samples += n
                    info.duration = samples / RATE
                    yield n
                    continue
                for out in resampler.resample(frame):
                    block = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                    samples += len(block)
                    info.duration = samples / RATE
                    yield block
            for out in resampler.resample(None):
                block = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                samples += len(block)
                yield block
        except av.error.FFmpegError as e:
            raise SkipFile(f"{path}: corrupt audio data at {samples / RATE:.1f}s ({e})") from e
        info.duration = samples / RATE


def voiced_regions(blocks: Iterator[np.ndarray | int], info: StreamInfo | None = None, *,
                   gate_dbfs: float = GATE_DBFS, max_region_s: float = MAX_REGION_S) -> Iterator[Region]:
    """The stretches of a PCM stream louder than the gate, padded and bridged over short
    pauses; each given out as soon as it ends. Holds at most one region of samples."""
    hang = int(round(HANGOVER_S * RATE / FRAME))
    pad = int(PAD_S * RATE)
    max_len = int(max_region_s * RATE)
    tail = np.zeros(0, np.float32)  # samples not yet a whole frame
    before = np.zeros(0, np.float32)  # the last `pad` samples before a region opens
    region: list[np.ndarray] = []
    length = 0  # samples in the open region
    start = 0  # sample index where the open region starts
    pos = 0  # sample index of the current buffer's first sample
    quiet = 0  # frames of silence at the end of the open region

    def close() -> Region | None:
        pcm = np.concatenate(region) if region else np.zeros(0, np.float32)
        trailing = max(0, quiet - int(round(PAD_S * RATE / FRAME))) * FRAME  # keep a pad of it
        pcm = pcm[: len(pcm) - trailing]
        region.clear()
        if len(pcm) < MIN_REGION_S * RATE:
            return None
        if info is not None:
            info.voiced += len(pcm) / RATE
        return Region(start / RATE, pcm)

    for block in blocks:
        if isinstance(block, int):  # that many samples of silence
            if not region and not len(tail):
                pos += block
                before = np.concatenate([before, np.zeros(min(block, pad), np.float32)])[-pad:]
                continue
            block = np.zeros(block, np.float32)
        buf = np.concatenate([tail, block]) if len(tail) else block
        levels = frame_levels(buf)
        used = len(levels) * FRAME
        loud = levels > gate_dbfs
        if not region and not loud.any():  # the common case in silence: nothing to look at
            before = np.concatenate([before, buf[:used]])[-pad:]
        else:
            for i in range(len(levels)):
                frame = buf[i * FRAME:(i + 1) * FRAME]
                if region:
                    region.append(frame)
                    length += FRAME
                    quiet = 0 if loud[i] else quiet + 1
                    if quiet > hang or length >= max_len:
                        done = close()
                        if done is not None:
                            yield done
                        quiet, length, before = 0, 0, np.zeros(0, np.float32)
                elif loud[i]:
                    start = max(0, pos + i * FRAME - len(before))
                    region.extend([before, frame])
                    length, quiet = len(before) + FRAME, 0
                else:
                    before = np.concatenate([before, frame])[-pad:]
        tail = buf[used:].copy()
        pos += used
    if region:
        quiet = 0
        done = close()
        if done is not None:
            yield done
