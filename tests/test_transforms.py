"""Whitening and modality-gap centering: known answers, persistence, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipsearch.errors import ModelMismatch, TransformError
from clipsearch.transforms import (
    FILENAME,
    TransformMismatch,
    TransformSet,
    builtin_captions,
    fit_whitening,
)

MODEL = "test-model/v1"


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def cloud(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Anisotropic, off-centre, L2-normalised vectors: the shape of a CLIP image cone."""
    rng = np.random.default_rng(seed)
    scales = np.linspace(1.5, 0.5, d)
    return unit(rng.normal(size=(n, d)) * scales + 3.0 * rng.normal(size=d) / np.sqrt(d))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def fitted() -> TransformSet:
    rng = np.random.default_rng(1)
    text = unit(rng.normal(size=(200, 16)) - 2.0)
    return TransformSet.fit(cloud(400, 16), text, model_id=MODEL, dim=16)


# ---------------------------------------------------------------- known answers


def test_whitened_fitting_data_has_identity_covariance():
    x = cloud(2000, 32)
    w, note = fit_whitening(x)
    assert note is None and w.keep_dims == 32
    z = w.whiten(x.astype(np.float64))
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(32), atol=1e-3)


def test_centering_gives_zero_mean(fitted):
    x = cloud(400, 16)
    rng = np.random.default_rng(1)
    text = unit(rng.normal(size=(200, 16)) - 2.0)
    np.testing.assert_allclose((x - fitted.image_mean).mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose((text - fitted.text_mean).mean(axis=0), 0.0, atol=1e-12)
    out = fitted.apply_query(text[:3], "text", center=True)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_partial_whitening_shrinks_but_keeps_order():
    x = cloud(2000, 32)
    full, _ = fit_whitening(x, beta=1.0)
    half, _ = fit_whitening(x, beta=0.5, keep_dims=8)
    var_full = np.var(full.whiten(x), axis=0)
    var_half = np.var(half.whiten(x), axis=0)
    assert var_half.shape == (8,)
    assert np.all(np.diff(var_half) <= 1e-9)  # beta < 1 keeps the leading directions stronger
    np.testing.assert_allclose(var_full, 1.0, atol=1e-3)


def test_whitening_removes_a_dominant_nuisance_direction():
    # Classes differ only in low-variance dims; a high-variance nuisance dominates raw
    # cosine. Whitening equalises the directions and class neighbours come back.
    rng = np.random.default_rng(5)
    n_cls, per, d = 8, 60, 24
    centers = rng.normal(size=(n_cls, d)) * 0.3
    centers[:, :4] = 0
    labels = np.repeat(np.arange(n_cls), per)
    x = centers[labels] + rng.normal(size=(n_cls * per, d)) * 0.1
    x[:, :4] += rng.normal(size=(n_cls * per, 4)) * 3.0
    x = unit(x + 1.0)
    ts = TransformSet.fit(x, model_id=MODEL, dim=d, center=False)

    def p_at_1(q: np.ndarray, db: np.ndarray) -> float:
        s = q @ db.T
        np.fill_diagonal(s, -np.inf)
        return float(np.mean(labels[s.argmax(axis=1)] == labels))

    raw = p_at_1(x, x)
    white = p_at_1(ts.apply_query(x, "image", whiten=True), ts.apply_db(x, whiten=True))
    assert white > raw + 0.2


def test_typicality_ranks_planted_outliers_last():
    x = cloud(600, 16)
    ts = TransformSet.fit(x, model_id=MODEL, dim=16, center=False)
    rng = np.random.default_rng(9)
    outliers = unit(rng.normal(size=(5, 16)))  # random directions, off the cone
    scores = ts.typicality(np.vstack([x[:50], outliers]))
    assert scores.shape == (55,)
    assert scores[50:].min() > np.median(scores[:50])
    assert set(np.argsort(scores)[-5:]) == set(range(50, 55))


def test_builtin_captions_are_deterministic_and_sized():
    domain = [f"a caption of world {i}" for i in range(1000)]
    a = builtin_captions(domain, limit=500)
    assert a == builtin_captions(domain, limit=500)
    assert len(a) == 500 and a[:400] == domain[:400] and len(set(a)) == 500  # 4/5 from the domain
    generic = builtin_captions(limit=300)
    assert len(generic) == 300 and not set(generic) & set(domain)


def test_a_model_reads_its_own_captions_from_beside_its_weights(tmp_path):
    from clipsearch.model_registry import ModelSpec, domain_captions
    from clipsearch.transforms import embed_builtin_captions

    ckpt = tmp_path / "mine.safetensors"
    ckpt.write_bytes(b"x")
    spec = ModelSpec(arch="ViT-B-32", checkpoint=str(ckpt))
    assert domain_captions(spec) == []
    (tmp_path / "mine.captions.txt").write_text("a red gizmo\n\na blue gizmo\n")
    assert domain_captions(spec) == ["a red gizmo", "a blue gizmo"]

    class Enc:  # records what it was asked to embed
        def __init__(self):
            self.spec, self.seen = spec, []

        def encode_texts(self, texts):
            self.seen += texts
            return np.zeros((len(texts), 4))

    enc = Enc()
    assert embed_builtin_captions(enc, limit=20).shape == (20, 4)
    assert enc.seen[:2] == ["a red gizmo", "a blue gizmo"] and len(enc.seen) == 20


# ---------------------------------------------------------------- persistence


def test_save_then_load_is_bit_identical(tmp_path, fitted):
    fitted.save(tmp_path)
    loaded = TransformSet.load(tmp_path, MODEL, 16)
    q, db = cloud(7, 16, seed=3), cloud(300, 16, seed=4)
    for kw in ({"whiten": True}, {"center": True}, {}):
        a_q, b_q = fitted.apply_query(q, "image", **kw), loaded.apply_query(q, "image", **kw)
        a_db, b_db = fitted.apply_db(db, **kw), loaded.apply_db(db, **kw)
        assert np.array_equal(a_q, b_q) and np.array_equal(a_db, b_db)
        s_a, s_b = a_q @ a_db.T, b_q @ b_db.T
        rank_a, rank_b = np.argsort(-s_a, axis=1, kind="stable"), np.argsort(-s_b, axis=1, kind="stable")
        assert np.array_equal(rank_a, rank_b)
        assert np.array_equal(s_a, s_b)
    t = unit(np.random.default_rng(2).normal(size=(4, 16)))
    t_a, t_b = fitted.apply_query(t, "text", center=True), loaded.apply_query(t, "text", center=True)
    assert np.array_equal(t_a, t_b)
    assert np.array_equal(fitted.typicality(db), loaded.typicality(db))
    assert loaded.describe() == fitted.describe()
    assert [p.name for p in tmp_path.iterdir()] == [FILENAME]  # no temp files left


def test_save_into_missing_dir_is_an_error(tmp_path, fitted):
    with pytest.raises(TransformError, match="not a directory"):
        fitted.save(tmp_path / "nope")


# ---------------------------------------------------------------- bad input


def test_too_small_collection_is_a_clear_error_and_changes_nothing(tmp_path, fitted):
    fitted.save(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(TransformError, match=r"needs at least 320 image vectors.*has 100"):
        TransformSet.fit(cloud(100, 32), model_id=MODEL, dim=32)
    with pytest.raises(TransformError, match="centering needs at least"):
        TransformSet.fit(cloud(5, 16), model_id=MODEL, dim=16, whiten=False)
    with pytest.raises(TransformError, match="needs at least 200"):
        fit_whitening(cloud(150, 32), keep_dims=20)
    assert snapshot(tmp_path) == before


def test_reduced_whitening_says_so():
    ts = TransformSet.fit(cloud(200, 32), model_id=MODEL, dim=32)
    assert ts.whitening.keep_dims == 20
    assert "reduced to 20 of 32" in ts.params["whiten"]["note"]
    assert ts.apply_db(cloud(3, 32), whiten=True).shape == (3, 20)


def test_non_strict_fit_skips_and_explains():
    ts = TransformSet.fit(cloud(100, 32), model_id=MODEL, dim=32, strict=False)
    assert ts.available == ["center"]
    assert "needs at least" in ts.skipped["whiten"]
    with pytest.raises(TransformError, match="whitening is unavailable: whitening needs"):
        ts.apply_query(cloud(1, 32), "image", whiten=True)


def test_model_mismatch_is_refused(tmp_path, fitted):
    fitted.save(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(TransformMismatch, match="fitted for model 'test-model/v1'") as err:
        TransformSet.load(tmp_path, "other-model", 16)
    assert isinstance(err.value, TransformError) and isinstance(err.value, ModelMismatch)
    with pytest.raises(TransformMismatch, match="dim 16"):
        TransformSet.load(tmp_path, MODEL, 32)
    with pytest.raises(TransformMismatch, match="dimension 8"):
        fitted.apply_db(np.ones((2, 8)), center=True)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty", "foreign", "tamper"])
def test_corrupt_file_is_a_clear_error_and_changes_nothing(tmp_path, fitted, damage):
    path = fitted.save(tmp_path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file at all")
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "foreign":
        np.savez(path, a=np.ones(3))
    elif damage == "tamper":  # valid zip, valid header, but array content changed
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["image_mean"] = arrays["image_mean"] + 1.0
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
    before = snapshot(tmp_path)
    with pytest.raises(TransformError) as err:
        TransformSet.load(tmp_path, MODEL, 16)
    assert "fit-transforms" in (err.value.hint or "")
    assert str(path) in str(err.value)
    assert snapshot(tmp_path) == before


def test_missing_file_says_how_to_fit(tmp_path):
    assert not TransformSet.exists(tmp_path)
    with pytest.raises(TransformError, match="no transforms fitted"):
        TransformSet.load(tmp_path, MODEL, 16)


def test_bad_queries_are_clear_errors(fitted):
    q = cloud(2, 16)
    with pytest.raises(TransformError, match="image queries only"):
        fitted.apply_query(q, "text", whiten=True)
    with pytest.raises(TransformError, match="unknown modality"):
        fitted.apply_query(q, "audio", center=True)
    no_text = TransformSet.fit(cloud(400, 16), model_id=MODEL, dim=16)
    with pytest.raises(TransformError, match="text centering is unavailable"):
        no_text.apply_query(q, "text", center=True)
    with pytest.raises(TransformError, match="NaN"):
        fitted.apply_db(np.full((1, 16), np.nan))
    with pytest.raises(TransformError, match="model_id"):
        TransformSet.fit(cloud(400, 16), model_id="", dim=16)


# ---------------------------------------------------------------- evaluation helpers


def test_retrieval_metrics_known_answer():
    from clipsearch.tiny.eval_transforms import retrieval_metrics

    db_labels = np.array([0, 1, 0, 1])
    # Query 0 (label 0) is db row 0 itself: ranking of the rest by score is rows 1, 2, 3
    # -> relevance [0, 1, 0]: AP = (1/2) / 1 = 0.5. Query 1 (label 1, row 1): rows 3, 0, 2
    # -> relevance [1, 0, 0]: AP = 1.
    scores = np.array([[9.0, 0.9, 0.5, 0.1], [0.5, 9.0, 0.2, 0.8]])
    m, p1 = retrieval_metrics(scores, np.array([0, 1]), db_labels, np.array([0, 1]), k=1)
    assert m == pytest.approx(0.75) and p1 == pytest.approx(0.5)
    # Without self-exclusion, a perfect ranking scores 1.
    m, p2 = retrieval_metrics(np.array([[0.9, 0.2, 0.8, 0.1]]), np.array([0]), db_labels, k=2)
    assert m == pytest.approx(1.0) and p2 == pytest.approx(1.0)


def test_stratified_subset_spreads_over_classes():
    from clipsearch.tiny.eval_transforms import stratified_subset

    labels = np.repeat(np.arange(4), 10)
    sub = stratified_subset(labels, 8)
    assert len(sub) == 8 and np.all(np.bincount(labels[sub]) == 2)


def test_shapes_folder_round_trip(tmp_path):
    from clipsearch.errors import UsageError
    from clipsearch.tiny.eval_transforms import load_labeled_folder, make_shapes_dataset

    assert make_shapes_dataset(tmp_path, per_class=1, image_size=32) == 48
    assert make_shapes_dataset(tmp_path, per_class=1, image_size=32) == 0  # idempotent
    paths, labels, classes = load_labeled_folder(tmp_path)
    assert len(paths) == 48 and len(classes) == 48 and "red_star" in classes
    with pytest.raises(UsageError, match="at least two class"):
        load_labeled_folder(tmp_path / "red_star")
    with pytest.raises(UsageError, match="not a directory"):
        load_labeled_folder(tmp_path / "missing")


def test_fit_collection_transforms_picks_a_text_source():
    from clipsearch.transforms import fit_collection_transforms

    class Enc:
        model_id, dim = MODEL, 16

        def encode_texts(self, texts):
            rng = np.random.default_rng(len(texts))
            return unit(rng.normal(size=(len(texts), 16)) - 1.0)

    builtin = fit_collection_transforms(Enc(), cloud(100, 16))
    assert builtin.params["center"]["text_source"] == "builtin" and builtin.n_fit["text"] == 3000
    assert "whiten" in builtin.skipped  # 100 < 160 vectors: skipped, not failed
    docs = unit(np.random.default_rng(0).normal(size=(50, 16)))
    own = fit_collection_transforms(Enc(), cloud(400, 16), docs)
    assert own.params["center"]["text_source"] == "collection" and own.n_fit["text"] == 50
    assert own.available == ["whiten", "center"]
