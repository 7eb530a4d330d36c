"""FAISS accelerator over the LanceDB table: built from it, tagged with its version, never the truth.

One FAISS index per row kind (image, video_window, doc_page, ...): every query names the kinds it
wants, so a kind filter picks shards instead of testing millions of ids against a selector per
query (a `video_window` selector costs time per query that grows with n; benchmarks/RESULTS.md).
Per shard: exact (flat inner product) below `exact_threshold` rows, IVF above it: 4-bit PQ
fast-scan codes to shortlist (cheap enough to probe many lists; finer codes and more probes at
small dims), then exact re-ranking of the shortlist on float16 copies of the vectors
(lossless: the table stores float16). Large shards
are built streaming from the table (k-means on a sample, then batches), so the build never
holds all vectors in memory. The folder filter is pushed into FAISS as an ID selector so a
filtered query still returns k hits when k exist. Defaults are measured by benchmarks/ann.py
(benchmarks/RESULTS.md).

The writer keeps the saved index current incrementally (`update_saved`): per kind, rows new or
replaced since the save (found by id and content hash) are appended to the trained shard as a
segment, and rows gone from the table are tombstoned (IVF + refine has no `remove_ids`;
searches skip tombstones through an ID selector; a flat shard that lost rows is rewritten
without them). A shard is rebuilt only past its limits (grown to twice its training size,
across the exact/IVF threshold, mostly tombstones), when damaged, or on `full=True`. Readers
never build: `ann_live.LiveAnn` searches the saved shards plus the rows newer than the save,
exactly. On a CUDA machine every shard that fits is also searched exactly on the GPU
(`Shard.place`, `matrix_search`).

Saved form: a folder per version, its `shards.json` manifest written last, naming the table
version and fragment watermark it covers and, per shard, its kind, row count, training size,
and the size, CRC-32, inode and mtime of its files, with a checksum of itself; `current.json`
points at the folder. A shard's files: a base (the FAISS index and its rows' ids, paths and
content hashes in Arrow IPC), appended segments (the rows added since, with their float16
vectors, one small Arrow IPC file per update) and tombstones (positions in base + segments,
.npy). An update that adds rows writes one segment and links every other file unchanged from
the previous version, so its cost follows the change; segments are merged into a new base
once they hold `SEGMENT_MERGE_SHARE` of its rows. Readers add the segments' vectors to the
loaded base index. Shards are read on first use (`ShardMap`), each file checked by CRC in the
same pass that reads it; a truncated, garbage, reordered or foreign file fails that check
(`AnnIndex.problem`, `DamagedIndex`): readers log one warning and search that kind exactly,
and the next index run saves a fresh shard (a damaged segment alone is dropped and its rows
appended again, the base kept). An index saved in an older format fails the manifest check
and is rebuilt once.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from clipsearch.failures import storage_errors
from clipsearch.fsutil import folder_prefix, write_atomic
from clipsearch.lazy import lazy_import
from clipsearch.leftovers import temp_name
from clipsearch.store import Store, float32_vectors, sql_str
from clipsearch.testpoints import pause_at

if TYPE_CHECKING:
    import faiss
    import pyarrow.compute as pc
else:
    faiss = lazy_import("faiss")
    pc = lazy_import("pyarrow.compute")  # imported by the first shard read or build, not by `info`

log = logging.getLogger(__name__)

MANIFEST = "shards.json"
POINTER = "current.json"
MANIFEST_FORMAT = 4  # 4: base + appended segments, ids in Arrow IPC (3: one .npz rewritten whole)


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


def warn_once(ann_dir: Path, problem: str) -> None:
    """One warning per damaged index and process (a server must not log it per query)."""
    if (str(ann_dir), problem) not in _warned:
        _warned.add((str(ann_dir), problem))
        log.warning("%s; searching without it until the next `clipsearch index` rebuilds it", problem)

EXACT_THRESHOLD = 50_000
REFINE_K_FACTOR = 20  # shortlist k·20 by PQ score, re-rank it exactly
# The shortlist of a near-neighbour query (`Shard.search` with `nprobe`, e.g. duplicates): copies
# score far above everything else even by PQ, so k·4 holds them and the exact re-rank, which is
# most of such a query's cost, does a fifth of the work.
NEAR_REFINE_K_FACTOR = 4


MAX_NLIST = 4096
BUILD_BATCH_ROWS = 65_536


SMALL_DIM = 256  # at or below: finer PQ codes and twice the probes (see ivf_params)


def probes(nlist: int, dim: int | None = None) -> int:
    """Lists a query probes: ~4·sqrt(nlist), ~8·sqrt(nlist) at `SMALL_DIM` or fewer dims.

    At dim 128 a query's neighbours spread over more lists than at dim 512: 4·sqrt(nlist) missed
    the recall@10 target at 1M rows whatever the codes (benchmarks/RESULTS.md, "Incremental
    updates"), twice that reaches the target; at dim 512 4·sqrt(nlist) already does."""
    factor = 8 if dim is not None and dim <= SMALL_DIM else 4
    return min(nlist, max(8, int(factor * np.sqrt(nlist))))


def pq_subquantizers(dim: int) -> int:
    """PQ sub-quantizers of the fast-scan shortlist: one per 4 dims, one per 2 at `SMALL_DIM`
    or fewer (4-dim sub-vectors of a 128-dim vector shortlist too coarsely for the exact
    re-rank to recover the true top 10; measured in benchmarks/RESULTS.md)."""
    return dim // 2 if dim <= SMALL_DIM else dim // 4


def ivf_params(n: int, dim: int | None = None) -> tuple[int, int]:
    """(nlist, nprobe) for n vectors of `dim`: ~4·sqrt(n) lists up to MAX_NLIST, `probes` of them.

    Chosen from the benchmarks/ann.py sweep on CLIP-like clustered data (figures in
    benchmarks/RESULTS.md): the fraction of lists a query must probe falls as n grows, so a fixed
    fraction (nlist/5) probes far more than needed at 1M rows and misses the latency target.
    Past ~1M the lists stop growing: a CPU build costs ~n·nlist (k-means and assignment), and
    4-bit fast-scan makes scanning the longer lists cheap (benchmarks/moments_scale.py).
    """
    nlist = int(min(max(4 * np.sqrt(n), 64), MAX_NLIST))
    return nlist, probes(nlist, dim)


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
    nlist, _ = ivf_params(n, dim)
    nlist = max(1, min(nlist, n // 39))  # k-means needs ~39 points per list
    if dim % 4 == 0:
        index = faiss.index_factory(dim, f"IVF{nlist},PQ{pq_subquantizers(dim)}x4fs,Refine(SQfp16)",
                                    faiss.METRIC_INNER_PRODUCT)
        index.k_factor = REFINE_K_FACTOR  # type: ignore[attr-defined]  # an IndexRefine; faiss types it Index
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(index).nprobe = probes(nlist, dim)
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
    saved: Path | None = field(default=None, repr=False, compare=False)  # its base .faiss file, if any
    origin: SavedShard | None = field(default=None, repr=False, compare=False)  # the files it was read from
    # position -> content hash (a reader's: left in Arrow form, only a save reads them)
    hashes: np.ndarray | pa.ChunkedArray | None = field(default=None, repr=False, compare=False)
    dead: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False, compare=False)
    trained: int = 0  # rows the shard was built (and, for IVF, trained) at: its retraining yardstick
    _ids_u: np.ndarray | None = field(default=None, repr=False, compare=False)  # ids, fixed-width

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
    def place(cls, index: faiss.Index, ids: np.ndarray, sources: np.ndarray, **saved_form) -> Shard:
        """A shard searched where it is fastest: exact on the GPU (torch), FAISS on the GPU, or CPU.
        `saved_form`: the other fields (hashes, dead, trained)."""
        matrix = None
        if gpu_search_wanted() and index.ntotal and _fits_on_gpu(index.ntotal * index.d * 2):
            matrix = index_matrix(index, "cuda")
        return cls(index if matrix is not None else to_gpu(index), ids, sources, matrix, **saved_form)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def live(self) -> int:
        """Rows a search can return: positions less tombstones."""
        return len(self) - len(self.dead)

    @property
    def exact(self) -> bool:
        return faiss.try_extract_index_ivf(self.index) is None

    def positions_of(self, only: np.ndarray) -> np.ndarray:
        """Positions (ascending) of the rows whose id is in `only` (sorted fixed-width ids)."""
        if self._ids_u is None:
            self._ids_u = self.ids.astype("U")
        return np.flatnonzero(np.isin(self._ids_u, only, assume_unique=False)).astype(np.int64)

    def search(self, q: np.ndarray, k: int, under: str | None,
               only: np.ndarray | None = None, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions) of the top k per query row, restricted to folder `under` and,
        with `only`, to the rows of those ids (a metadata prefilter, `clipsearch.filters`);
        tombstoned positions are never returned. `nprobe`: lists an IVF shard probes for this
        call (fewer than its own for neighbours known to be very near, e.g. duplicates), which
        also shortens the refine shortlist to `NEAR_REFINE_K_FACTOR`."""
        if nprobe is not None and not self.exact and self.matrix is None and not under and only is None:
            ivf = faiss.extract_index_ivf(self.index)
            probes_now = min(int(nprobe), ivf.nlist)
            if len(self.dead):
                sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(self.dead))
                return self._search_selected(q, min(k, self.live), sel, probes_now, NEAR_REFINE_K_FACTOR)
            return self._search_selected(q, min(k, len(self)), None, probes_now, NEAR_REFINE_K_FACTOR)
        n = len(self)
        keep = None  # positions a search may return, when not all
        if under or only is not None:
            keep = self.positions_under(under) if under else None
            if only is not None:
                mine = self.positions_of(only)
                keep = mine if keep is None else np.intersect1d(keep, mine, assume_unique=True)
            assert keep is not None
            if len(self.dead):
                keep = np.setdiff1d(keep, self.dead, assume_unique=True)
        elif len(self.dead) and self.matrix is not None:
            keep = np.setdiff1d(np.arange(n, dtype=np.int64), self.dead, assume_unique=True)
        if keep is not None and not len(keep):
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if self.matrix is not None:
            return matrix_search(self.matrix, q, k, keep)
        if keep is not None:
            return self._search_selected(q, min(k, len(keep)), faiss.IDSelectorBatch(keep))
        if len(self.dead):  # all but the tombstones: a selector of the few, negated
            dead = faiss.IDSelectorBatch(self.dead)
            return self._search_selected(q, min(k, self.live), faiss.IDSelectorNot(dead))
        return self.index.search(q, min(k, n))

    def _search_selected(self, q: np.ndarray, k: int, sel: faiss.IDSelector | None,
                         nprobe: int | None = None, k_factor: int | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
        ivf = faiss.try_extract_index_ivf(self.index)
        # faiss's SWIG classes take their fields as keywords, which its generated stubs do not say
        base = (faiss.SearchParametersIVF(sel=sel, nprobe=nprobe or ivf.nprobe)  # type: ignore[call-arg]
                if ivf is not None else faiss.SearchParameters(sel=sel))  # type: ignore[call-arg]
        if isinstance(self.index, faiss.IndexRefine):
            shortlist = min(k_factor or self.index.k_factor, self.index.k_factor)
            params = faiss.IndexRefineSearchParameters(k_factor=shortlist,  # type: ignore[call-arg]
                                                       base_index_params=base)
            return self.index.search(q, k, params=params)
        return self.index.search(q, k, params=base)


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


def gather_rows(snapshot, positions: np.ndarray, columns: list[str],
                batch_rows: int = BUILD_BATCH_ROWS) -> pa.Table:
    """The rows at these scan positions, in ascending order, read by one sequential scan of
    `columns`: Lance's take by position costs seconds per thousand rows on a large table with
    deleted rows, a scan of one column about a second per million rows."""
    positions = np.unique(np.asarray(positions, np.int64))
    parts, start = [], 0
    for b in snapshot.to_batches(columns=columns, batch_size=batch_rows):
        lo, hi = np.searchsorted(positions, [start, start + b.num_rows])
        if hi > lo:
            parts.append(b.take(pa.array(positions[lo:hi] - start)))
        start += b.num_rows
    return pa.Table.from_batches(parts, schema=pa.schema([snapshot.schema.field(c) for c in columns]))


def _build_shard(store: Store, snapshot, kind: str, positions: np.ndarray,
                 exact_threshold: int, batch_rows: int, seed: int = 0) -> Shard:
    """Train on a sample of the kind's rows, then add them batch by batch from the table."""
    n = len(positions)
    index = empty_faiss(n, store.dim, exact_threshold)
    m = training_size(index, n)
    if m:
        sample = np.sort(np.random.default_rng(seed).choice(positions, size=m, replace=False))
        train_faiss(index, float32_vectors(gather_rows(snapshot, sample, ["vector"], batch_rows)
                                           .column("vector")), seed)
    _reserve_refine_codes(index, n)
    ids, sources, hashes = [], [], []
    where = f"kind = {sql_str(kind)}"
    for meta, vecs in store.vector_batches(snapshot, ["id", "source", "content_hash"], where, batch_rows):
        index.add(vecs)
        ids.extend(meta.column("id").to_pylist())
        sources.extend(meta.column("source").to_pylist())
        hashes.extend(meta.column("content_hash").fill_null("").to_pylist())
    return Shard.place(index, np.array(ids, dtype=object), np.array(sources, dtype=object),
                       hashes=np.array(hashes, dtype=object), trained=n)


def _link(src: Path, dest: Path, size: int) -> bool:
    """Hard-link one saved file into a new version folder; False if it is gone or changed size.
    Saving a 7M-row shard again would rewrite ~9 GB."""
    try:
        if src.stat().st_size != size:
            return False
        os.link(src, dest)
        return True
    except OSError:
        dest.unlink(missing_ok=True)
        return False


def _link_saved(shard: Shard, dest: Path) -> dict | None:
    """A loaded shard's saved files (base, segments, tombstones) linked into `dest`'s folder,
    its manifest entry returned; None if it has no saved files or they are gone."""
    if shard.origin is None:
        return None
    try:
        return _write_saved(shard.origin, dest)
    except DamagedIndex:
        for leftover in dest.parent.glob(f"{dest.stem}.*"):
            leftover.unlink(missing_ok=True)
        for leftover in dest.parent.glob(f"{dest.stem}-*"):
            leftover.unlink(missing_ok=True)
        return None


DEAD_SUFFIX = "-dead.npy"
META_SUFFIX = ".arrow"  # the base's ids, paths and content hashes: Arrow IPC, one row per position
SEGMENT_MERGE_SHARE = 0.1  # segments are merged into the base once they hold this share of its rows
MAX_SEGMENTS = 8  # ... or once there are this many
SEGMENT_COLUMNS = ["id", "source", "content_hash", "vector"]


@dataclass(frozen=True)
class SavedShard:
    """One shard of a saved index, not read yet: its folder and manifest entry. The saved form
    is a base (FAISS file + its rows' ids/paths/hashes) plus appended segments (the rows added
    since, with their vectors, one Arrow IPC file each) and tombstones (positions in base +
    segments). Not saved yet: `dead`, new tombstones; `new_rows`, rows to append as a segment."""

    folder: Path
    entry: dict
    dead: np.ndarray | None = None
    new_rows: pa.Table | None = None

    def path(self, part: str) -> Path:
        suffix = {"faiss": ".faiss", "meta": META_SUFFIX, "dead": DEAD_SUFFIX}[part]
        return self.folder / f"{self.entry['file']}{suffix}"

    @property
    def segments(self) -> list[dict]:
        return list(self.entry.get("segments", []))

    @property
    def rows(self) -> int:
        """Positions: base rows, saved segments' and the pending segment's."""
        return int(self.entry["rows"]) + (self.new_rows.num_rows if self.new_rows is not None else 0)

    @property
    def live(self) -> int:
        dead = len(self.dead) if self.dead is not None else int(self.entry.get("dead", {}).get("count", 0))
        return self.rows - dead


def _segment_name(stem: str, j: int) -> str:
    return f"{stem}-seg{j}{META_SUFFIX}"


def _write_arrow(table: pa.Table, path: Path) -> dict:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return _file_entry(path)


def _meta_table(kind: str, ids, sources, hashes) -> pa.Table:
    cols = {"id": ids, "source": sources, "content_hash": hashes}
    arrays = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else
              c if isinstance(c, pa.Array) else pa.array(np.asarray(c, dtype=object).tolist(), pa.string())
              for c in cols.values()]
    return pa.table(dict(zip(cols, arrays, strict=True))).replace_schema_metadata({"kind": kind})


def _write_saved(saved: SavedShard, dest: Path) -> dict:
    """A saved shard's files linked into `dest`'s folder (base, segments, tombstones when not
    new), its pending segment and new tombstones written. Returns its manifest entry."""
    entry = {k: v for k, v in saved.entry.items() if k != "dead"}
    entry["file"] = dest.stem
    for part, suffix in (("faiss", ".faiss"), ("meta", META_SUFFIX)):
        if not _link(saved.path(part), dest.with_name(dest.stem + suffix), saved.entry[part]["size"]):
            raise DamagedIndex(f"{saved.path(part)} is gone or changed size")
    segments = []
    for j, seg in enumerate(saved.segments):
        name = _segment_name(dest.stem, j)
        if not _link(saved.folder / seg["file"], dest.with_name(name), seg["size"]):
            raise DamagedIndex(f"{saved.folder / seg['file']} is gone or changed size")
        segments.append({**seg, "file": name})
    if saved.new_rows is not None and saved.new_rows.num_rows:
        name = _segment_name(dest.stem, len(segments))
        table = saved.new_rows.select(SEGMENT_COLUMNS).replace_schema_metadata({"kind": entry["kind"]})
        segments.append({"file": name, "rows": table.num_rows, **_write_arrow(table, dest.with_name(name))})
    entry["segments"] = segments
    entry["rows"] = int(entry["base_rows"]) + sum(int(g["rows"]) for g in segments)
    if saved.dead is None and "dead" in saved.entry:
        dead_file = dest.with_name(dest.stem + DEAD_SUFFIX)
        if not _link(saved.path("dead"), dead_file, saved.entry["dead"]["size"]):
            raise DamagedIndex(f"{saved.path('dead')} is gone or changed size")
        entry["dead"] = saved.entry["dead"]
    elif saved.dead is not None and len(saved.dead):
        entry["dead"] = _write_dead(saved.dead, dest)
    return entry


def _damaged(path: Path, got: int, expected: dict) -> DamagedIndex:
    return DamagedIndex(f"{path} is not the file its manifest names (size {got}, expected "
                        f"{expected['size']}; truncated or overwritten)")


def _read_checked(path: Path, expected: dict) -> bytes:
    """A small saved file's bytes, checked against its manifest entry as they are read."""
    data = path.read_bytes()
    if len(data) != expected["size"] or zlib.crc32(data) != expected["crc32"]:
        raise _damaged(path, len(data), expected)
    return data


def _read_index_checked(path: Path, expected: dict) -> faiss.Index:
    """A saved FAISS index, its CRC computed in the same single pass that reads it: a reader
    does not read a 9 GB shard twice (once to check it, once to load it) before its first query."""
    size = path.stat().st_size
    if size != expected["size"]:
        raise _damaged(path, size, expected)
    crc = 0
    with open(path, "rb") as f:
        def chunk(n: int) -> bytes:
            nonlocal crc
            b = f.read(n)
            crc = zlib.crc32(b, crc)
            return b
        try:
            index = faiss.read_index(faiss.PyCallbackIOReader(chunk))  # type: ignore[attr-defined]
        except RuntimeError as e:
            raise DamagedIndex(f"{path} is not the file its manifest names (unreadable: "
                               f"{str(e).splitlines()[0][:200]})") from None
        crc = zlib.crc32(f.read(), crc)  # anything after what the index consumed
    if crc != expected["crc32"]:
        raise _damaged(path, size, expected)
    return index


def _stat_matches(path: Path, expected: dict) -> bool:
    st = path.stat()
    return st.st_size == expected["size"] and expected.get("stat") == [st.st_ino, st.st_mtime_ns]


def _read_arrow_checked(path: Path, expected: dict, trust_stat: bool = False) -> pa.Table:
    """A saved Arrow IPC file, checked by CRC as it is read (or, with `trust_stat`, memory-mapped
    unread when its inode, mtime and size are as recorded: the writer's own files)."""
    try:
        if trust_stat and _stat_matches(path, expected):
            return pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        return pa.ipc.open_file(pa.py_buffer(_read_checked(path, expected))).read_all()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise DamagedIndex(f"{path} is not the file its manifest names (unreadable: {e})") from None


def _check_meta(path: Path, t: pa.Table, kind: str, rows: int) -> None:
    meta = t.schema.metadata or {}
    if meta.get(b"kind", b"").decode() != kind or t.num_rows != rows or not {
            "id", "source", "content_hash"} <= set(t.column_names):
        raise DamagedIndex(f"{path} does not hold the {rows} {kind} rows its manifest names")


def read_saved_dead(saved: SavedShard, trust_stat: bool = False) -> np.ndarray:
    """A saved shard's tombstones (positions in base + segments), checked."""
    e = saved.entry
    if saved.dead is not None:
        dead = saved.dead
    elif "dead" in e:
        path = saved.path("dead")
        trusted = trust_stat and _stat_matches(path, e["dead"])
        data = path.read_bytes() if trusted else _read_checked(path, e["dead"])
        dead = np.load(io.BytesIO(data)).astype(np.int64)
    else:
        dead = np.zeros(0, np.int64)
    if len(dead) and (dead.min() < 0 or dead.max() >= int(e["rows"])):
        raise DamagedIndex(f"{saved.path('dead')} names positions outside the shard's {e['rows']} rows")
    return dead


def read_saved_meta(saved: SavedShard, trust_stat: bool = False) -> tuple[pa.Table, list[pa.Table]]:
    """(the base's id/source/content_hash table, each segment's table with vectors) of a saved
    shard, checked; its FAISS file is not read. A damaged segment raises DamagedSegment."""
    e = saved.entry
    base = _read_arrow_checked(saved.path("meta"), e["meta"], trust_stat)
    _check_meta(saved.path("meta"), base, e["kind"], int(e["base_rows"]))
    segments = []
    for j, seg in enumerate(saved.segments):
        path = saved.folder / seg["file"]
        try:
            t = _read_arrow_checked(path, seg, trust_stat)
            _check_meta(path, t, e["kind"], int(seg["rows"]))
            if "vector" not in t.column_names:
                raise DamagedIndex(f"{path} holds no vectors")
        except (DamagedIndex, OSError) as err:
            raise DamagedSegment(j, str(err)) from None
        segments.append(t)
    return base, segments


class DamagedSegment(DamagedIndex):
    """One appended segment of a shard is damaged (the base is fine): the writer drops it and
    adds its rows again from the table."""

    def __init__(self, segment: int, why: str) -> None:
        super().__init__(why)
        self.segment = segment


def _strings(col) -> np.ndarray:
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=object)


