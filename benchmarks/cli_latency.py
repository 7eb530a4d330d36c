"""Cold CLI latency: wall time and peak RSS of `info`, an unchanged `index` and a text `search`.

Each command runs as a user runs it (a fresh `clipsearch` process), after the page cache is
dropped when this process may (root: `sync; echo 3 > /proc/sys/vm/drop_caches`), three times or
more; the median wall time and the largest peak RSS (the child's own `ru_maxrss`, from
`os.wait4`) are reported. Side by side: rclip 3.3 over the same files and the same random-init
ViT-B-32-256 weights (built offline by ../shared/peers/setup.sh).

    python benchmarks/cli_latency.py --work /tmp/cli-latency --peers /tmp/clipsearch-peers

What it builds once under --work (and reuses): N small JPEGs; a clipsearch-tiny collection
indexed for real; a ViT-B-32-256 collection whose table holds the files' real states with
random unit vectors (an unchanged run and a query never look at a vector's values, and
embedding 10,000 files with ViT-B on a laptop CPU takes many minutes; `--vit-index real`
embeds them); rclip's index of the same files (rclip embeds them: minutes, once).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VIT = "ViT-B-32-256/datacomp_s34b_b86k"  # the peers' random-init weights, rclip's model size
RCLIP_MODEL_DIR = "ViT-B-32-256-datacomp_s34b_b86k"
QUERY = "a red square"


def clipsearch_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("clipsearch")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "clipsearch.cli"]


def drop_caches() -> bool:
    """Empty the page cache (root only); False when this process may not."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def measure(cmd: list[str], env: dict[str, str], runs: int, cwd: Path | None = None,
            cold: bool = True) -> dict:
    """Median wall and max peak RSS over `runs` runs (cold: the page cache dropped before each),
    each in a helper process that reports its one child."""
    walls, rss = [], []
    for _ in range(runs):
        if cold:
            drop_caches()
        probe = subprocess.run([sys.executable, __file__, "--_one", json.dumps(cmd)], env=env, cwd=cwd,
                               capture_output=True, text=True)
        if probe.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {probe.stderr[-1200:]}")
        one = json.loads(probe.stdout.strip().splitlines()[-1])
        walls.append(one["wall"])
        rss.append(one["rss_mb"])
    return {"wall_s": round(statistics.median(walls), 2), "walls": [round(w, 2) for w in walls],
            "rss_mb": max(rss)}


def _one(cmd: list[str]) -> None:
    """Run `cmd` once; print its wall time and its own peak RSS (ru_maxrss of this lone child)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    if p.returncode:
        sys.stderr.write(err.decode(errors="replace"))
        sys.exit(p.returncode)
    import resource

    rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"wall": wall, "rss_mb": round(rss_kb / 1024)}))


def make_files(folder: Path, n: int) -> None:
    """n small JPEGs (a few KB each: decoding is not what is measured), made once."""
    if folder.is_dir() and len(list(folder.glob("*/*.jpg"))) == n:
        return
    from PIL import Image

    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / f"d{i // 1000:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((96, 96), Image.BILINEAR).save(sub / f"f{i:05d}.jpg", quality=85)


def build_real(db: Path, files: Path, model: str, env: dict[str, str]) -> None:
    if not (db / "clipsearch.json").is_file():
        subprocess.run([*clipsearch_cmd(), "index", str(files), "--db", str(db), "--model", model, "-q",
                        "--device", "cpu"], env=env, check=True)


def build_synthetic(db: Path, files: Path, model: str) -> None:
    """A collection of `model` whose rows carry the files' real states and random unit vectors,
    written through the engines' seam (`Collection.index_run`), derived state and all."""
    if (db / "clipsearch.json").is_file():
        return
    from clipsearch.indexers.scanner import Found, Scan

    from clipsearch.collection import Collection
    from clipsearch.pipeline import IndexReport, content_hash
    from clipsearch.records import Record
    from clipsearch.store import SourceRows

    col = Collection.create(db, model=model, device="cpu")
    rng = np.random.default_rng(0)
    with col.index_run([files]) as run:
        committer = run.committer(1000)
        report = IndexReport()
        for entry in Scan(run.roots, run.rules):
            if not isinstance(entry, Found):
                continue
            v = rng.standard_normal(col.encoder.dim).astype(np.float32)
            state = (entry.path, entry.mtime, entry.size, content_hash(entry.path, entry.size))
            committer.add(SourceRows(*state, [Record(kind="image", vector=v / np.linalg.norm(v))]))
            report.indexed += 1
            report.items += 1
        committer.flush()
        run.report = report


