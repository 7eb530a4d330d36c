"""Query operators: several text and image terms, each with a signed weight, in one query.

A query is a list of `QueryTerm`s; its vector is the weighted sum of the terms' unit vectors,
renormalised (`combine`), so a negative term pushes its concept away. The inline form, typed on
the command line, in the HTTP API's `q` and in the UI's search box, is

    2:golden retriever + ./pool.jpg - indoors

Rules (README, "Query operators"):

- `+` and `-` separate terms only as words of their own (whitespace on both sides, or at the
  start): "t-shirt", "x+y" and "-5 degrees" stay one text term. A leading `-` makes the first
  term negative. Double quotes make a term words, whatever it holds (" + ", " - ", a path, an
  `id:`): `"rock - paper" - scissors`.
- `N:` before a term weights it (a number above 0, at most `MAX_WEIGHT`): `2:golden retriever`.
  A number followed by a colon and a digit is text ("10:30 meeting").
- `id:ITEM` (a row id, as hits and the HTTP API show it) is that item's stored vector.
- A term is an image file when it looks like a path: it starts with `/`, `./`, `../` or `~`, or
  it is one word ending with an image extension (`pool.jpg`). Such a term that names no file
  is a usage error naming it, never a text query. A term that only has a `/` inside
  ("AC/DC") is an image only when that file exists, else text. Servers (`paths=False`) never
  look at their disk for a term: a path-looking term is refused there.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipsearch.errors import UsageError

MAX_WEIGHT = 100.0
IMAGE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".hif",
    ".avif", ".jxl", ".apng", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf",
})
ID_PREFIX = "id:"
_ITEM_ID = re.compile(r"^[0-9a-f]{32}$")
# A weight: something that starts like a number, then a colon not followed by a digit.
_WEIGHT = re.compile(r"^\s*([+-]?[0-9.][0-9.eE+-]*)\s*:(?![0-9])\s*")
_PATH_START = ("/", "./", "../", "~", ".\\", "..\\")
SYNTAX_HINT = 'write terms as  "2:golden retriever + ./pool.jpg - indoors"  (README, "Query operators")'


@dataclass(frozen=True)
class QueryTerm:
    """One part of a query. `kind`: "text" (`value` is the words), "image" (`value` is a path
    or a decoded picture) or "item" (`value` is a row id whose stored vector is used).
    `weight` is signed: below 0 pushes the term's concept away."""

    kind: str
    value: str | Path | Image.Image
    weight: float = 1.0

    @property
    def label(self) -> str:
        """How the term reads in messages and the UI: its words, file name or `id:ITEM`."""
        if self.kind == "text":
            return str(self.value)
        if self.kind == "item":
            return ID_PREFIX + str(self.value)
        if isinstance(self.value, Image.Image):
            return "image"
        return str(self.value)

    def inline(self) -> str:
        """The term in the inline form, without its sign (`format_query` adds separators)."""
        body = self.label
        if self.kind == "image" and isinstance(self.value, Image.Image):
            raise UsageError("a decoded image has no inline form", hint="name its file instead")
        if self.kind == "image":
            if not _looks_like_path(body):
                body = os.path.join(".", body)  # "photos/a.jpg" reads as a path only if it exists
            if _SEPARATOR.search(f" {body} ") or '"' in body:
                raise UsageError(f"query term {body!r}: a path with ' + ', ' - ' or quotes has no "
                                 "inline form", hint="pass it with --image instead")
        elif self.kind == "text" and (_SEPARATOR.search(f" {body} ") or '"' in body or _WEIGHT.match(body)
                                      or _looks_like_path(body) or body.startswith(ID_PREFIX)
                                      or "/" in body or os.sep in body):
            body = '"' + body.replace('"', "'") + '"'
        weight = abs(self.weight)
        return body if weight == 1.0 else f"{weight:g}:{body}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: kind, label (words, file name or id:ITEM) and weight."""
        label = self.label
        if self.kind == "image" and not isinstance(self.value, Image.Image):
            label = os.path.basename(label) or label
        return {"kind": self.kind, "label": label, "weight": self.weight}


_SEPARATOR = re.compile(r"(?<=\s)[+-](?=\s)")


def text(words: str, weight: float = 1.0) -> QueryTerm:
    return QueryTerm("text", words, check_weight(weight, words))


