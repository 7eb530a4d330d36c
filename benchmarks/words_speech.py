"""Speech part of the words benchmark (issue #20): phrase retrieval in videos' audio and ASR cost.

Generated world (`clipsearch.tiny.speech_synth`): N videos of two shape segments each (the
sample world's drifting shapes), each saying two distinct phrases (espeak-ng, en-us+klatt) at
known times, indexed with clipsearch-tiny and the PocketSphinx engine (`--asr-model pocketsphinx`).

Reports:
- speech phrase R1@0.5: the first `--kind speech` hit is in the right video and overlaps the
  spoken span with temporal IoU >= 0.5 (target >= 0.8); also through `--moments` (fused) and R@5;
- visual moment R1@0.5 for the shape queries, with ASR on and off (speech must cost the visual
  queries nothing);
- ASR throughput: audio seconds per wall second of the transcription (decode, gate,
  recognition, text embedding), over the whole audio and over the voiced part.

    .venv/bin/python benchmarks/words_speech.py --videos 12 --out benchmarks/results/words_speech.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from clipsearch import Collection
from clipsearch.tiny import speech_synth as ss
from clipsearch.video_metrics import temporal_iou

SHAPES = [("red", "star"), ("blue", "circle"), ("green", "square"), ("yellow", "triangle"),
          ("blue", "star"), ("red", "circle"), ("green", "triangle"), ("yellow", "square")]


def make_world(folder: Path, n: int, seed: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    phrases = list(ss.PHRASES)
    spoken, seen = {}, {}
    for i in range(n):
        a, b = SHAPES[(2 * i) % len(SHAPES)], SHAPES[(2 * i + 1) % len(SHAPES)]
        p0, p1 = phrases[(2 * i) % len(phrases)], phrases[(2 * i + 1) % len(phrases)]
        if 2 * i + 1 >= len(phrases):
            raise SystemExit(f"at most {len(phrases) // 2} videos: there are {len(phrases)} distinct phrases")
        name = f"talk_{i:02d}.mp4"
        t0, t1 = float(rng.uniform(0.5, 2.0)), float(rng.uniform(6.5, 8.0))
        seen[name], spoken[name] = ss.write_spoken_video(folder / name, [(*a, 6), (*b, 6)],
                                                         [(t0, p0), (t1, p1)], rng)
    return spoken, seen


def phrase_eval(col: Collection, spoken: dict, kind: str) -> dict:
    r1 = r5 = 0
    n = 0
    for name, said in spoken.items():
        for t in said:
            n += 1
            hits = col.search(text=t["phrase"], kind=kind, k=5)
            ok = [os.path.basename(h.source) == name and
                  temporal_iou((h.t_start, h.t_end), (t["t_start"], t["t_end"])) >= 0.5 for h in hits]
            r1 += bool(ok[:1] and ok[0])
            r5 += any(ok)
    return {"queries": n, "R1@0.5": round(r1 / n, 3), "R5@0.5": round(r5 / n, 3)}


def visual_eval(col: Collection, seen: dict) -> dict:
    r1 = n = 0
    for segs in seen.values():
        for s in segs:
            n += 1
            hits = col.moments(text=s["query"], k=5)
            # any video showing that shape in that span counts: several videos share shapes
            good = {(v, g["t_start"], g["t_end"]) for v, gs in seen.items() for g in gs
                    if g["query"] == s["query"]}
            top = hits[0] if hits else None
            r1 += bool(top and any(os.path.basename(top.source) == v and
                                   temporal_iou((top.t_start, top.t_end), (a, b)) >= 0.5 for v, a, b in good))
    return {"queries": n, "R1@0.5": round(r1 / n, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not ss.have_espeak():
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spoken, seen = make_world(root / "files", args.videos, args.seed)
        plain = Collection.create(root / "db_off", model="clipsearch-tiny", device="cpu")
        t = time.perf_counter()
        plain.add([root / "files"], options={"asr": "off"}, workers=2)
        off_s = time.perf_counter() - t
        visual_off = visual_eval(plain, seen)
        # ASR on the same collection afterwards: the backfill does exactly the speech work
        t = time.perf_counter()
        report = plain.add([root / "files"], options={"asr": "on", "asr_model": "pocketsphinx"})
        asr_s = time.perf_counter() - t
        rows = plain.store.scan(["extra"], "kind = 'video'").to_pylist()
        voiced = sum(json.loads(r["extra"]).get("voiced", 0.0) for r in rows)
        audio = 12.0 * args.videos
        out = {
            "videos": args.videos, "seed": args.seed, "engine": "pocketsphinx:en-us",
            "speech": phrase_eval(plain, spoken, "speech"),
            "speech_via_moments": phrase_eval(plain, spoken, "moment"),
            "visual_moments_asr_off": visual_off,
            "visual_moments_asr_on": visual_eval(plain, seen),
            "index_s_asr_off": round(off_s, 1),
            "asr_s": round(asr_s, 1), "transcribed": report.transcribed,
            "audio_s": audio, "voiced_s": round(voiced, 1),
            "asr_audio_s_per_s": round(audio / asr_s, 2), "asr_voiced_s_per_s": round(voiced / asr_s, 2),
        }
    print(json.dumps(out, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
