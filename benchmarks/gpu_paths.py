"""The GPU paths, measured on a CUDA machine: encode, JPEG decode, FAISS.

1. Encode: `Encoder.encode_pixels` images/s on CUDA (fp16 autocast) for ViT-B-32 and ViT-L-14 at
   random init (same compute as trained weights); text embeddings/s; and clipsearch-tiny's
   CPU vs CUDA embeddings of the same images and captions (min cosine: the CUDA path is right).
2. Decode: the indexing pipeline's image loop (`pipeline._run_images`, decode threads + batched
   encode, rows counted instead of written) on generated photos up to 12 MP, with JPEGs decoded by
   PIL in threads (`decode=cpu`) or by nvJPEG on the GPU (`decode=gpu`), at several thread counts;
   decode+preprocess alone for both; and how close the two paths' embeddings are.
3. FAISS: whether the product's shards move to the GPU (`ann.to_gpu`), and flat search latency on
   GPU vs CPU at 1M (and more) CLIP-like 512-d vectors, float32 and float16.

    python -m benchmarks.gpu_paths --out gpu.json            # on a machine with a CUDA GPU
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def env() -> dict:
    import faiss

    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "faiss": faiss.__version__,
           "faiss_gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
           "cpu_cores": os.cpu_count()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


# ---- 1. encode ----------------------------------------------------------------------------------
def encode(root: Path) -> dict:
    from benchmarks.index_throughput import encoder_only, random_checkpoint
    from clipsearch.encoders import Encoder
    from clipsearch.tiny.synth.shapes import COLORS, SHAPES, ShapeSpec, render_shape

    out = {}
    for arch in ("ViT-B-32", "ViT-L-14"):
        enc = Encoder.load(arch, checkpoint=str(random_checkpoint(arch, root / f"{arch}.pt")), device="cuda")
        for bs in (64, 256):
            batch = torch.randn(bs, 3, enc.image_size, enc.image_size)
            out[f"{arch}_images_per_s_b{bs}"] = round(encoder_only(enc, batch, 20 * bs), 1)
            pinned = batch.cuda()
            out[f"{arch}_images_per_s_b{bs}_on_gpu"] = round(encoder_only(enc, pinned, 20 * bs), 1)
        texts = [f"a photo of a {c} {s} number {i}" for i in range(40) for c in COLORS for s in SHAPES]
        enc.encode_texts(texts[:64])
        _sync()
        t = time.perf_counter()
        enc.encode_texts(texts)
        _sync()
        out[f"{arch}_texts_per_s"] = round(len(texts) / (time.perf_counter() - t), 1)
        del enc
        torch.cuda.empty_cache()
    rng = np.random.default_rng(0)
    ims = [render_shape(ShapeSpec(s, c), rng, size=160) for s in SHAPES for c in COLORS]
    caps = [f"a {c} {s}" for s in SHAPES for c in COLORS]
    cpu, gpu = (Encoder.load("clipsearch-tiny", device=d) for d in ("cpu", "cuda"))
    out["tiny_cpu_vs_cuda_image_min_cos"] = round(float((cpu.encode_images(ims) * gpu.encode_images(ims))
                                                        .sum(1).min()), 5)
    out["tiny_cpu_vs_cuda_text_min_cos"] = round(float((cpu.encode_texts(caps) * gpu.encode_texts(caps))
                                                       .sum(1).min()), 5)
    # retrieval on CUDA: each caption's top image is its own class (48 classes, one image each)
    top = (gpu.encode_texts(caps) @ gpu.encode_images(ims).T).argmax(1)
    out["tiny_cuda_caption_top1"] = round(float(np.mean(top == np.arange(len(caps)))), 3)
    return out


# ---- 2. decode ----------------------------------------------------------------------------------
class _Count:
    """Committer stand-in: counts rows instead of writing them (no LanceDB in this measurement)."""

    def __init__(self) -> None:
        self.rows = 0

    def add(self, item) -> None:
        self.rows += len(item.records)


def pipeline_rate(paths: list[Path], encoder, decode: str, workers: int, batch: int) -> float:
    from clipsearch.indexers.base import IndexContext
    from clipsearch.indexers.image import ImageIndexer
    from tqdm import tqdm

    from clipsearch import pipeline
    from clipsearch.gpu_decode import JpegDecoder

    gpu = JpegDecoder.for_encoder(encoder, decode)
    ix = ImageIndexer()
    jobs = [pipeline.Job(os.fsencode(p), 0.0, p.stat().st_size, ix, content_hash="x") for p in paths]
    ctx = IndexContext(thumb_dir=Path(tempfile.mkdtemp()))
    count, report = _Count(), pipeline.IndexReport()
    t = time.perf_counter()
    pipeline._run_images(jobs, encoder, ctx, count, report, tqdm(disable=True), batch, workers, gpu)
    _sync()
    dt = time.perf_counter() - t
    assert count.rows == len(paths) and not report.skipped, report.skipped
    return len(paths) / dt


def decode_only(paths: list[Path], encoder, decode: str, workers: int, batch: int = 64) -> float:
    from clipsearch.indexers.image import load_image

    from clipsearch.gpu_decode import JpegDecoder, read_jpeg

    if decode == "cpu":
        def one(p):
            return encoder.preprocess(load_image(p, 10**9, encoder.image_size))
        t = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, paths))
        return len(paths) / (time.perf_counter() - t)
    dec = JpegDecoder.for_encoder(encoder, "gpu")
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        raws = pool.map(lambda p: read_jpeg(p, 10**9), paths)
        buf = []
        for r in raws:
            buf.append(r)
            if len(buf) == batch:
                dec(buf)
                buf = []
        dec(buf)
    _sync()
    return len(paths) / (time.perf_counter() - t)


def decode(root: Path, n: int) -> dict:
    from benchmarks.index_throughput import make_photos, random_checkpoint
    from clipsearch.encoders import Encoder
    from clipsearch.gpu_decode import JpegDecoder

    t = time.perf_counter()
    paths = make_photos(root / "photos", n, workers=os.cpu_count() or 1)
    out = {"photos": n, "photos_megapixels_mean": round(float(np.mean(
        [np.prod([int(v) for v in p.stem.split("_")[-1].split("x")]) / 1e6 for p in paths])), 2),
        "photos_write_s": round(time.perf_counter() - t, 1)}
    enc = Encoder.load("ViT-B-32", checkpoint=str(random_checkpoint("ViT-B-32", root / "ViT-B-32.pt")),
                       device="cuda")
    out["auto_decodes_on_gpu"] = JpegDecoder.for_encoder(enc, "auto") is not None
    decode_only(paths[:32], enc, "cpu", 8)  # page cache + lazy imports
    decode_only(paths[:32], enc, "gpu", 8)
    for workers in (16, 4, 2):
        for mode in ("cpu", "gpu"):
            out[f"decode_only_{mode}_w{workers}_per_s"] = round(decode_only(paths, enc, mode, workers), 1)
            out[f"pipeline_{mode}_w{workers}_per_s"] = round(pipeline_rate(paths, enc, mode, workers, 64), 1)
    del enc
    out.update(paths_agree(root))
    return out


def paths_agree(root: Path) -> dict:
    """clipsearch-tiny on 48 rendered shapes saved as 600 px JPEGs, decoded by PIL and by nvJPEG:
    embedding cosine between the paths, and caption->image top-1 through each path."""
    from clipsearch.indexers.image import load_image

    from clipsearch.encoders import Encoder
    from clipsearch.gpu_decode import JpegDecoder, read_jpeg
    from clipsearch.tiny.synth.shapes import COLORS, SHAPES, ShapeSpec, render_shape

    rng = np.random.default_rng(3)
    folder = root / "shapes"
    folder.mkdir(exist_ok=True)
    paths, caps = [], []
    for s in SHAPES:
        for c in COLORS:
            p = folder / f"{c}_{s}.jpg"
            render_shape(ShapeSpec(s, c), rng, size=600).save(p, quality=90)
            paths.append(p)
            caps.append(f"a {c} {s}")
    enc = Encoder.load("clipsearch-tiny", device="cuda")
    dec = JpegDecoder.for_encoder(enc, "gpu")
    a = enc.encode_pixels(torch.stack(dec([read_jpeg(p, 10**9) for p in paths])))
    b = enc.encode_pixels(torch.stack([enc.preprocess(load_image(p, 10**9, enc.image_size)) for p in paths]))
    t = enc.encode_texts(caps)
    cos = (a * b).sum(1)
    truth = np.arange(len(caps))
    return {"tiny_pil_vs_nvjpeg_cos_min": round(float(cos.min()), 4),
            "tiny_pil_vs_nvjpeg_cos_mean": round(float(cos.mean()), 4),
            "tiny_caption_top1_nvjpeg": round(float(np.mean((t @ a.T).argmax(1) == truth)), 3),
            "tiny_caption_top1_pil": round(float(np.mean((t @ b.T).argmax(1) == truth)), 3)}


# ---- 3. FAISS -----------------------------------------------------------------------------------
def _latency(search, q: np.ndarray, batch: int = 1, reps: int = 200, warm: bool = True) -> float:
    """Median ms of `search(queries)` over `reps` calls on consecutive slices of `batch` queries."""
    if warm:
        search(q[:batch])
    ts = []
    for i in range(reps):
        s = (i * batch) % (len(q) - batch)
        t = time.perf_counter()
        search(q[s:s + batch])
        ts.append(time.perf_counter() - t)
    return round(1000 * float(np.median(ts)), 3)


def _faiss_search(index, k: int = 10):
    return functools.partial(index.search, k=k)


def torch_exact(x: np.ndarray, q: np.ndarray, truth: np.ndarray) -> dict:
    """Exact search as one float16 matrix product + top-k on the GPU, for comparison."""
    xs = torch.from_numpy(x).to("cuda", torch.float16)
    qs = torch.from_numpy(q).to("cuda", torch.float16)

    def search(qb: torch.Tensor, xs: torch.Tensor = xs) -> np.ndarray:
        return (qb @ xs.T).topk(10, dim=1).indices.cpu().numpy()

    from benchmarks.ann import recall_at

    res = {"recall10": round(recall_at(search(qs[:200]), truth), 4)}
    for batch, tag in ((1, "p50_ms"), (64, "b64_ms")):
        res[tag] = _latency(search, qs, batch=batch, reps=100)
    del search, xs, qs
    torch.cuda.empty_cache()
    return res


def product_gpu_search(x: np.ndarray, q: np.ndarray, truth: np.ndarray, root: Path) -> dict:
    """The product's search path on a CUDA machine: `AnnIndex` with exact float16 shards on the GPU
    (flat FAISS index kept as the saved form), through `AnnIndex.search` (id mapping included)."""
    from benchmarks.ann import recall_at
    from clipsearch import ann

    n = len(x)
    ids = np.array([f"id{i}" for i in range(n)], dtype=object)
    sources = np.array([f"/photos/{i % 100:02d}/{i}.jpg" for i in range(n)], dtype=object)
    t = time.perf_counter()
    idx = ann.AnnIndex.from_vectors(x, ids, np.full(n, "image", dtype=object), sources, version=1,
                                    exact_threshold=10**12)
    res = {"build_s": round(time.perf_counter() - t, 2), "describe": idx.describe()}
    found = [[int(i[2:]) for i, _ in row] for row in idx.search(q[:200], 10)]
    res["recall10"] = round(recall_at(np.array(found), truth), 4)
    for batch, tag in ((1, "p50_ms"), (64, "b64_ms")):
        res[tag] = _latency(functools.partial(idx.search, k=10), q, batch=batch, reps=50, warm=False)
    ts = []
    for i in range(10):
        t = time.perf_counter()
        hits = idx.search(q[i], 10, under="/photos/07")[0]
        ts.append(time.perf_counter() - t)
    assert hits and all(int(h[2:]) % 100 == 7 for h, _ in hits)
    res["under_first_ms"] = round(1000 * ts[0], 1)  # includes sorting the paths once
    res["under_p50_ms"] = round(1000 * float(np.median(ts)), 3)
    t = time.perf_counter()
    idx.save(root / "ann_gpu")
    res["save_s"] = round(time.perf_counter() - t, 2)
    del idx
    torch.cuda.empty_cache()
    t = time.perf_counter()
    loaded = ann.AnnIndex.load(root / "ann_gpu")
    res["load_to_gpu_s"] = round(time.perf_counter() - t, 2)
    res["loaded_same_hits"] = [[i for i, _ in r] for r in loaded.search(q[:20], 10)] == \
        [[f"id{j}" for j in row] for row in found[:20]]
    del loaded
    torch.cuda.empty_cache()
    return res


def faiss_paths(sizes: list[int], root: Path, ivf: bool = True, cpu_timing: bool = True) -> dict:
    import faiss

    from benchmarks.ann import make_distribution, make_queries, recall_at, sample
    from clipsearch import ann

    t = time.perf_counter()
    out: dict = {"faiss_gpus": faiss.get_num_gpus(), "ann_gpu_available": ann.gpu_available(),
                 "gpu_probe_s": round(time.perf_counter() - t, 2)}
    d = make_distribution(512, 2000, seed=0)
    for n in sizes:
        t = time.perf_counter()
        x = sample(d, n, seed=1)
        q = make_queries(d, x, 1000, seed=2)
        out[f"n{n}_generate_s"] = round(time.perf_counter() - t, 1)
        cpu_flat = faiss.IndexFlatIP(512)
        cpu_flat.add(x)
        truth = cpu_flat.search(q[:200], 10)[1]
        if cpu_timing:
            out[f"n{n}_cpu_flat_p50_ms"] = _latency(_faiss_search(cpu_flat), q, reps=20)
            out[f"n{n}_cpu_flat_b64_ms"] = _latency(_faiss_search(cpu_flat), q, batch=64, reps=5)
        moved = ann.to_gpu(cpu_flat)
        out[f"n{n}_to_gpu_flat_type"] = type(moved).__name__
        out.update({f"n{n}_torch_{k}": v for k, v in torch_exact(x, q, truth).items()})
        out.update({f"n{n}_product_gpu_{k}": v for k, v in product_gpu_search(x, q, truth, root).items()})
        if out["ann_gpu_available"]:
            res = faiss.StandardGpuResources()
            for fp16 in (False, True):
                cfg = faiss.GpuIndexFlatConfig()
                cfg.useFloat16 = fp16
                g = faiss.GpuIndexFlatIP(res, 512, cfg)
                t = time.perf_counter()
                g.add(x)
                _sync()
                tag = f"n{n}_gpu_flat_{'fp16' if fp16 else 'fp32'}"
                out[f"{tag}_add_s"] = round(time.perf_counter() - t, 2)
                out[f"{tag}_p50_ms"] = _latency(_faiss_search(g), q)
                out[f"{tag}_b64_ms"] = _latency(_faiss_search(g), q, batch=64, reps=50)
                out[f"{tag}_recall10"] = round(recall_at(g.search(q[:200], 10)[1], truth), 4)
                del g
        del cpu_flat, moved
        if ivf and n == sizes[0]:  # the product's own large-shard index (IVF-PQ fast-scan): does it move?
            m = 200_000
            sub_truth = faiss.IndexFlatIP(512)
            sub_truth.add(x[:m])
            t = time.perf_counter()
            prod = ann.build_faiss(x[:m])
            out[f"n{m}_product_index_build_cpu_s"] = round(time.perf_counter() - t, 1)
            out[f"n{m}_product_index_cpu_p50_ms"] = _latency(_faiss_search(prod), q, reps=50)
            out[f"n{m}_product_index_recall10"] = round(recall_at(prod.search(q[:200], 10)[1],
                                                                   sub_truth.search(q[:200], 10)[1]), 4)
            if out["ann_gpu_available"]:
                out[f"n{m}_product_index_to_gpu_type"] = type(ann.to_gpu(prod)).__name__
        del x
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "clipsearch_gpu_bench")
    ap.add_argument("--photos", type=int, default=300)
    ap.add_argument("--faiss-sizes", type=int, nargs="+", default=[1_000_000, 4_000_000])
    ap.add_argument("--no-ivf", action="store_true", help="skip the CPU IVF build (~2 min on 16 cores)")
    ap.add_argument("--no-cpu-timing", action="store_true", help="skip CPU flat-search timings")
    ap.add_argument("--only", choices=["encode", "decode", "faiss"], nargs="+",
                    default=["encode", "decode", "faiss"])
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark measures the GPU paths")
    a.dir.mkdir(parents=True, exist_ok=True)
    res = {"env": env()}
    print(json.dumps(res["env"]), flush=True)
    for part, fn in (("encode", lambda: encode(a.dir)), ("decode", lambda: decode(a.dir, a.photos)),
                     ("faiss", lambda: faiss_paths(a.faiss_sizes, a.dir, not a.no_ivf, not a.no_cpu_timing))):
        if part in a.only:
            t = time.perf_counter()
            try:
                res[part] = fn()
            except Exception as e:  # record and go on: one failing path must not hide the others
                res[part] = {"error": f"{type(e).__name__}: {e}"}
            res[part]["seconds"] = round(time.perf_counter() - t, 1)
            print(json.dumps({part: res[part]}), flush=True)
            if a.out:
                a.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
