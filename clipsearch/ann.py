"""FAISS accelerator over the LanceDB table: built from it, tagged with its version, never the truth.

One FAISS index per row kind (image, video_window, doc_page, ...): every query names the kinds it
wants, so a kind filter picks shards instead of testing millions of ids against a selector per
query (a `video_window` selector costs time per query that grows with n; benchmarks/RESULTS.md).
Per shard: exact (flat inner product) below `exact_threshold` rows, IVF above it: 4-bit PQ
fast-scan codes to shortlist (cheap enough to probe many lists), then exact re-ranking of the
shortlist on float16 copies of the vectors (lossless: the table stores float16). Large shards
are built streaming from the table (k-means on a sample, then batches), so the build never
holds all vectors in memory. The folder filter is pushed into FAISS as an ID selector so a
filtered query still returns k hits when k exist. Defaults are measured by benchmarks/ann.py
(benchmarks/RESULTS.md).

A refresh rebuilds only the shards of kinds whose files changed (`kind_fingerprints`); the others
are taken over, and their saved files hard-linked into the new version. On a CUDA machine every
shard that fits is also searched exactly on the GPU (`Shard.place`, `matrix_search`).

Saved form: a folder per version, its `shards.json` manifest written last, naming each shard's
kind, row count, and the size and CRC-32 of its two files, and carrying a checksum of itself;
`current.json` points at the folder. A truncated, garbage, reordered or foreign file fails that
check (`AnnIndex.problem`): readers log one warning and build what they need from the table,
and the next index run saves a fresh index.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pyarrow.compute as pc

from clipsearch.failures import storage_errors
from clipsearch.fsutil import folder_prefix, write_atomic
from clipsearch.leftovers import temp_name
from clipsearch.store import Store, sql_str

log = logging.getLogger(__name__)

MANIFEST = "shards.json"
POINTER = "current.json"
MANIFEST_FORMAT = 2


class DamagedIndex(ValueError):
    """A saved index whose files do not match its manifest (or whose manifest is unusable)."""


def file_check(path: Path) -> dict[str, int]:
    """Size and CRC-32 of a file: enough to notice truncation, garbage or a swapped file."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return {"size": size, "crc32": crc}


def _self_checksum(manifest: dict) -> int:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return zlib.crc32(json.dumps(body, sort_keys=True).encode())


_warned: set[tuple[str, str]] = set()


def _warn_once(ann_dir: Path, problem: str) -> None:
    """One warning per damaged index and process (a server must not log it per query)."""
    if (str(ann_dir), problem) not in _warned:
        _warned.add((str(ann_dir), problem))
        log.warning("%s; searching without it until the next `clipsearch index` rebuilds it", problem)

EXACT_THRESHOLD = 50_000
REFINE_K_FACTOR = 20  # shortlist k·20 by PQ score, re-rank it exactly


MAX_NLIST = 4096
BUILD_BATCH_ROWS = 65_536


def ivf_params(n: int) -> tuple[int, int]:
    """(nlist, nprobe) for n vectors: ~4·sqrt(n) lists up to MAX_NLIST, ~4·sqrt(nlist) probed.

    Chosen from the benchmarks/ann.py sweep on CLIP-like clustered data (figures in
    benchmarks/RESULTS.md): the fraction of lists a query must probe falls as n grows, so a fixed
    fraction (nlist/5) probes far more than needed at 1M rows and misses the latency target.
    Past ~1M the lists stop growing: a CPU build costs ~n·nlist (k-means and assignment), and
    4-bit fast-scan makes scanning the longer lists cheap (benchmarks/moments_scale.py).
    """
    nlist = int(min(max(4 * np.sqrt(n), 64), MAX_NLIST))
    return nlist, max(8, int(4 * np.sqrt(nlist)))


_GPU_PROBE = ("import faiss, numpy as np; x = np.ones((4, 8), 'float32'); "
              "i = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(8)); i.add(x); i.search(x, 1)")