def image(picture: str | os.PathLike[str] | Image.Image, weight: float = 1.0) -> QueryTerm:
    value = picture if isinstance(picture, Image.Image) else Path(picture)
    return QueryTerm("image", value, check_weight(weight, str(picture)))


def item(item_id: str, weight: float = 1.0) -> QueryTerm:
    rid = item_id[len(ID_PREFIX):] if item_id.startswith(ID_PREFIX) else item_id
    if not _ITEM_ID.match(rid):
        raise UsageError(f"query term {item_id!r}: not an item id (32 hex digits)",
                         hint="copy the id a search hit shows (its `id` field)")
    return QueryTerm("item", rid, check_weight(weight, item_id))


def check_weight(weight: Any, term: str) -> float:
    """A signed weight, refused when it is not a finite number with 0 < |w| <= MAX_WEIGHT."""
    try:
        w = float(weight)
    except (TypeError, ValueError):
        w = math.nan
    if not math.isfinite(w) or w == 0 or abs(w) > MAX_WEIGHT:
        raise UsageError(f"query term {term!r}: bad weight {weight!r}",
                         hint=f"a weight is a number above 0, at most {MAX_WEIGHT:g} "
                              "(a minus sign or ' - ' makes a term negative)")
    return w


def as_terms(terms: Iterable[Any] | str) -> list[QueryTerm]:
    """The Python API's typed form → terms: a `QueryTerm`, a `(term, weight)` pair, or a bare
    term (weight 1). A term is text (str), an image (`Path`, `os.PathLike` or a PIL image) or
    an item (`item(id)`); a str that looks like a path is refused rather than searched as
    words. A str passed alone is the inline form (`parse_query`)."""
    if isinstance(terms, str):
        return parse_query(terms)
    out = []
    for entry in terms:
        value, weight = entry if isinstance(entry, tuple) else (entry, None)
        if isinstance(value, QueryTerm):
            term = value if weight is None else replace(value, weight=check_weight(weight, value.label))
        elif isinstance(value, str):
            if not value.strip():
                raise UsageError("a query term is empty", hint="give words, an image path or an item")
            if _looks_like_path(value.strip()):  # a path passed as words would search for the words
                raise UsageError(f"query term {value!r} looks like a path, but a str is words",
                                 hint=f"pass Path({value!r}) for the image, or query_terms.text(...) "
                                      "for these words")
            term = text(value, 1.0 if weight is None else weight)
        elif isinstance(value, os.PathLike | Image.Image):
            term = image(value, 1.0 if weight is None else weight)
        else:
            raise UsageError(f"query term {value!r}: not text, an image or an item",
                             hint="use a str, a pathlib.Path, a PIL image or query_terms.item(ID)")
        out.append(term)
    return out


def parse_query(query: str, *, paths: bool = True, name: str = "the query") -> list[QueryTerm]:
    """The inline form → terms (rules in the module docstring). `paths=False` (a server):
    path-looking terms are refused and no file is looked up. `name` is what messages call the
    string (`--not`, the "not" box)."""
    terms = []
    for sign, raw, quoted in _split(query, name):
        terms.append(_term(raw, sign, quoted, query, paths, name))
    if not terms:
        raise UsageError(f"{name} is empty", hint="type some words to search for")
    return terms


def negated(terms: Sequence[QueryTerm]) -> list[QueryTerm]:
    """Every term pushed away (the "not" box, `--not`)."""
    return [replace(t, weight=-t.weight) for t in terms]


def format_query(terms: Sequence[QueryTerm]) -> str:
    """Terms back in the inline form (what `parse_query` reads as the same terms)."""
    out = []
    for i, t in enumerate(terms):
        sep = ("- " if t.weight < 0 else "") if i == 0 else (" - " if t.weight < 0 else " + ")
        out.append(sep + t.inline())
    return "".join(out)


def modality_of(modalities: Sequence[str]) -> str:
    """A query's modality from its terms': theirs when they agree, else "mixed"."""
    kinds = set(modalities)
    return kinds.pop() if len(kinds) == 1 else "mixed"


