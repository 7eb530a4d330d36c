"""Peak memory of indexing one huge document: a 200 MB text file and a 2,000-page PDF.

Each case runs the real CLI (`clipsearch index DIR --db NEW --model clipsearch-tiny -q`) in a
child process; its peak RSS comes from the kernel (`os.wait4` rusage of that child), so it
covers the whole process: model load, scanning, indexing and the ANN/full-text refresh. A run
on a one-line text file gives the baseline every run pays whatever the file. After the 200 MB
text, a child process opens the collection and times document queries on it (median of 5,
after a first query that also loads the model).

    python -m benchmarks.doc_memory                          # 200 MB text + 2,000-page PDF
    python -m benchmarks.doc_memory --text-mb 20 --pages 100 --uncapped-mb 5   # a quick look

`--uncapped-mb N` adds a text of N MB indexed with `--max-text-chunks 0`: every chunk, so
memory is shown to follow the commit batch rather than the file even without the cap.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = "clipsearch-tiny"


def write_text(path: Path, megabytes: float, seed: int = 0) -> Path:
    """`megabytes` MiB of lines of made-up words: a 1 MiB block of random lines, each copy
    headed by its own section line (so the file is not one repeated string)."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10)))
             for _ in range(20_000)]
    lines, size = [], 0
    while size < 1 << 20:
        line = " ".join(rng.choice(vocab) for _ in range(rng.randint(4, 16)))
        lines.append(line)
        size += len(line) + 1
    block = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(max(1, round(megabytes * 2**20 / len(block)))):
            f.write(f"section {i} of the log\n{block}")
    return path


def write_pdf(path: Path, pages: int) -> Path:
    """A long report, every page with a title, ~450 words and a figure (benchmarks.doc_pages)."""
    from benchmarks.doc_pages import write_long_pdf

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_long_pdf(path, pages)


def index_once(folder: Path, db: Path, *extra: str) -> dict:
    """Run the CLI on `folder` into a new collection; its peak RSS, wall time and summary."""
    cmd = [sys.executable, "-m", "clipsearch.cli", "index", str(folder), "--db", str(db),
           "--model", MODEL, "-q", *extra]
    env = {**os.environ, "CLIPSEARCH_OFFLINE": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"index failed ({proc.returncode}): {err.read()[-2000:]}")
        lines = out.read().strip().splitlines()
    return {"peak_rss_mib": round(usage.ru_maxrss / 1024), "seconds": round(wall, 1),
            "summary": lines[0] if lines else ""}


def measured(case: str, *args: str) -> dict:
    """One case in a fresh process: it writes the file, then runs the CLI as its child."""
    cmd = [sys.executable, "-m", "benchmarks.doc_memory", "--case", case, *args]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{case} failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def query_child(db: Path, queries: list[str]) -> dict:
    """Open the collection and time document queries on it; this process's peak RSS. The
    first query also loads the model and the table (lazily), so it is reported apart."""
    from clipsearch import Collection

    col = Collection.open(db, device="cpu")
    t0 = time.perf_counter()
    col.search(text="first query", kind="doc", k=10, hybrid=True)
    first = time.perf_counter() - t0
    times = []
    for q in queries:
        t0 = time.perf_counter()
        col.search(text=q, kind="doc", k=10, hybrid=True)
        times.append(time.perf_counter() - t0)
    return {"first_query_s": round(first, 1), "query_ms_median": round(1000 * statistics.median(times), 1),
            "query_ms_max": round(1000 * max(times), 1), "queries": len(times),
            "rows": col.store.count(),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def run_case(case: str, size: float, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    folder, db = work / "in", work / "db"
    if case == "baseline":
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "note.txt").write_text("one short line of text\n")
        row = index_once(folder, db)
    elif case in ("text", "text-uncapped"):
        path = write_text(folder / "big.txt", size)
        extra = ("--max-text-chunks", "0") if case == "text-uncapped" else ()
        row = index_once(folder, db, *extra)
        row["file_mib"] = round(path.stat().st_size / 2**20, 1)
    elif case == "pdf":
        t0 = time.perf_counter()
        path = write_pdf(folder / "long.pdf", int(size))
        row = index_once(folder, db)
        row.update(file_mib=round(path.stat().st_size / 2**20, 1), pages=int(size),
                   generate_seconds=round(time.perf_counter() - t0 - row["seconds"], 1))
    else:
        raise SystemExit(f"unknown case {case}")
    row["case"] = case
    if case == "text":
        q = subprocess.run([sys.executable, "-m", "benchmarks.doc_memory", "--query-child", str(db)],
                           cwd=REPO, capture_output=True, text=True, check=True,
                           env={**os.environ, "CLIPSEARCH_OFFLINE": "1"})
        row["query"] = json.loads(q.stdout.strip().splitlines()[-1])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text-mb", type=float, default=200)
    ap.add_argument("--pages", type=int, default=2000)
    ap.add_argument("--uncapped-mb", type=float, default=0)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=float, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--query-child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.query_child:
        print(json.dumps(query_child(args.query_child, ["section of the log", "qwerty asdf", "a red star",
                                                        "lorem ipsum dolor", "the quarterly report"])))
        return
    if args.case:
        with tempfile.TemporaryDirectory(prefix="doc_memory_") as tmp:
            print(json.dumps(run_case(args.case, args.size, Path(tmp))))
        return
    cases = [("baseline", 0.0), ("text", args.text_mb)]
    if args.uncapped_mb:
        cases.append(("text-uncapped", args.uncapped_mb))
    if args.pages:
        cases.append(("pdf", float(args.pages)))
    for case, size in cases:
        print(json.dumps(measured(case, "--size", str(size))), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
