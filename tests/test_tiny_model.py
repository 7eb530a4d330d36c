"""clipsearch-tiny: renderer, training script, determinism and the shipped model's quality."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from clipsearch.model_registry import domain_captions, resolve
from clipsearch.tiny import captions, data, losses, train, tune
from clipsearch.tiny import model as tiny_model
from clipsearch.tiny.synth import (
    COLORS,
    POSITIONS,
    RGB,
    SHAPES,
    SIZES,
    ShapeSpec,
    canonical_query,
    caption,
    caption_with_attrs,
    draw_shape_on,
    layout_box,
    random_spec,
    render_page,
    render_shape,
)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "clipsearch" / "models"
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
_POS_WORDS = {"left": "left", "right": "right", "center": ("center", "centre", "middle"),
              "top": ("top", "upper"), "bottom": ("bottom", "lower")}


def _mentions(text: str, words: str | tuple[str, ...]) -> bool:
    return any(w in text for w in ((words,) if isinstance(words, str) else words))


# ----------------------------------------------------------------------------- renderer


def test_vocabularies_and_colors() -> None:
    assert len(SHAPES) == 6 and len(COLORS) == 8 and SIZES == ("small", "large")
    assert set(POSITIONS) == {"left", "right", "center", "top", "bottom"}
    assert set(RGB) == set(COLORS)


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        ShapeSpec("hexagon", "red")
    with pytest.raises(ValueError):
        ShapeSpec("star", "red", size="medium")


def test_canonical_query_format() -> None:
    assert canonical_query(ShapeSpec("star", "red")) == "a red star"
    assert canonical_query(ShapeSpec("star", "orange", "small", "left")) == "an orange star"
    full = canonical_query(ShapeSpec("star", "red", "small", "left"), full=True)
    assert full == "a small red star on the left"
    assert canonical_query(ShapeSpec("circle", "blue", None, "top"), full=True) == \
        "a blue circle at the top"


def test_captions_mention_exactly_their_attributes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        spec = random_spec(rng, p_size=0.8, p_pos=0.8)
        text, mentioned = caption_with_attrs(spec, rng)
        assert mentioned["shape"] or mentioned["color"]
        if mentioned["shape"]:
            assert spec.shape in text
        if mentioned["color"]:
            assert spec.color in text
        if mentioned["size"]:
            assert _mentions(text, _SIZE_WORDS[spec.size])
        if mentioned["position"]:
            assert _mentions(text, _POS_WORDS[spec.position])
        if spec.size is None:
            assert mentioned["size"] is None


def test_captions_are_varied() -> None:
    rng = np.random.default_rng(1)
    spec = ShapeSpec("star", "red", "small", "left")
    texts = {caption(spec, rng) for _ in range(200)}
    assert len(texts) > 40
    assert any(t.startswith("a photo of") for t in texts)
    assert any("," in t for t in texts)


@pytest.mark.parametrize("background", ["plain", "gradient", "textured", "photo", "page", "random"])
def test_render_shape_size_and_determinism(background: str) -> None:
    spec = ShapeSpec("triangle", "green", "large", "right")
    a = render_shape(spec, np.random.default_rng(5), size=96, background=background, degrade=True)
    b = render_shape(spec, np.random.default_rng(5), size=96, background=background, degrade=True)
    assert a.size == (96, 96) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_render_shape_without_jitter_is_centered() -> None:
    img = render_shape(ShapeSpec("square", "red", "large", "center"), np.random.default_rng(0),
                       size=64, background="plain", jitter=False)
    centre = np.asarray(img)[32, 32].astype(int)
    assert np.abs(centre - np.array(RGB["red"])).sum() < 30


def test_layout_keeps_shape_in_its_region() -> None:
    rng = np.random.default_rng(2)
    for _ in range(200):
        spec = random_spec(rng, p_size=1.0, p_pos=1.0)
        (x0, y0, x1, y1), _ = layout_box(spec, rng, 200, 200)
        cx, cy = (x0 + x1) / 2 / 200, (y0 + y1) / 2 / 200
        if spec.position == "left":
            assert cx < 0.4
        elif spec.position == "right":
            assert cx > 0.6
        elif spec.position == "top":
            assert cy < 0.4
        elif spec.position == "bottom":
            assert cy > 0.6
        else:
            assert 0.4 < cx < 0.6 and 0.4 < cy < 0.6
        assert -3 <= x0 and x1 <= 203 and -3 <= y0 and y1 <= 203


def test_draw_shape_on_paints_inside_box() -> None:
    img = Image.new("RGB", (100, 60), (255, 255, 255))
    draw_shape_on(img, ShapeSpec("circle", "blue"), (10, 10, 50, 50), np.random.default_rng(0))
    arr = np.asarray(img).astype(int)
    assert np.abs(arr[30, 30] - np.array(RGB["blue"])).sum() < 60
    assert (arr[:, 60:] == 255).all()


def test_render_page() -> None:
    page = render_page(ShapeSpec("star", "red", "small", "left"), np.random.default_rng(0),
                       size=(212, 300), paragraphs=["Quarterly report on widgets. " * 30])
    assert page.size == (212, 300)
    x0, y0, x1, y1 = page.info["figure_box"]
    assert 0 <= x0 < x1 <= 212 and 0 <= y0 < y1 <= 300
    assert x1 < 212 / 2 + 10  # "left" puts the figure in the left column


# ----------------------------------------------------------------------------- training


def test_positive_mask_counts_less_specific_captions() -> None:
    attrs = torch.tensor([[3, 0, 0, 0], [3, 0, 1, 1], [0, 0, 0, 0]])  # red stars, red circle
    mentioned = torch.tensor([[3, 0, -1, -1], [3, 0, 1, -1], [-1, 0, -1, -1]])
    pos = losses.positives(attrs, mentioned)
    assert pos[:, 0].tolist() == [1, 1, 0]  # "a red star" fits both red stars
    assert pos[:, 1].tolist() == [0, 1, 0]  # "a large red star" only the large one
    assert pos[:, 2].tolist() == [1, 1, 1]  # "a red shape" fits all


def test_hard_negative_changes_exactly_one_attribute_of_the_image() -> None:
    rng = np.random.default_rng(4)
    changed = {a: 0 for a in data.ATTRS}
    for _ in range(400):
        spec = random_spec(rng, p_size=0.7, p_pos=0.7)
        _, mentioned = caption_with_attrs(spec, rng)
        text, neg = data.hard_negative(spec, mentioned, rng)
        diff = [a for a in data.ATTRS if neg[a] != mentioned[a]]
        assert len(diff) == 1, (spec, mentioned, neg)
        a = diff[0]
        assert neg[a] is not None and neg[a] != getattr(spec, a)  # false of this image
        changed[a] += 1
        pos = losses.positives(torch.tensor([data.encode_attrs(vars(spec))]),
                                   torch.tensor([data.encode_attrs(mentioned),
                                                 data.encode_attrs(neg)]))
        assert pos.tolist() == [[1.0, 0.0]]
        if a == "position":
            assert _mentions(text, _POS_WORDS[neg[a]])
    assert changed["position"] > changed["size"] > 0 and changed["color"] > 0 and changed["shape"] > 0


def test_i2i_keep_position_leaves_moved_pairs_out() -> None:
    """Two red stars at known, different positions are not pulled together by the image term."""
    img = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    attrs = torch.tensor([[3, 0, 0, 0], [3, 0, 0, 1], [1, 2, 0, -1]])  # star/red left, right; other
    mentioned = attrs.clone()
    _, plain = losses.clip_loss(img, img, torch.tensor(10.0), attrs, mentioned, i2i_weight=1.0)
    _, kept = losses.clip_loss(img, img, torch.tensor(10.0), attrs, mentioned, i2i_weight=1.0,
                                   i2i_keep_position=True)
    assert plain["i2i"] > 0 and kept["i2i"] == 0
    attrs[1, 3] = 0  # same position: a positive pair again
    _, same = losses.clip_loss(img, img, torch.tensor(10.0), attrs, mentioned, i2i_weight=1.0,
                                   i2i_keep_position=True)
    assert same["i2i"] > 0


def test_position_probe_learns_from_known_positions_only() -> None:
    probe = losses.PositionProbe(8)
    emb = torch.randn(4, 8)
    assert probe.loss(emb, torch.tensor([-1, -1, -1, -1])).item() == 0
    labels = torch.tensor([0, -1, 3, -1])
    expected = torch.nn.functional.cross_entropy(probe.linear(emb[[0, 2]]), labels[[0, 2]])
    assert torch.isclose(probe.loss(emb, labels), expected)


def test_probe_is_not_part_of_the_saved_model(tmp_path: Path) -> None:
    log = train.train(tmp_path / "p", seed=1, steps=2, batch_size=12, workers=0, eval_n=0,
                           log_every=1, probe_weight=0.5, tune_batches=0)
    assert log["tune"] is None
    assert all("probe" in h for h in log["history"])
    from safetensors.torch import load_file

    saved = set(load_file(str(tmp_path / "p" / "clipsearch-tiny.safetensors")))
    model, _, _ = tiny_model.build_model(tmp_path / "p" / "clipsearch-tiny.json", 0)
    assert saved == set(model.state_dict())


def test_first_batch_is_deterministic(tmp_path: Path) -> None:
    cfg = tiny_model.write_config(tmp_path, tiny_model.model_config())
    _, preprocess, tok = tiny_model.build_model(cfg, 0)
    a = data.BatchSource(7, 8, preprocess, tok, 2)[0]
    b = data.BatchSource(7, 8, preprocess, tok, 2)[0]
    c = data.BatchSource(8, 8, preprocess, tok, 2)[0]
    for key in a:
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["images"], c["images"])


def test_variety_from_keeps_the_canonical_stream_before_it(tmp_path: Path) -> None:
    """Batches before `variety_from` are the canonical run's, draw for draw; after it they vary."""
    cfg = tiny_model.write_config(tmp_path, tiny_model.model_config())
    _, preprocess, tok = tiny_model.build_model(cfg, 0)
    plain = data.BatchSource(7, 8, preprocess, tok, 10)
    late = data.BatchSource(7, 8, preprocess, tok, 10, variety=1.0, variety_from=0.5)
    for key in plain[4]:
        assert torch.equal(plain[4][key], late[4][key])
    assert not torch.equal(plain[5]["images"], late[5]["images"])


