"""The text tower's tokenizer without torch or open_clip: a Hugging Face `tokenizers` file.

CLIP's BPE tokenizer (open_clip's `SimpleTokenizer`) is rebuilt as a `tokenizers` BPE model from
open_clip's own vocabulary and merges: the same split pattern, byte-level alphabet and `</w>`
word ends. open_clip cleans text before tokenizing (ftfy, HTML entities, whitespace, lower case);
that part runs here in Python, as open_clip runs it. Models with a Hugging Face tokenizer
(SigLIP, multilingual) keep their own `tokenizer.json`. Either way the export checks that this
tokenizer gives exactly open_clip's ids, and open_clip's token counts, on a probe set of texts
(`verify`); a tokenizer that differs anywhere is refused and the model stays on torch.
"""

from __future__ import annotations

import html
import re
import string
import threading
from pathlib import Path
from typing import Any

import numpy as np

FILE = "tokenizer.json"
CLIP_PATTERN = r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
CLIP_SPECIAL = ("<start_of_text>", "<end_of_text>")

# Texts the export tokenizes both ways: cases, accents, scripts, emoji, HTML entities, mojibake,
# contractions, digits, whitespace runs, literal special tokens, and texts past the context.
PROBE_TEXTS = (
    "a red star", "A Dog's LIFE!!", "naïve café — 東京タワー 🗼", "  many   spaces\tand\nlines ",
    "&amp; html &lt;b&gt; entities", "it's 2024, isn't it? we'd, you've, they're, I'll, I'm",
    "Ünïcödé ÀÉÎ straße ﬁnance", "mojibake: cafÃ©", "emoji 👍🏽 👨‍👩‍👧 ❤️", "don’t “quote” me",
    "Ελληνικά русский العربية हिन्दी 한국어", "3.14159 and 1,000,000 and 42nd",
    "<start_of_text> hi <end_of_text>",
    "under_score snake_case CamelCase", "", "x", "tab\u00a0nbsp\u2003em-space", "😀" * 40,
    "a photo of " * 40, " ".join(f"word{i}" for i in range(120)),
)


class UnsupportedTokenizer(ValueError):
    """The model's tokenizer is not one this module reproduces exactly."""


# ---- open_clip's text cleaning, without importing open_clip ------------------------------------
# Printable ASCII without entities is text ftfy and html.unescape leave as it is: a query made
# of it skips ftfy's import (a good part of a cold query's start-up).
_PLAIN = re.compile(r"[\x20-\x25\x27-\x7e\t\n\r]*")


def _basic_clean(text: str) -> str:
    if _PLAIN.fullmatch(text):
        return text.strip()
    import ftfy

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def _whitespace_clean(text: str) -> str:
    return " ".join(text.split()).strip()


_PUNCT = str.maketrans("", "", string.punctuation)


def clean(text: str, mode: str) -> str:
    """open_clip's clean functions: "lower" (CLIP), "whitespace" (HF default), "canonicalize"."""
    if mode == "lower":
        return _whitespace_clean(_basic_clean(text)).lower()
    if mode == "whitespace":
        return _whitespace_clean(_basic_clean(text))
    if mode == "canonicalize":
        t = _basic_clean(text).replace("_", " ").translate(_PUNCT).lower()
        return " ".join(t.split()).strip()
    raise UnsupportedTokenizer(f"unknown text cleaning {mode!r}")


def _clean_mode(fn: Any) -> str:
    name = getattr(fn, "__name__", "")
    modes = {"_clean_lower": "lower", "_clean_whitespace": "whitespace",
             "_clean_canonicalize": "canonicalize"}
    if name not in modes:
        raise UnsupportedTokenizer(f"text cleaning {name or fn!r} is not reproduced without open_clip")
    return modes[name]


