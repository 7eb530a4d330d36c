"""Token counts and token budgets with a tokenizer that is not CLIP's: a SigLIP-style one.

open_clip's SigLIP models tokenize with a Hugging Face sentencepiece tokenizer (HFTokenizer):
no `encode()`, no start marker, and padding with id 1, which is also its end marker. The one
here is built in the test the same way (a tiny Unigram model, Metaspace pre-tokenizer, `</s>`
appended and used as padding), saved to a folder and loaded by open_clip's own HFTokenizer.
"""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

pytest.importorskip("transformers")
from open_clip.tokenizer import HFTokenizer  # noqa: E402

from clipsearch.chunking import chunk_text  # noqa: E402
from clipsearch.encoders import Encoder  # noqa: E402
from clipsearch.errors import ModelUnavailable  # noqa: E402
from clipsearch.model_registry import ModelSpec  # noqa: E402
from clipsearch.tokens import count_tokens  # noqa: E402

CONTEXT = 16
PAD = EOS = 1
WORDS = ["a", "red", "star", "blue", "circle", "on", "the", "green", "grass", "of", "report"]
ARCH = "cs-siglip-test"


@pytest.fixture(scope="module")
def siglip_tokenizer(tmp_path_factory) -> HFTokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789")
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in letters]
    tk = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="</s>", unk_token="<unk>")
    folder = tmp_path_factory.mktemp("siglip-tok")
    fast.save_pretrained(folder)
    tok = HFTokenizer(str(folder), context_length=CONTEXT, clean="canonicalize")
    assert tok.tokenizer.pad_token_id == PAD == tok.tokenizer.eos_token_id
    return tok


def padded_length(tok: HFTokenizer, text: str) -> int:
    """The length open_clip's own padded output shows, read with a context long enough for it:
    the ids before the padding, plus the one end marker that looks like padding."""
    ids = tok([text], context_length=256)[0]
    assert ids[-1] == PAD, "context too short to see the whole text"
    return int((ids != PAD).sum()) + 1


@pytest.fixture(scope="module")
def encoder(siglip_tokenizer, tmp_path_factory) -> Encoder:
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
           "text_cfg": {"context_length": CONTEXT, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    folder = tmp_path_factory.mktemp("cfg")
    (folder / f"{ARCH}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(ARCH, pretrained=None)
    return Encoder(ModelSpec(arch=ARCH), model, preprocess, siglip_tokenizer, "cpu")


SHORT = ["", "a red star", "The green grass, of a REPORT!"]
TEXTS = [*SHORT, "zebra crossing 42", "star " * 30]


@pytest.mark.parametrize("text", TEXTS)
def test_count_is_the_length_the_tower_sees_not_the_context(siglip_tokenizer, text):
    n = count_tokens(siglip_tokenizer, text)
    assert n == padded_length(siglip_tokenizer, text)
    if text in SHORT:  # was: every text as long as the context (pad id 1 counted as text)
        assert n < CONTEXT


def test_empty_text_is_one_end_marker(encoder):
    assert encoder.count_tokens("") == 1
    assert encoder.count_tokens("a red star") == 4
    assert encoder.count_tokens("star " * 30) == 31 > encoder.context_length


def test_chunks_fit_the_siglip_context(encoder):
    text = " ".join(f"{w} report{i}" for i, w in enumerate(WORDS * 6))
    chunks = chunk_text(text, encoder.count_tokens, encoder.context_length, 4)
    assert len(chunks) > 3
    assert all(padded_length(encoder.tokenizer, c.text) <= CONTEXT for c in chunks)
    assert all(text[c.start:c.end] == c.text for c in chunks)
    vecs = encoder.encode_texts([c.text for c in chunks])
    assert vecs.shape == (len(chunks), encoder.dim)


def test_a_hugging_face_tokenizer_without_transformers_is_one_line(tmp_path, monkeypatch):
    from clipsearch.model_registry import tiny_files

    def no_transformers(*a, **k):
        raise ImportError("No module named 'transformers'", name="transformers")

    open_clip.add_model_config(str(tiny_files()[0]))
    monkeypatch.setattr(open_clip, "get_tokenizer", no_transformers)
    with pytest.raises(ModelUnavailable, match="transformers is not installed") as e:
        Encoder.load("clipsearch-tiny", device="cpu")
    assert "pip install" in e.value.hint