def _losses(log: dict) -> list[float]:
    return [h["loss"] for h in log["history"]]


def test_same_seed_same_losses(tmp_path: Path) -> None:
    kw = {"seed": 3, "steps": 3, "batch_size": 12, "workers": 0, "eval_n": 0, "log_every": 1,
          "tune_batches": 2, "tune_epochs": 2}
    a = train.train(tmp_path / "a", **kw)
    b = train.train(tmp_path / "b", **kw)
    assert _losses(a) == _losses(b) and len(_losses(a)) == 3
    assert a["tune"]["epoch_loss"] == b["tune"]["epoch_loss"] and len(a["tune"]["epoch_loss"]) == 2


def test_stage2_is_skipped_when_the_time_cap_leaves_no_room(tmp_path: Path) -> None:
    log = train.train(tmp_path / "t", seed=0, steps=50, minutes=0.05, batch_size=8, workers=0,
                           eval_n=0, tune_batches=2, tune_epochs=1)
    assert "skipped" in log["tune"] and "cap" in log["tune"]["skipped"]
    assert (tmp_path / "t" / "clipsearch-tiny.safetensors").exists()
    assert not (tmp_path / "t" / "stage1").exists()


def _fresh_model_and_source(tmp_path: Path) -> tuple[torch.nn.Module, data.BatchSource]:
    cfg = tiny_model.write_config(tmp_path, tiny_model.model_config())
    model, preprocess, tok = tiny_model.build_model(cfg, 0)
    return model, data.BatchSource(5, 12, preprocess, tok, 10, neg_rate=0.5,
                                         neg_weights={"position": 1.0})


