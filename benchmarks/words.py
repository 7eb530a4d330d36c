"""Searching by the words in files: retrieval and cost, per medium.

One section per medium, each measured on a generated world with known words
(`clipsearch.tiny.words`): OCR (images, screenshots, a scanned PDF) here; speech (videos and
audio files whose words are spoken) joins as its own section. Reported per medium: R@1 / R@5
of phrase queries (the query is the phrase; the answer its file, and page for a scan), the
same for visual queries (plain shape photos by their description) with words fused in, by the
picture alone (`visual_only`) and on a collection indexed without OCR (today's figures), the
engine's throughput, and what OCR costs a collection of photos without words.

    python -m benchmarks.words                       # 60 phrase images, 10 screens, 10 pages, 60 plain
    python -m benchmarks.words --images 10 --plain 10 --no-text 40 --rounds 1   # quick
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

from clipsearch.collection import Collection
from clipsearch.tiny.words import make_world, visual_queries


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
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result: dict[str, Any] = {"model": args.model, "load_before": os.getloadavg()}
        if not args.overhead_only:
            result["ocr"] = ocr_section(Path(tmp) / "ocr", args.model, args.images, args.screens, args.pages,
                                        args.plain)
        result["no_text"] = [no_text_overhead(Path(tmp) / f"plain-{n}", args.model, n, args.rounds)
                             for n in args.no_text]
        result["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
