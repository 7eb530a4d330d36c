"""Human names for the kinds of things a collection holds, as the UI shows them.

The core's kinds (`image`, `video_frame`, `doc_page`, `ocr`, ...) are storage words; a person
looking at a result wants "Photo", "Video moment" or "Page 3".
"""

from __future__ import annotations

from typing import Any

# One name per stored kind; kinds not listed here read as "Item".
KIND_NAMES: dict[str, str] = {
    "image": "Photo",
    "moment": "Video moment",
    "video": "Video",
    "video_frame": "Video",
    "doc": "Page",
    "doc_page": "Page",
    "doc_text": "Text",
    "ocr": "Words",
    "speech": "Speech",
    "audio": "Audio",
}

PAGE_KINDS = ("doc", "doc_page", "doc_text")

# The Kind selector's choices (label → the `kind` a search takes; "doc" needs text, image queries
# use pages): the same names as the results, in the URL as the kind itself (`?kind=image`).
KIND_CHOICES: dict[str, str | None] = {
    "All": None,
    "Photo": "image",
    "Video moment": "moment",
    "Video": "video",
    "Page": "doc",
    "Words in pictures": "ocr",
    "Speech": "speech",
}
# The selector's labels of earlier releases, still taken by the API's `kind` parameter.
OLD_KIND_LABELS: dict[str, str] = {"Images": "image", "Video moments": "moment", "Videos": "video",
                                   "Document pages": "doc"}


# The `kind` values a search takes; one of these is itself, never read as a label ("page").
SEARCH_KINDS = frozenset({"all", "image", "video", "moment", "doc", "frame", "page", "ocr", "speech",
                          "audio"})
_KIND_OF_WORD = {word.lower(): kind for word, kind in {**OLD_KIND_LABELS, **KIND_CHOICES}.items()}


def kind_of_label(label: str | None) -> str | None:
    """The `kind` a search takes for a value given as a kind, a selector label (any case) or an
    earlier label; None for All or nothing."""
    word = (label or "").strip()
    if not word or word.lower() in SEARCH_KINDS:
        return word.lower() if word and word.lower() != "all" else None
    return _KIND_OF_WORD.get(word.lower(), word)


def kind_name(kind: str) -> str:
    """The human name of a stored kind: "Photo", "Video moment", "Page", ..."""
    return KIND_NAMES.get(kind, "Item")


def fmt_time(t: float | None) -> str:
    """A position in a video as people write it: 0:04.2, or 4.2s under a minute."""
    if t is None:
        return "?"
    m, s = divmod(float(t), 60)
    return f"{int(m)}:{s:04.1f}" if m else f"{s:.1f}s"


def hit_label(hit: dict[str, Any]) -> str:
    """What a result is, in words: "Video moment 0:04–0:09", "Page 3", "Words, page 2", "Photo"."""
    kind = hit["kind"]
    if kind == "speech":
        return f"Speech {fmt_time(hit.get('t_start'))}–{fmt_time(hit.get('t_end'))}"
    if kind == "moment":
        return f"Video moment {fmt_time(hit.get('t_start'))}–{fmt_time(hit.get('t_end'))}"
    if kind in ("video_frame", "video"):
        return f"Video at {fmt_time(hit.get('t_start'))}" if hit.get("t_start") is not None else "Video"
    if kind in PAGE_KINDS:
        return f"Page {hit['page']}" if hit.get("page") else "Document"
    if kind == "ocr":
        return f"Words, page {hit['page']}" if hit.get("page") else "Words"
    return kind_name(kind)


def item_title(hit: dict[str, Any]) -> str:
    """A result's name with where in it: "annual_report.pdf p. 3", "clip.mp4 at 0:04.2"."""
    name = str(hit.get("name") or "")
    if hit.get("page"):
        return f"{name} p. {hit['page']}"
    if hit["kind"] in ("moment", "video_frame", "video", "speech") and hit.get("t_start") is not None:
        return f"{name} at {fmt_time(hit.get('t_start'))}"
    return name