def _column_of(metas: list[pa.Table], name: str) -> pa.ChunkedArray:
    """One string column of the base and segments, end to end, without a copy (chunked_array
    of ChunkedArrays would convert every value through Python)."""
    return pa.chunked_array([chunk for m in metas for chunk in m.column(name).cast(pa.string()).chunks],
                            type=pa.string())


def load_saved_shard(saved: SavedShard, place: bool = True) -> Shard:
    """Read one saved shard, base and segments (each checked as it is read): the segments'
    vectors are added to the base index in memory, so positions run base, then segments.
    `place=False` keeps it a plain CPU index that the writer may change."""
    base, segments = read_saved_meta(saved)
    dead = read_saved_dead(saved)
    faiss_path = saved.path("faiss")
    index = _read_index_checked(faiss_path, saved.entry["faiss"])
    if index.ntotal != base.num_rows:
        raise DamagedIndex(f"{faiss_path} does not hold the {saved.entry['base_rows']} {saved.entry['kind']} "
                           "rows its manifest names")
    for seg in segments:
        vecs = seg.column("vector")
        if vecs.type.list_size != index.d:
            raise DamagedIndex(f"a segment of {faiss_path} holds vectors of another dim")
        index.add(float32_vectors(vecs))
    metas = [base] + [t.select(["id", "source", "content_hash"]) for t in segments]
    ids, sources = (_strings(_column_of(metas, c)) for c in ("id", "source"))
    hashes: np.ndarray | pa.ChunkedArray = _column_of(metas, "content_hash")
    if not place:  # the writer's copy, to be merged: as Python strings (a reader never asks)
        hashes = _strings(hashes)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:  # the probes of this version's defaults, whichever version saved it
        ivf.nprobe = probes(ivf.nlist, index.d)
    trained = int(saved.entry.get("trained", len(ids)))
    shard = (Shard.place(index, ids, sources, hashes=hashes, dead=dead, trained=trained) if place
             else Shard(index, ids, sources, hashes=hashes, dead=dead, trained=trained))
    if saved.new_rows is None and saved.dead is None:
        shard.saved, shard.origin = faiss_path, saved
    return shard


