"""Audio files as a medium, and the speech rows of anything with an audio track.

Rows produced per audio file (`.mp3 .m4a .wav .flac .ogg .opus`, recognised by content):
- `speech` rows: one per transcript segment, `t_start`/`t_end` in seconds, `text` the words,
  the vector their CLIP text embedding (as document chunks are embedded), `extra["asr"]` the
  engine that heard them;
- one `audio` row spanning the file: the mean of its segments' vectors, or a zero vector when
  nothing was said (it then matches no query), with `extra` = {"asr": engine id or None,
  "duration", "voiced" (seconds past the energy gate), "segments"}. `asr` None means no
  engine heard it yet: a later run with an engine transcribes it (`clipsearch.speech_backfill`).
Videos get the same `speech` rows from their audio track (`speech_rows`, called by the video
indexer). A problem with the speech engine never costs a file its other rows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.audio_stream import has_audio
from clipsearch.errors import SkipFile
from clipsearch.records import Record
from clipsearch.speech import AUDIO_SUFFIXES, SpeechEngine, Transcript, engine_slot, transcribe_file

if TYPE_CHECKING:
    from clipsearch.indexers.base import IndexContext

    from clipsearch.backends import AnyEncoder

log = logging.getLogger(__name__)

TEXT_BATCH = 64
NO_AUDIO = "no audio track"  # extra["asr"] of a video without one: heard, as far as it can be


def sniff_audio(head: bytes) -> str | None:
    """Audio container from the first bytes: mp3 (ID3 or an MPEG frame), flac, ogg, wav, m4a."""
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0):
        return "mp3"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in (b"M4A ", b"M4B ", b"mp42", b"isom"):
        return "m4a"
    return None


def speech_records(transcript: Transcript, engine: SpeechEngine, encoder: AnyEncoder) -> list[Record]:
    """`speech` rows of a transcript, their text embedded by the CLIP text tower in batches."""
    segs = transcript.segments
    out: list[Record] = []
    for i in range(0, len(segs), TEXT_BATCH):
        part = segs[i:i + TEXT_BATCH]
        vecs = np.asarray(encoder.encode_texts([s.text for s in part]), dtype=np.float32)
        out.extend(Record("speech", v, s.t_start, s.t_end, text=s.text, extra={"asr": engine.id})
                   for s, v in zip(part, vecs, strict=True))
    return out


def pooled(records: list[Record], dim: int) -> np.ndarray:
    """The mean of the speech vectors, L2-normalised; zeros when there are none."""
    if not records:
        return np.zeros(dim, np.float32)
    v = np.mean([r.vector for r in records], axis=0).astype(np.float32)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def speech_rows(path: Path, encoder: AnyEncoder, ctx: IndexContext) -> tuple[list[Record], dict[str, Any]]:
    """(speech rows, facts for the file's summary row) of a file's audio track, as the run's
    `--asr` options ask. Facts: {"asr": engine id} once an engine heard it (with "asr_error"
    when its audio could not be decoded), {"asr": NO_AUDIO} for a file without an audio track,
    {} when no engine runs, so a later run tries again."""
    slot = engine_slot(ctx.options)
    if slot is None:
        return [], {}
    if not has_audio(path):  # a silent video needs no engine: nothing to hear, now or later
        return [], {"asr": NO_AUDIO}
    engine = slot.get()
    if engine is None:
        return [], {}
    try:
        transcript = transcribe_file(path, engine)
    except SkipFile as e:
        log.info("%s", e.reason)
        return [], {"asr": engine.id, "asr_error": e.reason}
    facts: dict[str, Any] = {"asr": engine.id, "voiced": round(transcript.voiced, 2)}
    return speech_records(transcript, engine, encoder), facts


class AudioIndexer:
    """The `audio` medium: one `audio` row per file and a `speech` row per segment heard."""

    medium = "audio"

    def accepts(self, path: Path, head: bytes) -> bool:
        kind = sniff_audio(head)
        if kind == "m4a":  # an ISO-BMFF file: audio by its brand or, for generic brands, its name
            return head[8:12] in (b"M4A ", b"M4B ") or Path(path).suffix.lower() == ".m4a"
        if kind == "mp3" and head[:3] != b"ID3":  # a bare MPEG frame sync is two bytes: trust the name too
            return Path(path).suffix.lower() == ".mp3"
        return kind is not None and (kind != "wav" or Path(path).suffix.lower() in AUDIO_SUFFIXES + ("",))

    def extract(self, path: Path, encoder: AnyEncoder, ctx: IndexContext) -> list[Record]:
        """Transcribe (when an engine runs) and build the file's rows; SkipFile for audio that
        cannot be decoded at all."""
        path = Path(path)
        duration = probe_duration(path)
        records, facts = speech_rows(path, encoder, ctx)
        if facts.get("asr_error"):
            raise SkipFile(facts["asr_error"])
        extra = {"asr": facts.get("asr"), "duration": round(duration, 3), "segments": len(records)}
        if "voiced" in facts:
            extra["voiced"] = facts["voiced"]
        return [*records, Record("audio", pooled(records, int(encoder.dim)), 0.0, duration, extra=extra)]


def probe_duration(path: Path) -> float:
    """The declared duration of the first audio stream (header only); SkipFile if unreadable."""
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as c:
            if not c.streams.audio:
                raise SkipFile(f"{path}: no audio stream; not an audio file")
            s = c.streams.audio[0]
            if s.duration is not None and s.time_base is not None:
                return float(s.duration * s.time_base)
            return c.duration / 1_000_000 if c.duration is not None else 0.0
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise SkipFile(f"{path}: not a readable audio file ({e})") from e