RCLIP_FILL = """
import os, sys, numpy as np
from rclip import db
from rclip.utils.helpers import compute_file_hash
d = db.DB(sys.argv[1])
rng = np.random.default_rng(0)
for top, _, names in os.walk(sys.argv[2]):
    for n in sorted(names):
        p = os.path.join(top, n); st = os.stat(p)
        v = rng.standard_normal(512).astype(np.float32); v /= np.linalg.norm(v)
        d.upsert_image(db.NewImage(filepath=p, modified_at=st.st_mtime, size=st.st_size,
                                   vector=v.tobytes(), hash=compute_file_hash(p)), commit=False)
d.close()
"""


def rclip_setup(peers: Path, work: Path, files: Path, env: dict[str, str],
                index: str = "synthetic") -> tuple[list[str], dict]:
    """rclip's command and environment, with its own data folder (the model files linked).

    Its index of the files is made once: by rclip's own DB class with the files' real states and
    random unit vectors (as the ViT collection is), or by rclip itself (`index="real"`)."""
    data = work / "rclip-data"
    if not data.is_dir():
        data.mkdir(parents=True)
        for item in (peers / "rclip-data").iterdir():
            if item.name != "db.sqlite3":
                os.symlink(item, data / item.name)
    renv = {**env, "RCLIP_DATADIR": str(data)}
    cmd = [str(peers / "venv-rclip" / "bin" / "rclip")]
    if not (data / "db.sqlite3").is_file():
        if index == "real":
            subprocess.run([*cmd, "-t", "1", QUERY], cwd=files, env=renv, check=True, capture_output=True)
        else:
            python = peers / "venv-rclip" / "bin" / "python"
            subprocess.run([str(python), "-c", RCLIP_FILL, str(data / "db.sqlite3"), str(files)],
                           env=renv, check=True)
    return cmd, renv


def checkout_as_installed(commit: str, work: Path) -> Path:
    """The code of `commit` laid out as installed (indexers/ and ui/ inside clipsearch/, as
    pyproject's package-dir maps them), to run with PYTHONPATH=<returned folder>; made once."""
    dest = work / f"code-{commit}"
    pkg = dest / "pkg"
    if not (pkg / "clipsearch" / "cli.py").is_file():
        shutil.rmtree(dest, ignore_errors=True)
        src = dest / "src"
        src.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
        shutil.copytree(src / "clipsearch", pkg / "clipsearch")
        for sub in ("indexers", "ui"):
            shutil.copytree(src / sub, pkg / "clipsearch" / sub)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(pkg)], check=False)
    return pkg


def compare(cases: list[tuple[str, str, list[str]]], env: dict[str, str], before: Path,
            runs: int) -> list[dict]:
    """Each command cold with the code of `before` and with this checkout, alternating run by
    run (so a change in the machine's load falls on both), both as `python -m clipsearch.cli`."""
    old_env = {**env, "PYTHONPATH": str(before)}
    rows = []
    for what, model, args in cases:
        cmd = [sys.executable, "-m", "clipsearch.cli", *args]
        got: dict[str, list[dict]] = {"before": [], "after": []}
        for _ in range(runs):  # not from the checkout: `python -m` puts the current folder first
            got["before"].append(measure(cmd, old_env, 1, cwd=before.parent))  # on sys.path
            got["after"].append(measure(cmd, env, 1, cwd=before.parent))
        row = {"command": what, "model": model, "argv": args}
        for side, ms in got.items():
            walls = [m["walls"][0] for m in ms]
            row[side] = {"wall_s": round(statistics.median(walls), 2), "walls": walls,
                         "rss_mb": max(m["rss_mb"] for m in ms)}
        rows.append(row)
    return rows


