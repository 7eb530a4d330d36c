"""Training-free embedding-space transforms, fitted on one collection and saved with it.

CLIP's raw cosine space is not the best space for every query:

* image->image neighbours suffer from a few dominant, uninformative directions; PCA
  whitening (with shrinkage) equalises them, and ``||w||^2`` in the whitened space is a
  cheap likelihood surrogate ("typicality") for spotting outliers;
* image and text embeddings live in two separate cones (the modality gap); subtracting
  each modality's mean before comparing them is the simplest fix.

Everything here is numpy only, deterministic, and stored in ``<db>/transforms.npz`` whose
``header`` entry is a JSON document (version, model_id, dim, n_fit, params). Loading the
file back gives bit-identical results to the freshly fitted object.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.errors import ModelMismatch, TransformError
from clipsearch.fsutil import write_atomic
from clipsearch.model_registry import domain_captions

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FILENAME = "transforms.npz"
MIN_PER_DIM = 10  # whitening needs about this many samples per kept dimension
MIN_WHITEN_DIMS = 16  # below this a reduced whitening is not worth having
MIN_CENTER_SAMPLES = 10
MODALITIES = ("image", "text")
CHUNK_ROWS = 16_384  # rows per float64 step: fits and transforms of many vectors stay in float32


class TransformMismatch(TransformError, ModelMismatch):
    """Transforms were fitted for another model or embedding size."""


# --------------------------------------------------------------------------- helpers


def _as_matrix(vectors: Any, dim: int | None, what: str, many: bool = False) -> np.ndarray:
    """Validate and convert to a float64 (n, d) matrix; a 1-D vector becomes one row. With
    `many` (a collection's vectors) float32 stays float32, without a copy: `_chunks` takes it
    to float64 a slice at a time."""
    try:
        x = np.asarray(vectors)
        keep = many and x.dtype in (np.float32, np.float64)
        x = x if keep else np.asarray(vectors, dtype=np.float32 if many else np.float64)
    except (TypeError, ValueError) as exc:
        raise TransformError(f"{what}: not a numeric array ({exc})") from exc
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise TransformError(f"{what}: expected a (n, dim) array, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise TransformMismatch(
            f"{what}: vectors have dimension {x.shape[1]} but the transforms expect {dim}",
            hint="the collection and the transforms must come from the same model",
        )
    if not all(np.isfinite(x[i:i + CHUNK_ROWS]).all() for i in range(0, x.shape[0], CHUNK_ROWS)):
        raise TransformError(f"{what}: contains NaN or infinite values")
    return x


def _chunks(x: np.ndarray) -> Any:
    """float64 slices of `x`, `CHUNK_ROWS` rows at a time: the precision of a float64 fit or
    transform without a float64 copy of every vector."""
    for i in range(0, x.shape[0], CHUNK_ROWS):
        yield x[i:i + CHUNK_ROWS].astype(np.float64)


def _mean(x: np.ndarray) -> np.ndarray:
    """Column mean in float64, summed a chunk at a time."""
    total = np.zeros(x.shape[1], np.float64)
    for c in _chunks(x):
        total += c.sum(axis=0)
    return total / max(x.shape[0], 1)


def _normalise(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (zero rows stay zero) returned as float32."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


# --------------------------------------------------------------------------- whitening


@dataclass
class Whitening:
    """PCA whitening with shrinkage: ``w = (x - mean) @ V_k (diag(lam_k) + eps)^(-beta/2)``.

    ``eigvals``/``eigvecs`` are the full eigen-decomposition (descending), so the same fit
    gives both the search projection (``beta``, ``keep_dims``) and the β=1 typicality.
    """

    mean: np.ndarray  # (d,)
    eigvals: np.ndarray  # (d,) descending
    eigvecs: np.ndarray  # (d, d) columns are eigenvectors
    beta: float
    keep_dims: int
    eps: float

    def projection(self, beta: float | None = None) -> np.ndarray:
        """The (d, k) matrix P^T; computed the same way every time so results are bit-stable."""
        b = self.beta if beta is None else beta
        k = self.keep_dims
        scale = np.power(self.eigvals[:k] + self.eps, -b / 2.0)
        return self.eigvecs[:, :k] * scale[None, :]

    def whiten(self, x: np.ndarray, beta: float | None = None) -> np.ndarray:
        """Un-normalised whitened vectors ``w`` (float64)."""
        return (x - self.mean[None, :]) @ self.projection(beta)


def fit_whitening(
    vectors: np.ndarray,
    *,
    beta: float = 1.0,
    keep_dims: int | None = None,
    eps_rel: float = 1e-4,
    min_per_dim: int = MIN_PER_DIM,
) -> tuple[Whitening, str | None]:
    """Fit PCA whitening on image vectors; returns it and a note when it had to shrink.

    With ``keep_dims=None`` all dimensions are kept if there are at least
    ``min_per_dim * dim`` samples; otherwise a reduced fit keeps ``n // min_per_dim`` leading
    dimensions (and says so in the returned note). Fewer samples than
    ``min_per_dim * MIN_WHITEN_DIMS``, or an explicit ``keep_dims`` that the sample count
    cannot support, raise ``TransformError`` stating how many vectors are needed.
    """
    x = _as_matrix(vectors, None, "whitening input", many=True)
    n, d = x.shape
    if not 0.0 < beta <= 2.0:
        raise TransformError(f"whitening beta must be in (0, 2], got {beta}")
    if eps_rel < 0:
        raise TransformError(f"whitening eps_rel must be >= 0, got {eps_rel}")
    note = None
    if keep_dims is not None:
        if not 1 <= keep_dims <= d:
            raise TransformError(f"whitening keep_dims must be in [1, {d}], got {keep_dims}")
        if n < min_per_dim * keep_dims:
            raise TransformError(
                f"whitening {keep_dims} dims needs at least {min_per_dim * keep_dims} image vectors; "
                f"the collection has {n}",
                hint="index more images or ask for fewer dimensions",
            )
        k = keep_dims
    else:
        k = min(d, n // min_per_dim)
        floor = min(d, MIN_WHITEN_DIMS)
        if k < floor:
            raise TransformError(
                f"whitening needs at least {min_per_dim * d} image vectors for all {d} dims "
                f"(at least {min_per_dim * floor} for a reduced fit); the collection has {n}",
                hint="index more images, or search without --whiten",
            )
        if k < d:
            note = (
                f"whitening reduced to {k} of {d} dims: {n} image vectors support "
                f"{k} dims at {min_per_dim} samples per dim (full needs {min_per_dim * d})"
            )
            log.warning(note)
    mean = _mean(x)
    cov = np.zeros((d, d), np.float64)
    for c in _chunks(x):
        c -= mean[None, :]
        cov += c.T @ c
    cov /= max(n - 1, 1)
    eigvals, eigvecs = np.linalg.eigh(cov)
    order = np.argsort(eigvals)[::-1]
    eigvals = np.clip(eigvals[order], 0.0, None)
    eigvecs = eigvecs[:, order]
    # Fix each eigenvector's sign so refits on the same data agree.
    signs = np.sign(eigvecs[np.argmax(np.abs(eigvecs), axis=0), np.arange(d)])
    eigvecs = eigvecs * np.where(signs == 0, 1.0, signs)[None, :]
    eps = float(eps_rel * eigvals.mean()) if eigvals.mean() > 0 else 1e-12
    return Whitening(mean, eigvals, eigvecs, float(beta), int(k), max(eps, 1e-12)), note


# --------------------------------------------------------------------------- built-in captions

_GENERIC_NOUNS = (
    "dog cat bird horse cow sheep car bus truck bicycle motorcycle airplane boat train person "
    "man woman child baby family crowd house building bridge tower street road city village "
    "mountain river lake beach ocean forest tree flower garden field desert snow sky sunset "
    "cloud rain table chair sofa bed kitchen bathroom window door book laptop phone computer "
    "screen keyboard cup bottle glass plate bowl food pizza cake bread fruit apple banana "
    "orange sandwich salad coffee ball toy guitar piano painting drawing poster sign logo "
    "map chart diagram document page text letter shoe shirt dress hat bag clock lamp"
).split()
_GENERIC_ADJ = ("", "small ", "large ", "old ", "new ", "red ", "blue ", "green ", "white ", "black ")
_GENERIC_TEMPLATES = (
    "a photo of {}.",
    "a picture of {}.",
    "an image of {}.",
    "a close-up photo of {}.",
    "a blurry photo of {}.",
    "a drawing of {}.",
    "{} in the scene.",
    "there is {} here.",
)

def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def builtin_captions(domain: Sequence[str] = (), limit: int = 3000) -> list[str]:
    """Deterministic captions used to estimate the text-side mean for centering.

    ``domain`` is a model's own caption set (`model_registry.domain_captions`): up to four
    fifths are taken from it, the rest are generic template captions (templates x common
    nouns x adjectives). A model without one gets generic captions only.
    """
    rng = np.random.default_rng(0)
    caps = list(domain[: limit * 4 // 5])
    generic = [
        t.format(_article(a + n)) for n in _GENERIC_NOUNS for a in _GENERIC_ADJ for t in _GENERIC_TEMPLATES
    ]
    # A deterministic spread over the generic product rather than its first rows.
    pick = rng.permutation(len(generic))[: max(0, limit - len(caps))]
    caps += [generic[i] for i in sorted(pick)]
    return caps


def embed_builtin_captions(encoder: Any, limit: int = 3000) -> np.ndarray:
    """Embed :func:`builtin_captions` (with the encoder's model's own captions) via ``encode_texts``."""
    spec = getattr(encoder, "spec", None)
    domain = domain_captions(spec) if spec is not None else []
    return np.asarray(encoder.encode_texts(builtin_captions(domain, limit)), dtype=np.float32)


# --------------------------------------------------------------------------- the set


@dataclass
class TransformSet:
    """All transforms fitted on one collection for one model; the unit that is saved.

    ``skipped`` maps a transform name to why it was not fitted (only with ``strict=False``).
    """

    model_id: str
    dim: int
    n_fit: dict[str, int]
    params: dict[str, Any]
    whitening: Whitening | None = None
    image_mean: np.ndarray | None = None
    text_mean: np.ndarray | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    # ---- fitting

    @classmethod
    def fit(
        cls,
        image_vectors: np.ndarray,
        text_vectors: np.ndarray | None = None,
        *,
        model_id: str,
        dim: int,
        whiten: bool = True,
        center: bool = True,
        beta: float = 1.0,
        keep_dims: int | None = None,
        eps_rel: float = 1e-4,
        text_source: str = "builtin",
        strict: bool = True,
    ) -> TransformSet:
        """Fit whitening and/or modality-gap centering on a collection's vectors.

        ``image_vectors`` are the collection's image-like item vectors (images, frames,
        pages); ``text_vectors`` estimate the text mean (built-in captions via
        :func:`embed_builtin_captions`, or the collection's own document text). With
        ``strict=False`` a transform that cannot be fitted is skipped and the reason kept
        in ``skipped`` (for auto-fit after indexing); otherwise it raises ``TransformError``.
        """
        if not model_id:
            raise TransformError("model_id is required to fit transforms")
        x = _as_matrix(image_vectors, dim, "image vectors", many=True)
        n = x.shape[0]
        ts = cls(model_id=model_id, dim=int(dim), n_fit={"image": n}, params={})
        if whiten:
            try:
                w, note = fit_whitening(x, beta=beta, keep_dims=keep_dims, eps_rel=eps_rel)
                ts.whitening = w
                ts.params["whiten"] = {"beta": w.beta, "keep_dims": w.keep_dims, "eps": w.eps, "note": note}
            except TransformError as exc:
                if strict:
                    raise
                ts.skipped["whiten"] = str(exc)
        if center:
            try:
                if n < MIN_CENTER_SAMPLES:
                    raise TransformError(
                        f"centering needs at least {MIN_CENTER_SAMPLES} image vectors; "
                        f"the collection has {n}",
                        hint="index more items, or search without --center",
                    )
                ts.image_mean = _mean(x)
                params: dict[str, Any] = {"text_source": None}
                if text_vectors is not None:
                    t = _as_matrix(text_vectors, dim, "text vectors", many=True)
                    if t.shape[0] < MIN_CENTER_SAMPLES:
                        raise TransformError(
                            f"text centering needs at least {MIN_CENTER_SAMPLES} text vectors, "
                            f"got {t.shape[0]}"
                        )
                    ts.text_mean = _mean(t)
                    ts.n_fit["text"] = t.shape[0]
                    params["text_source"] = text_source
                ts.params["center"] = params
            except TransformError as exc:
                ts.image_mean = ts.text_mean = None
                if strict:
                    raise
                ts.skipped["center"] = str(exc)
        return ts

    # ---- applying

    def _check_whiten(self) -> Whitening:
        if self.whitening is None:
            why = self.skipped.get("whiten", "it was not fitted")
            raise TransformError(f"whitening is unavailable: {why}", hint="run `clipsearch fit-transforms`")
        return self.whitening

    def _mean_for(self, modality: str) -> np.ndarray:
        if modality not in MODALITIES:
            raise TransformError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        mean = self.image_mean if modality == "image" else self.text_mean
        if mean is None:
            why = self.skipped.get("center", "it was not fitted")
            raise TransformError(
                f"{modality} centering is unavailable: {why}", hint="run `clipsearch fit-transforms`"
            )
        return mean

    def apply_query(
        self, vectors: np.ndarray, modality: str, *, whiten: bool = False, center: bool = False
    ) -> np.ndarray:
        """Transform query vectors (``modality`` 'image' or 'text'); returns float32, L2-normalised.

        Whitening is fitted on images, so it is only defined for image queries (it already
        centres, so ``center`` adds nothing on top). Inverted (OTI) queries are text vectors.
        """
        x = _as_matrix(vectors, self.dim, "query vectors")
        if whiten:
            if modality != "image":
                raise TransformError("whitening applies to image queries only; use center for text queries")
            return _normalise(self._check_whiten().whiten(x))
        if center:
            return _normalise(x - self._mean_for(modality)[None, :])
        return _normalise(x)

    def apply_db(self, vectors: np.ndarray, *, whiten: bool = False, center: bool = False) -> np.ndarray:
        """Transform the collection's (image-side) vectors to match :meth:`apply_query`;
        float32 out, computed in float64 a chunk at a time."""
        x = _as_matrix(vectors, self.dim, "collection vectors", many=True)
        if whiten:
            w = self._check_whiten()
            parts = [_normalise(w.whiten(c)) for c in _chunks(x)]
        elif center:
            mean = self._mean_for("image")[None, :]
            parts = [_normalise(c - mean) for c in _chunks(x)]
        else:
            parts = [_normalise(c) for c in _chunks(x)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def typicality(self, vectors: np.ndarray) -> np.ndarray:
        """Squared norm ``||w||^2`` of the fully whitened (β=1) vectors; float64, one per row.

        Under a Gaussian fit it is the negative log-likelihood up to ½ and a constant, so
        **lower is more typical**; the largest values are the collection's outliers.
        """
        wh = self._check_whiten()
        x = _as_matrix(vectors, self.dim, "vectors", many=True)
        parts = [np.einsum("ij,ij->i", w, w) for w in (wh.whiten(c, beta=1.0) for c in _chunks(x))]
        return np.concatenate(parts) if parts else np.zeros(0)

    @property
    def available(self) -> list[str]:
        """Names of the fitted transforms ('whiten', 'center')."""
        out = []
        if self.whitening is not None:
            out.append("whiten")
        if self.image_mean is not None:
            out.append("center")
        return out

    def describe(self) -> str:
        """One line for logs and the CLI."""
        bits = [f"{self.model_id} dim={self.dim} n={self.n_fit}"]
        if self.whitening is not None:
            w = self.whitening
            bits.append(f"whiten(beta={w.beta:g}, dims={w.keep_dims}/{self.dim})")
        if self.image_mean is not None:
            src = self.params.get("center", {}).get("text_source")
            bits.append(f"center(text={src or 'none'})")
        for k, v in self.skipped.items():
            bits.append(f"{k} skipped: {v}")
        return "; ".join(bits)

    # ---- persistence

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        if self.whitening is not None:
            arrays["whiten_mean"] = self.whitening.mean
            arrays["whiten_eigvals"] = self.whitening.eigvals
            arrays["whiten_eigvecs"] = self.whitening.eigvecs
        if self.image_mean is not None:
            arrays["image_mean"] = self.image_mean
        if self.text_mean is not None:
            arrays["text_mean"] = self.text_mean
        return arrays

    @staticmethod
    def _digest(arrays: dict[str, np.ndarray]) -> str:
        h = hashlib.sha256()
        for name in sorted(arrays):
            a = np.ascontiguousarray(arrays[name])
            h.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
        return h.hexdigest()

    def save(self, db_dir: str | os.PathLike) -> Path:
        """Write ``<db_dir>/transforms.npz`` atomically (temp file + rename); returns its path."""
        db = Path(db_dir)
        if not db.is_dir():
            raise TransformError(f"cannot save transforms: {db} is not a directory")
        arrays = self._arrays()
        header = {
            "format": "clipsearch-transforms",
            "version": FORMAT_VERSION,
            "model_id": self.model_id,
            "dim": self.dim,
            "n_fit": self.n_fit,
            "params": self.params,
            "skipped": self.skipped,
            "sha256": self._digest(arrays),
        }
        if self.whitening is not None:
            w = self.whitening
            header["whitening"] = {"beta": w.beta, "keep_dims": w.keep_dims, "eps": w.eps}
        blob = np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8)
        target = db / FILENAME
        buf = io.BytesIO()
        np.savez(buf, header=blob, **arrays)  # type: ignore[arg-type]  # numpy's stub: **kwds vs allow_pickle
        write_atomic(target, buf.getvalue())
        return target

    @staticmethod
    def exists(db_dir: str | os.PathLike) -> bool:
        """Whether a transforms file is present (it may still be stale or corrupt)."""
        return (Path(db_dir) / FILENAME).is_file()

    @classmethod
    def load(cls, db_dir: str | os.PathLike, model_id: str, dim: int) -> TransformSet:
        """Read and validate ``<db_dir>/transforms.npz`` for this model; never writes anything.

        Raises ``TransformError`` when missing or corrupt, ``TransformMismatch`` (a
        ``TransformError`` and a ``ModelMismatch``) when fitted for another model or dim.
        """
        path = Path(db_dir) / FILENAME
        refit = "run `clipsearch fit-transforms` to refit them"
        if not path.is_file():
            raise TransformError(f"no transforms fitted for this collection ({path} is missing)", hint=refit)
        try:
            raw = path.read_bytes()
            if not zipfile.is_zipfile(io.BytesIO(raw)):
                raise ValueError("not an npz archive; truncated or overwritten")
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                contents = {k: npz[k] for k in npz.files}
            header = json.loads(contents.pop("header").tobytes().decode())
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
            msg = f"transform file {path} is corrupt or unreadable ({exc})"
            raise TransformError(msg, hint=refit) from exc
        if not isinstance(header, dict) or header.get("format") != "clipsearch-transforms":
            raise TransformError(f"{path} is not a clipsearch transforms file", hint=refit)
        if header.get("version") != FORMAT_VERSION:
            raise TransformError(
                f"{path} has format version {header.get('version')}, this clipsearch reads {FORMAT_VERSION}",
                hint=refit,
            )
        if header.get("sha256") != cls._digest(contents):
            raise TransformError(f"transform file {path} is corrupt (checksum mismatch)", hint=refit)
        if header.get("model_id") != model_id or header.get("dim") != dim:
            raise TransformMismatch(
                f"transforms in {path} were fitted for model {header.get('model_id')!r} "
                f"(dim {header.get('dim')}), not {model_id!r} (dim {dim})",
                hint=refit,
            )
        try:
            return cls._from_arrays(header, contents, int(dim))
        except (KeyError, TypeError, ValueError) as exc:
            raise TransformError(f"transform file {path} is inconsistent ({exc})", hint=refit) from exc

    @classmethod
    def _from_arrays(cls, header: dict, arrays: dict[str, np.ndarray], dim: int) -> TransformSet:
        def vec(name: str, shape: tuple[int, ...]) -> np.ndarray:
            a = arrays[name]
            if a.shape != shape or a.dtype != np.float64:
                raise ValueError(f"{name} has shape {a.shape} dtype {a.dtype}, expected {shape} float64")
            return a

        ts = cls(
            model_id=header["model_id"],
            dim=dim,
            n_fit={str(k): int(v) for k, v in header["n_fit"].items()},
            params=dict(header.get("params", {})),
            skipped=dict(header.get("skipped", {})),
        )
        if "whiten_mean" in arrays:
            meta = header["whitening"]
            keep = int(meta["keep_dims"])
            if not 1 <= keep <= dim:
                raise ValueError(f"keep_dims {keep} out of range")
            ts.whitening = Whitening(
                mean=vec("whiten_mean", (dim,)),
                eigvals=vec("whiten_eigvals", (dim,)),
                eigvecs=vec("whiten_eigvecs", (dim, dim)),
                beta=float(meta["beta"]),
                keep_dims=keep,
                eps=float(meta["eps"]),
            )
        if "image_mean" in arrays:
            ts.image_mean = vec("image_mean", (dim,))
        if "text_mean" in arrays:
            ts.text_mean = vec("text_mean", (dim,))
        return ts


def fit_collection_transforms(
    encoder: Any,
    image_vectors: np.ndarray,
    doc_text_vectors: np.ndarray | None = None,
    *,
    strict: bool = False,
    **kwargs: Any,
) -> TransformSet:
    """One call for ``clipsearch fit-transforms`` and auto-fit after ``index``.

    The text mean comes from the collection's own document text vectors when there are at
    least ``MIN_CENTER_SAMPLES`` of them, else from the built-in captions embedded with
    ``encoder``. ``strict=False`` (the default here) skips what cannot be fitted and keeps
    the reason in ``skipped``; ``kwargs`` go to :meth:`TransformSet.fit` (beta, keep_dims, ...).
    """
    if doc_text_vectors is not None and len(doc_text_vectors) >= MIN_CENTER_SAMPLES:
        text, source = doc_text_vectors, "collection"
    else:
        text, source = embed_builtin_captions(encoder), "builtin"
    return TransformSet.fit(
        image_vectors, text, model_id=encoder.model_id, dim=encoder.dim, text_source=source,
        strict=strict, **kwargs,
    )
