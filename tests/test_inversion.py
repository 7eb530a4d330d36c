"""OTI: the pseudo-token text path reproduces open_clip exactly, and inversion finds the image."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from clipsearch.errors import TransformError
from clipsearch.inversion import (
    encode_text_with_pseudo_token,
    oti,
    placeholder_ids,
)


def small_clip(seed: int = 0) -> CLIP:
    """A random CLIP with open_clip's real text-tower code, small enough for CPU tests."""
    torch.manual_seed(seed)
    model = CLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, patch_size=16, image_size=32, head_width=16),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2),
    )
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: threads only add overhead (a lot on a busy shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model() -> CLIP:
    return small_clip()


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.get_tokenizer("ViT-B-32")


def test_pseudo_token_equals_encode_text_for_a_real_token(model, tokenizer):
    # Known answer: injecting the embeddings of real words must give encode_text exactly.
    words = ["dog", "star", "house"]
    ids = tokenizer([f"a photo of {w}" for w in words])
    word_ids = torch.stack([tokenizer([w])[0][1] for w in words])
    real = model.token_embedding.weight[word_ids].detach()
    with torch.no_grad():
        expected = model.encode_text(ids)
        got = encode_text_with_pseudo_token(model, tokenizer, "a photo of {}", real)
        got_trunc = encode_text_with_pseudo_token(model, tokenizer, "a photo of {}", real, truncate=True)
    assert torch.equal(got, expected)
    torch.testing.assert_close(got_trunc, expected, atol=1e-5, rtol=1e-5)


def test_pseudo_token_matches_custom_text_clip(tokenizer):
    # CustomTextCLIP keeps its text tower under `.text`; the same known answer must hold.
    torch.manual_seed(1)
    model = open_clip.model.CustomTextCLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, patch_size=16, image_size=32, head_width=16),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
    ).eval()
    ids = tokenizer(["a drawing of cat"])
    real = model.text.token_embedding.weight[tokenizer(["cat"])[0][1]][None].detach()
    with torch.no_grad():
        assert torch.equal(
            encode_text_with_pseudo_token(model, tokenizer, "a drawing of {}", real), model.encode_text(ids)
        )


def test_placeholder_validation(tokenizer):
    ids, pos = placeholder_ids(tokenizer, "a photo of {}")
    assert ids[0, pos] == tokenizer(["*"])[0][1]
    with pytest.raises(TransformError, match="exactly one"):
        placeholder_ids(tokenizer, "a photo of {} and {}")
    with pytest.raises(TransformError, match="single token"):
        placeholder_ids(tokenizer, "a photo of {}", placeholder="unbelievableness")


def test_oti_recovers_a_text_reachable_target(model, tokenizer):
    # Targets produced by the text tower itself (with random pseudo-words) are reachable;
    # OTI must get much closer to them than a random start and than any real vocabulary word.
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(4, 32, generator=gen) * 0.05
    with torch.no_grad():
        targets = torch.nn.functional.normalize(
            encode_text_with_pseudo_token(model, tokenizer, "a photo of {}", hidden), dim=-1
        ).numpy()
    res = oti(model, tokenizer, targets, steps=60, batch_size=2, seed=0)
    assert res.features.shape == (4, 32) and res.features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(res.features, axis=1), 1.0, atol=1e-5)
    assert res.loss_curve[-1] < res.loss_curve[0]
    vocab = ["dog", "cat", "red", "star", "house", "car", "tree", "blue", "circle", "man"]
    with torch.no_grad():
        words = torch.nn.functional.normalize(
            model.encode_text(tokenizer([f"a photo of {w}" for w in vocab])), dim=-1
        ).numpy()
    best_word = (targets @ words.T).max(axis=1)
    assert np.all(res.cosines > best_word)
    assert np.all(res.cosines > 0.95)


def test_oti_batching_does_not_change_results(model, tokenizer):
    rng = np.random.default_rng(0)
    targets = rng.normal(size=(3, 32)).astype(np.float32)
    one = oti(model, tokenizer, targets, steps=5, batch_size=3, seed=7)
    again = oti(model, tokenizer, targets, steps=5, batch_size=3, seed=7)
    assert np.array_equal(one.features, again.features)


def test_oti_leaves_model_frozen_state_alone(model, tokenizer):
    flags = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    oti(model, tokenizer, np.ones((1, 32), np.float32), steps=3)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_oti_never_changes_model_state_while_it_runs(tokenizer):
    """Other threads encode with the same model during OTI: no flag may flip, even briefly."""
    model = small_clip().train()  # trainable parameters, train mode: both must stay so
    seen = []

    def look(*_):
        seen.append((model.training, any(p.requires_grad for p in model.parameters())))

    hook = model.transformer.register_forward_hook(look)
    try:
        oti(model, tokenizer, np.ones((1, 32), np.float32), steps=3)
    finally:
        hook.remove()
    assert seen and set(seen) == {(True, True)}
    assert all(p.grad is None for p in model.parameters())


