"""Indexing side by side with the peers: the same 300 photos, the same random-init weights.

The tools run alternately in one session (clipsearch, rclip, clip-retrieval; the order rotates
each round), each as a fresh process over a fresh index, so load drifts hit all of them alike.
Reported per tool: the median wall time and the largest peak RSS over the rounds, and, per
round, clipsearch's wall divided by each peer's (the ratios are taken within a round, then the
median). clipsearch's own summary says how busy its encoder was (`encoder busy N%`).

The peers are built offline by `../shared/peers/setup.sh OUT` (clip-retrieval 2.45, rclip 3.3,
an HF cache with one random-init ViT-B-32-256, rclip's model folder from the same weights, 300
JPEGs from 640x480 to 4000x3000).

    python benchmarks/peers_index.py --peers /tmp/clipsearch-peers --rounds 3 --backend auto
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "ViT-B-32-256/datacomp_s34b_b86k"
BUSY = re.compile(r"encoder busy (\d+(?:\.\d+)?)%")


def run_one(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> dict:
    """Wall time and the child's own peak RSS (this process runs nothing else)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    out = p.stdout.read().decode(errors="replace") if p.stdout else ""
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out[-2000:]}")
    busy = BUSY.findall(out)
    return {"wall": wall, "rss_mb": round(usage.ru_maxrss / 1024),
            "encoder_busy": float(busy[-1]) if busy else None}


Command = tuple[list[str], Path | None]  # argv, working directory


def commands(peers: Path, work: Path, backend: str, extra: list[str]) -> dict[str, Command]:
    photos = peers / "photos"
    exe = Path(sys.executable).with_name("clipsearch")
    cs = [str(exe)] if exe.is_file() else [sys.executable, "-m", "clipsearch.cli"]
    return {
        "clipsearch": ([*cs, "index", str(photos), "--db", str(work / "cs-db"), "--model", MODEL, "-v",
                        "--backend", backend, *extra], None),
        "rclip": ([str(peers / "venv-rclip/bin/rclip"), "-t", "1", "a photo"], photos),
        "clip-retrieval": ([str(peers / "venv-cr/bin/clip-retrieval"), "inference",
                            "--input_dataset", str(photos), "--output_folder", str(work / "cr-out"),
                            "--clip_model", f"open_clip:{MODEL}", "--enable_text", "False",
                            "--batch_size", "64", "--num_prepro_workers", "2"], None),
    }


def fresh(peers: Path, work: Path) -> None:
    """Every tool starts from no index (clipsearch's export cache is kept: it is made once per model)."""
    shutil.rmtree(work / "cs-db", ignore_errors=True)
    shutil.rmtree(work / "cr-out", ignore_errors=True)
    (peers / "rclip-data" / "db.sqlite3").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=Path, default=Path(tempfile.gettempdir()) / "clipsearch-peers")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--tools", nargs="+", default=["clipsearch", "rclip", "clip-retrieval"])
    ap.add_argument("--clipsearch-arg", action="append", default=[],
                    help="one more argument for `clipsearch index` (repeat it)")
    ap.add_argument("--no-first-run", action="store_true",
                    help="skip the untimed first clipsearch run (its export is cached already)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    env = {**os.environ, "HF_HOME": str(a.peers / "hf"), "HF_HUB_OFFLINE": "1",
           "RCLIP_DATADIR": str(a.peers / "rclip-data")}
    work = Path(tempfile.mkdtemp(prefix="peers-index-"))
    cmds = commands(a.peers, work, a.backend, a.clipsearch_arg)
    # one untimed clipsearch run first: it makes the backend's export once, as a user's first run does
    first = None
    if "clipsearch" in a.tools and not a.no_first_run:
        fresh(a.peers, work)
        first = run_one(cmds["clipsearch"][0], env)["wall"]
    rounds: list[dict[str, dict]] = []
    for r in range(a.rounds):
        order = a.tools[r % len(a.tools):] + a.tools[:r % len(a.tools)]
        got = {}
        for tool in order:
            fresh(a.peers, work)
            cmd, cwd = cmds[tool]
            got[tool] = run_one(cmd, env, cwd)
            print(f"round {r + 1} {tool}: {got[tool]['wall']:.1f} s, {got[tool]['rss_mb']} MB"
                  + (f", encoder busy {got[tool]['encoder_busy']:.0f}%" if got[tool]["encoder_busy"] else ""),
                  flush=True)
        rounds.append(got)
    out: dict = {"photos": len(list((a.peers / "photos").glob("*.jpg"))), "model": MODEL,
                 "backend": a.backend, "first_clipsearch_run_s": first and round(first, 1),
                 "tools": {}, "ratios": {}}
    for tool in a.tools:
        walls = [g[tool]["wall"] for g in rounds]
        out["tools"][tool] = {"median_wall_s": round(statistics.median(walls), 1),
                              "walls": [round(w, 1) for w in walls],
                              "rss_mb": max(g[tool]["rss_mb"] for g in rounds)}
        busy = [g[tool]["encoder_busy"] for g in rounds if g[tool]["encoder_busy"] is not None]
        if busy:
            out["tools"][tool]["encoder_busy_pct"] = statistics.median(busy)
    for peer in a.tools:
        if peer != "clipsearch" and "clipsearch" in a.tools:
            out["ratios"][f"clipsearch/{peer}"] = round(statistics.median(
                g["clipsearch"]["wall"] / g[peer]["wall"] for g in rounds), 3)
    print(json.dumps(out, indent=2))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
