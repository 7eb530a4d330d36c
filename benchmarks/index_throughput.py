"""Indexing throughput: the full `index` path vs the encoder alone, and the unchanged re-run.

1. Writes N photo-like JPEGs (mixed sizes up to 12 MP: smooth colour fields, gradients and
   grain, so they compress like photos) under --dir, once (reused while the files exist).
2. Saves ViT-B-32 at random init as a local checkpoint (same compute as trained weights).
3. Encoder only: `encoder.encode_pixels` on preloaded, preprocessed batches of --batch-size,
   N images in all; measured before and after step 4, the mean is used.
4. Full path: `Collection.add` (what `clipsearch index` runs: scan, change detection, decode +
   preprocess in threads, batched encode, LanceDB commits, ANN/transform refresh) into a new
   collection. Ratio = full images/s ÷ encoder-only images/s (target ≥ 0.85 on CPU). The
   collection's one-time caption embedding (for its transforms) is done and timed beforehand.
5. Unchanged re-run: 10,000 tiny JPEGs are registered in a collection exactly as an earlier
   run would have left them (same path, mtime, size, content hash; random vectors, so the
   setup needs no 10,000 encodes), then `Collection.add` runs over them again; its
   `IndexReport.summary()` gives seconds per 1,000 files for scan + change detection.

    .venv/bin/python -m benchmarks.index_throughput --images 200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# (width, height, share): 12 MP phone/camera shots in both orientations, 8 MP, 2 MP, screenshots
SIZES = [(4000, 3000, 0.30), (3000, 4000, 0.15), (3264, 2448, 0.20), (1920, 1080, 0.15),
         (1600, 1200, 0.10), (1080, 1920, 0.10)]


def photo(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A photo-like RGB image: smooth random colour field + gradient + fine grain."""
    low = rng.uniform(0, 255, (rng.integers(4, 12), rng.integers(4, 12), 3)).astype(np.uint8)
    im = Image.fromarray(low).resize((w, h), Image.BICUBIC)
    a = np.asarray(im, dtype=np.int16)
    a += np.linspace(-30, 30, w, dtype=np.int16)[None, :, None]
    tile = rng.normal(0, 4, (256, 256, 1)).astype(np.int16)
    a += np.tile(tile, (h // 256 + 1, w // 256 + 1, 3))[:h, :w]
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def make_photos(folder: Path, n: int, seed: int = 0, workers: int = 1) -> list[Path]:
    """n JPEGs at quality 90 (written once; existing files with the same names are reused).

    workers > 1 renders in threads with one generator per image (other pixels than the
    sequential default, same size mix and statistics)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shares = np.array([s for _, _, s in SIZES])
    picks = rng.choice(len(SIZES), size=n, p=shares / shares.sum())

    def write(i: int, k: int, gen: np.random.Generator) -> Path:
        w, h, _ = SIZES[k]
        p = folder / f"photo_{i:05d}_{w}x{h}.jpg"
        if not p.exists():
            tmp = p.with_suffix(f".{i}.tmp")
            photo(gen, w, h).save(tmp, "JPEG", quality=90)
            os.replace(tmp, p)
        return p

    if workers <= 1:
        return [write(i, k, rng) for i, k in enumerate(picks)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda a: write(a[0], a[1], np.random.default_rng([seed, a[0]])),
                             enumerate(picks)))


def make_tiny(folder: Path, n: int) -> list[Path]:
    """n small JPEGs (64x48), for the unchanged re-run."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        p = folder / f"{i // 1000:02d}" / f"tiny_{i:05d}.jpg"
        if not p.exists():
            p.parent.mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(p, quality=80)
        paths.append(p)
    return paths


def random_checkpoint(model: str, path: Path) -> Path:
    """ViT weights at random init, saved as a plain state dict (no download needed)."""
    if not path.exists():
        import open_clip

        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(open_clip.create_model(model).state_dict(), path)
    return path


def encoder_only(encoder, batch: torch.Tensor, n: int) -> float:
    """Images/s of encode_pixels on a preloaded batch, repeated to cover n images."""
    encoder.encode_pixels(batch)  # warm-up
    done, t = 0, time.perf_counter()
    while done < n:
        m = min(len(batch), n - done)
        encoder.encode_pixels(batch[:m])
        done += m
    return n / (time.perf_counter() - t)


def seed_unchanged(col, folder: Path) -> int:
    """Register every file under `folder` as an earlier indexing run would have (one commit per 1k)."""
    from clipsearch.indexers.scanner import Found, scan

    from clipsearch.pipeline import content_hash
    from clipsearch.records import Record
    from clipsearch.store import SourceRows

    rng = np.random.default_rng(2)
    items, total = [], 0
    for e in scan([os.fsencode(folder)]):
        if not isinstance(e, Found):
            continue
        v = rng.standard_normal(col.store.dim).astype(np.float32)
        items.append(SourceRows(e.path, e.mtime, e.size, content_hash(e.path, e.size),
                                [Record(kind="image", vector=v / np.linalg.norm(v))]))
        if len(items) == 1000:
            col.store.replace_sources(items)
            total, items = total + len(items), []
    col.store.replace_sources(items)
    col.refresh()
    return total + len(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200, help="photos for the throughput run")
    ap.add_argument("--unchanged", type=int, default=10_000, help="tiny files for the re-run (0: skip)")
    ap.add_argument("--dir", default="/tmp/clipsearch-bench", help="where photos, checkpoint, dbs go")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--checkpoint", help="state dict file (default: random init saved under --dir)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="decode threads (default: the pipeline's)")
    ap.add_argument("--torch-preprocess", action="store_true",
                    help="use open_clip's preprocess as is (ToTensor/Normalize in torch), as before "
                         "encoders.FastPreprocess, to compare")
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args()

    from clipsearch.collection import Collection

    root = Path(a.dir)
    out: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
                 "torch_preprocess": a.torch_preprocess,
                 "torch_threads": torch.get_num_threads(), "load_avg_start": os.getloadavg()}
    t = time.perf_counter()
    photos = make_photos(root / f"photos-{a.images}", a.images)
    mpix = sum(Image.open(p).size[0] * Image.open(p).size[1] for p in photos) / 1e6
    out["photos"] = {"n": len(photos), "megapixels_mean": round(mpix / len(photos), 1),
                     "mbytes_mean": round(sum(p.stat().st_size for p in photos) / len(photos) / 1e6, 2),
                     "prepare_s": round(time.perf_counter() - t, 1)}
    print(json.dumps(out), flush=True)
    ckpt = Path(a.checkpoint) if a.checkpoint else random_checkpoint(a.model, root / f"{a.model}-random.pt")

    work = Path(tempfile.mkdtemp(prefix="db-", dir=root))
    try:
        col = Collection.create(work / "photos", model=a.model, checkpoint=str(ckpt), device="cpu")
        enc = col.encoder
        if a.torch_preprocess:  # the pre-fix behaviour, for comparison
            enc.preprocess = getattr(enc.preprocess, "preprocess", enc.preprocess)
        # One-time per collection (cached in it): the built-in captions the transforms are fitted
        # with. Paid by the first add only, so timed apart from the throughput runs.
        cached = root / f"captions-{hashlib.sha1(col.meta['model_id'].encode()).hexdigest()[:16]}.npy"
        if cached.exists():  # same model as an earlier run: the collection would compute the same
            shutil.copy(cached, col.path / "builtin_text_vectors.npy")
        t = time.perf_counter()
        col.maintainer.builtin_text_vectors()
        out["first_add_caption_embedding_s"] = round(time.perf_counter() - t, 1)
        out["caption_vectors_reused"] = cached.exists()
        shutil.copy(col.path / "builtin_text_vectors.npy", cached)
        print(f"one-time caption embedding: {out['first_add_caption_embedding_s']} s"
              + (" (reused from an earlier run)" if out["caption_vectors_reused"] else ""), flush=True)
        batch = torch.stack([enc.preprocess(Image.open(p).convert("RGB"))
                             for p in (photos * a.batch_size)[:a.batch_size]])
        before = encoder_only(enc, batch, len(photos))
        print(f"encoder only: {before:.2f} images/s", flush=True)

        t = time.perf_counter()
        report = col.add([photos[0].parent], batch_size=a.batch_size, workers=a.workers)
        full_s = time.perf_counter() - t
        full = report.indexed / full_s
        print(report.summary(), flush=True)
        after = encoder_only(enc, batch, len(photos))
        enc_ips = (before + after) / 2
        out["throughput"] = {
            "batch_size": a.batch_size, "workers": a.workers, "indexed": report.indexed,
            "skipped": len(report.skipped), "full_add_s": round(full_s, 1),
            "pipeline_s": round(report.seconds, 1),
            "full_images_per_s": round(full, 2),
            "pipeline_images_per_s": round(report.indexed / report.seconds, 2),
            "encoder_only_images_per_s": [round(before, 2), round(after, 2)],
            "ratio": round(full / enc_ips, 3),
            "ratio_pipeline_only": round(report.indexed / report.seconds / enc_ips, 3),
            "load_avg": os.getloadavg()}
        print(json.dumps(out["throughput"]), flush=True)

        if a.unchanged:
            tiny = make_tiny(root / f"tiny-{a.unchanged}", a.unchanged)
            col2 = Collection.create(work / "tiny", model=a.model, checkpoint=str(ckpt), device="cpu")
            shutil.copy(col.path / "builtin_text_vectors.npy", col2.path)  # same model: reuse the cache
            seeded = seed_unchanged(col2, tiny[0].parent.parent)
            t = time.perf_counter()
            rerun = col2.add([tiny[0].parent.parent])
            wall = time.perf_counter() - t
            print(rerun.summary(), flush=True)
            out["unchanged"] = {"files": seeded, "unchanged": rerun.unchanged, "indexed": rerun.indexed,
                                "scan_s": round(rerun.scan_seconds, 3),
                                "s_per_1000_files": round(1000 * rerun.scan_seconds / max(rerun.seen, 1), 3),
                                "add_wall_s": round(wall, 2), "summary": rerun.summary(),
                                "load_avg": os.getloadavg()}
            print(json.dumps(out["unchanged"]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
