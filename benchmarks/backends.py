"""Encoder backends side by side: encoder-only images/s and the full `index` path per backend and
precision, with the index run's peak RSS and each variant's agreement with PyTorch fp32 (issue #17).

Per model, every variant this machine can run: torch fp32; torch bf16 (`torch.autocast`, encoder
only: `clipsearch index` does not offer it) when the CPU has bf16 units; onnx fp32/int8; openvino
fp32/bf16/fp16; each as its own subprocess, so each RSS is that variant's alone.

- encoder-only: `load_encoder(spec, "cpu", backend, precision)`, then batches of already
  preprocessed pixels (decoded probe pictures, `export.probe_images`) through `encode_batch`:
  one warm-up batch, then `--batches` timed ones; the median batch gives images/s. Threads: one
  per core (torch set to it; the runtimes use one per core already).
- index path: `clipsearch index FOLDER --backend B --precision P --device cpu` into a fresh
  collection, on a fixed folder of JPEGs: wall-clock images/s (process start and model load
  included, as a user sees it), the child's peak RSS (`ru_maxrss` from `os.wait4`), and the
  encoder-busy share the run reports; "in-run images/s" divides by the run's own time (the index
  summary's, after start-up and the model load).
- agreement: the least cosine of the variant's vectors with PyTorch fp32's on JPEG-decoded
  probe images and on probe texts, as the package measured and recorded it
  (`agreement.writer_record`, what a collection keeps about its writer); for torch bf16, measured
  here the same way (image tower only).

Exports are made (and every variant probed) before anything is timed, once per model, as a
user's first run does. The variants' order rotates each round so load drift hits all alike;
figures are medians over rounds, RSS the largest.

    .venv/bin/python -m benchmarks.backends --rounds 3 --images 200 --json backends.json
    .venv/bin/python -m benchmarks.backends --quick      # clipsearch-tiny, 1 round, 16 generated JPEGs

Random-init ViT-B weights come from the peers' offline Hugging Face cache
(`../shared/peers/setup.sh /tmp/clipsearch-peers`, `--peers`); compute does not depend on weight
values. Photos: the first `--images` of `--photos` (default: the peers' 640x480 to 4000x3000
JPEGs), or generated ones when that folder is missing.
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["clipsearch-tiny", "ViT-B-32/laion2b_s34b_b79k", "ViT-B-32-256/datacomp_s34b_b86k"]
VARIANTS = [("torch", "fp32"), ("torch", "bf16"), ("onnx", "fp32"), ("onnx", "int8"),
            ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "fp16")]
CPU_FLAGS = re.compile(r"^(avx512\w*|amx\w*|\w*vnni\w*|\w*bf16\w*|avx2|fma|f16c)$")
BUSY = re.compile(r"encoder busy (\d+(?:\.\d+)?)%")
RUN_S = re.compile(r"indexed \d+ files .*? in (\d+(?:\.\d+)?) s \(scan")


# ---- machine -----------------------------------------------------------------------------------
def cpu_info() -> dict[str, Any]:
    """The CPU's model name and its vector/matrix flags (what decides bf16/int8 speed)."""
    name, flags = "unknown", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = {f for f in value.split() if CPU_FLAGS.match(f)}
    except OSError:
        pass
    return {"model": name, "flags": sorted(flags), "cores": cores()}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def has_bf16(cpu: dict[str, Any]) -> bool:
    return any(f in cpu["flags"] for f in ("avx512_bf16", "amx_bf16"))


def variants(cpu: dict[str, Any]) -> list[tuple[str, str]]:
    """The variants this machine can run: torch always, the runtimes when installed."""
    from clipsearch.backends import runtime

    out = []
    for b, p in VARIANTS:
        if b == "torch":
            if p == "fp32" or has_bf16(cpu):
                out.append((b, p))
        elif runtime.installed(b) and p in runtime.PRECISIONS[b]:
            out.append((b, p))
    return out