class ShardMap(Mapping[str, Shard]):
    """Kind -> Shard. The shards of a saved index are read on first use, so a query over images
    never reads the video shards, and `info` reads none."""

    def __init__(self, shards: dict[str, Shard] | None = None,
                 saved: dict[str, SavedShard] | None = None) -> None:
        self._shards = dict(shards or {})
        self._saved = {k: v for k, v in (saved or {}).items() if k not in self._shards}
        self._order = sorted({*self._saved, *self._shards})
        self._lock = threading.Lock()

    def __getitem__(self, kind: str) -> Shard:
        shard = self._shards.get(kind)
        if shard is not None:
            return shard
        if kind not in self._saved:
            raise KeyError(kind)
        with self._lock:  # concurrent first queries read a shard once
            if kind not in self._shards:
                self._shards[kind] = load_saved_shard(self._saved[kind])
            return self._shards[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __contains__(self, kind: object) -> bool:  # without loading (Mapping's would)
        return kind in self._shards or kind in self._saved

    def __len__(self) -> int:
        return len(self._order)

    def loaded(self, kind: str) -> Shard | None:
        return self._shards.get(kind)

    def saved_entry(self, kind: str) -> SavedShard | None:
        """Where the kind's shard lies on disk, while it is not loaded."""
        return self._saved.get(kind)

    def live(self, kind: str) -> int:
        """Rows of `kind` a search can return, without reading the shard."""
        shard = self._shards.get(kind)
        return shard.live if shard is not None else self._saved[kind].live

    def type_name(self, kind: str) -> str:
        shard = self._shards.get(kind)
        if shard is not None:
            return f"{type(shard.index).__name__}{' (exact on GPU)' if shard.matrix is not None else ''}"
        return str(self._saved[kind].entry.get("type", "saved"))

    def placed(self, kind: str, folder: Path, entry: dict) -> None:
        """After a save: the kind's files are now `entry` in `folder`."""
        shard = self._shards.get(kind)
        if shard is not None:
            shard.saved = folder / f"{entry['file']}.faiss"
            shard.origin = SavedShard(folder, entry)
        else:
            self._saved[kind] = SavedShard(folder, entry)


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


def fragment_watermark(snapshot) -> int:
    """The highest fragment id of a table version (-1 for none). Lance numbers fragments upward
    and writes every new or rewritten row (merge_insert, update, compaction) into new fragments,
    while a delete only marks rows in old ones: the rows written after this version are exactly
    those in fragments above it."""
    return max((f.fragment_id for f in snapshot.get_fragments()), default=-1)


@dataclass
class AnnIndex:
    shards: Mapping[str, Shard]  # kind -> its rows (a ShardMap: saved shards load on first use)
    version: int
    fingerprints: dict[str, str] = field(default_factory=dict)  # kind -> kind_fingerprints() digest
    watermark: int = -1  # fragment_watermark() of the table version it covers

    def __post_init__(self) -> None:
        if not isinstance(self.shards, ShardMap):
            self.shards = ShardMap(dict(self.shards))

    @property
    def shard_map(self) -> ShardMap:
        assert isinstance(self.shards, ShardMap)
        return self.shards

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
        old: dict[str, Shard] = {}
        if isinstance(reuse, AnnIndex):
            old = {k: reuse.shards[k] for k in reuse.shards if prints.get(k) == reuse.fingerprints.get(k)}
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
        return cls(shards, int(snapshot.version), {k: prints[k] for k in shards if k in prints},
                   fragment_watermark(snapshot))

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, ids: np.ndarray, kinds: np.ndarray, sources: np.ndarray,
                     version: int, exact_threshold: int = EXACT_THRESHOLD) -> AnnIndex:
        """Index in-memory vectors (e.g. transformed copies), one shard per kind."""
        kinds, ids, sources = (np.asarray(a, dtype=object) for a in (kinds, ids, sources))
        shards = {}
        for kind in sorted(set(kinds.tolist())):
            m = kinds == kind
            shards[kind] = Shard.place(build_faiss(vectors[m], exact_threshold), ids[m], sources[m],
                                       trained=int(m.sum()))
        return cls(shards, version)

    def __len__(self) -> int:
        """Rows a search can return (tombstones left out), without reading any shard."""
        return sum(self.shard_map.live(k) for k in self.shards)

    def describe(self) -> str:
        """Index types per kind, e.g. "image: IndexFlatIP, video_window: IndexRefine"."""
        return ", ".join(f"{k}: {self.shard_map.type_name(k)}" for k in self.shards)

    # ---- persistence: a directory per version, switched by an atomic pointer file ------------
    def save(self, ann_dir: str | Path) -> None:
        """Write a new version folder (shards, then the manifest), then switch the pointer to it.
        Shards whose files did not change are hard-linked from the previous version. A failure
        (full disk) removes the partial folder and leaves the previous index in use."""
        ann_dir = Path(ann_dir)
        with storage_errors(str(ann_dir)):
            ann_dir.mkdir(parents=True, exist_ok=True)
            name = f"v{self.version}"
            if (ann_dir / name).exists():  # same table version, e.g. replacing a damaged index
                name = f"v{self.version}-{secrets.token_hex(3)}"
            target = ann_dir / name
            tmp = temp_name(target)
            try:
                entries = self._write_folder(tmp)
                os.replace(tmp, target)
                pointer = ann_dir / POINTER
                write_atomic(pointer, json.dumps({"version": self.version, "dir": name}))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        for kind, entry in entries.items():
            self.shard_map.placed(kind, target, entry)
        for old in ann_dir.glob("v*"):
            if old.name != target.name:
                shutil.rmtree(old, ignore_errors=True)

    def _write_folder(self, tmp: Path) -> dict[str, dict]:
        """Shard files, then the manifest naming them, into `tmp`; returns each kind's entry."""
        tmp.mkdir(parents=True)
        entries: dict[str, dict] = {}
        for i, kind in enumerate(self.shards):
            dest = tmp / f"shard{i}.faiss"
            shard: Shard | SavedShard | None = self.shard_map.loaded(kind)
            if shard is None:
                shard = self.shard_map.saved_entry(kind)
            assert shard is not None
            entries[kind] = _write_shard(kind, shard, dest)
        pause_at("ann")  # shard files written, no manifest yet
        manifest = {"format": MANIFEST_FORMAT, "version": self.version, "rows": len(self),
                    "watermark": self.watermark, "shards": list(entries.values()),
                    "fingerprints": self.fingerprints}
        manifest["checksum"] = _self_checksum(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest))
        return entries

    @classmethod
    def load(cls, ann_dir: str | Path) -> AnnIndex | None:
        """The saved index (its manifest checked; each shard is read, and checked, on first use),
        or None when there is none or its manifest is damaged (logged once)."""
        ann_dir = Path(ann_dir)
        try:
            version, d, listing = cls._listing(ann_dir)
            saved = {e["kind"]: SavedShard(d, e) for e in listing["shards"]}
            return cls(ShardMap(saved=saved), int(version), dict(listing.get("fingerprints", {})),
                       int(listing.get("watermark", -1)))
        except FileNotFoundError as e:
            log.debug("no saved ANN index in %s: %s", ann_dir, e)
        except (DamagedIndex, OSError, KeyError, TypeError, ValueError, RuntimeError) as e:
            warn_once(ann_dir, cls.damage_line(ann_dir, e))
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
            log.info("no reusable ANN shards: %s", cls.damage_line(ann_dir, e))
            return {}
        saved = listing.get("fingerprints", {})
        out = {}
        for entry in listing["shards"]:
            kind = entry["kind"]
            if kind in saved and saved[kind] == fingerprints.get(kind) and "dead" not in entry:
                try:
                    out[kind] = load_saved_shard(SavedShard(d, entry))
                except (DamagedIndex, OSError, KeyError, TypeError, ValueError, RuntimeError) as err:
                    log.info("the %s shard is rebuilt: %s", kind, cls.damage_line(ann_dir, err))
        return out

    @classmethod
    def problem(cls, ann_dir: str | Path, version: int | None = None, rows: int | None = None,
                restat: bool = False) -> str | None:
        """Why the saved index cannot serve a table at `version` with `rows` rows (one line), or
        None when it can: absent, stale, or any file unreadable, truncated or not the manifest's.
        `restat` (the writer's call, under its lock): files proved by CRC because their stat
        changed (a copied or restored collection) get their stat recorded in the manifest, so
        that later runs trust the stat instead of reading them again."""
        ann_dir = Path(ann_dir)
        try:
            saved, d, listing = cls._listing(ann_dir)
            if restat:
                entries = [_checked_entry(SavedShard(d, e)).entry for e in listing["shards"]]
                if entries != listing["shards"]:
                    fixed = {**listing, "shards": entries}
                    fixed["checksum"] = _self_checksum(fixed)
                    write_atomic(d / MANIFEST, json.dumps(fixed))
                    log.info("%s: recorded the stat of the ANN files proved by their CRC", ann_dir)
            else:
                for e in listing["shards"]:
                    cls._check_files(d, e)
        except FileNotFoundError:
            return f"there is no saved ANN index in {ann_dir}"
        except (DamagedIndex, OSError, KeyError, TypeError, ValueError) as e:
            return cls.damage_line(ann_dir, e)
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
            kinds = ", ".join(f"{e['kind']}: {e.get('type', 'saved')}" for e in listing["shards"])
            return {"type": kinds, "rows": int(listing["rows"]), "version": version}
        except (FileNotFoundError, DamagedIndex, OSError, KeyError, TypeError, ValueError):
            return None

    @staticmethod
    def damage_line(ann_dir: Path, e: BaseException) -> str:
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
            raise DamagedIndex(f"{d / MANIFEST} is not in this clipsearch's format (an older one wrote it)")
        if listing.get("checksum") != _self_checksum(listing) or listing.get("version") != version:
            raise DamagedIndex(f"{d / MANIFEST} fails its checksum (edited or reordered)")
        return version, d, listing

    @staticmethod
    def _check_files(d: Path, entry: dict) -> dict:
        checks = {}
        parts = [("faiss", ".faiss"), ("meta", META_SUFFIX)]
        parts += [("dead", DEAD_SUFFIX)] if "dead" in entry else []
        for part, suffix in parts:
            path = d / f"{entry['file']}{suffix}"
            _verify(path, entry[part])
            checks[part] = entry[part]
        for seg in entry.get("segments", []):
            _verify(d / seg["file"], seg)
        return checks

    # ---- search -------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, kinds: tuple[str, ...] | None = None,
               under: str | None = None, only: np.ndarray | None = None,
               nprobe: int | None = None) -> list[list[tuple[str, float]]]:
        """Top-k (id, cosine) per query row over the shards of `kinds`, within folder `under`
        (and, with `only`, among those sorted ids); `nprobe` as in `Shard.search`."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        shards = [self.shards[kind] for kind in self.shards
                  if (not kinds or kind in kinds) and self.shard_map.live(kind)]
        if not shards or k <= 0:
            return [[] for _ in range(len(q))]
        hits: list[list[tuple[str, float]]] = [[] for _ in range(len(q))]
        for shard in shards:
            scores, idx = shard.search(q, k, under, only, nprobe)
            for row, (srow, irow) in enumerate(zip(scores, idx, strict=True)):
                hits[row].extend((shard.ids[i], float(s)) for s, i in zip(srow, irow, strict=True) if i >= 0)
        if len(shards) > 1:
            hits = [sorted(h, key=lambda t: -t[1])[:k] for h in hits]
        return hits


    def search_arrays(self, queries: np.ndarray, k: int, kind: str,
                      nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over one kind as arrays: (scores (q, k) float32, ids (q, k) object, None
        where a row has fewer hits), best first. For callers that run a query per row of the
        collection (duplicates), where building an (id, score) tuple per hit costs more than
        the search."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if kind not in self.shards or not self.shard_map.live(kind) or k <= 0:
            return np.zeros((len(q), 0), np.float32), np.empty((len(q), 0), object)
        shard = self.shards[kind]
        scores, idx = shard.search(q, k, None, None, nprobe)
        return scores, hit_ids(shard.ids, idx)


def hit_ids(ids: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The ids at FAISS result positions `idx` (object array; None where idx is -1)."""
    out = np.asarray(ids, dtype=object)[np.maximum(idx, 0)]
    out[idx < 0] = None
    return out