def report_before_after(args: argparse.Namespace, dbs: dict[str, Path], env: dict[str, str]) -> None:
    """`--before COMMIT`: one table of cold `info` and unchanged `index` runs, both codes."""
    before = checkout_as_installed(args.before, args.work)
    pairs = []
    for model, db in dbs.items():
        pairs.append(("info", model, ["info", "--db", str(db)]))
        pairs.append((f"index (unchanged, {args.files:,} files)", model, ["index", "-q", "--db", str(db)]))
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    load = os.getloadavg()[0]
    rows = compare(pairs, env, before, args.runs)
    print(f"| command | model | before ({args.before}): cold wall s, median of {args.runs} | runs | "
          f"after ({head}): cold wall s | runs | peak RSS MB before / after |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        b, a = r["before"], r["after"]
        runs_b = ", ".join(f"{x:.2f}" for x in b["walls"])
        runs_a = ", ".join(f"{x:.2f}" for x in a["walls"])
        print(f"| {r['command']} | {r['model']} | {b['wall_s']:.2f} | {runs_b} | {a['wall_s']:.2f} | "
              f"{runs_a} | {b['rss_mb']} / {a['rss_mb']} |")
    dropped = "yes" if drop_caches() else "no (not permitted)"
    print(f"\ncold = page cache dropped before each run: {dropped}; load average {load:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def has_backend_flag(env: dict[str, str]) -> bool:
    p = subprocess.run([*clipsearch_cmd(), "search", "--help"], env=env, capture_output=True, text=True)
    return "--backend" in p.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/cli-latency"))
    ap.add_argument("--peers", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "clipsearch-peers")
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--vit-index", choices=["synthetic", "real"], default="synthetic",
                    help="the ViT collection and rclip's index: random vectors, or embedded for real")
    ap.add_argument("--backend", action="append", default=[],
                    help="also time `search --backend NAME` (repeatable), when the flag exists")
    ap.add_argument("--no-rclip", action="store_true")
    ap.add_argument("--only", choices=["info", "index", "search"], action="append", default=[],
                    help="time only these commands (repeatable; rclip's rows go with search)")
    ap.add_argument("--build-only", action="store_true", help="build the files and collections, time nothing")
    ap.add_argument("--before", metavar="COMMIT", default=None,
                    help="only compare info and the unchanged index, cold, between the code of COMMIT "
                         "and this checkout")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--_one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._one:
        _one(json.loads(args._one))
        return
    work = args.work
    files = work / "files"
    env = {**os.environ, "HF_HOME": str(args.peers / "hf"), "HF_HUB_OFFLINE": "1", "CLIPSEARCH_DEVICE": "cpu"}
    os.environ.update({k: env[k] for k in ("HF_HOME", "HF_HUB_OFFLINE")})
    # As installed: with bytecode caches (a session may set PYTHONDONTWRITEBYTECODE, and then
    # every clipsearch module would be compiled on every start).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    sources = [str(ROOT / d) for d in ("clipsearch", "indexers", "ui")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *sources], check=False)
    make_files(files, args.files)
    dbs = {"clipsearch-tiny": work / "db-tiny", VIT: work / "db-vit"}
    build_real(dbs["clipsearch-tiny"], files, "clipsearch-tiny", env)
    if args.vit_index == "real":
        build_real(dbs[VIT], files, VIT, env)
    else:
        build_synthetic(dbs[VIT], files, VIT)
    if args.build_only:
        return
    if args.before:
        report_before_after(args, dbs, env)
        return
    cs = clipsearch_cmd()
    backends = args.backend if args.backend and has_backend_flag(env) else []
    cases: list[tuple[str, str, list[str], dict[str, str], Path | None]] = []
    for model, db in dbs.items():
        cases.append(("info", model, [*cs, "info", "--db", str(db)], env, None))
        index = [*cs, "index", "-q", "--db", str(db)]
        cases.append((f"index (unchanged, {args.files:,} files)", model, index, env, None))
        cases.append(("search (text)", model, [*cs, "search", QUERY, "--db", str(db)], env, None))
        for b in backends:
            cases.append((f"search (text, --backend {b})", model,
                          [*cs, "search", QUERY, "--db", str(db), "--backend", b], env, None))
    if args.only:
        cases = [c for c in cases if c[0].split(" ")[0] in args.only]
    if not args.no_rclip and (not args.only or "search" in args.only):
        rcmd, renv = rclip_setup(args.peers, work, files, env, args.vit_index)
        rclip_model = "ViT-B-32-256 (rclip, ONNX)"
        query = [*rcmd, "-f", "-t", "10", QUERY]
        cases.append(("rclip: index check + text query", rclip_model, query, renv, files))
        cases.append(("rclip: text query (--no-indexing)", rclip_model, [*query, "-n"], renv, files))
    rows = [{"command": what, "model": model, "argv": cmd, "cold": [], "warm": []}
            for what, model, cmd, _, _ in cases]
    # Round by round, every command once cold and once warm, so load drift hits all alike.
    for _ in range(args.runs):
        for row, (_, _, cmd, cenv, cwd) in zip(rows, cases, strict=True):
            row["cold"].append(measure(cmd, cenv, 1, cwd=cwd))
            row["warm"].append(measure(cmd, cenv, 1, cwd=cwd, cold=False))
    for row in rows:
        for how in ("cold", "warm"):
            walls = [w for m in row[how] for w in m["walls"]]
            row[how] = {"wall_s": round(statistics.median(walls), 2), "walls": walls,
                        "rss_mb": max(m["rss_mb"] for m in row[how])}
    dropped = drop_caches()
    print(f"| command | model | cold wall s (median of {args.runs}) | cold runs | warm wall s | "
          "peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        c, w = r["cold"], r["warm"]
        runs = ", ".join(f"{x:.2f}" for x in c["walls"])
        print(f"| {r['command']} | {r['model']} | {c['wall_s']:.2f} | {runs} | {w['wall_s']:.2f} | "
              f"{max(c['rss_mb'], w['rss_mb'])} |")
    print(f"\ncold = page cache dropped before each run: {'yes' if dropped else 'no (not permitted)'}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