# ---- children (each variant in its own process) -------------------------------------------------
def run_child(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> dict[str, Any]:
    """Run `cmd`; its output, wall time and own peak RSS (`ru_maxrss` of this one child)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert p.stdout is not None
    out = p.stdout.read().decode(errors="replace")  # read before waiting: a full pipe would block it
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out[-2000:]}")
    return {"out": out, "wall": wall, "rss_mb": round(usage.ru_maxrss / 1024)}


def last_json(out: str) -> dict[str, Any]:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def child_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.backends", *args]


def prepare(model: str, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """(child) Export the model and probe every exported variant, untimed; what each request gets."""
    from clipsearch.backends import agreement, cache, load_encoder
    from clipsearch.model_registry import resolve

    spec = resolve(model)
    got: dict[str, Any] = {}
    for b, p in pairs:
        if b == "torch":
            continue
        record = agreement.writer_record(load_encoder(spec, "cpu", b, p))
        if record["backend"] != b:  # the probe refused it: what the manifest says, not timed
            found = cache.load(spec.model_id())
            v = (found.variant(b, p) if found else None) or {}
            record = {"backend": b, "precision": p, "refused": v.get("reason") or "fell back to torch",
                      **{k: round(v[k], 6) for k in ("image_min_cos", "text_min_cos") if k in v}}
        got[f"{b}/{p}"] = record
    return got


def _probe_pixels(enc: Any, batch: int, seed: int = 11) -> list[Any]:
    """`batch` preprocessed inputs from decoded probe pictures (another seed than the export's)."""
    from clipsearch.backends import export

    made = [enc.preprocess(im) for im in export.probe_images(seed=seed)]
    return [made[i % len(made)] for i in range(batch)]


def encode_only(model: str, backend: str, precision: str, batch: int, batches: int) -> dict[str, Any]:
    """(child) Load one variant and time `batches` batches after one warm-up; images/s, agreement."""
    from clipsearch.backends import agreement, load_encoder
    from clipsearch.model_registry import resolve

    spec = resolve(model)
    t0 = time.perf_counter()
    enc = load_encoder(spec, "cpu", backend, "fp32" if backend == "torch" else precision, batch_size=batch)
    loaded = time.perf_counter() - t0
    items = _probe_pixels(enc, batch)
    run: Any = enc.encode_batch
    record = agreement.writer_record(enc)
    if backend == "torch":
        import torch

        torch.set_num_threads(cores())
        if precision == "bf16":
            from clipsearch.backends.export import min_cosine
            from clipsearch.encoders import Encoder

            assert isinstance(enc, Encoder)
            net = enc.model

            def run(xs: list[Any]) -> Any:
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                    return net.encode_image(torch.stack(list(xs))).float().numpy()

            record = {"backend": "torch", "precision": "bf16",
                      "image_min_cos": round(min_cosine(run(items), enc.encode_batch(items)), 6)}
    run(items)  # warm-up: first-call allocations, kernel selection, OpenVINO's lazy compile
    times = []
    for _ in range(batches):
        t = time.perf_counter()
        run(items)
        times.append(time.perf_counter() - t)
    return {"images_per_s": batch / statistics.median(times), "batch_s": [round(t, 3) for t in times],
            "load_s": round(loaded, 2), "got": [record["backend"], record["precision"]], "agreement": record,
            "threads": cores()}


# ---- parent ------------------------------------------------------------------------------------
def photo_folder(source: Path | None, n: int, work: Path) -> tuple[Path, str]:
    """A folder of `n` JPEGs: hard links to (or copies of) the first `n` of `source`, else generated."""
    folder = work / "photos"
    folder.mkdir()
    found = sorted(source.glob("*.jpg"))[:n] if source and source.is_dir() else []
    if len(found) >= n:
        for f in found:
            try:
                os.link(f, folder / f.name)
            except OSError:
                shutil.copy2(f, folder / f.name)
        return folder, f"the first {n} JPEGs of {source}"
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((640, 480), Image.Resampling.BILINEAR)
        im.save(folder / f"g{i:04d}.jpg", quality=85)
    return folder, f"{n} generated 640x480 JPEGs"


def clipsearch_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("clipsearch")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "clipsearch.cli"]


def index_once(model: str, backend: str, precision: str, photos: Path, work: Path, n: int,
               env: dict[str, str]) -> dict[str, Any]:
    db = work / "db"
    shutil.rmtree(db, ignore_errors=True)
    r = run_child([*clipsearch_cmd(), "index", str(photos), "--db", str(db), "--model", model,
                   "--device", "cpu", "--backend", backend, "--precision", precision, "-v"], env)
    shutil.rmtree(db, ignore_errors=True)
    busy, run_s = BUSY.findall(r["out"]), RUN_S.findall(r["out"])
    fell_back = "using torch instead" in r["out"]
    return {"images_per_s": n / r["wall"], "wall_s": round(r["wall"], 2), "rss_mb": r["rss_mb"],
            "in_run_images_per_s": n / float(run_s[-1]) if run_s and float(run_s[-1]) > 0 else None,
            "encoder_busy": float(busy[-1]) if busy else None, "fell_back": fell_back}


def summarise(rounds: list[dict[str, dict[str, Any]]], key: str) -> dict[str, Any]:
    enc = [r[key]["encode"] for r in rounds if key in r]
    idx = [r[key]["index"] for r in rounds if key in r and r[key].get("index")]
    busy = [i["encoder_busy"] for i in idx if i["encoder_busy"] is not None]
    out: dict[str, Any] = {
        "encode_images_per_s": round(statistics.median(e["images_per_s"] for e in enc), 2),
        "encode_runs": [round(e["images_per_s"], 2) for e in enc],
        "got": enc[-1]["got"], "agreement": enc[-1]["agreement"]}
    if idx:
        out.update(index_images_per_s=round(statistics.median(i["images_per_s"] for i in idx), 2),
                   index_runs=[round(i["images_per_s"], 2) for i in idx],
                   index_wall_s=round(statistics.median(i["wall_s"] for i in idx), 1),
                   index_in_run_images_per_s=round(statistics.median(v), 2) if (
                       v := [i["in_run_images_per_s"] for i in idx if i["in_run_images_per_s"]]) else None,
                   index_rss_mb=max(i["rss_mb"] for i in idx),
                   encoder_busy_pct=statistics.median(busy) if busy else None,
                   index_fell_back=any(i["fell_back"] for i in idx))
    return out


def table(result: dict[str, Any]) -> str:
    rows = ["| model | backend | precision | encoder images/s | `index` images/s | in-run images/s "
            "| `index` wall s "
            "| `index` peak RSS MB | encoder busy | min cos image | min cos text |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model, per in result["models"].items():
        for key, s in per.items():
            b, p = key.split("/")
            if "refused" in s:
                r = s["refused"]
                worst = " | ".join(f"{r[k]:.5f}" if k in r else "" for k in ("image_min_cos", "text_min_cos"))
                rows.append(f"| {model} | {b} | {p} | refused by its probe: {r['refused']} "
                            f"| | | | | | {worst} |")
                continue
            a = s["agreement"]
            got = "/".join(s["got"])
            note = "" if got == key or (b == "torch" and p == "bf16") else f" (got {got})"
            if s.get("index_fell_back"):
                note += " (index fell back to torch)"
            inrun = s.get("index_in_run_images_per_s")
            idx = ("n/a", "", "", "", "") if "index_images_per_s" not in s else (
                f"{s['index_images_per_s']:.1f}", "" if inrun is None else f"{inrun:.1f}",
                f"{s['index_wall_s']:.1f}", str(s["index_rss_mb"]),
                "" if s["encoder_busy_pct"] is None else f"{s['encoder_busy_pct']:.0f}%")
            cos = [f"{a[k]:.5f}" if k in a else ("1 (reference)" if b == "torch" and p == "fp32" else "")
                   for k in ("image_min_cos", "text_min_cos")]
            rows.append(f"| {model} | {b}{note} | {p} | {s['encode_images_per_s']:.1f} | {' | '.join(idx)} "
                        f"| {' | '.join(cos)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--variants", nargs="+", help="backend/precision pairs (default: all this machine runs)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=200, help="JPEGs in the `index` folder")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=3, help="timed encoder batches per run (median)")
    ap.add_argument("--photos", type=Path, help="JPEG folder (default: the peers' photos, else generated)")
    ap.add_argument("--peers", type=Path, default=Path(tempfile.gettempdir()) / "clipsearch-peers",
                    help="the peers' setup (its offline HF cache holds the random-init ViT-B weights)")
    ap.add_argument("--no-index", action="store_true", help="encoder-only figures")
    ap.add_argument("--quick", action="store_true", help="development: clipsearch-tiny, 1 round, 16 "
                    "generated JPEGs, batch 8")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--table", type=Path, metavar="JSON", help="print the table of an earlier run's --json")
    ap.add_argument("--_prepare", nargs=2, metavar=("MODEL", "PAIRS"), help=argparse.SUPPRESS)
    ap.add_argument("--_encode", nargs=5, metavar=("MODEL", "B", "P", "BATCH", "N"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._prepare:
        pairs = [(x.split("/")[0], x.split("/")[1]) for x in a._prepare[1].split(",")]
        print(json.dumps(prepare(a._prepare[0], pairs)))
        return 0
    if a._encode:
        m, b, p, batch, n = a._encode
        print(json.dumps(encode_only(m, b, p, int(batch), int(n))))
        return 0
    if a.table:
        done = json.loads(a.table.read_text())
        print(f"{done['date_utc']} UTC; CPU: {done['cpu']['model']}; rounds: {done.get('rounds_done')}\n")
        print(table(done))
        return 0
    if a.quick:
        a.models, a.rounds, a.images, a.batch = ["clipsearch-tiny"], 1, 16, 8
        a.photos = a.photos or Path("/nonexistent")

    cpu = cpu_info()
    pairs = [(v.split("/")[0], v.split("/")[1]) for v in a.variants] if a.variants else variants(cpu)
    env = dict(os.environ)
    if (a.peers / "hf").is_dir():
        env.update(HF_HOME=str(a.peers / "hf"), HF_HUB_OFFLINE="1")
    env.setdefault("PYTHONPATH", str(ROOT))
    work = Path(tempfile.mkdtemp(prefix="backends-bench-"))
    photos, photo_note = photo_folder(a.photos if a.photos else a.peers / "photos", a.images, work)
    result: dict[str, Any] = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "cpu": cpu,
                              "load_before": load(), "photos": photo_note, "batch": a.batch,
                              "timed_batches": a.batches, "rounds": a.rounds, "models": {}}
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores; flags: {' '.join(cpu['flags'])}", flush=True)
    print(f"load before: {result['load_before']}", flush=True)
    try:
        prepared = {}
        for model in a.models:  # untimed: the export and every probe, once per model
            t0 = time.perf_counter()
            r = run_child(child_cmd("--_prepare", model, ",".join("/".join(x) for x in pairs)), env, ROOT)
            prepared[model] = last_json(r["out"])
            print(f"prepared {model} in {time.perf_counter() - t0:.0f} s: {prepared[model]}", flush=True)
        result["prepared"] = prepared
        jobs = [(m, b, p) for m in a.models for b, p in pairs
                if not prepared[m].get(f"{b}/{p}", {}).get("refused")]
        rounds: list[dict[str, dict[str, Any]]] = []
        for r_i in range(a.rounds):
            shift = (r_i * len(jobs) // max(1, a.rounds)) % len(jobs)  # each round starts elsewhere
            order = jobs[shift:] + jobs[:shift]
            got: dict[str, dict[str, Any]] = {}
            for m, b, p in order:
                enc = last_json(run_child(child_cmd("--_encode", m, b, p, str(a.batch), str(a.batches)),
                                          env, ROOT)["out"])
                row: dict[str, Any] = {"encode": enc}
                if not a.no_index and not (b == "torch" and p == "bf16"):
                    row["index"] = index_once(m, b, p, photos, work, a.images, env)
                got[f"{m}|{b}/{p}"] = row
                ix = row.get("index")
                print(f"round {r_i + 1} {m} {b}/{p}: encoder {enc['images_per_s']:.1f} images/s"
                      + (f"; index {ix['images_per_s']:.1f} images/s, {ix['wall_s']:.1f} s, "
                         f"{ix['rss_mb']} MB" if ix else ""), flush=True)
            rounds.append(got)
            for m in a.models:  # after every round, so a run stopped early keeps what it measured
                result["models"][m] = {f"{b}/{p}": summarise(rounds, f"{m}|{b}/{p}")
                                       if (m, b, p) in jobs else {"refused": prepared[m][f"{b}/{p}"]}
                                       for b, p in pairs}
            result["raw_rounds"] = rounds
            result["rounds_done"] = len(rounds)
            if a.json:
                a.json.write_text(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_after"] = load()
    print(f"load after: {result['load_after']}\n")
    print(f"CPU: {cpu['model']} ({cpu['cores']} cores; {' '.join(cpu['flags'])}); photos: {photo_note}; "
          f"batch {a.batch}, median of {a.batches} timed batches; {a.rounds} round(s)\n")
    print(table(result))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