# ---- building one at export time ---------------------------------------------------------------
def build(tokenizer: Any, folder: Path) -> dict[str, Any]:
    """Write `tokenizer.json` for an open_clip tokenizer into `folder`; returns its config (for
    the manifest). Raises UnsupportedTokenizer for a kind not reproduced here."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    context = int(getattr(tokenizer, "context_length", 0) or 0)
    if not context:
        raise UnsupportedTokenizer("the tokenizer has no context length")
    if hasattr(tokenizer, "bpe_ranks") and hasattr(tokenizer, "encoder"):  # open_clip SimpleTokenizer
        if getattr(tokenizer, "reduction_fn", None) is not None:
            raise UnsupportedTokenizer("tokenizers with a reduction mask are not reproduced")
        extra = [t for t in tokenizer.all_special_ids[2:]]
        if extra:
            raise UnsupportedTokenizer("additional special tokens are not reproduced")
        merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.get)
        hf = Tokenizer(models.BPE(vocab=dict(tokenizer.encoder), merges=merges, end_of_word_suffix="</w>",
                                  fuse_unk=False))
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        hf.add_special_tokens(list(CLIP_SPECIAL))
        hf.save(str(folder / FILE))
        return {"kind": "clip-bpe", "context_length": context, "clean": _clean_mode(tokenizer.clean_fn),
                "sot": int(tokenizer.sot_token_id), "eot": int(tokenizer.eot_token_id)}
    inner: Any = getattr(tokenizer, "tokenizer", None)
    backend = getattr(inner, "backend_tokenizer", None)
    if backend is None or getattr(inner, "pad_token_id", None) is None:
        raise UnsupportedTokenizer(f"{type(tokenizer).__name__} has no Hugging Face fast tokenizer")
    if getattr(tokenizer, "tokenizer_mode", ""):
        raise UnsupportedTokenizer(f"tokenizer mode {tokenizer.tokenizer_mode!r} is not reproduced")
    backend.save(str(folder / FILE))
    sep = inner.sep_token_id if getattr(tokenizer, "strip_sep_token", False) else None
    return {"kind": "hf", "context_length": context, "clean": _clean_mode(tokenizer.clean_fn),
            "pad": int(inner.pad_token_id), "strip_sep": None if sep is None else int(sep)}


def verify(reference: Any, ours: TextTokenizer, texts: tuple[str, ...] = PROBE_TEXTS) -> None:
    """Raise UnsupportedTokenizer unless `ours` gives `reference`'s ids and token counts."""
    from clipsearch.tokens import count_tokens

    want = np.asarray(reference(list(texts)))
    got = ours(list(texts))
    if want.shape != got.shape:
        raise UnsupportedTokenizer(f"token shape {got.shape} differs from open_clip's {want.shape}")
    for text, a, b in zip(texts, want, got, strict=True):
        if not np.array_equal(a, b):
            raise UnsupportedTokenizer(f"tokens of {text[:40]!r} differ from open_clip's")
        if count_tokens(reference, text) != ours.count(text):
            raise UnsupportedTokenizer(f"the token count of {text[:40]!r} differs from open_clip's")


# ---- running -----------------------------------------------------------------------------------
class TextTokenizer:
    """Texts in, (n, context_length) int64 ids out, as open_clip's tokenizer gives them."""

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        from tokenizers import Tokenizer

        self.config = config
        self.kind = config["kind"]
        self.context_length = int(config["context_length"])
        self.clean_mode = config["clean"]
        self._tk = Tokenizer.from_file(str(path))
        self._full = Tokenizer.from_file(str(path)) if self.kind == "hf" else self._tk
        if self.kind == "hf":
            self._tk.enable_truncation(max_length=self.context_length)
            self._tk.enable_padding(length=self.context_length, pad_id=int(config["pad"]))
            self._full.no_truncation()
            self._full.no_padding()
        # tokenizers objects refuse concurrent use from threads ("Already borrowed")
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> np.ndarray:
        cleaned = [clean(t, self.clean_mode) for t in texts]
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        with self._lock:
            if self.kind == "clip-bpe":
                encs = self._tk.encode_batch(cleaned, add_special_tokens=False)
            else:
                encs = self._tk.encode_batch(cleaned)
        for i, enc in enumerate(encs):
            if self.kind == "clip-bpe":
                ids = [self.config["sot"], *enc.ids, self.config["eot"]]
                if len(ids) > self.context_length:
                    ids = ids[:self.context_length]
                    ids[-1] = self.config["eot"]
                out[i, :len(ids)] = ids
            else:
                out[i] = enc.ids
        if self.kind == "hf" and self.config.get("strip_sep") is not None:
            out[out == self.config["strip_sep"]] = 0
        return out

    def count(self, text: str) -> int:
        """Tokens `text` takes, markers included, before truncation (see clipsearch.tokens)."""
        cleaned = clean(text, self.clean_mode)
        with self._lock:
            if self.kind == "clip-bpe":
                return len(self._tk.encode(cleaned, add_special_tokens=False).ids) + 2
            return int(sum(self._full.encode(cleaned).attention_mask))
