"""The UI's browse view, shown while no query is typed: the collection by date (month
headings, newest first, "Load more") or by topic (a card per topic, label and count; a click
shows its items). Its cards are `.cs-tile`s (not `.cs-card`s: those are a search's results)
and open the same lightbox; its buttons go back to Python as `data-action`s."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

Card = Callable[..., str]  # app.card_html(hit, index, cls=..., top_line=...)
DATE, TOPICS = "date", "topics"

CSS = """
.cs-browse-tabs { display: flex; gap: 6px; margin: 0 0 8px; flex-wrap: wrap; }
.cs-browse-tabs button, .cs-back { border: 1px solid var(--border-color-primary); border-radius: 16px;
  padding: 4px 14px; cursor: pointer; background: var(--button-secondary-background-fill);
  color: var(--body-text-color); font-size: 14px; }
.cs-browse-tabs button[aria-selected='true'] { background: var(--color-accent); color: #fff;
  border-color: var(--color-accent); }
.cs-month { font-size: 15px; font-weight: 600; margin: 12px 0 6px; }
.cs-topics { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; }
.cs-topic { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 6px; cursor: pointer;
            background: var(--background-fill-secondary); color: var(--body-text-color); text-align: left;
            display: flex; flex-direction: column; gap: 4px; font-size: 13px; }
.cs-topic:hover, .cs-topic:focus-visible { outline: 2px solid var(--color-accent); }
.cs-topic-thumbs { display: grid; grid-template-columns: 1fr 1fr; gap: 2px; }
.cs-topic-thumbs img { width: 100%; aspect-ratio: 1 / 1; object-fit: cover; display: block; }
.cs-topic-label { font-weight: 600; overflow-wrap: normal; }
.cs-topic-count { color: var(--body-text-color-subdued); }
.cs-topic-head { display: flex; align-items: center; gap: 10px; flex-wrap: wrap; margin-bottom: 8px; }
.cs-topic-head h3 { font-size: 15px; margin: 0; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _tabs(by: str) -> str:
    tabs = [(DATE, "browse-date", "By date"), (TOPICS, "browse-topics", "Topics")]
    return ("<div class='cs-browse-tabs' role='tablist' aria-label='Browse the collection'>" + "".join(
        f"<button role='tab' data-action='{action}' data-by='{key}' aria-selected='{str(key == by).lower()}'>"
        f"{label}</button>" for key, action, label in tabs) + "</div>")


def _tiles(hits: list[dict], card: Card, start: int, dated: bool) -> str:
    out = []
    for i, h in enumerate(hits, start):
        when = (h.get("date") or "")[:10]
        top = (when, "taken" if h.get("dated") else "file date") if dated and when else ("", "")
        out.append(card(h, i, cls="cs-tile", top_line=top))
    return "".join(out)


def _grid(inner: str, label: str) -> str:
    return f"<div class='cs-bgrid' role='list' aria-label='{_e(label)}'>{inner}</div>"


def render_by_date(hits: list[dict], card: Card, empty: str = "Nothing to browse here.") -> str:
    """The date view: month headings (newest first), each over its items."""
    if not hits:
        return _tabs(DATE) + f"<div class='cs-empty'>{_e(empty)}</div>"
    parts, start = [], 0
    while start < len(hits):
        month = hits[start].get("month")
        stop = start
        while stop < len(hits) and hits[stop].get("month") == month:
            stop += 1
        label = hits[start].get("month_label") or month_label(month)
        parts.append(f"<section class='cs-month-group' data-month='{_e(month)}'>"
                     f"<h3 class='cs-month'>{_e(label)}</h3>"
                     + _grid(_tiles(hits[start:stop], card, start, dated=True), label) + "</section>")
        start = stop
    return _tabs(DATE) + "".join(parts)


def month_label(month: Any) -> str:
    from clipsearch.browse_date import month_label as label

    try:
        return label(str(month))
    except ValueError:
        return "Undated"


def render_topics(topics: list[dict], empty: str = "Nothing to browse here.") -> str:
    """The topics view: a card per topic, its example thumbnails, label and item count."""
    if not topics:
        return _tabs(TOPICS) + f"<div class='cs-empty'>{_e(empty)}</div>"
    cards = []
    for t in topics:
        thumbs = "".join(f"<img src='{_e(e['thumb_url'])}' alt='' loading='lazy'>"
                         for e in t.get("examples", []) if e.get("thumb_url"))
        n = int(t["size"])
        cards.append(f"<button class='cs-topic' data-action='topic' data-index='{int(t['id'])}' "
                     f"aria-label='{_e(t['label'])}, {n} items'>"
                     f"<span class='cs-topic-thumbs'>{thumbs}</span>"
                     f"<span class='cs-topic-label'>{_e(t['label'])}</span>"
                     f"<span class='cs-topic-count'>{n} item{'s' if n != 1 else ''}</span></button>")
    return (_tabs(TOPICS) + "<div class='cs-topics' role='list' aria-label='topics'>" + "".join(cards)
            + "</div>")


def render_topic(topic: dict | None, hits: list[dict], card: Card) -> str:
    """One topic's items, with the way back to every topic."""
    label = topic["label"] if topic else "Topic"
    count = f" · {int(topic['size'])} items" if topic else ""
    head = (f"<div class='cs-topic-head'><button class='cs-back' data-action='browse-topics'>← All topics"
            f"</button><h3 class='cs-topic-title'>{_e(label)}{_e(count)}</h3></div>")
    body = _grid(_tiles(hits, card, 0, dated=False), label) if hits else (
        "<div class='cs-empty'>Nothing in this topic.</div>")
    return _tabs(TOPICS) + head + body