def _file_entry(path: Path) -> dict:
    """Size and CRC-32 of a saved file, and its inode and mtime: a file whose inode, mtime and
    size are as recorded was not rewritten since, so a writer need not read it again to trust it."""
    st = path.stat()
    return {**file_check(path), "stat": [st.st_ino, st.st_mtime_ns]}


def _verify(path: Path, expected: dict) -> None:
    """Raise DamagedIndex unless `path` is the file `expected` describes (by stat, else by CRC)."""
    st = path.stat()
    if st.st_size == expected["size"] and expected.get("stat") == [st.st_ino, st.st_mtime_ns]:
        return
    got = file_check(path)
    if got["size"] != expected["size"] or got["crc32"] != expected["crc32"]:
        raise _damaged(path, got["size"], expected)


def _restat(path: Path, expected: dict) -> dict:
    """`expected` if `path` is that file by its stat; else, once its size and CRC prove it is,
    `expected` with the file's stat now (a copied or restored index: the next run trusts the
    stat again instead of reading the file). DamagedIndex when it is not that file."""
    st = path.stat()
    if st.st_size == expected["size"] and expected.get("stat") == [st.st_ino, st.st_mtime_ns]:
        return expected
    _verify(path, expected)
    return {**expected, "stat": [st.st_ino, st.st_mtime_ns]}


