"""OCR rows: the words read in a collection's pictures, added after the files are indexed.

What is read (`ocr.Engine`): each image, each PDF page without a text layer (a scan), and in
each video one frame per shot plus a frame every `VIDEO_STEP` seconds of a long shot (at most
`VIDEO_FRAMES` per video; a frame whose words are those of the frame before adds nothing).
The words of one picture are cut into chunks as document text is (`clipsearch.chunking`,
the encoder's context), and each chunk becomes an `ocr` row: `text`, the item's `page` or
`t_start`/`t_end`, and in `extra` the chunk's `box` (fractions of the picture), `of` (the id of
the row it belongs to: the image, or the video frame shown then) and `chunk`. They are embedded
with the text tower and full-text indexed like document chunks (the maintainer's FTS step).

Which files still need reading is kept in the files' own rows: an `ocr` field in the `extra`
of their image, page or video rows ("read", or "gate" when the cheap first pass found no print,
or "failed: reason"). A pass rewrites the rows of a batch of files in one commit: their old
rows, vectors included and never embedded again, with the marker set, plus their new `ocr`
rows. A crash loses only the batch in flight; the next run reads what is still unmarked. So
turning OCR on for an existing collection reads only what lacks it, and a file that changed
is marked again only once it is read again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from clipsearch import ocr
from clipsearch.errors import SkipFile
from clipsearch.records import Record, display_path
from clipsearch.store import FILE_COLUMNS, SourceRows, Store, sources_filter, sql_in

if TYPE_CHECKING:
    from clipsearch.backends import AnyEncoder
    from clipsearch.pipeline import IndexReport

log = logging.getLogger(__name__)

MARK = "ocr"  # the key of the marker in a row's extra
MARKED_KINDS = ("image", "doc_page", "video")
BATCH_FILES = 32  # files per commit
MAX_CHUNKS = 200  # OCR rows per file: a poster of small print must not swamp the collection
VIDEO_STEP = 10.0  # seconds between read frames inside a long shot
VIDEO_FRAMES = 24  # frames read per video at most
PAGE_SIDE = 2000  # a scanned page is rendered at this longest side for reading


@dataclass
class Read:
    """The words read in one picture of a file: where it is (page or time) and its lines."""

    lines: list[ocr.Line]
    page: int | None = None
    t_start: float | None = None
    t_end: float | None = None
    of: str | None = None


def unread_where() -> str:
    """SQL for the rows whose file still needs reading: marked kinds without the marker."""
    return (f"{sql_in('kind', MARKED_KINDS)} AND size >= 0 AND "
            f"(extra IS NULL OR extra NOT LIKE '%\"{MARK}\":%')")


def read_collection(store: Store, encoder: Callable[[], AnyEncoder], report: IndexReport,
                    max_pixels: int, batch_files: int | None = None, progress: bool = False) -> None:
    """Read every file that lacks OCR and commit its rows (see the module docstring).

    The engine missing or failing to load is one line in `report.ocr_problem`; one file that
    cannot be read is marked failed with its reason in `report.notes`. Never raises for either."""
    t0 = time.perf_counter()
    batch_files = batch_files or BATCH_FILES
    todo = store.scan(["source_raw", "kind"], unread_where())
    sources = list(dict.fromkeys(todo.column("source_raw").to_pylist()))
    if not sources:
        return
    try:
        engine = ocr.engine()
    except ocr.OcrUnavailable as e:
        report.ocr_problem = f"{e}" + (f" ({e.hint})" if e.hint else "")
        return
    from tqdm import tqdm

    bar = tqdm(total=len(sources), unit="file", disable=not progress, desc="reading words")
    try:
        for i in range(0, len(sources), batch_files):
            batch = sources[i:i + batch_files]
            items = []
            for raw, found in _read_files(store, batch, engine, max_pixels, report):
                items.append((raw, found))
                bar.update(1)
            _commit(store, items, encoder, report)
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        bar.close()
        report.ocr_seconds += time.perf_counter() - t0


def _read_files(store: Store, raws: list[bytes], engine: ocr.Engine, max_pixels: int,
                report: IndexReport) -> Iterator[tuple[bytes, list[Read] | str]]:
    """(file, what was read in it, or why nothing could be)."""
    rows = store.scan(["id", "source_raw", "kind", "page", "t_start", "t_end", "extra"],
                      f"{sources_filter(raws)} AND "
                      f"{sql_in('kind', ('image', 'doc_page', 'doc_text', 'video', 'video_frame'))}"
                      ).to_pylist()
    by_source: dict[bytes, list[dict[str, Any]]] = {}
    for r in rows:
        by_source.setdefault(r["source_raw"], []).append(r)
    for raw in raws:
        mine = by_source.get(raw, [])
        kinds = {r["kind"] for r in mine}
        path = Path(os.fsdecode(raw))
        try:
            if "image" in kinds:
                found = _read_image(path, mine, engine, max_pixels, report)
            elif "video" in kinds:
                found = _read_video(path, mine, engine, report)
            else:
                found = _read_scans(path, mine, engine, report)
        except SkipFile as e:
            yield raw, f"failed: {e.reason}"
            continue
        except OSError as e:
            yield raw, f"failed: unreadable: {e.strerror or e}"
            continue
        except Exception as e:  # the engine on one odd picture must not stop the run
            log.info("OCR failed on %s", display_path(raw), exc_info=True)
            yield raw, f"failed: {type(e).__name__}: {e}"
            continue
        yield raw, found


def _read_image(path: Path, rows: list[dict[str, Any]], engine: ocr.Engine, max_pixels: int,
                report: IndexReport) -> list[Read] | str:
    from clipsearch.indexers.image import load_image

    im = load_image(path, max_pixels, min_side=ocr.READ_SIDE)
    report.ocr_pictures += 1
    if not ocr.maybe_text(im):
        return "gate"
    parent = next(r["id"] for r in rows if r["kind"] == "image")
    return [Read(engine.read(im), of=parent)]


def _read_scans(path: Path, rows: list[dict[str, Any]], engine: ocr.Engine, report: IndexReport
                ) -> list[Read] | str:
    """The pages of a PDF without a text layer (no `doc_text` rows): rendered and read."""
    from clipsearch.indexers.document import render_page

    with_text = {r["page"] for r in rows if r["kind"] == "doc_text"}
    pages = sorted({int(r["page"]) for r in rows if r["kind"] == "doc_page" and r["page"] is not None}
                   - with_text)
    out = []
    for page in pages:
        im = render_page(path, page, PAGE_SIDE)
        if im is None:
            continue
        report.ocr_pictures += 1
        if ocr.maybe_text(im):
            out.append(Read(engine.read(im), page=page))
    return out if out else "gate"


def video_times(duration: float, cuts: list[float]) -> list[tuple[float, float, float]]:
    """When to read a video, as (time, span start, span end): each shot's middle, standing for
    the shot, and in a long shot a frame every VIDEO_STEP s, standing for its step."""
    bounds = [0.0, *[c for c in cuts if 0 < c < duration], duration]
    times = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        if b - a <= VIDEO_STEP:
            times.append(((a + b) / 2, a, b))
        else:
            for s in np.arange(a, b, VIDEO_STEP):
                e = min(float(s) + VIDEO_STEP, b)
                times.append(((float(s) + e) / 2, float(s), e))
    if len(times) > VIDEO_FRAMES:  # evenly thinned: the cap holds for a two-hour film
        keep = np.linspace(0, len(times) - 1, VIDEO_FRAMES).round().astype(int)
        times = [times[i] for i in keep]
    return times


def _read_video(path: Path, rows: list[dict[str, Any]], engine: ocr.Engine, report: IndexReport
                ) -> list[Read] | str:
    import json

    video = next(r for r in rows if r["kind"] == "video")
    extra = json.loads(video["extra"] or "{}")
    duration = float(video["t_end"] or 0.0)
    spans = video_times(duration, [float(c) for c in extra.get("cuts", [])])
    frames = sorted((r for r in rows if r["kind"] == "video_frame"), key=lambda r: r["t_start"])
    out: list[Read] = []
    last = ""
    span_of = {t: (a, b) for t, a, b in spans}
    for t, im in _frames_at(path, list(span_of)):
        a, b = span_of[t]
        report.ocr_pictures += 1
        if not ocr.maybe_text(im):
            last = ""
            continue
        lines = engine.read(im)
        words = " ".join(line.text for line in lines)
        if not words or words == last:  # the same caption still on screen
            continue
        last = words
        shown = [r for r in frames if r["t_start"] <= t + 1e-6]
        out.append(Read(lines, t_start=round(a, 3), t_end=round(b, 3),
                        of=(shown[-1] if shown else frames[0])["id"] if frames else None))
    return out if out else "gate"


def _frames_at(path: Path, times: list[float]) -> Iterator[tuple[float, Image.Image]]:
    """The frame shown at each time (seconds from the stream's start), decoded with PyAV."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        base = float(stream.time_base or 0) or 1e-6
        start = float(stream.start_time or 0) * base
        for t in times:
            container.seek(int((start + t) / base), stream=stream, backward=True, any_frame=False)
            frame = None
            for f in container.decode(stream):
                frame = f
                if f.pts is not None and f.pts * base - start >= t - 1e-3:
                    break
            if frame is not None:
                yield t, frame.to_image()


def _commit(store: Store, items: list[tuple[bytes, list[Read] | str]],
            encoder: Callable[[], AnyEncoder], report: IndexReport) -> None:
    """One commit: every row of these files again, marked, plus their new OCR rows."""
    if not items:
        return
    raws = [raw for raw, _ in items]
    snapshot = store.snapshot()
    old = store.records_at(snapshot, raws)
    meta = store.scan(["source_raw", "mtime", "size", "content_hash", *store.file_columns()],
                      sources_filter(raws)).to_pylist()
    state = {r["source_raw"]: r for r in meta}
    texts: list[tuple[bytes, Read, str, list[float], int]] = []
    for raw, found in items:
        if isinstance(found, list):
            texts.extend(_chunks(raw, found, encoder))
    vectors = encoder().encode_texts([t for _, _, t, _, _ in texts]) if texts else np.zeros((0, 0))
    new: dict[bytes, list[Record]] = {}
    for (raw, read, text, box, n), v in zip(texts, vectors, strict=True):
        extra: dict[str, Any] = {"chunk": n, "box": box}
        if read.of:
            extra["of"] = read.of
        new.setdefault(raw, []).append(Record("ocr", np.asarray(v, np.float32), t_start=read.t_start,
                                              t_end=read.t_end, page=read.page, text=text, extra=extra))
    out = []
    for raw, found in items:
        st = state.get(raw)
        if st is None or not old.get(raw):
            continue  # gone since it was listed: nothing to mark
        mark = "read" if isinstance(found, list) else found
        if mark.startswith("failed"):
            report.notes.append((display_path(raw), f"OCR {mark}"))
        records = [r for r in old[raw] if r.kind != "ocr"]
        for r in records:
            if r.kind in MARKED_KINDS:
                r.extra = {**r.extra, MARK: mark}
        mine = new.get(raw, [])
        records += mine
        report.ocr_files += 1
        report.ocr_rows += len(mine)
        out.append(SourceRows(raw, float(st["mtime"]), int(st["size"]), st["content_hash"] or "",
                              records, file_meta={c: st.get(c) for c in FILE_COLUMNS if c in st}))
    store.replace_sources(out)


def _chunks(raw: bytes, found: list[Read], encoder: Callable[[], AnyEncoder]
            ) -> Iterator[tuple[bytes, Read, str, list[float], int]]:
    """(file, read, chunk text, chunk box, chunk number) for the words of one file."""
    from clipsearch.chunking import chunk_text
    from clipsearch.indexers.document import chunk_budget

    enc = encoder()
    max_tokens, overlap = chunk_budget(enc, {})
    n = 0
    for read in found:
        if not read.lines:
            continue
        text, spans = "", []
        for line in read.lines:
            if text:
                text += "\n"
            spans.append((len(text), len(text) + len(line.text), line.box))
            text += line.text
        for c in chunk_text(text, enc.count_tokens, max_tokens, overlap):
            if n >= MAX_CHUNKS:
                return
            boxes = [box for a, b, box in spans if a < c.end and b > c.start]
            yield raw, read, c.text, ocr.union_box(boxes), n
            n += 1