def combine(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The weighted sum of unit term vectors, renormalised (float32). One term of weight 1 is
    its own vector, normalised; terms that cancel out (`a - a`) are a usage error."""
    v = np.sum([w * x if w != 1.0 else x for x, w in zip(vectors, weights, strict=True)], axis=0)
    norm = float(np.linalg.norm(v))
    if len(vectors) > 1 and norm < 1e-6:
        raise UsageError("the query's terms cancel out", hint="change a weight or drop a term")
    return (v / max(norm, 1e-12)).astype(np.float32)


def check_positive(terms: Sequence[QueryTerm]) -> None:
    """A query needs something to look for: at least one term with a positive weight."""
    if not any(t.weight > 0 for t in terms):
        names = ", ".join(repr(t.label) for t in terms)
        raise UsageError(f"the query has only negative terms ({names})",
                         hint="add what to look for: \"a dog - indoors\", or --not beside a QUERY")


# ---- parsing --------------------------------------------------------------------------------
def _split(query: str, name: str) -> list[tuple[int, str, bool]]:
    """(sign, raw term, whether it was quoted) for each term; separators as described above."""
    out: list[tuple[int, str, bool]] = []
    sign, buf, quoted, in_quote, sep = 1, "", False, False, ""
    for i, c in enumerate(query):
        standalone = (i == 0 or query[i - 1].isspace()) and (i + 1 == len(query) or query[i + 1].isspace())
        if c == '"':
            in_quote, quoted = not in_quote, True
            buf += c
        elif c in "+-" and not in_quote and standalone:
            if buf.strip() or quoted:
                out.append((sign, buf, quoted))
            elif out or sep:  # "a + + b", "- - a": nothing between two separators
                raise UsageError(f"{name} {query!r} has an empty term after '{sep or c}'",
                                 hint=SYNTAX_HINT)
            sign, buf, quoted, sep = (-1 if c == "-" else 1), "", False, c
        else:
            buf += c
    if in_quote:
        raise UsageError(f"{name} {query!r} has an unclosed quote", hint=SYNTAX_HINT)
    if buf.strip() or quoted:
        out.append((sign, buf, quoted))
    elif sep:  # "a -": a separator with nothing after it
        raise UsageError(f"{name} {query!r} has an empty term after '{sep}'", hint=SYNTAX_HINT)
    return out


def _term(raw: str, sign: int, quoted: bool, query: str, paths: bool, name: str) -> QueryTerm:
    body = raw.strip()
    weight = 1.0
    m = _WEIGHT.match(body)
    if m:
        if m.group(1).startswith("-"):
            raise UsageError(f"query term {body!r}: bad weight {m.group(1)!r}",
                             hint="weights are positive; write ' - ' before a term to push it away")
        weight = check_weight(m.group(1), body)
        body = body[m.end():].strip()
    if quoted:
        body = body.replace('"', "").strip()
    if not body:
        raise UsageError(f"{name} {query!r} has an empty term{' after its weight' if m else ''}",
                         hint=SYNTAX_HINT)
    w = sign * weight
    if quoted:  # quotes make words: never a file or an item
        return QueryTerm("text", body, w)
    if body.startswith(ID_PREFIX):
        return item(body, w)
    if _looks_like_path(body):
        if not paths:
            raise UsageError(f"query term {body!r}: this server does not open files by path",
                             hint="upload the image, or name an indexed item as id:ITEM_ID")
        p = Path(body).expanduser()
        if not p.is_file():
            raise UsageError(f"query term {body!r}: no such image file",
                             hint='check the path, or put the words in quotes after a weight: 1:"..."'
                             if not p.exists() else "name an image file, not a folder")
        return QueryTerm("image", p, w)
    if paths and ("/" in body or os.sep in body) and Path(body).expanduser().is_file():
        return QueryTerm("image", Path(body).expanduser(), w)
    return QueryTerm("text", body, w)


def _looks_like_path(body: str) -> bool:
    if body.startswith(_PATH_START):
        return True
    return not any(c.isspace() for c in body) and os.path.splitext(body)[1].lower() in IMAGE_SUFFIXES


def of(text_query: str | None = None, picture: Any = None,
       terms: Iterable[Any] | str | None = None) -> list[QueryTerm]:
    """The terms of a search: the classic `text` (literal words) and `image` first, each of
    weight 1, then `terms` (`as_terms`)."""
    out = []
    if text_query is not None:
        out.append(QueryTerm("text", text_query, 1.0))
    if picture is not None:
        out.append(picture if isinstance(picture, QueryTerm) else image(picture))
    if terms is not None:
        out += as_terms(terms)
    return out