def _checked_entry(saved: SavedShard) -> SavedShard:
    """The shard with every saved file it names verified (`_restat`): itself when each file's
    stat is as recorded, else a copy whose entry records the files' stats now."""
    e = saved.entry
    entry = dict(e)
    for part in ("faiss", "meta", *(("dead",) if "dead" in e and saved.dead is None else ())):
        entry[part] = _restat(saved.path(part), e[part])
    entry["segments"] = [_restat(saved.folder / g["file"], g) for g in saved.segments]
    if all(entry[k] is e[k] for k in ("faiss", "meta", "dead") if k in entry) and \
            all(a is b for a, b in zip(entry["segments"], saved.segments, strict=True)):
        return saved
    return SavedShard(saved.folder, entry, saved.dead, saved.new_rows)


def _write_dead(dead: np.ndarray, dest: Path) -> dict:
    path = dest.with_name(dest.stem + DEAD_SUFFIX)
    with open(path, "wb") as f:
        np.save(f, np.asarray(dead, np.int64))
    return {"count": len(dead), **_file_entry(path)}


def _write_shard(kind: str, shard: Shard | SavedShard, dest: Path) -> dict:
    """A shard's files at `dest`'s stem. A saved shard's (or a loaded one's, unchanged) are
    linked, with its new segment and tombstones written; a shard built or merged in memory is
    written as a new base (FAISS file + Arrow ids) without segments. Returns its manifest entry."""
    if isinstance(shard, SavedShard):
        return _write_saved(shard, dest)
    linked = _link_saved(shard, dest)
    if linked is not None:
        return linked
    cpu = faiss.index_gpu_to_cpu(shard.index) if "Gpu" in type(shard.index).__name__ else shard.index
    faiss.write_index(cpu, str(dest))
    hashes = shard.hashes if shard.hashes is not None else np.full(len(shard.ids), "", dtype=object)
    meta = _meta_table(kind, shard.ids, shard.sources, hashes)
    files = {"faiss": _file_entry(dest), "meta": _write_arrow(meta, dest.with_suffix(META_SUFFIX))}
    entry = {"kind": kind, "file": dest.stem, "rows": len(shard), "base_rows": len(shard), "segments": [],
             "trained": shard.trained or len(shard), "exact": shard.exact, "type": type(shard.index).__name__,
             **files}
    if len(shard.dead):
        entry["dead"] = _write_dead(shard.dead, dest)
    return entry


