"""Speech for what was indexed without it: turning `--asr` on for an existing collection.

A video or audio file indexed while no speech engine ran has a `video`/`audio` row without
`extra["asr"]`. Change detection takes the file as unchanged (it is), so the ordinary run
leaves it; this pass then transcribes those files alone and adds their `speech` rows, in one
commit per file that also marks the summary row (`Store.replace_kind`): frames and images are
never embedded again, a crash loses at most the file in progress, and the next run resumes.
The collection's metadata records when nothing is left (`META_KEY`), so a later unchanged run
does not even read the table.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipsearch.audio_stream import has_audio
from clipsearch.errors import SkipFile
from clipsearch.records import Record, display_path
from clipsearch.speech import SpeechEngine, available, engine_slot, transcribe_file
from clipsearch.store import FILE_COLUMNS, META_COLUMNS, SourceRows, Store, float32_vectors

if TYPE_CHECKING:
    from clipsearch.backends import AnyEncoder
    from clipsearch.pipeline import IndexReport

log = logging.getLogger(__name__)

META_KEY = "speech_complete"  # in clipsearch.json: every video and audio row has been heard
SUMMARY_KINDS = ("video", "audio")


def lacking(store: Store) -> list[dict[str, Any]]:
    """The `video` and `audio` rows (vectors included) that no speech engine has heard."""
    columns = META_COLUMNS + store.file_columns() + ["vector"]
    t = store.scan(columns, "kind IN ('video', 'audio')")
    if not t.num_rows:
        return []
    vecs = float32_vectors(t.column("vector"))
    out = []
    for row, v in zip(t.drop_columns(["vector"]).to_pylist(), vecs, strict=True):
        extra = json.loads(row["extra"]) if row.get("extra") else {}
        if not extra.get("asr"):
            out.append({**row, "vector": v, "extra": extra})
    return out


def due(meta: dict[str, Any], options: dict[str, Any]) -> bool:
    """Whether a run with these options should look for unheard files (cheap: no table read)."""
    if meta.get(META_KEY) or engine_slot(options) is None:
        return False
    return (options.get("asr") or "auto") != "auto" or available(options.get("asr_model")) is not None


def backfill(store: Store, encoder: Callable[[], AnyEncoder], options: dict[str, Any],
             report: IndexReport) -> bool:
    """Transcribe every unheard video and audio file; True when none is left unheard."""
    from clipsearch.indexers.audio import NO_AUDIO, pooled

    rows = lacking(store)
    if not rows:
        return True
    slot = engine_slot(options)
    if slot is None:
        return False
    enc: AnyEncoder | None = None
    left = 0
    for row in rows:
        raw: bytes = row["source_raw"]
        path = os.fsdecode(raw)
        try:
            st = os.stat(raw)
        except OSError:
            left += 1
            continue  # gone: the next run's change detection removes its rows
        if st.st_mtime != row["mtime"] or st.st_size != row["size"]:
            left += 1
            continue  # changed since: the next run indexes it again, speech included
        extra = dict(row["extra"])
        audio = has_audio(Path(path))
        engine = slot.get() if audio else None
        if audio and engine is None:  # the engine cannot run: the files stay as they are
            if slot.problem:
                report.notes.append(("speech", slot.problem))
            return False
        enc = enc or encoder()
        if engine is None:  # no audio track: nothing to hear
            speech: list[Record] = []
            extra["asr"] = NO_AUDIO
        else:
            speech = _hear(Path(path), raw, engine, enc, extra, report)
        if row["kind"] == "audio":
            extra["segments"] = len(speech)
        vector = pooled(speech, int(enc.dim)) if row["kind"] == "audio" else row["vector"]
        summary = Record(row["kind"], vector, row["t_start"], row["t_end"], row["page"], row["text"],
                         row["thumb"], extra)
        meta = {c: row[c] for c in FILE_COLUMNS if c in row}
        store.replace_kind(SourceRows(raw, row["mtime"], row["size"], row["content_hash"],
                                      [*speech, summary], file_meta=meta), "speech")
        report.transcribed += 1
        report.items += len(speech)
    return left == 0


def _hear(path: Path, raw: bytes, engine: SpeechEngine, enc: AnyEncoder, extra: dict[str, Any],
          report: IndexReport) -> list[Record]:
    """The speech rows of one file (`extra` gets the engine and what passed the gate)."""
    from clipsearch.indexers.audio import speech_records

    try:
        transcript = transcribe_file(path, engine)
    except SkipFile as e:
        extra.update(asr=engine.id, asr_error=e.reason)
        report.notes.append((display_path(raw), f"speech not transcribed: {e.reason}"))
        return []
    extra.update(asr=engine.id, voiced=round(transcript.voiced, 2))
    return speech_records(transcript, engine, enc)

