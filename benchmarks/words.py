"""Searching by the words in files: retrieval and cost, per medium.

One section per medium, each measured on a generated world with known words: OCR (images,
screenshots, a scanned PDF: `clipsearch.tiny.words`) and speech (videos of shape segments whose
audio says distinct phrases at known times, espeak-ng: `clipsearch.tiny.speech_synth`).

OCR, per medium: R@1 / R@5 of phrase queries (the query is the phrase; the answer its file, and
page for a scan), the same for visual queries (plain shape photos by their description) with
words fused in, by the picture alone (`visual_only`) and on a collection indexed without OCR
(today's figures), the engine's throughput, and what OCR costs a collection of photos without
words.

Speech (PocketSphinx, `asr_model="pocketsphinx"`): phrase R1@0.5 (the first hit is in the right
video and overlaps the spoken span with temporal IoU >= 0.5) and R5@0.5, by `kind="speech"`,
by moments (fused with what is seen) and by the default search; visual moment R1@0.5 of the
shape queries with ASR off and on (speech must cost visual queries nothing); ASR throughput in
audio seconds per wall second (decode, gate, recognition, text embedding), over all the audio
and over its voiced part. The speech world is indexed with OCR off, so the figures are speech's.

    python -m benchmarks.words            # 60 phrase images, 10 screens, 10 pages, 60 plain; 12 videos
    python -m benchmarks.words --images 10 --plain 10 --no-text 40 --rounds 1 --videos 4   # quick
    python -m benchmarks.words --no-ocr --videos 12  # speech only (--no-speech: OCR only)
    python -m benchmarks.words --overhead-only --no-text 120 400 --rounds 5 --model ViT-B-32/laion2b_s34b_b79k
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.collection import Collection
from clipsearch.tiny.words import make_world, visual_queries
from clipsearch.video_metrics import temporal_iou


def _recall(ranks: list[int | None]) -> dict[str, float]:
    n = max(1, len(ranks))
    return {"n": len(ranks), "R@1": round(sum(r == 0 for r in ranks) / n, 3),
            "R@5": round(sum(r is not None and r < 5 for r in ranks) / n, 3)}


def _rank(hits: list[Any], path: str, page: int | None = None) -> int | None:
    for i, h in enumerate(hits):
        if h.source == path and (page is None or h.page == page):
            return i
    return None


# ---------------------------------------------------------------- OCR

def ocr_section(root: Path, model: str, images: int, screens: int, pages: int, plain: int) -> dict[str, Any]:
    """Index the OCR world without OCR, then turn it on (the incremental path), then search."""
    world = make_world(root / "files", images=images, screens=screens, pages=pages, plain=plain)
    col = Collection.create(root / "db", model=model, device="cpu")
    t0 = time.perf_counter()
    off = col.add([root / "files"], ocr="off")
    off_wall = time.perf_counter() - t0
    visual = visual_queries(world)
    before = _recall([_rank(col.search(q, k=5), p) for q, p in visual])
    on = col.add([root / "files"], ocr="on")
    out: dict[str, Any] = {
        "files": off.indexed, "index_off_s": round(off_wall, 1),
        "ocr_pass_s": round(on.ocr_seconds, 1), "ocr_pictures": on.ocr_pictures,
        "ocr_rows": on.ocr_rows, "ocr_pictures_per_s": round(on.ocr_pictures / max(on.ocr_seconds, 1e-9), 2),
        "phrases": {}}
    for medium, phrases in world.phrases.items():
        out["phrases"][medium] = _recall([_rank(col.search(text, k=5), path, page)
                                          for text, (path, page) in phrases.items()])
    out["visual"] = {
        "without_ocr": before,
        "fused": _recall([_rank(col.search(q, k=5), p) for q, p in visual]),
        "visual_only": _recall([_rank(col.search(q, k=5, visual_only=True), p) for q, p in visual])}
    return out


def no_text_overhead(root: Path, model: str, n: int, rounds: int) -> dict[str, Any]:
    """Indexing time of `n` photos without words, OCR off vs on, fresh collections, alternating.
    `gate_passed`: pictures the gate let through to the engine, per round with OCR on; `cpu_*`:
    the process's CPU seconds over the same runs, the cost as a shared machine's load sways it less."""
    from clipsearch.tiny.words import make_world as _make

    world = _make(root / "files", images=0, screens=0, pages=0, plain=n, seed=7)
    files = world.root / "plain"
    times: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}  # CPU seconds of all threads: less swayed by load
    ocr_s: list[float] = []
    passed: list[int] = []
    Collection.create(root / "warm", model=model, device="cpu").add([files], ocr="off")  # warm caches
    for r in range(rounds):
        for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
            db = root / f"db-{mode}-{r}"
            col = Collection.create(db, model=model, device="cpu")
            col.encoder  # noqa: B018  # the model load is not indexing time
            t0, c0 = time.perf_counter(), time.process_time()
            rep = col.add([files], ocr=mode)
            times[mode].append(time.perf_counter() - t0)
            cpu[mode].append(time.process_time() - c0)
            if mode == "on":
                ocr_s.append(rep.ocr_seconds)
                passed.append(rep.ocr_pictures)
            shutil.rmtree(db, ignore_errors=True)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    return {"images": n, "rounds": rounds, "off_s": [round(t, 2) for t in times["off"]],
            "on_s": [round(t, 2) for t in times["on"]], "median_off_s": round(off, 2),
            "median_on_s": round(on, 2), "overhead": round(on / off - 1, 3),
            "ocr_pass_s": [round(t, 2) for t in ocr_s], "gate_passed": passed,
            "cpu_off_s": [round(t, 2) for t in cpu["off"]], "cpu_on_s": [round(t, 2) for t in cpu["on"]],
            "cpu_overhead": round(statistics.median(cpu["on"]) / statistics.median(cpu["off"]) - 1, 3)}


# ---------------------------------------------------------------- speech

SHAPES = [("red", "star"), ("blue", "circle"), ("green", "square"), ("yellow", "triangle"),
          ("blue", "star"), ("red", "circle"), ("green", "triangle"), ("yellow", "square")]
SEGMENT_S = 6  # each video: two shape segments of this long, one phrase said in each


def make_speech_world(folder: Path, n: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """`n` videos of two shape segments, each saying two distinct phrases at known times:
    ({video name: the phrases said, with their spans}, {video name: the shapes seen})."""
    from clipsearch.tiny import speech_synth as ss

    phrases = list(ss.PHRASES)
    if 2 * n > len(phrases):
        raise SystemExit(f"at most {len(phrases) // 2} videos: there are {len(phrases)} distinct phrases")
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    spoken, seen = {}, {}
    for i in range(n):
        a, b = SHAPES[(2 * i) % len(SHAPES)], SHAPES[(2 * i + 1) % len(SHAPES)]
        name = f"talk_{i:02d}.mp4"
        t0, t1 = float(rng.uniform(0.5, 2.0)), float(rng.uniform(6.5, 8.0))
        said = [(t0, phrases[2 * i]), (t1, phrases[2 * i + 1])]
        seen[name], spoken[name] = ss.write_spoken_video(folder / name, [(*a, SEGMENT_S), (*b, SEGMENT_S)],
                                                         said, rng)
    return spoken, seen


def _span_hit(h: Any, name: str, t0: float, t1: float) -> bool:
    return (os.path.basename(h.source) == name and h.t_start is not None and h.t_end is not None
            and temporal_iou((h.t_start, h.t_end), (t0, t1)) >= 0.5)


def phrase_eval(col: Collection, spoken: dict[str, Any], kind: str | None) -> dict[str, Any]:
    """Spoken phrase R1@0.5 / R5@0.5 by `kind` (None: the default search over all kinds)."""
    r1 = r5 = n = 0
    for name, said in spoken.items():
        for t in said:
            n += 1
            hits = col.search(text=t["phrase"], kind=kind, k=5)
            ok = [_span_hit(h, name, t["t_start"], t["t_end"]) for h in hits]
            r1 += bool(ok[:1] and ok[0])
            r5 += any(ok)
    return {"queries": n, "R1@0.5": round(r1 / max(n, 1), 3), "R5@0.5": round(r5 / max(n, 1), 3)}


def visual_eval(col: Collection, seen: dict[str, Any]) -> dict[str, Any]:
    """Moment R1@0.5 of the shape queries: any video showing that shape in that span counts
    (several videos share shapes)."""
    r1 = n = 0
    for segs in seen.values():
        for s in segs:
            n += 1
            top = (col.moments(text=s["query"], k=5) or [None])[0]
            good = [(v, g["t_start"], g["t_end"]) for v, gs in seen.items() for g in gs
                    if g["query"] == s["query"]]
            r1 += bool(top is not None and any(_span_hit(top, v, a, b) for v, a, b in good))
    return {"queries": n, "R1@0.5": round(r1 / max(n, 1), 3)}


def speech_section(root: Path, model: str, videos: int, seed: int) -> dict[str, Any]:
    """Index the speech world with ASR off, then turn it on (the incremental path: only the
    transcription runs), then search."""
    import json as _json

    from clipsearch.tiny import speech_synth as ss

    if not ss.have_espeak():
        return {"skipped": "espeak-ng is not installed (apt-get install espeak-ng)"}
    spoken, seen = make_speech_world(root / "files", videos, seed)
    col = Collection.create(root / "db", model=model, device="cpu")
    t0 = time.perf_counter()
    col.add([root / "files"], options={"asr": "off"}, workers=2, ocr="off")
    off_s = time.perf_counter() - t0
    visual_off = visual_eval(col, seen)
    t0 = time.perf_counter()
    report = col.add([root / "files"], options={"asr": "on", "asr_model": "pocketsphinx"}, ocr="off")
    asr_s = time.perf_counter() - t0
    rows = col.store.scan(["extra"], "kind = 'video'").to_pylist()
    voiced = sum(_json.loads(r["extra"]).get("voiced", 0.0) for r in rows)
    audio = 2.0 * SEGMENT_S * videos
    return {
        "videos": videos, "seed": seed, "engine": "pocketsphinx:en-us",
        "speech": phrase_eval(col, spoken, "speech"),
        "speech_via_moments": phrase_eval(col, spoken, "moment"),
        "speech_via_search": phrase_eval(col, spoken, None),
        "visual_moments_asr_off": visual_off,
        "visual_moments_asr_on": visual_eval(col, seen),
        "index_s_asr_off": round(off_s, 1), "asr_s": round(asr_s, 1), "transcribed": report.transcribed,
        "audio_s": audio, "voiced_s": round(voiced, 1),
        "asr_audio_s_per_s": round(audio / asr_s, 2), "asr_voiced_s_per_s": round(voiced / asr_s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="clipsearch-tiny")
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--screens", type=int, default=10)
    ap.add_argument("--pages", type=int, default=10)
    ap.add_argument("--plain", type=int, default=60)
    ap.add_argument("--no-text", type=int, nargs="+", default=[200],
                    help="photos without words for the overhead (one run per size)")
    ap.add_argument("--overhead-only", action="store_true", help="only the no-text overhead")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--videos", type=int, default=12, help="spoken videos for the speech section")
    ap.add_argument("--seed", type=int, default=0, help="the speech world's seed")
    ap.add_argument("--no-ocr", action="store_true", help="skip the OCR sections")
    ap.add_argument("--no-speech", action="store_true", help="skip the speech section")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result: dict[str, Any] = {"model": args.model, "load_before": os.getloadavg()}
        if not args.no_ocr:
            if not args.overhead_only:
                result["ocr"] = ocr_section(Path(tmp) / "ocr", args.model, args.images, args.screens,
                                            args.pages, args.plain)
            result["no_text"] = [no_text_overhead(Path(tmp) / f"plain-{n}", args.model, n, args.rounds)
                                 for n in args.no_text]
        if not args.no_speech and not args.overhead_only:
            result["speech"] = speech_section(Path(tmp) / "speech", args.model, args.videos, args.seed)
        result["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