# ---- the writer's incremental update ----------------------------------------------------------
GROWTH_LIMIT = 2.0  # an IVF shard is retrained once it holds this many times the rows it was trained at
MAX_DEAD_SHARE = 0.5  # ... or once tombstones are this share of its positions


def _row_keys(ids, hashes) -> pa.Array:
    """id + content hash per row: rows with equal keys hold equal vectors (a file's vectors
    follow from its content; the id names the file and the place in it)."""
    cols = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else pa.array(c, pa.string())
            for c in (ids, hashes)]
    return pc.binary_join_element_wise(cols[0], pc.fill_null(cols[1], ""), "\x00")


def _saved_keys(saved: SavedShard) -> tuple[SavedShard, pa.Array, np.ndarray, list[pa.Table]]:
    """(the shard, its rows' keys per position, its tombstones), read by the writer without
    converting a string to Python. A damaged segment is dropped from the returned shard (its
    positions taken out, later tombstones shifted): its rows look new and are added again."""
    dead = read_saved_dead(saved, trust_stat=True)
    while True:
        try:
            base, segments = read_saved_meta(saved, trust_stat=True)
            break
        except DamagedSegment as err:
            log.warning("the ANN index's %s segment %d is damaged; its rows are added again: %s",
                        saved.entry["kind"], err.segment, err)
            segs = saved.segments
            start = int(saved.entry["base_rows"]) + sum(int(g["rows"]) for g in segs[:err.segment])
            m = int(segs[err.segment]["rows"])
            dead = np.concatenate([dead[dead < start], dead[dead >= start + m] - m])
            entry = {**saved.entry, "segments": segs[:err.segment] + segs[err.segment + 1:],
                     "rows": int(saved.entry["rows"]) - m}
            entry.pop("dead", None)
            saved = SavedShard(saved.folder, entry, dead, saved.new_rows)
    metas = [base] + segments
    keys = pa.concat_arrays([_row_keys(m.column("id"), m.column("content_hash")) for m in metas])
    return saved, keys, dead, metas


