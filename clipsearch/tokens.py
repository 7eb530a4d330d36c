"""How many tokens a text tower sees for a text, whatever open_clip tokenizer the model has.

open_clip's tokenizers pad every text to the context length and cut what does not fit, so the
padded ids say neither how long a text really is nor, in general, where it ends: CLIP's BPE
pads with 0, SigLIP's sentencepiece pads with 1, which is also its end marker. So the count
comes from the tokenizer itself, untruncated: CLIP's `encode()` plus its start and end
markers, or a Hugging Face tokenizer's own attention mask with its special tokens.
"""

from __future__ import annotations

from typing import Any


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens `text` takes, markers included, before any truncation to the context length."""
    hf = getattr(tokenizer, "tokenizer", None)
    if hf is not None and hasattr(hf, "pad_token_id"):  # open_clip HFTokenizer / SigLipTokenizer
        return _count_hf(tokenizer, hf, text)
    if hasattr(tokenizer, "encode"):  # open_clip SimpleTokenizer: <start> + BPE + <end>
        return len(tokenizer.encode(text)) + 2
    return _count_padded(tokenizer, text)


def _count_hf(wrapper: Any, hf: Any, text: str) -> int:
    clean = getattr(wrapper, "clean_fn", None)
    text = clean(text) if callable(clean) else text
    if getattr(wrapper, "tokenizer_mode", "") == "clips":  # bos + text + eos, then a class token
        return len(hf(text, add_special_tokens=False, verbose=False)["input_ids"]) + 3
    enc = hf(text, add_special_tokens=True, truncation=False, padding=False,
             return_attention_mask=True, verbose=False)
    return int(sum(enc["attention_mask"]))


def _count_padded(tokenizer: Any, text: str) -> int:
    """Last resort for an unknown tokenizer: the non-pad ids of its padded output. It cannot
    see past the context length: an over-long text reads as exactly full."""
    pad = getattr(tokenizer, "pad_token_id", 0)
    ids = tokenizer([text])[0]
    return int((ids != pad).sum())


def truncation_note(encoder: Any, text: str) -> str | None:
    """A line for the caller when `text` is longer than `encoder` reads (any object with
    `count_tokens` and `context_length`), else None."""
    n = encoder.count_tokens(text)
    if n <= encoder.context_length:
        return None
    return (f"the query is {n} tokens; the model reads only the first {encoder.context_length}, "
            "so the rest was ignored: shorten it to what matters most")