@functools.cache
def gpu_available() -> bool:
    """faiss-gpu is installed, a GPU is visible, and faiss's kernels run on that GPU.

    The PyPI faiss-gpu-cu12 wheels carry no kernels for Hopper (H100, H200): there the first GPU
    operation aborts the whole process (a C++ assertion, not an exception; seen on an H100,
    benchmarks/RESULTS.md). So a child process tries one tiny search first, once per process.
    """
    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        return False
    try:
        probe = subprocess.run([sys.executable, "-c", _GPU_PROBE], capture_output=True, text=True,
                               timeout=300)
        ok, why = probe.returncode == 0, (probe.stderr.strip().splitlines() or ["no output"])[-1]
    except (OSError, subprocess.TimeoutExpired) as e:
        ok, why = False, str(e)
    if not ok:
        log.warning("faiss-gpu cannot run on this GPU (%s); FAISS searches on the CPU. A faiss "
                    "build with kernels for this GPU (e.g. conda's faiss-gpu) enables it.", why[:300])
    return ok


def empty_faiss(n: int, dim: int, exact_threshold: int = EXACT_THRESHOLD) -> faiss.Index:
    """An untrained index for n vectors of `dim`: flat below the threshold, IVF-PQ-fs above."""
    if n < exact_threshold:
        return faiss.IndexFlatIP(dim)
    nlist, nprobe = ivf_params(n)
    nlist = max(1, min(nlist, n // 39))  # k-means needs ~39 points per list
    if dim % 4 == 0:
        index = faiss.index_factory(dim, f"IVF{nlist},PQ{dim // 4}x4fs,Refine(SQfp16)",
                                    faiss.METRIC_INNER_PRODUCT)
        index.k_factor = REFINE_K_FACTOR  # type: ignore[attr-defined]  # an IndexRefine; faiss types it Index
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(index).nprobe = min(nprobe, nlist)
    return index


def training_size(index: faiss.Index, n: int) -> int:
    """How many vectors k-means trains on: 64 per list (0 for a flat index)."""
    ivf = faiss.try_extract_index_ivf(index)
    return 0 if ivf is None else min(n, 64 * ivf.nlist)


def train_faiss(index: faiss.Index, sample: np.ndarray, seed: int = 0) -> None:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed
        index.train(np.ascontiguousarray(sample, dtype=np.float32))


def build_faiss(vectors: np.ndarray, exact_threshold: int = EXACT_THRESHOLD,
                seed: int = 0) -> faiss.Index:
    """A CPU index over L2-normalised in-memory vectors, scored by inner product (= cosine)."""
    n, dim = vectors.shape
    index = empty_faiss(n, dim, exact_threshold)
    m = training_size(index, n)
    if m:
        train_faiss(index, vectors[np.random.default_rng(seed).choice(n, size=m, replace=False)], seed)
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


# What a Linux machine with an NVIDIA driver has (WSL2: /dev/dxg); without any, CUDA cannot be up.
_CUDA_DEVICE_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")


def gpu_search_wanted() -> bool:
    """Exact search on a CUDA GPU with torch, unless CLIPSEARCH_GPU_SEARCH=0 keeps GPU memory free."""
    if os.environ.get("CLIPSEARCH_GPU_SEARCH", "auto").lower() in ("0", "off", "false", "no"):
        return False
    if sys.platform == "linux" and not any(os.path.exists(p) for p in _CUDA_DEVICE_FILES):
        return False  # no NVIDIA driver: no CUDA, and no torch import (seconds) to learn that
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _fits_on_gpu(nbytes: int, share: float = 0.5) -> bool:
    """Whether nbytes fit in `share` of the GPU's free memory (the rest stays for the encoder)."""
    import torch

    free, _ = torch.cuda.mem_get_info()
    if nbytes > share * free:
        log.warning("a %.1f GiB shard exceeds %.0f%% of free GPU memory; it is searched by FAISS",
                    nbytes / 2**30, 100 * share)
        return False
    return True


def index_matrix(index: faiss.Index, device: str, dtype=None, chunk: int = 262_144):
    """The index's vectors as one (n, dim) torch tensor on `device` (float16 by default), rebuilt in
    chunks from the flat or float16-refine codes; None for an index that cannot reconstruct.

    Float16 is lossless here: the table stores float16 vectors."""
    import torch

    dtype = dtype or torch.float16
    n, dim = int(index.ntotal), int(index.d)
    try:
        out = torch.empty((n, dim), dtype=dtype, device=device)
        for i in range(0, n, chunk):
            m = min(chunk, n - i)
            out[i:i + m] = torch.from_numpy(index.reconstruct_n(i, m)).to(device, dtype)
        return out
    except (RuntimeError, MemoryError) as e:  # an IVF without a direct map, or no room on the GPU
        log.info("exact GPU search not used for a %d-row shard: %s", n, e)
        return None


def matrix_search(matrix, q: np.ndarray, k: int, keep: np.ndarray | None = None,
                  max_scores: int = 1 << 28, extra: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products of q against the rows of `matrix` (a torch tensor on any device),
    restricted to row positions `keep`.

    A float16 matrix product shortlists k + `extra` rows; those are re-scored in float32 and
    ordered by score, then row, so scores match the CPU index and equal scores always come out
    in the same order (float16 products alone tie often and reorder between runs at 4M rows).
    Queries go in chunks so the score block stays under `max_scores` entries.
    """
    import torch

    n = int(matrix.shape[0])
    mask = None
    if keep is not None:
        mask = torch.zeros(n, dtype=torch.bool, device=matrix.device)
        mask[torch.from_numpy(keep).to(matrix.device)] = True
    k = min(k, n if keep is None else len(keep))
    if k <= 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    short = min(k + extra, n if keep is None else len(keep))
    step = max(1, max_scores // max(1, n))
    scores, idx = [], []
    with torch.inference_mode():
        for a in range(0, len(q), step):
            q32 = torch.from_numpy(np.ascontiguousarray(q[a:a + step], np.float32)).to(matrix.device)
            s = q32.to(matrix.dtype) @ matrix.T
            if mask is not None:
                s.masked_fill_(~mask, float("-inf"))
            cand = s.topk(short, dim=1).indices.sort(dim=1).values  # by row, for the tie order
            exact = torch.einsum("bcd,bd->bc", matrix[cand].float(), q32)
            order = exact.sort(dim=1, descending=True, stable=True).indices[:, :k]
            scores.append(exact.gather(1, order).cpu().numpy())
            idx.append(cand.gather(1, order).cpu().numpy())
    return np.concatenate(scores).astype(np.float32), np.concatenate(idx).astype(np.int64)


@dataclass
class Shard:
    """The rows of one kind: a FAISS index and, per index position, the row's id and path.

    On a CUDA machine `matrix` holds the same vectors in float16 on the GPU and searches are exact
    matrix products there (figures in benchmarks/RESULTS.md, "GPU paths"): faster than any CPU
    index and with no recall loss, and it works where the PyPI faiss-gpu wheels have no kernels
    (Hopper). The FAISS index stays the saved form and the CPU path.
    """
    index: faiss.Index
    ids: np.ndarray  # index position -> LanceDB id (str)
    sources: np.ndarray  # index position -> display path (str)
    matrix: object | None = None  # torch.Tensor (n, dim) on the GPU, or None
    _by_path: np.ndarray | None = field(default=None, repr=False, compare=False)  # positions by path
    saved: Path | None = field(default=None, repr=False, compare=False)  # its .faiss file, if any
    checks: dict | None = field(default=None, repr=False, compare=False)  # file_check of its saved files

    def positions_under(self, under: str) -> np.ndarray:
        """Positions (ascending) of the rows whose path is inside folder `under`.

        Paths sorted once per shard make a folder one contiguous range, found by two binary
        searches, instead of testing every path on every query.
        """
        if self._by_path is None:
            self._by_path = np.argsort(self.sources, kind="stable")
        prefix = folder_prefix(under)
        key = self.sources.__getitem__
        lo = bisect.bisect_left(self._by_path, prefix, key=key)
        hi = bisect.bisect_left(self._by_path, prefix + "\U0010ffff", lo=lo, key=key)
        return np.sort(self._by_path[lo:hi]).astype(np.int64)

    @classmethod
    def place(cls, index: faiss.Index, ids: np.ndarray, sources: np.ndarray) -> Shard:
        """A shard searched where it is fastest: exact on the GPU (torch), FAISS on the GPU, or CPU."""
        matrix = None
        if gpu_search_wanted() and index.ntotal and _fits_on_gpu(index.ntotal * index.d * 2):
            matrix = index_matrix(index, "cuda")
        return cls(index if matrix is not None else to_gpu(index), ids, sources, matrix)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, q: np.ndarray, k: int, under: str | None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions) of the top k per query row, restricted to folder `under`."""
        params = None
        n = len(self)
        sel_ids = None
        if under:
            sel_ids = self.positions_under(under)
            if not len(sel_ids):
                return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if self.matrix is not None:
            return matrix_search(self.matrix, q, k, sel_ids)
        if sel_ids is not None:
            sel = faiss.IDSelectorBatch(sel_ids)
            ivf = faiss.try_extract_index_ivf(self.index)
            # faiss's SWIG classes take their fields as keywords, which its generated stubs do not say
            base = (faiss.SearchParametersIVF(sel=sel, nprobe=ivf.nprobe)  # type: ignore[call-arg]
                    if ivf is not None else faiss.SearchParameters(sel=sel))  # type: ignore[call-arg]
            if isinstance(self.index, faiss.IndexRefine):
                params = faiss.IndexRefineSearchParameters(k_factor=self.index.k_factor,  # type: ignore[call-arg]
                                                           base_index_params=base)
            else:
                params = base  # type: ignore[assignment]
            n = len(sel_ids)
        k = min(k, n)
        if params is not None:
            return self.index.search(q, k, params=params)
        return self.index.search(q, k)


def _reserve_refine_codes(index: faiss.Index, n: int) -> None:
    """Allocate the float16 refine copies of n vectors once, before adding batches.

    Appending batch by batch grows that buffer by doubling, and each doubling briefly holds
    old and new copies: ~1.5x the final index in memory at the end of a large build. FAISS has
    no reserve(); growing the vector to full size and back keeps its capacity (std::vector).
    """
    if not isinstance(index, faiss.IndexRefine):
        return
    refine = faiss.downcast_index(index.refine_index)
    codes = getattr(refine, "codes", None)
    if codes is not None and refine.ntotal == 0 and hasattr(codes, "resize"):
        codes.resize(n * refine.code_size)  # type: ignore[attr-defined]  # an IndexFlatCodes
        codes.resize(0)


def _build_shard(store: Store, snapshot, kind: str, positions: np.ndarray,
                 exact_threshold: int, batch_rows: int, seed: int = 0) -> Shard:
    """Train on a sample of the kind's rows, then add them batch by batch from the table."""
    n = len(positions)
    index = empty_faiss(n, store.dim, exact_threshold)
    m = training_size(index, n)
    if m:
        sample = np.sort(np.random.default_rng(seed).choice(positions, size=m, replace=False))
        train_faiss(index, store.take_vectors(snapshot, sample), seed)
    _reserve_refine_codes(index, n)
    ids, sources = [], []
    where = f"kind = {sql_str(kind)}"
    for meta, vecs in store.vector_batches(snapshot, ["id", "source"], where, batch_rows):
        index.add(vecs)
        ids.extend(meta.column("id").to_pylist())
        sources.extend(meta.column("source").to_pylist())
    return Shard.place(index, np.array(ids, dtype=object), np.array(sources, dtype=object))


def _link_saved(shard: Shard, dest: Path) -> bool:
    """Hard-link a shard's saved files into `dest` (same stem, .faiss and .npz); False if it has
    none or they are gone or changed size. Saving a 7M-row shard again would rewrite ~9 GB."""
    src = shard.saved
    if src is None or shard.checks is None:
        return False
    try:
        if (src.stat().st_size != shard.checks["faiss"]["size"]
                or src.with_suffix(".npz").stat().st_size != shard.checks["npz"]["size"]):
            return False
        os.link(src, dest)
        os.link(src.with_suffix(".npz"), dest.with_suffix(".npz"))
        return True
    except OSError:
        for p in (dest, dest.with_suffix(".npz")):
            p.unlink(missing_ok=True)
        return False


FINGERPRINT_COLUMNS = ["kind", "source", "content_hash"]


def kind_fingerprints(t) -> dict[str, str]:
    """Per kind, a digest of which files hold its rows: (path, content hash, row count), from a
    table (or snapshot scan) of FINGERPRINT_COLUMNS.

    Row ids are stable (path + locator) and vectors follow from a file's content, so an equal
    digest means the kind's rows and vectors are unchanged and its shard can be reused: adding
    photos to a collection with 1,000 hours of video no longer rebuilds the video shards.
    """
    g = t.group_by(FINGERPRINT_COLUMNS).aggregate([([], "count_all")])
    g = g.sort_by([("kind", "ascending"), ("source", "ascending"), ("content_hash", "ascending")])
    kinds = g.column("kind").to_numpy(zero_copy_only=False)
    out = {}
    for kind in sorted(set(kinds.tolist())):
        part = g.filter(pc.equal(g.column("kind"), kind))
        h = hashlib.blake2b(digest_size=16)
        for name in ("source", "content_hash", "count_all"):
            h.update(repr(part.column(name).to_pylist()).encode())
        out[kind] = h.hexdigest()
    return out


@dataclass
class AnnIndex:
    shards: dict[str, Shard]  # kind -> its rows
    version: int
    fingerprints: dict[str, str] = field(default_factory=dict)  # kind -> kind_fingerprints() digest

    @classmethod
    def build(cls, store: Store, exact_threshold: int = EXACT_THRESHOLD,
              batch_rows: int = BUILD_BATCH_ROWS, kinds: Iterable[str] | None = None,
              reuse: str | Path | AnnIndex | None = None) -> AnnIndex:
        """Index the table at its current version (only `kinds`, when given), one shard per kind.

        `reuse`: an earlier index (or its directory); its shards whose kind fingerprint is
        unchanged are taken over instead of rebuilt.
        """
        snapshot = store.snapshot()
        rows = snapshot.to_table(columns=FINGERPRINT_COLUMNS)  # one read: kinds and fingerprints
        column = rows.column("kind")
        wanted = sorted(set(pc.unique(column).to_pylist()) if kinds is None else set(kinds))
        prints = kind_fingerprints(rows)
        old = {}
        if isinstance(reuse, AnnIndex):
            old = {k: s for k, s in reuse.shards.items() if prints.get(k) == reuse.fingerprints.get(k)}
        elif reuse is not None:
            old = cls.load_shards(reuse, prints)
        shards = {}
        for kind in wanted:
            if kind in old:
                shards[kind] = old[kind]
                continue
            positions = np.flatnonzero(pc.equal(column, kind).to_numpy(zero_copy_only=False))
            if len(positions):
                shards[kind] = _build_shard(store, snapshot, kind, positions, exact_threshold, batch_rows)
        if old:
            log.info("ANN: reused the unchanged shards %s, built %s", sorted(set(old) & set(shards)),
                     sorted(set(shards) - set(old)))
        return cls(shards, int(snapshot.version), {k: prints[k] for k in shards if k in prints})

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, ids: np.ndarray, kinds: np.ndarray, sources: np.ndarray,
                     version: int, exact_threshold: int = EXACT_THRESHOLD) -> AnnIndex:
        """Index in-memory vectors (e.g. transformed copies), one shard per kind."""
        kinds, ids, sources = (np.asarray(a, dtype=object) for a in (kinds, ids, sources))
        shards = {}
        for kind in sorted(set(kinds.tolist())):
            m = kinds == kind
            shards[kind] = Shard.place(build_faiss(vectors[m], exact_threshold), ids[m], sources[m])
        return cls(shards, version)

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards.values())

    def describe(self) -> str:
        """Index types per kind, e.g. "image: IndexFlatIP, video_window: IndexRefine"."""
        return ", ".join(f"{k}: {type(s.index).__name__}{' (exact on GPU)' if s.matrix is not None else ''}"
                         for k, s in self.shards.items())

    # ---- persistence: a directory per version, switched by an atomic pointer file ------------
    def save(self, ann_dir: str | Path) -> None:
        """Write a new version folder (shards, then the manifest), then switch the pointer to it.
        A failure (full disk) removes the partial folder and leaves the previous index in use."""
        ann_dir = Path(ann_dir)
        with storage_errors(str(ann_dir)):
            ann_dir.mkdir(parents=True, exist_ok=True)
            name = f"v{self.version}"
            if (ann_dir / name).exists():  # same table version, e.g. replacing a damaged index
                name = f"v{self.version}-{secrets.token_hex(3)}"
            target = ann_dir / name
            tmp = temp_name(target)
            try:
                placed = self._write_folder(tmp)
                os.replace(tmp, target)
                pointer = ann_dir / POINTER
                write_atomic(pointer, json.dumps({"version": self.version, "dir": name}))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        for shard, (fname, checks) in placed:
            shard.saved, shard.checks = target / fname, checks
        for old in ann_dir.glob("v*"):
            if old.name != target.name:
                shutil.rmtree(old, ignore_errors=True)

    def _write_folder(self, tmp: Path) -> list[tuple[Shard, tuple[str, dict]]]:
        """Shard files, then the manifest naming them, into `tmp`; returns where each shard went."""
        tmp.mkdir(parents=True)
        entries, placed = [], []
        for i, (kind, shard) in enumerate(self.shards.items()):
            dest = tmp / f"shard{i}.faiss"
            if _link_saved(shard, dest):  # a reused shard's files are linked, not rewritten
                checks = shard.checks or {}  # _link_saved is true only with checks
            else:
                cpu = faiss.index_gpu_to_cpu(shard.index) if "Gpu" in type(shard.index).__name__ \
                    else shard.index
                faiss.write_index(cpu, str(dest))
                with open(dest.with_suffix(".npz"), "wb") as f:
                    np.savez(f, ids=shard.ids.astype(str), sources=shard.sources.astype(str),
                             kind=np.array(kind))
                checks = {"faiss": file_check(dest), "npz": file_check(dest.with_suffix(".npz"))}
            entries.append({"kind": kind, "file": dest.stem, "rows": len(shard),
                            "index": type(shard.index).__name__, **checks})
            placed.append((shard, (dest.name, checks)))
        manifest = {"format": MANIFEST_FORMAT, "version": self.version, "rows": len(self),
                    "shards": entries, "fingerprints": self.fingerprints}
        manifest["checksum"] = _self_checksum(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest))
        return placed

    @classmethod
    def load(cls, ann_dir: str | Path) -> AnnIndex | None:
        """The saved index, or None when there is none or it is damaged (logged once)."""
        ann_dir = Path(ann_dir)
        try:
            version, d, listing = cls._listing(ann_dir)
            shards = {e["kind"]: cls._load_shard(d, e) for e in listing["shards"]}
            return cls(shards, int(version), dict(listing.get("fingerprints", {})))
        except FileNotFoundError as e:
            log.debug("no saved ANN index in %s: %s", ann_dir, e)
        except (DamagedIndex, OSError, KeyError, TypeError, ValueError, RuntimeError) as e:
            _warn_once(ann_dir, cls._describe(ann_dir, e))
        return None

    @classmethod
    def load_shards(cls, ann_dir: str | Path, fingerprints: dict[str, str]) -> dict[str, Shard]:
        """The saved shards whose kind fingerprint equals `fingerprints'` (others are not read);
        a damaged shard is left out (and rebuilt by the caller)."""
        ann_dir = Path(ann_dir)
        try:
            _, d, listing = cls._listing(ann_dir)
        except FileNotFoundError:
            return {}
        except (DamagedIndex, OSError, KeyError, TypeError, ValueError) as e:  # the caller rebuilds
            log.info("no reusable ANN shards: %s", cls._describe(ann_dir, e))
            return {}
        saved = listing.get("fingerprints", {})
        out = {}
        for entry in listing["shards"]:
            kind = entry["kind"]
            if kind in saved and saved[kind] == fingerprints.get(kind):
                try:
                    out[kind] = cls._load_shard(d, entry)
                except (DamagedIndex, OSError, KeyError, TypeError, ValueError, RuntimeError) as err:
                    log.info("the %s shard is rebuilt: %s", kind, cls._describe(ann_dir, err))
        return out

    @classmethod
    def problem(cls, ann_dir: str | Path, version: int | None = None, rows: int | None = None) -> str | None:
        """Why the saved index cannot serve a table at `version` with `rows` rows (one line), or
        None when it can: absent, stale, or any file unreadable, truncated or not the manifest's."""
        ann_dir = Path(ann_dir)
        try:
            saved, d, listing = cls._listing(ann_dir)
            for e in listing["shards"]:
                cls._check_files(d, e)
        except FileNotFoundError:
            return f"there is no saved ANN index in {ann_dir}"
        except (DamagedIndex, OSError, KeyError, TypeError, ValueError) as e:
            return cls._describe(ann_dir, e)
        if version is not None and saved != version:
            return f"the ANN index in {ann_dir} was built at table version {saved}, the table is at {version}"
        if rows is not None and listing["rows"] != rows:
            return (f"the ANN index in {ann_dir} covers {listing['rows']} rows, the table has {rows} "
                    "(a foreign index?)")
        return None

    @classmethod
    def describe_saved(cls, ann_dir: str | Path) -> dict | None:
        """What the saved index is, from its manifest alone (no shard is read): {"type" (as
        `describe`), "rows", "version"}; None when there is none or its manifest is unusable."""
        try:
            version, _, listing = cls._listing(Path(ann_dir))
            kinds = ", ".join(f"{e['kind']}: {e.get('index', 'saved')}" for e in listing["shards"])
            return {"type": kinds, "rows": int(listing["rows"]), "version": version}
        except (FileNotFoundError, DamagedIndex, OSError, KeyError, TypeError, ValueError):
            return None

    @staticmethod
    def _describe(ann_dir: Path, e: BaseException) -> str:
        return f"the ANN index in {ann_dir} is damaged ({type(e).__name__}: {e})"

    @staticmethod
    def _listing(ann_dir: Path) -> tuple[int, Path, dict]:
        """(version, folder, manifest) of the saved index, the manifest's own checksum verified.
        FileNotFoundError when there is no index; DamagedIndex when it cannot be trusted."""
        try:
            pointer = json.loads((ann_dir / POINTER).read_text())
            version = int(pointer["version"])
        except FileNotFoundError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise DamagedIndex(f"{POINTER} is unreadable: {e}") from None
        d = ann_dir / str(pointer.get("dir", f"v{version}"))
        try:
            listing = json.loads((d / MANIFEST).read_text())
        except FileNotFoundError:
            raise DamagedIndex(f"{d / MANIFEST} is missing") from None
        except ValueError as e:
            raise DamagedIndex(f"{d / MANIFEST} is unreadable: {e}") from None
        if not isinstance(listing, dict) or listing.get("format") != MANIFEST_FORMAT:
            raise DamagedIndex(f"{d / MANIFEST} has no checksums (an older clipsearch wrote it)")
        if listing.get("checksum") != _self_checksum(listing) or listing.get("version") != version:
            raise DamagedIndex(f"{d / MANIFEST} fails its checksum (edited or reordered)")
        return version, d, listing

    @staticmethod
    def _check_files(d: Path, entry: dict) -> dict:
        checks = {}
        for part, suffix in (("faiss", ".faiss"), ("npz", ".npz")):
            path = d / f"{entry['file']}{suffix}"
            got = file_check(path)
            if got != entry[part]:
                raise DamagedIndex(f"{path} is not the file its manifest names (size {got['size']}, "
                                   f"expected {entry[part]['size']}; truncated or overwritten)")
            checks[part] = got
        return checks

    @classmethod
    def _load_shard(cls, d: Path, entry: dict) -> Shard:
        checks = cls._check_files(d, entry)
        faiss_path = d / f"{entry['file']}.faiss"
        with np.load(faiss_path.with_suffix(".npz")) as meta:
            ids, sources = meta["ids"].astype(object), meta["sources"].astype(object)
            kind = str(meta["kind"]) if "kind" in meta.files else None
        index = faiss.read_index(str(faiss_path))
        if kind != entry["kind"] or not (len(ids) == len(sources) == index.ntotal == entry["rows"]):
            raise DamagedIndex(f"{faiss_path} does not hold the {entry['rows']} {entry['kind']} rows "
                               "its manifest names")
        shard = Shard.place(index, ids, sources)
        shard.saved, shard.checks = faiss_path, checks
        return shard

    # ---- search -------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, kinds: tuple[str, ...] | None = None,
               under: str | None = None) -> list[list[tuple[str, float]]]:
        """Top-k (id, cosine) per query row over the shards of `kinds`, within folder `under`."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        shards = [s for kind, s in self.shards.items() if (not kinds or kind in kinds) and len(s)]
        if not shards or k <= 0:
            return [[] for _ in range(len(q))]
        hits: list[list[tuple[str, float]]] = [[] for _ in range(len(q))]
        for shard in shards:
            scores, idx = shard.search(q, k, under)
            for row, (srow, irow) in enumerate(zip(scores, idx, strict=True)):
                hits[row].extend((shard.ids[i], float(s)) for s, i in zip(srow, irow, strict=True) if i >= 0)
        if len(shards) > 1:
            hits = [sorted(h, key=lambda t: -t[1])[:k] for h in hits]
        return hits