def _keys_at(metas: list[pa.Table], at: np.ndarray) -> pa.Array:
    """The keys (`_row_keys`) of positions `at` (ascending) of a shard whose positions run
    through `metas` (base, then segments): only those rows are read."""
    parts, start = [], 0
    for m in metas:
        lo, hi = np.searchsorted(at, [start, start + m.num_rows])
        if hi > lo:
            rows = m.select(["id", "content_hash"]).take(pa.array(at[lo:hi] - start))
            parts.append(_row_keys(rows.column("id"), rows.column("content_hash")))
        start += m.num_rows
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())


MAX_ID_FILTER = 20_000  # added rows read by an `id IN (...)` filter up to this many


def _new_rows(snapshot, kind: str, add: np.ndarray, known: pa.Array, watermark: int,
              add_ids: pa.Array | None = None) -> pa.Table:
    """The rows at scan positions `add` (ids `add_ids`), with their vectors, read at a cost that
    follows their number where it can. Rows written since the save lie in fragments above its
    watermark, so those fragments alone are read when they are few; after a compaction (which
    rewrites them all) the rows are found by id, so only their vectors are read; else (a very
    large change) one scan of the table."""
    where = f"kind = {sql_str(kind)}"
    fragments = [f for f in snapshot.get_fragments() if f.fragment_id > watermark]
    if fragments and sum(f.count_rows() for f in fragments) <= max(4 * len(add), BUILD_BATCH_ROWS):
        t = snapshot.scanner(columns=SEGMENT_COLUMNS, filter=where, fragments=fragments).to_table()
    elif add_ids is not None and len(add) <= MAX_ID_FILTER:
        listed = ",".join(sql_str(i) for i in add_ids.to_pylist())
        t = snapshot.scanner(columns=SEGMENT_COLUMNS, filter=f"{where} AND id IN ({listed})").to_table()
    else:
        return gather_rows(snapshot, add, SEGMENT_COLUMNS)
    keys = _row_keys(t.column("id"), t.column("content_hash"))
    t = t.filter(pc.invert(pc.is_in(keys, value_set=known)))
    return t if t.num_rows == len(add) else gather_rows(snapshot, add, SEGMENT_COLUMNS)


def _updated_shard(snapshot, saved: SavedShard, table_keys: pa.Array, positions: np.ndarray,
                   exact_threshold: int, watermark: int = -1,
                   table_ids: pa.Array | None = None) -> Shard | SavedShard | None:
    """The saved shard brought to the table's rows of its kind (`positions` in the scan,
    `table_keys` theirs), at a cost that follows the change: the same SavedShard if nothing
    changed; a SavedShard with new tombstones and/or a new segment of the added rows (the base's
    files untouched); a Shard written whole when its segments have grown past
    SEGMENT_MERGE_SHARE of the base (merged) or a flat shard lost rows (removed for real); None
    where it must be rebuilt: grown past GROWTH_LIMIT times its training size, across the
    exact/IVF threshold, or mostly tombstones. `table_ids`: the ids at `positions`."""
    saved, saved_keys, dead, _ = _saved_keys(saved)
    e = saved.entry
    n, n_after = len(saved_keys), len(positions)
    if _past_limits(e, n, n_after, exact_threshold):
        return None
    live = np.ones(n, bool)
    live[dead] = False
    kill = np.flatnonzero(live & ~pc.is_in(saved_keys, value_set=table_keys).to_numpy(zero_copy_only=False))
    live_keys = saved_keys.filter(pa.array(live))
    known = pc.is_in(table_keys, value_set=live_keys).to_numpy(zero_copy_only=False)
    add = positions[~known]
    add_ids = table_ids.filter(pa.array(~known)) if table_ids is not None else None
    saved = _checked_entry(saved)  # by stat; a file whose stat changed is read once, then restated
    e = saved.entry
    if not len(add) and not len(kill):
        return saved
    new = _new_rows(snapshot, e["kind"], add, live_keys, watermark, add_ids) if len(add) else None
    return _applied(saved, dead, kill, new, n_after)


