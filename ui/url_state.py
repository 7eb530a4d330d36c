"""A search as a URL query string, so it can be shared, bookmarked and reached with Back.

`encode` writes what a search asked for (text, not-terms, kind, folder, filters, sort, how many
pages, whether weaker matches were shown, "more like" an item); `decode` reads it back as the
UI's field values. An uploaded picture that is not an item cannot travel in a URL and is left out.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode

from clipsearch.ui.api import KIND_LABELS

# Browser side: the query string to read on load, and a history entry per new search. Back and
# Forward reload the page, which reads its query string again.
READ_JS = """(qs) => {
  if (!window.__csPopstate) {
    window.__csPopstate = true;
    window.addEventListener('popstate', () => location.reload());
  }
  return [location.search];
}"""
PUSH_JS = """(qs) => {
  if ((location.search || '') !== (qs || '')) history.pushState(null, '', qs || location.pathname);
  return [];
}"""
FILTERS = ("after", "before", "place", "camera")
BROWSE_VIEWS = ("date", "topics")
MAX_TOPIC = 10_000
FLAGS = ("whiten", "center", "invert")
MAX_PAGES = 20  # a URL cannot make the server page further than this in one go
_ITEM_ID = re.compile(r"^[0-9a-f]{32}$")
KIND_OF_LABEL = {label: kind for label, kind in KIND_LABELS.items()}
LABEL_OF_KIND = {kind: label for label, kind in KIND_LABELS.items() if kind}


def encode(query: dict[str, Any], page: int = 1) -> str:
    """`?q=...&kind=image&page=2`, `?browse=topics&topic=3` while browsing, or "" when there is
    no query to share (and for the default view, the collection by date)."""
    pairs: list[tuple[str, str]] = []
    if query.get("browse") in BROWSE_VIEWS:
        if query["browse"] != "date" or page > 1:
            pairs.append(("browse", str(query["browse"])))
        if query["browse"] == "topics" and query.get("topic") is not None:
            pairs.append(("topic", str(int(query["topic"]))))
        if page > 1:
            pairs.append(("page", str(page)))
        return "?" + urlencode(pairs) if pairs else ""
    if query.get("like"):
        pairs.append(("like", str(query["like"])))
    elif query.get("text"):
        pairs.append(("q", str(query["text"])))
    if not pairs:
        return ""
    for neg in query.get("negative") or ():
        if neg:
            pairs.append(("not", str(neg)))
    if query.get("kind"):
        pairs.append(("kind", str(query["kind"])))
    if query.get("under"):
        pairs.append(("under", str(query["under"])))
    for name in FILTERS:
        value = (query.get("filters") or {}).get(name)
        if value:
            pairs.append((name, str(value)))
    if query.get("sort") and query["sort"] != "Best match":
        pairs.append(("sort", str(query["sort"])))
    pairs += [(flag, "1") for flag in FLAGS if query.get(flag)]
    if query.get("min_relevance") == "off":
        pairs.append(("weaker", "1"))
    if page > 1:
        pairs.append(("page", str(page)))
    return "?" + urlencode(pairs)


def decode(qs: str, sort_labels: dict[str, Any]) -> tuple[dict[str, Any], int] | None:
    """(the UI's field values, pages to show) from a query string; None when it holds no query.
    Unknown or malformed parts are dropped, never an error: a URL is typed by anyone."""
    params: dict[str, list[str]] = {}
    for key, value in parse_qsl(qs.lstrip("?"), keep_blank_values=False):
        params.setdefault(key, []).append(value[:1000])
    one = lambda name: (params.get(name) or [""])[0].strip()  # noqa: E731
    like = one("like").lower()
    text = one("q")
    if not (text or _ITEM_ID.match(like)):
        return None
    sort = one("sort")
    try:
        page = min(MAX_PAGES, max(1, int(one("page") or 1)))
    except ValueError:
        page = 1
    fields = {
        "text": "" if _ITEM_ID.match(like) else text,
        "like": like if _ITEM_ID.match(like) else None,
        "negative": " + ".join(n for n in params.get("not", []) if n.strip()),
        "kind": LABEL_OF_KIND.get(one("kind"), "All"),
        "under": one("under"),
        "sort": sort if sort in sort_labels else "Best match",
        "weaker": one("weaker") == "1",
        **{name: one(name) for name in FILTERS},
        **{flag: one(flag) == "1" for flag in FLAGS},
    }
    return fields, page


def decode_browse(qs: str) -> tuple[dict[str, Any], int]:
    """(the browse view, pages to show) of a URL without a query: `browse=date` (the default)
    or `browse=topics`, with `topic=N` one topic's items. Malformed parts are dropped."""
    params = dict(parse_qsl(qs.lstrip("?"), keep_blank_values=False))
    by = params.get("browse", "date").strip()
    view: dict[str, Any] = {"browse": by if by in BROWSE_VIEWS else "date"}
    topic = params.get("topic", "").strip()
    if view["browse"] == "topics" and topic.isdigit() and int(topic) <= MAX_TOPIC:
        view["topic"] = int(topic)
    try:
        page = min(MAX_PAGES, max(1, int(params.get("page") or 1)))
    except ValueError:
        page = 1
    return view, page
