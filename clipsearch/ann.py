"""FAISS accelerator over the LanceDB table: built from it, tagged with its version, never the truth.

Exact (flat inner product) below `exact_threshold` rows, IVF above it: 4-bit PQ fast-scan codes
to shortlist (cheap enough to probe many lists), then exact re-ranking of the
shortlist on float16 copies of the vectors (lossless: the table stores float16). Filters
(kind, folder) are pushed into FAISS as ID selectors so a filtered query still returns k hits
when k exist. Defaults are measured by benchmarks/ann.py (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from clipsearch.store import Store

log = logging.getLogger(__name__)

EXACT_THRESHOLD = 50_000
REFINE_K_FACTOR = 20  # shortlist k·20 by PQ score, re-rank it exactly


def ivf_params(n: int) -> tuple[int, int]:
    """(nlist, nprobe) for n vectors: ~4·sqrt(n) lists, ~4·sqrt(nlist) of them probed.

    From the benchmarks/ann.py sweep (CLIP-like clustered data, 2 loaded cores): 100k → (1264,
    142), recall@10 0.953–0.977 for nprobe 128–252, p50 < 0.5 ms; 1M → (4000, 252), recall@10
    0.961 at nprobe 256, p50 8 ms. The fraction of lists needed falls as n grows, so a fixed
    fraction (nlist/5) probed 3x more than needed at 1M and missed the 10 ms p50 target.
    """
    nlist = int(min(max(4 * np.sqrt(n), 64), 16384))
    return nlist, max(8, int(4 * np.sqrt(nlist)))


def gpu_available() -> bool:
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def build_faiss(vectors: np.ndarray, exact_threshold: int = EXACT_THRESHOLD,
                seed: int = 0) -> faiss.Index:
    """A CPU index over L2-normalised vectors, scored by inner product (= cosine)."""
    n, dim = vectors.shape
    if n < exact_threshold:
        index = faiss.IndexFlatIP(dim)
    else:
        nlist, nprobe = ivf_params(n)
        nlist = max(1, min(nlist, n // 39))  # k-means needs ~39 points per list
        if dim % 4 == 0:
            index = faiss.index_factory(dim, f"IVF{nlist},PQ{dim // 4}x4fs,Refine(SQfp16)",
                                        faiss.METRIC_INNER_PRODUCT)
            index.k_factor = REFINE_K_FACTOR
        else:
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        rng = np.random.default_rng(seed)
        train = vectors[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
        ivf.cp.seed = seed
        index.train(train)
        ivf.nprobe = min(nprobe, nlist)
    if n:
        index.add(vectors)
    return index


def to_gpu(index: faiss.Index) -> faiss.Index:
    """Move an index to all GPUs when faiss-gpu and a GPU are present; otherwise unchanged."""
    if not gpu_available():
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except Exception as e:  # an index type without a GPU implementation stays on the CPU
        log.info("faiss index stays on CPU: %s", e)
        return index


@dataclass
class AnnIndex:
    index: faiss.Index
    ids: np.ndarray  # row position -> LanceDB id (str)
    kinds: np.ndarray  # row position -> kind (str)
    sources: np.ndarray  # row position -> display path (str)
    version: int

    @classmethod
    def build(cls, store: Store, exact_threshold: int = EXACT_THRESHOLD) -> AnnIndex:
        version = store.version
        meta, vecs = store.vectors()
        index = build_faiss(vecs, exact_threshold)
        return cls(index, np.array(meta.column("id").to_pylist(), dtype=object),
                   np.array(meta.column("kind").to_pylist(), dtype=object),
                   np.array(meta.column("source").to_pylist(), dtype=object), version)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    # ---- persistence: a directory per version, switched by an atomic pointer file ------------
    def save(self, ann_dir: str | Path) -> None:
        ann_dir = Path(ann_dir)
        target = ann_dir / f"v{self.version}"
        tmp = ann_dir / f".tmp-v{self.version}-{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        cpu = faiss.index_gpu_to_cpu(self.index) if gpu_available() and "Gpu" in type(self.index).__name__ \
            else self.index
        faiss.write_index(cpu, str(tmp / "index.faiss"))
        np.savez(tmp / "meta.npz", ids=self.ids.astype(str), kinds=self.kinds.astype(str),
                 sources=self.sources.astype(str))
        if target.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, target)
        pointer = ann_dir / "current.json"
        ptmp = ann_dir / f".current-{os.getpid()}.json"
        ptmp.write_text(json.dumps({"version": self.version}))
        os.replace(ptmp, pointer)
        for old in ann_dir.glob("v*"):
            if old.name != target.name:
                shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, ann_dir: str | Path) -> AnnIndex | None:
        ann_dir = Path(ann_dir)
        try:
            version = json.loads((ann_dir / "current.json").read_text())["version"]
            d = ann_dir / f"v{version}"
            index = faiss.read_index(str(d / "index.faiss"))
            meta = np.load(d / "meta.npz")
            return cls(index, meta["ids"].astype(object), meta["kinds"].astype(object),
                       meta["sources"].astype(object), int(version))
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            log.debug("no usable ANN index in %s: %s", ann_dir, e)
            return None

    # ---- search -------------------------------------------------------------------------------
    def mask(self, kinds: tuple[str, ...] | None = None, under: str | None = None) -> np.ndarray | None:
        m = None
        if kinds:
            m = np.isin(self.kinds, list(kinds))
        if under:
            prefix = under.rstrip(os.sep) + os.sep
            um = np.char.startswith(self.sources.astype(str), prefix)
            m = um if m is None else (m & um)
        return m

    def search(self, queries: np.ndarray, k: int, kinds: tuple[str, ...] | None = None,
               under: str | None = None) -> list[list[tuple[str, float]]]:
        """Top-k (id, cosine) per query row, restricted to `kinds` and folder `under`."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if len(self) == 0 or k <= 0:
            return [[] for _ in range(len(q))]
        m = self.mask(kinds, under)
        params = None
        if m is not None:
            sel_ids = np.flatnonzero(m).astype(np.int64)
            if not len(sel_ids):
                return [[] for _ in range(len(q))]
            sel = faiss.IDSelectorBatch(sel_ids)
            ivf = faiss.try_extract_index_ivf(self.index)
            base = faiss.SearchParametersIVF(sel=sel, nprobe=ivf.nprobe) if ivf is not None \
                else faiss.SearchParameters(sel=sel)
            if isinstance(self.index, faiss.IndexRefine):
                params = faiss.IndexRefineSearchParameters(k_factor=self.index.k_factor,
                                                           base_index_params=base)
            else:
                params = base
            k = min(k, len(sel_ids))
        k = min(k, len(self))
        if params is not None:
            scores, idx = self.index.search(q, k, params=params)
        else:
            scores, idx = self.index.search(q, k)
        out = []
        for srow, irow in zip(scores, idx, strict=True):
            out.append([(self.ids[i], float(s)) for s, i in zip(srow, irow, strict=True) if i >= 0])
        return out