def _past_limits(e: dict, n: int, n_after: int, exact_threshold: int) -> bool:
    """A shard of `n` positions that will hold `n_after` live rows must be rebuilt: grown past
    GROWTH_LIMIT times its training size, or across the exact/IVF threshold."""
    exact, trained = bool(e.get("exact", True)), int(e.get("trained", n))
    return (exact and n_after >= exact_threshold) or (
        not exact and (n_after > GROWTH_LIMIT * trained or n_after < exact_threshold // 2))


def _applied(saved: SavedShard, dead: np.ndarray, kill: np.ndarray, new: pa.Table | None,
             n_after: int) -> Shard | SavedShard | None:
    """The saved shard with positions `kill` tombstoned and rows `new` added (see
    `_updated_shard`): a SavedShard (appended), a Shard (merged), or None (rebuild)."""
    e = saved.entry
    n = int(e["rows"])
    exact, trained = bool(e.get("exact", True)), int(e.get("trained", n))
    add = new.num_rows if new is not None else 0
    dead = np.union1d(dead, kill).astype(np.int64)
    if not exact and len(dead) > MAX_DEAD_SHARE * (n + add):
        return None
    if not add:
        new = None
    segment_rows = n - int(e["base_rows"]) + add
    merge = (exact and len(dead)) or (add and (segment_rows > SEGMENT_MERGE_SHARE * int(e["base_rows"])
                                                    or len(saved.segments) + 1 > MAX_SEGMENTS))
    if not merge:  # append: the base's files stay as they are
        return SavedShard(saved.folder, e, dead, new)
    shard = load_saved_shard(SavedShard(saved.folder, e, dead), place=False)
    index, ids, sources, hashes = shard.index, shard.ids, shard.sources, shard.hashes
    assert isinstance(hashes, np.ndarray)  # place=False: Python strings
    if exact and len(dead):  # a flat index removes rows for real (IndexRefine cannot)
        index.remove_ids(faiss.IDSelectorBatch(dead))
        keep = np.setdiff1d(np.arange(n), dead, assume_unique=True)
        ids, sources, hashes, dead = ids[keep], sources[keep], hashes[keep], np.zeros(0, np.int64)
    if new is not None:  # into the trained lists: IVF add assigns to the existing centroids
        index.add(float32_vectors(new.column("vector")))
        ids = np.concatenate([ids, _strings(new.column("id"))])
        sources = np.concatenate([sources, _strings(new.column("source"))])
        hashes = np.concatenate([hashes, _strings(pc.fill_null(new.column("content_hash"), ""))])
    return Shard.place(index, ids, sources, hashes=hashes, dead=dead,
                       trained=n_after if exact else trained)


MAX_CHANGED_SOURCES = 20_000  # a change log of more sources than this: the whole table is diffed


def _update_by_change(snapshot, saved: AnnIndex, changed: set[bytes], ann_dir: Path,
                      exact_threshold: int, previous: AnnIndex | None) -> AnnIndex | None:
    """`update_saved` fed by the writer's log of the sources it changed since the saved
    index's version (`Store.changes_since`): those sources' rows now are read through the
    scalar index on `source_raw`, and each shard's positions of those sources (by the paths it
    saved, memory-mapped) are tombstoned or kept by id + content hash. None, to diff the whole
    table instead, when a shard would pass its limits, a new kind appears, or the live rows
    do not add up to the table's (the log missed a change, or two names display alike)."""
    from clipsearch.records import display_path
    from clipsearch.store import read_table, sources_filter

    version = int(snapshot.version)
    columns = [*SEGMENT_COLUMNS, "kind"]
    fresh = read_table(snapshot, columns, sources_filter(changed)) if changed else None
    kinds = set(pc.unique(fresh.column("kind")).to_pylist()) if fresh is not None else set()
    if not kinds <= set(saved.shards):
        return None
    displays = pa.array(sorted({display_path(r) for r in changed}), pa.string())
    shards: dict[str, Shard] = {}
    pending: dict[str, SavedShard] = {}
    moved, total = False, 0
    for kind in saved.shards:
        entry = saved.shard_map.saved_entry(kind)
        if entry is None:
            return None
        checked = _checked_entry(entry)  # by stat; a copied file is read once, then restated
        moved = moved or checked is not entry
        entry = checked
        part: Shard | SavedShard | None = entry
        mine = fresh.filter(pc.equal(fresh.column("kind"), kind)) if fresh is not None and kind in kinds \
            else None
        if changed:
            dead = read_saved_dead(entry, trust_stat=True)
            base, segments = read_saved_meta(entry, trust_stat=True)
            metas = [base, *segments]
            n = sum(m.num_rows for m in metas)
            live = np.ones(n, bool)
            live[dead] = False
            # the changed sources' positions, by path (one hash probe a row, no copy), then
            # their keys alone: no key is built for the rows that did not change
            cand = live & np.concatenate([
                pc.is_in(m.column("source"), value_set=displays).to_numpy(zero_copy_only=False)
                for m in metas])
            at = np.flatnonzero(cand)
            cand_keys = _keys_at(metas, at)
            mine_keys = (_row_keys(mine.column("id"), mine.column("content_hash")) if mine is not None
                         else pa.array([], pa.string()))
            kill = at[~pc.is_in(cand_keys, value_set=mine_keys).to_numpy(zero_copy_only=False)] \
                if len(at) else np.zeros(0, np.int64)
            new = mine.filter(pc.invert(pc.is_in(mine_keys, value_set=cand_keys))).select(SEGMENT_COLUMNS) \
                if mine is not None else None
            added = new.num_rows if new is not None else 0
            n_after = int(live.sum()) - len(kill) + added
            if len(kill) or added:
                if _past_limits(entry.entry, n, n_after, exact_threshold):
                    return None
                part = _applied(entry, dead, kill, new, n_after)
                if part is None:
                    return None
                moved = True
        else:
            n_after = entry.live
        total += n_after
        if part is entry and previous is not None:
            old = previous.shard_map.loaded(kind)
            if old is not None and old.origin is not None and old.origin.folder == entry.folder and \
                    old.origin.entry == entry.entry and old.live == entry.live:
                part = old  # the same files, already in memory
        if isinstance(part, Shard):
            shards[kind] = part
        elif part is not None:
            pending[kind] = part
    if total != snapshot.count_rows():
        return None
    if not moved and saved.version == version:
        return saved
    index = AnnIndex(ShardMap(shards, pending), version, watermark=fragment_watermark(snapshot))
    index.save(ann_dir)
    return index


def update_saved(store: Store, ann_dir: str | Path, *, full: bool = False,
                 exact_threshold: int = EXACT_THRESHOLD, previous: AnnIndex | None = None,
                 batch_rows: int = BUILD_BATCH_ROWS) -> AnnIndex:
    """Bring the saved index to the table's current version at a cost that follows the change,
    save it, and return it. The writer's call (under the writer lock).

    Per kind, rows new or replaced since the save (by id and content hash, from one scan of
    those two columns) are appended to the trained shard as a segment and rows gone from the
    table are tombstoned (a flat shard is rewritten without them); a shard is rebuilt only past
    its limits (`_updated_shard`), when damaged, or with `full` (`clipsearch optimize`).
    Unchanged shard files are hard-linked, so a re-tag after a compaction (which rewrites
    every fragment) costs a manifest. `previous`: this process's index, whose already loaded
    unchanged shards are kept rather than read again.
    """
    ann_dir = Path(ann_dir)
    snapshot = store.snapshot()
    version = int(snapshot.version)
    saved = None if full else AnnIndex.load(ann_dir)
    logged = store.changes_since(saved.version) if saved is not None else None
    # an empty log: the refresh is for damage or an unfinished refresh, which the full diff checks
    if saved is not None and logged and len(logged) <= MAX_CHANGED_SOURCES:
        try:
            by_change = _update_by_change(snapshot, saved, logged, ann_dir, exact_threshold, previous)
        except (DamagedIndex, OSError, KeyError, TypeError, ValueError, RuntimeError) as e:
            log.info("ANN: %s; diffing the whole table", AnnIndex.damage_line(ann_dir, e))
            by_change = None
        if by_change is not None:
            return by_change
    rows = snapshot.to_table(columns=["id", "kind", "content_hash"])
    kind_col = rows.column("kind")
    keys = _row_keys(rows.column("id"), rows.column("content_hash"))
    shards: dict[str, Shard] = {}
    pending: dict[str, SavedShard] = {}
    changed = saved is None
    for kind in sorted(pc.unique(kind_col).to_pylist()):
        positions = np.flatnonzero(pc.equal(kind_col, kind).to_numpy(zero_copy_only=False))
        entry = saved.shard_map.saved_entry(kind) if saved is not None else None
        part: Shard | SavedShard | None = None
        if entry is not None:
            try:
                taken = pa.array(positions)
                part = _updated_shard(snapshot, entry, keys.take(taken), positions, exact_threshold,
                                      saved.watermark if saved is not None else -1,
                                      rows.column("id").combine_chunks().take(taken))
            except (DamagedIndex, OSError, KeyError, TypeError, ValueError, RuntimeError) as e:
                log.warning("rebuilding the %s shard: %s", kind, AnnIndex.damage_line(ann_dir, e))
        if part is None:
            log.info("ANN: building the %s shard (%d rows)", kind, len(positions))
            part = _build_shard(store, snapshot, kind, positions, exact_threshold, batch_rows)
        if part is entry and previous is not None:
            old = previous.shard_map.loaded(kind)
            if old is not None and old.origin is not None and old.origin.folder == entry.folder and \
                    old.origin.entry == entry.entry and old.live == entry.live:
                part = old  # the same files, already in memory
        changed = changed or part is not entry
        if isinstance(part, Shard):
            shards[kind] = part
        else:
            pending[kind] = part
    if saved is not None and set(saved.shards) != set(shards) | set(pending):
        changed = True
    if saved is not None and not changed and saved.version == version:
        return saved
    index = AnnIndex(ShardMap(shards, pending), version, watermark=fragment_watermark(snapshot))
    index.save(ann_dir)
    return index