def test_stage2_cached_features_give_the_models_own_embeddings(tmp_path: Path) -> None:
    """Stage 2 trains on cached features; they must be what the full forward pass computes."""
    model, source = _fresh_model_and_source(tmp_path)
    batch = source[4]
    cached = tune.cache_features(model, source, first_step=4, batches=1, workers=0)[0]
    assert "neg_tokens" in batch and len(cached["text"]) == len(batch["tokens"]) + len(batch["neg_tokens"])
    with torch.no_grad():
        img = model.visual.attnpool(model.visual.layer4(cached["image"].float()))
        ref = model.encode_image(batch["images"])
        txt = cached["text"] @ model.text_projection
        ref_txt = model.encode_text(torch.cat([batch["tokens"], batch["neg_tokens"]]))
    assert torch.nn.functional.cosine_similarity(img, ref).min() > 0.999  # features cached as fp16
    assert torch.allclose(txt, ref_txt, atol=1e-5)


def test_stage2_tunes_only_the_top_and_lowers_its_loss(tmp_path: Path) -> None:
    model, source = _fresh_model_and_source(tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = tune.tune_top(model, source, first_step=10, seed=0, batches=3, epochs=4, lr=1e-3,
                             workers=0, threads=1, log=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert all(k.startswith(("visual.layer4.", "visual.attnpool.", "text_projection")) for k in changed)
    assert "text_projection" in changed and "visual.attnpool.c_proj.weight" in changed
    assert "visual.layer4.0.conv1.weight" in changed
    assert res["epoch_loss"][-1] < res["epoch_loss"][0], res
    assert all(p.requires_grad for p in model.parameters()) and not model.training


def test_short_training_writes_loadable_files(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    cmd = [sys.executable, "-m", "clipsearch.tiny.train", "--out", str(out), "--seed", "0",
           "--steps", "24", "--batch-size", "24", "--workers", "1", "--eval-n", "48",
           "--tune-batches", "4", "--tune-epochs", "2"]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, timeout=600)
    cfg = json.loads((out / "clipsearch-tiny.json").read_text())
    assert isinstance(cfg["vision_cfg"]["layers"], list) and cfg["text_cfg"]["context_length"] == 32
    weights = out / "clipsearch-tiny.safetensors"
    assert weights.stat().st_size <= 25 * 1024 * 1024
    log = json.loads((out / "train_log.json").read_text())
    assert log["seed"] == 0 and log["steps_done"] == 24 and "t2i_p10" in log["final_eval"]
    assert log["tune"]["batches"] == 4 and "t2i_p10" in log["stage1_eval"]
    assert log["final_eval"]["model_id"].startswith("clipsearch-tiny#")
    assert (out / "clipsearch-tiny.captions.txt").read_text().splitlines() == captions.tiny_captions()
    _check_loads_like_core(out / "stage1")
    _check_loads_like_core(out)


def test_stage2_runs_alone_on_a_stage1_model(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    train.train(tmp_path / "s1", seed=1, steps=2, batch_size=12, workers=0, eval_n=0, tune_batches=0)
    tune.main(["--model-dir", str(tmp_path / "s1"), "--out", str(tmp_path / "s2"), "--seed", "1",
               "--first-step", "2", "--batch-size", "12", "--batches", "2", "--epochs", "1",
               "--workers", "0", "--eval-n", "96"])
    log = json.loads((tmp_path / "s2" / "tune_log.json").read_text())
    assert log["batches"] == 2 and set(log["eval_before"]) == set(log["eval_after"]) >= {"i2i_p10"}
    before = load_file(str(tmp_path / "s1" / "clipsearch-tiny.safetensors"))
    after = load_file(str(tmp_path / "s2" / "clipsearch-tiny.safetensors"))
    assert not torch.equal(before["text_projection"], after["text_projection"])
    assert torch.equal(before["visual.layer1.0.conv1.weight"], after["visual.layer1.0.conv1.weight"])
    _check_loads_like_core(tmp_path / "s2")


def _check_loads_like_core(model_dir: Path) -> None:
    """The exact loading code the core uses must work on the files."""
    open_clip.add_model_config(str(model_dir / "clipsearch-tiny.json"))
    model, _, preprocess = open_clip.create_model_and_transforms(
        "clipsearch-tiny", pretrained=str(model_dir / "clipsearch-tiny.safetensors"))
    tok = open_clip.get_tokenizer("clipsearch-tiny")
    model.eval()
    img = render_shape(ShapeSpec("star", "red"), np.random.default_rng(0), size=150)
    with torch.no_grad():
        ie = model.encode_image(preprocess(img)[None], normalize=True)
        te = model.encode_text(tok(["a red star"]), normalize=True)
    assert ie.shape == te.shape and ie.dtype == torch.float32
    assert torch.isfinite(ie).all() and torch.isfinite(te).all()


# ----------------------------------------------------------------------------- shipped model


def test_shipped_model_loads() -> None:
    _check_loads_like_core(SHIPPED)
    assert (SHIPPED / "clipsearch-tiny.safetensors").stat().st_size <= 25 * 1024 * 1024


def test_shipped_captions_are_the_generators() -> None:
    """The caption file centering reads is what the lab's generator writes (regenerate both)."""
    shipped = (SHIPPED / "clipsearch-tiny.captions.txt").read_text().splitlines()
    assert shipped == captions.tiny_captions()
    assert domain_captions(resolve("clipsearch-tiny")) == shipped


def test_shipped_model_quality_floor() -> None:
    from clipsearch.tiny.eval import evaluate

    # Floors sit below the shipped model's measured n=200 figures (t2i 0.959, i2i 0.912,
    # full 0.959, position 0.98 -- a small set has few look-alikes; chance is ~0.02 for the
    # first three, 0.2 for position). Raise them with the model.
    res = evaluate(SHIPPED, n=200, seed=777)
    assert res["model_id"] == resolve("clipsearch-tiny").model_id() and len(res["weights_sha256"]) == 64
    assert res["t2i_p10"] >= 0.9, res
    assert res["i2i_p10"] >= 0.85, res
    assert res["full_r1"] >= 0.85, res
    assert res["size_acc"] >= 0.9, res
    assert res["position_acc"] >= 0.85, res


def test_shipped_model_prefers_the_right_colour() -> None:
    from clipsearch.tiny.eval import embed_images, embed_texts, load_model

    model, preprocess, tok = load_model(SHIPPED)
    rng = np.random.default_rng(99)
    specs = [ShapeSpec(s, c) for s, c in [("star", "red"), ("star", "blue"), ("circle", "red"),
                                          ("cross", "red"), ("star", "orange")]]
    imgs = [render_shape(s, rng, size=128, background="plain") for s in specs]
    sims = embed_texts(model, tok, ["a red star", "a photo of a red star"]) @ \
        embed_images(model, preprocess, imgs).t()
    assert (sims[:, 0] > sims[:, 1]).all()  # a red star beats a blue star
    assert (sims[:, 0] > sims[:, 4]).all()  # ... and an orange star