def test_oti_rejects_bad_targets(model, tokenizer):
    with pytest.raises(TransformError):
        oti(model, tokenizer, np.zeros((0, 32), np.float32))
    with pytest.raises(TransformError):
        oti(model, tokenizer, np.ones((1, 32), np.float32), steps=0)


# The bare pseudo-word inverts the tiny model more reliably than "a photo of *": closer than
# the best class caption on 98% vs 88% of queries (65% vs 100% on an earlier checkpoint).
TINY_TEMPLATE = "{}"


def _tiny_encoder():
    from clipsearch.model_registry import tiny_files

    if not tiny_files()[1].is_file():
        pytest.skip("clipsearch-tiny weights not trained yet (clipsearch/models/clipsearch-tiny.safetensors)")
    from clipsearch.encoders import Encoder

    return Encoder.load("clipsearch-tiny", device="cpu")


def test_oti_beats_best_vocabulary_caption_with_tiny_model():
    # Known answer on the real bundled model: the inverted text feature is closer to the
    # image than the best caption the model's own vocabulary can write.
    enc = _tiny_encoder()
    from clipsearch.inversion import invert_images
    from clipsearch.tiny.synth import shapes

    rng = np.random.default_rng(11)
    specs = [shapes.ShapeSpec("star", "red"), shapes.ShapeSpec("circle", "blue", "large", "left"),
             shapes.ShapeSpec("cross", "yellow", "small", "top"), shapes.ShapeSpec("diamond", "purple")]
    images = [shapes.render_shape(s, rng, size=enc.image_size) for s in specs]
    img = enc.encode_images(images)
    captions = [shapes.canonical_query(shapes.ShapeSpec(sh, c, sz, pos), full=True)
                for sh in shapes.SHAPES for c in shapes.COLORS
                for sz in (None, *shapes.SIZES) for pos in (None, *shapes.POSITIONS)]
    best_caption = (img @ enc.encode_texts(captions).T).max(axis=1)
    inv = invert_images(enc, images, batch_size=4, template=TINY_TEMPLATE)
    oti_cos = np.sum(inv * img, axis=1)
    assert np.all(oti_cos > best_caption), (oti_cos, best_caption)


class _StandInEncoder:
    """The Encoder interface over a small random CLIP (for plumbing tests, not quality)."""

    model_id, dim, context_length, image_size = "standin", 32, 77, 32

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.preprocess = open_clip.image_transform(32, is_train=False)

    def encode_images(self, images):
        with torch.no_grad():
            x = self.model.encode_image(torch.stack([self.preprocess(im) for im in images]))
        return torch.nn.functional.normalize(x, dim=-1).numpy()

    def encode_texts(self, texts):
        with torch.no_grad():
            x = self.model.encode_text(self.tokenizer(texts))
        return torch.nn.functional.normalize(x, dim=-1).numpy()


def test_eval_transforms_end_to_end_plumbing(model, tokenizer, tmp_path):
    from clipsearch.tiny.eval_transforms import evaluate, make_shapes_dataset, to_markdown

    make_shapes_dataset(tmp_path, per_class=2, image_size=32)
    res = evaluate(tmp_path, _StandInEncoder(model, tokenizer), invert_queries=8, steps=2, batch_size=8,
                   caption_limit=100)
    methods = [r.method for r in res["image_rows"]]
    assert methods[0] == "raw" and any(m.startswith("invert") for m in methods)
    assert any("center" in m for m in methods)
    assert res["notes"]  # 96 images cannot support whitening 32 dims: said, not crashed
    assert all(0.0 <= r.map <= 1.0 and 0.0 <= r.p10 <= 1.0 for r in res["image_rows"] + res["text_rows"])
    md = to_markdown(res)
    assert "| raw |" in md and "OTI known answer" in md


# ---------------------------------------------------------------- OVI (optional, ViT only)


def test_pseudo_patches_equal_encode_image_for_real_patches(model):
    from clipsearch.inversion import encode_image_with_pseudo_tokens

    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        patches = model.visual.conv1(images).flatten(2).permute(0, 2, 1)
        assert torch.equal(encode_image_with_pseudo_tokens(model, patches), model.encode_image(images))


def test_ovi_reaches_image_side_targets(model):
    # Targets the image tower can produce (features of real inputs) must be recovered far
    # better than by any other input of the same kind.
    from clipsearch.inversion import ovi

    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = torch.nn.functional.normalize(model.encode_image(images), dim=-1).numpy()
    res = ovi(model, feats[:2], n_tokens=4, steps=60, batch_size=2)
    assert res.loss_curve[-1] < res.loss_curve[0]
    assert res.features.shape == (2, 32)
    best_other = (feats[:2] @ feats[2:].T).max(axis=1)
    assert np.all(res.cosines > best_other) and np.all(res.cosines > 0.9)


def test_ovi_refuses_non_vit_towers(tokenizer):
    from clipsearch.inversion import ovi

    torch.manual_seed(0)
    rn = CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=[1, 1, 1, 1], width=16, image_size=64),
              text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    with pytest.raises(TransformError, match="ViT image tower"):
        ovi(rn, np.ones((1, 32), np.float32), steps=1)
