"""The Gradio Blocks: search box, image query, filters, result grid, detail view, named API.

Results are drawn as HTML cards whose images and videos come from the server's own guarded
/files routes (see `ui/files.py`), so Gradio never needs `allowed_paths`. Clicks on a card
come back to Python through `gr.HTML`'s `trigger`; everything a user types or uploads goes
through `SearchService`, the same code path as the REST API.
"""

from __future__ import annotations

import html
import os
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from clipsearch.ui import duplicates_page, lightbox, messages, transform_options, url_state  # noqa: E402
from clipsearch.ui.api import KIND_LABELS, PAGE_SIZE, SearchService, UploadRejected, folder_filter  # noqa: E402
from clipsearch.ui.browse_view import CSS as BROWSE_CSS  # noqa: E402
from clipsearch.ui.browse_view import DATE, TOPICS, render_by_date, render_topic, render_topics  # noqa: E402
from clipsearch.ui.duplicates_view import CSS as DUPLICATES_CSS  # noqa: E402
from clipsearch.ui.files import FileRefused  # noqa: E402
from clipsearch.ui.names import fmt_time, hit_label, item_title, kind_name  # noqa: E402

from clipsearch import query_terms  # noqa: E402
from clipsearch.errors import ClipsearchError, UsageError  # noqa: E402
from clipsearch.filters import Filters  # noqa: E402
from clipsearch.relevance import AUTO as AUTO_RELEVANCE  # noqa: E402
from clipsearch.speech import AUDIO_SUFFIXES  # noqa: E402

CSS = """
.cs-grid, .cs-bgrid { display: grid; grid-template-columns: repeat(auto-fill, minmax(140px, 1fr));
                     gap: 10px; }
.cs-card, .cs-tile { border: 1px solid var(--border-color-primary); border-radius: 8px; overflow: hidden;
           cursor: pointer; background: var(--background-fill-secondary); display: flex;
           flex-direction: column; }
.cs-card:hover, .cs-tile:hover { outline: 2px solid var(--color-accent); }
.cs-card img, .cs-tile img { width: 100%; aspect-ratio: 1 / 1; object-fit: cover; display: block;
           background: #222; }
.cs-noimg { width: 100%; aspect-ratio: 1 / 1; display: flex; align-items: center; justify-content: center;
            font-size: 13px; color: var(--body-text-color-subdued); }
.cs-cap { padding: 4px 6px; font-size: 12px; line-height: 1.3; flex: 1; }
.cs-score { font-weight: 600; }
.cs-cos { color: var(--body-text-color-subdued); margin-left: 4px; }
.cs-card.cs-weak { border-style: dashed; }
.cs-card.cs-weak img { opacity: 0.55; }
.cs-kind { float: right; color: var(--body-text-color); }
#cs-image .or { color: var(--body-text-color); }  /* Gradio's 'or' in the drop zone: readable */
footer .show-api, footer a, footer button { color: var(--body-text-color) !important; }  /* contrast */
.nav-holder nav a { color: var(--body-text-color) !important; }  /* the page links: contrast */
.cs-name { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.cs-snippet { color: var(--body-text-color-subdued); max-height: 3.9em; overflow: hidden; }
.cs-more { margin: 0 6px 6px; font-size: 12px; padding: 2px 6px; border-radius: 6px; cursor: pointer;
           border: 1px solid var(--border-color-primary);
           background: var(--button-secondary-background-fill); }
.cs-detail img { max-width: 100%; max-height: 60vh; display: block; margin: 0 auto; }
.cs-detail video { width: 100%; max-height: 60vh; display: block; background: #000; }
.cs-detail audio { width: 100%; display: block; }
.cs-said { font-size: 14px; margin: 4px 0; }
.cs-said-time { font-variant-numeric: tabular-nums; color: var(--body-text-color-subdued);
                margin-right: 6px; }
.cs-timeline { position: relative; height: 8px; background: var(--border-color-primary);
               border-radius: 4px; margin: 6px 0; }
.cs-seg { position: absolute; top: 0; height: 8px; background: var(--color-accent); border-radius: 4px;
          left: 0; width: 0; }
.cs-meta { font-size: 13px; margin-top: 8px; overflow-wrap: anywhere; }
.cs-meta td { padding: 1px 8px 1px 0; vertical-align: top; }
.cs-meta td:first-child { white-space: nowrap; overflow-wrap: normal; }
.cs-boxed { position: relative; display: table; margin: 0 auto; }
.cs-wordbox { position: absolute; border: 2px solid #ffd400; box-shadow: 0 0 0 1px #000; }
.cs-hidden { display: none !important; }
/* No layout jump: the status line keeps its place, messages their line, and the (closed)
   lightbox's holder takes no room, so nothing moves when a search's results arrive. */
#cs-status { min-height: 1.6em; }
#cs-message { min-height: 1.6em; }
#cs-detail { position: fixed !important; top: 0; left: 0; width: 0; height: 0; padding: 0; border: 0;
             overflow: visible; z-index: 1000; }
.cs-error, .cs-error p { color: var(--error-text-color, #b3261e); font-size: 13px; margin: 2px 0 0; }
/* Words wrap whole: a long path or file name breaks only where it must, never a word in two. */
.cs-cap, .cs-meta, .cs-chips, #cs-status { overflow-wrap: break-word; word-break: normal; hyphens: manual; }
.cs-opt-note { font-size: 12px; cursor: help; }
.cs-empty { padding: 24px; text-align: center; color: var(--body-text-color-subdued); }
.cs-chips { display: flex; flex-wrap: wrap; gap: 6px; font-size: 13px; }
.cs-chip { border: 1px solid var(--border-color-primary); border-radius: 12px; padding: 1px 4px 1px 10px;
           background: var(--background-fill-secondary); }
.cs-chip[data-sign='-'] { text-decoration: line-through; }
.cs-chip button { border: none; background: none; cursor: pointer; padding: 0 4px; font-size: 14px; }
"""
CSS += DUPLICATES_CSS + lightbox.CSS + BROWSE_CSS

# Clicks on cards/buttons go back to Python as trigger('click', {action, index}).
CLICK_JS = """
element.addEventListener('click', (ev) => {
  const b = ev.target.closest('[data-action]');
  if (!b || !element.contains(b)) return;
  if (b.tagName === 'A') return;
  ev.preventDefault();
  trigger('click', {action: b.dataset.action, index: parseInt(b.dataset.index || '-1', 10)});
});
"""

# The detail view's player starts at the moment's t_start and marks [t_start, t_end].
PLAYER_JS = CLICK_JS + lightbox.JS + """
const setup = () => {
  const v = element.querySelector('video[data-start], audio[data-start]');
  if (!v) return;
  const s = parseFloat(v.dataset.start), e = parseFloat(v.dataset.end);
  const place = () => {
    const d = v.duration, seg = element.querySelector('.cs-seg');
    if (seg && d > 0 && isFinite(d)) {
      seg.style.left = (100 * s / d) + '%';
      seg.style.width = Math.max(0.5, 100 * (e - s) / d) + '%';
    }
    if (Math.abs(v.currentTime - s) > 0.01) v.currentTime = s;
  };
  if (v.readyState >= 1) place(); else v.addEventListener('loadedmetadata', place, {once: true});
};
setup();
watch('value', setup);
"""

EMPTY_GRID = ("<div class='cs-empty'>Results appear here. Type a query and press Enter, "
              "or drop an image.</div>")
EMPTY_DETAIL = ""  # the lightbox is closed


# The UI's sort choices -> `search(sort=)`.
SORT_LABELS = {"Best match": None, "Oldest first": "date", "Newest first": "-date"}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _kind_label(hit: dict) -> str:
    return hit_label(hit)


def _word_box(box: Any) -> str:
    """The box where the words a hit was found by are, drawn over its picture (fractions)."""
    try:
        x0, y0, x1, y1 = (min(1.0, max(0.0, float(v))) for v in box)
    except (TypeError, ValueError):
        return ""
    if not (x1 > x0 and y1 > y0):
        return ""
    return (f"<div class='cs-wordbox' title='the words it was found by' style='left:{100 * x0:.2f}%;"
            f"top:{100 * y0:.2f}%;width:{100 * (x1 - x0):.2f}%;height:{100 * (y1 - y0):.2f}%'></div>")


def headline(hit: dict) -> tuple[str, str]:
    """(what a card shows first, its tooltip): the calibrated relevance (0..1, comparable across
    queries) when the hit has one, else its score; never a raw fused or negative number."""
    cosine = hit.get("cosine", hit.get("score"))
    detail = f"cosine {cosine:.3f}" if isinstance(cosine, (int, float)) else "found by its words"
    if hit.get("relevance") is not None:
        return f"{float(hit['relevance']):.2f}", f"relevance {float(hit['relevance']):.2f} · {detail}"
    return f"{max(float(hit['score']), 0.0):.3f}", f"score {float(hit['score']):.4f}"



def card_html(h: dict, i: int, weak: bool = False, cls: str = "cs-card",
              top_line: tuple[str, str] | None = None) -> str:
    """One result card (class `cls`): thumbnail, relevance (or `top_line`: text, tooltip), kind,
    file name, a snippet; Enter, Space or a click opens it (`data-action='open'`, its index in
    the state's hits)."""
    top, tip = top_line or headline(h)
    img = (f"<img src='{_e(h['thumb_url'])}' alt='{_e(h['name'])}' loading='lazy'>"
           if h.get("thumb_url") else f"<div class='cs-noimg'>{_e(_kind_label(h))}</div>")
    snippet = ""
    if h.get("text") and h["kind"] in ("doc", "doc_page", "doc_text"):
        snippet = f"<div class='cs-snippet'>{_e(h['text'][:160])}</div>"
    elif h.get("text") and (h["kind"] in ("moment", "speech") or h.get("words") == "speech"):
        snippet = f"<div class='cs-snippet cs-said'>“{_e(h['text'][:160])}”</div>"
    elif h.get("text") and (h["kind"] == "ocr" or h.get("words")):  # the words it was found by
        snippet = f"<div class='cs-snippet cs-words'>“{_e(h['text'][:160])}”</div>"
    return (f"<div class='{cls}{' cs-weak' if weak else ''}' data-action='open' data-index='{i}'"
            f" data-kind='{_e(h['kind'])}' title='{_e(h['source'])}' tabindex='0' role='listitem'"
            f" aria-label='{_e(item_title(h))}, {_e(_kind_label(h))}, {_e(top)}'>{img}<div class='cs-cap'>"
            f"<span class='cs-score' title='{_e(tip)}'>{_e(top)}</span>"
            f"<span class='cs-kind'>{_e(_kind_label(h))}</span>"
            f"<div class='cs-name'>{_e(h['name'])}</div>{snippet}</div>"
            f"<button class='cs-more' data-action='more' data-index='{i}'>More like this</button></div>")


def render_grid(hits: list[dict], cut: float | None = None, weaker: int = 0) -> str:
    """Result cards: thumbnail, relevance, kind, file name, and a page snippet for documents.
    With no cut in place (`cut` None), hits below the auto cut are shown dimmed. `weaker`: how
    many matches the cut left out (the grid says so, so that a script reading the page sees it
    in the same update as the cards)."""
    if not hits:
        return EMPTY_GRID
    cards = [card_html(h, i, weak=h.get("relevance") is not None and float(h["relevance"]) < AUTO_RELEVANCE
                       and cut is None) for i, h in enumerate(hits)]
    return (f"<div class='cs-grid' role='list' aria-label='results' data-weaker='{int(weaker)}'>"
            + "".join(cards) + "</div>")


def render_chips(terms: list[dict]) -> str:
    """The parts of a query with an image or several terms, each a chip with a remove button,
    so an image left in its box never changes a text search unseen. Nothing for plain text."""
    if not terms or (len(terms) == 1 and terms[0]["kind"] == "text"):
        return ""
    chips = []
    for i, t in enumerate(terms):
        sign = "-" if t["weight"] < 0 else "+"
        weight = abs(float(t["weight"]))
        what = {"image": "image: ", "item": "item: "}.get(t["kind"], "")
        text = ("not " if sign == "-" else "") + (f"{weight:g}× " if weight != 1 else "") + what + t["label"]
        chips.append(f"<span class='cs-chip' data-from='{_e(t['from'])}' data-kind='{_e(t['kind'])}' "
                     f"data-sign='{sign}'>{_e(text)}<button data-action='drop' data-index='{i}' "
                     f"title='remove this part of the query' aria-label='remove'>×</button></span>")
    return "<div class='cs-chips'>" + "".join(chips) + "</div>"


def without_term(box: str, index: int) -> str:
    """A search (or not) box's text with its `index`-th term removed, the rest as typed terms."""
    terms = query_terms.parse_query(box, paths=False)
    return query_terms.format_query([t for i, t in enumerate(terms) if i != index])


def _said(hit: dict) -> str:
    """The words said in a moment, with their time, for under the player."""
    if not hit.get("text"):
        return ""
    when = f"{fmt_time(hit.get('t_start'))}–{fmt_time(hit.get('t_end'))}"
    return f"<p class='cs-said'><span class='cs-said-time'>{_e(when)}</span> “{_e(hit['text'])}”</p>"


def render_detail(hit: dict | None, index: int = -1) -> str:
    """The full-size view of one result: the image, a player at the moment, or the page."""
    if hit is None:
        return EMPTY_DETAIL
    kind, media = hit["kind"], hit.get("media_url")
    if kind in ("moment", "speech") and media:
        s, e = float(hit.get("t_start") or 0.0), float(hit.get("t_end") or 0.0)
        tag = "audio" if os.path.splitext(hit["source"])[1].lower() in AUDIO_SUFFIXES else "video"
        view = (f"<{tag} class='cs-player' controls preload='auto' data-start='{s:.3f}' "
                f"data-end='{e:.3f}' src='{_e(media)}#t={s:.3f},{e:.3f}'></{tag}>"
                f"<div class='cs-timeline' title='the matching segment'><div class='cs-seg'></div></div>"
                + _said(hit))
    elif kind in ("video_frame", "video") and media:
        s = float(hit.get("t_start") or 0.0)
        e = float(hit.get("t_end") or s)
        view = (f"<video class='cs-player' controls preload='auto' data-start='{s:.3f}' "
                f"data-end='{e:.3f}' src='{_e(media)}#t={s:.3f}'></video>"
                f"<div class='cs-timeline'><div class='cs-seg'></div></div>"
                + (_said(hit) if hit.get("words") == "speech" else ""))
    elif (kind == "image" or (kind == "ocr" and hit.get("page") is None and hit.get("t_start") is None)) \
            and media:
        shown = hit.get("view_url") or media  # a HEIC or RAW original: its JPEG preview
        view = (f"<a href='{_e(media)}' target='_blank' rel='noopener' aria-label='open the original'>"
                f"<span class='cs-boxed'><img src='{_e(shown)}' alt='{_e(hit['name'])}'>"
                f"{_word_box(hit.get('box'))}</span></a>")
    elif hit.get("thumb_url"):
        view = f"<img src='{_e(hit['thumb_url'])}' alt='{_e(hit['name'])}'>"
    else:
        view = "<div class='cs-noimg'>no preview</div>"
    rows = [("Path", hit["source"]), ("Kind", kind_name(kind))]
    if hit.get("relevance") is None:  # browsing: the score is the typicality
        rows.append(("Score", f"{hit['score']:.4f}"))
    else:
        rows.append(("Relevance", f"{float(hit['relevance']):.2f}"))
        if "cosine" in hit or "signals" in hit:  # fused: the vector similarity and the rank score
            if hit.get("cosine") is not None:
                rows.append(("Cosine", f"{float(hit['cosine']):.4f}"))
            rows.append(("Fused rank score", f"{hit['score']:.4f}"))
        else:
            rows.append(("Cosine", f"{hit['score']:.4f}"))
    if hit.get("t_start") is not None:
        rows.append(("Time", f"{float(hit['t_start']):.2f}s – {float(hit.get('t_end') or 0):.2f}s"))
    if hit.get("page") is not None:
        rows.append(("Page", str(hit["page"])))
    if hit.get("duration") is not None:
        rows.append(("Duration", f"{float(hit['duration']):.1f}s"))
    if hit.get("taken_at"):
        source = {"mtime": " (file date)", "pdf": " (document)"}.get(hit.get("taken_at_source") or "", "")
        rows.append(("Date", hit["taken_at"][:16].replace("T", " ") + " UTC" + source))
    if hit.get("place"):
        rows.append(("Place", hit["place"]))
    if hit.get("camera"):
        rows.append(("Camera", hit["camera"] + (f" · {hit['lens']}" if hit.get("lens") else "")))
    size = [f"{hit['width']}×{hit['height']}"] if hit.get("width") and hit.get("height") else []
    if hit.get("bytes") is not None:
        size.append(f"{hit['bytes'] / 1e6:.1f} MB" if hit["bytes"] >= 100_000 else f"{hit['bytes']} bytes")
    if size:
        rows.append(("Size", " · ".join(size)))
    if hit.get("id"):
        rows.append(("Id", hit["id"]))
    live = ""
    if hit.get("companion"):
        other = "video" if kind == "image" else "still"
        name = _e(os.path.basename(hit["companion"]))
        target = (f"<a href='{_e(hit['companion_url'])}' target='_blank' rel='noopener'>{name}</a>"
                  if hit.get("companion_url") else name)
        live = f"<p class='cs-live'>Live Photo: its {other} is {target}</p>"
    table = "".join(f"<tr><td><b>{_e(k)}</b></td><td class='cs-f-{_e(k.lower())}'>{_e(v)}</td></tr>"
                    for k, v in rows)
    if hit.get("evidence"):
        rows.append(("Found by", {"both": "what is seen and what is said", "speech": "what is said",
                                  "visual": "what is seen"}.get(hit["evidence"], hit["evidence"])))
    spoken = kind in ("moment", "speech")
    snippet = f"<p class='cs-snippet-full'>{_e(hit['text'])}</p>" if hit.get("text") and not spoken else ""
    link = ""
    if media:
        href = media + (f"#page={hit['page']}" if hit.get("page") else "")
        link = f"<a href='{_e(href)}' target='_blank' rel='noopener'>Open original</a> · "
    return (f"<div class='cs-detail' data-kind='{_e(kind)}'>{view}<div class='cs-meta'>"
            f"<table>{table}</table>{live}{snippet}{link}"
            f"<button class='cs-more' data-action='more' data-index='{index}'>More like this</button>"
            f"</div></div>")


# The boxes an error is shown next to: the image box, the search box, the two dates, the folder;
# "" is the message line above the results (what no one control caused).
ERROR_PLACES = ("image", "query", "after", "before", "under")
N_OUTPUTS = 8 + len(ERROR_PLACES)  # what every search trigger returns (see `execute`)


def unchanged() -> tuple:
    """A search trigger's outputs, all left as they are."""
    return (gr.update(),) * N_OUTPUTS


def blame(service: SearchService, query: dict, e: Exception) -> str:
    """Which control a failed search's error belongs next to (one of ERROR_PLACES, or "")."""
    if isinstance(e, UploadRejected) and query.get("image") is not None and not query.get("like"):
        return "image"
    if refused_folder(query):
        return "under"
    filters = {k: v or None for k, v in (query.get("filters") or {}).items()}
    for box in ("after", "before"):
        try:
            Filters.parse(**{box: filters.get(box)})
        except ClipsearchError:
            return box
    try:
        Filters.parse(**filters)
    except ClipsearchError:
        return "before"  # "Taken from is not before Taken until": said by the second date
    try:
        service.query_terms(query.get("text"), query.get("negative") or ())
    except ClipsearchError:
        return "query"
    return ""


def refused_folder(query: dict) -> bool:
    """Whether the query's folder filter is one a search refuses."""
    try:
        folder_filter(query.get("under"))
    except UsageError:
        return True
    return False


def placed(text: str, place: str) -> tuple[str, ...]:
    """The message line and each control's error box, with `text` in `place` alone."""
    return (text if not place else "",) + tuple(text if place == p else "" for p in ERROR_PLACES)


def _message(text: str | None, error: bool = False) -> str:
    if not text:
        return ""
    return ("⚠️ " if error else "") + text


def _error_text(e: Exception) -> str:
    return messages.plain(e)


def undecoded_upload(payload) -> str | bytes | None:
    """An image box's input as the uploaded file's path (or a pasted data URL's bytes), with
    no pixel decoded: the server decodes it itself, under its pixel limit (`SearchService.decode`).
    `gr.Image` would decode it first, checked only by Pillow's process-wide limit."""
    if payload is None:
        return None
    if payload.url and payload.url.startswith("data:"):
        import base64
        import binascii

        try:
            return base64.b64decode(payload.url.partition(",")[2], validate=True)
        except (ValueError, binascii.Error):
            return b""  # said by the image box: "the upload is empty" (never a toast)
    return str(payload.path) if payload.path else None


def query_image_box(**kwargs) -> gr.Image:
    """The UI's image box: a `gr.Image` whose input reaches Python undecoded. (Set on the
    instance: a `gr.Image` subclass would make Gradio write a .pyi stub next to this module.)"""
    box = gr.Image(type="filepath", **kwargs)
    box.preprocess = undecoded_upload  # type: ignore[method-assign,assignment]
    return box


def build_blocks(service: SearchService) -> gr.Blocks:
    """The UI and its named API endpoints (search, search_image, moments, info)."""

    def status() -> str:
        return service.status_line()

    def options_now() -> tuple[str, list[str], dict[str, str | None], str]:
        """(status line, folders, why each transform is not offered, the note saying so)."""
        roots = service.roots() if service.exists() else []
        why = transform_options.available(service)
        note = "; ".join(f"{name.capitalize()} is not offered: {reason}" for name, reason in why.items()
                         if reason)
        note_html = (f"<span class='cs-opt-note' tabindex='0' title='{_e(note)}' aria-label='{_e(note)}'>"
                     "ⓘ some options are not offered</span>") if note else ""
        return status(), roots, why, note_html

    def filter_updates():
        line, roots, why, note_html = options_now()
        return (line, gr.update(choices=[""] + roots), gr.update(visible=why["whiten"] is None),
                gr.update(visible=why["center"] is None), gr.update(visible=why["invert"] is None), note_html)

    # The page is drawn with what is true now, so that the load event that refreshes it changes
    # nothing in the common case (no layout jump); a collection that cannot be read yet says so
    # on that refresh.
    try:
        first_line, first_roots, first_why, first_note = options_now()
    except Exception:  # noqa: BLE001 - the load event reports it
        first_line, first_roots, first_why, first_note = "", [], {}, ""

    def offered(option: str) -> bool:
        return option in first_why and first_why[option] is None

    def browse(query: dict, offset: int, previous: list[dict], page: int = 1) -> tuple:
        """No query: the browse view (`browse_view`) for `query` {"browse": "date" or "topics",
        "topic": N or None}; the same outputs as a search."""
        by, topic = query.get("browse"), query.get("topic")
        hits, more, msg = previous, False, ""
        try:
            if by == TOPICS and topic is None:
                view = render_topics(service.browse(by="topics")["topics"])
            else:
                res = service.browse(by=by or "date", topic=topic, k=PAGE_SIZE, offset=offset)
                hits, more = previous + res["hits"], bool(res["more"])
                view = (render_topic(res.get("topic"), hits, card_html) if by == TOPICS
                        else render_by_date(hits, card_html, res.get("message") or ""))
        except ClipsearchError as e:
            msg = _message(_error_text(e), error=True)
            view = (render_topics([], "") if by == TOPICS
                    else render_by_date(previous, card_html, ""))
        state = {"query": query, "hits": hits, "terms": [], "page": page}
        line, *boxes = placed(msg, "under" if msg and refused_folder(query) else "")
        return (view, EMPTY_DETAIL if not offset else gr.update(), line, gr.update(visible=more), state,
                status(), "", gr.update(visible=False), *boxes)

    def execute(query: dict, offset: int, previous: list[dict], page: int = 1) -> tuple:
        """Run `query` from `offset`; returns the outputs shared by every search trigger."""
        if query.get("browse"):
            return browse(query, offset, previous, page)
        terms: list[dict] = []
        failed = False
        place = ""
        try:
            res = service.search(query.get("text"), query.get("image"), k=PAGE_SIZE,
                                 kind=query.get("kind"), under=query.get("under"), offset=offset,
                                 whiten=query.get("whiten", False), center=query.get("center", False),
                                 invert=query.get("invert", False), negative=query.get("negative") or (),
                                 sort=SORT_LABELS.get(query.get("sort") or ""),
                                 min_relevance=query.get("min_relevance", "auto"), **query.get("filters", {}))
            hits = previous + res["hits"]
            terms = res.get("terms") or []
            msg = _message(res.get("message") if not res["hits"] else query.get("label"))
            msg = " · ".join([m for m in [msg] if m] + [_message(w, error=True) for w in res["warnings"]])
            n_weaker = len(res.get("weaker") or [])
            # with weaker matches cut, the next step is to show them (then paging goes on uncut)
            more = gr.update(visible=bool(res["more"]) and not n_weaker)
            weaker = gr.update(visible=bool(n_weaker), value=f"Show {n_weaker} weaker match"
                               + ("es" if n_weaker != 1 else ""))
            cut = res.get("min_relevance")
        except ClipsearchError as e:
            n_weaker = 0
            failed = True
            hits, msg, more = previous, _message(_error_text(e), error=True), gr.update(visible=False)
            weaker, cut = gr.update(visible=False), None
            place = blame(service, query, e)
        if failed:  # the message says it once, by the box that caused it; the grid keeps what it had
            grid = render_grid(hits, cut) if hits else EMPTY_GRID
        else:
            grid = render_grid(hits, cut, n_weaker) if hits or offset else (
                f"<div class='cs-empty'>{_e(msg or 'No results.')}</div>")
        state = {"query": query, "hits": hits, "terms": terms, "page": page}
        chips = render_chips(terms) if terms or not offset else gr.update()
        line, *boxes = placed(msg, place)
        return (grid, EMPTY_DETAIL if not offset else gr.update(), line, more, state, status(), chips, weaker,
                *boxes)

    def show_weaker(state):
        """The same query without the cut, from the top: the weaker matches appear dimmed after
        the relevant ones, and paging goes on from there."""
        if not state or not state.get("query"):
            hidden = gr.update(visible=False)
            return (gr.update(), gr.update(), "", hidden, state, status(), gr.update(), hidden,
                    *placed("", "")[1:])
        return execute(dict(state["query"], min_relevance="off"), 0, [])

    searched: dict[str, int] = {}  # page session -> how many searches it began

    def note_search(request: gr.Request | None) -> int:
        """A search began (its number in the page's session): a browse view still being drawn
        for that page, begun before it, is dropped rather than drawn over its results."""
        session = getattr(request, "session_hash", None)
        if not session:
            return 0
        if session not in searched and len(searched) >= 10_000:
            searched.pop(next(iter(searched)))
        searched[session] = searched.get(session, 0) + 1
        return searched[session]

    def superseded(request: gr.Request | None, mine: int) -> bool:
        session = getattr(request, "session_hash", None)
        return bool(session) and searched.get(str(session), 0) != mine

    def new_search(text, image, kind, under, whiten, center, invert, after, before, place, camera, sort,
                   negative="", request: gr.Request | None = None):
        mine = note_search(request)
        text = (text or "").strip().rstrip("+").strip()  # "id:ITEM + " left to be finished
        if not text and image is None:  # nothing asked: the collection by date
            out = execute({"browse": DATE}, 0, [])
            return unchanged() if superseded(request, mine) else out
        query = {"text": text or None, "image": image, "kind": KIND_LABELS.get(kind), "under": under,
                 "whiten": whiten, "center": center, "invert": invert, "sort": sort,
                 "negative": [negative] if (negative or "").strip() else [],
                 "filters": {"after": after, "before": before, "place": place, "camera": camera}}
        return execute(query, 0, [])

    def submit_search(text, image, *rest, request: gr.Request | None = None):
        """Enter in a box: an empty query keeps the results on screen rather than wiping them."""
        if not (text or "").strip().rstrip("+").strip() and image is None:
            return unchanged()
        note_search(request)
        return new_search(text, image, *rest)

    def load_more(state):
        if not state or not state.get("query"):
            return (gr.update(), gr.update(), "", gr.update(visible=False), state, status(), gr.update(),
                    gr.update(), *(gr.update(),) * len(ERROR_PLACES))
        return execute(state["query"], len(state["hits"]), state["hits"], int(state.get("page") or 1) + 1)

    def drop_chip(state, text_box, not_box, evt: gr.EventData):
        """A chip's remove button: that part leaves its box (the query runs again after)."""
        index = int(getattr(evt, "index", -1))
        terms = (state or {}).get("terms") or []
        if getattr(evt, "action", None) != "drop" or not 0 <= index < len(terms):
            return gr.update(), gr.update(), gr.update()
        origin = terms[index]["from"]
        nth = sum(1 for t in terms[:index] if t["from"] == origin)
        try:
            if origin == "image":
                return gr.update(), None, gr.update()
            if origin == "q":
                return without_term(text_box or "", nth), gr.update(), gr.update()
            return gr.update(), gr.update(), without_term(not_box or "", nth)
        except ClipsearchError:  # the box was edited since: clear that box
            keep = gr.update()
            return ("" if origin == "q" else keep), keep, ("" if origin == "not" else keep)

    def more_like(state, index: int, kind_label: str, under: str):
        hit = state["hits"][index]
        try:
            path = like_image_path(service, hit)
        except (FileRefused, ClipsearchError) as e:
            msg = getattr(e, "message", None) or str(e)
            return (gr.update(), gr.update(), _message(f"cannot search from this item: {msg}", True),
                    gr.update(), state, status(), gr.update(), gr.update(), *placed("", "")[1:])
        kind = KIND_LABELS.get(kind_label)
        query = {"text": None, "image": path, "under": under, "label": f"Items like {item_title(hit)}",
                 "like": hit.get("id"),
                 "kind": None if kind == "moment" else kind}
        return execute(query, 0, [])

    def on_click(state, kind_label, under, evt: gr.EventData, request: gr.Request | None = None):
        note_search(request)
        action, index = getattr(evt, "action", None), int(getattr(evt, "index", -1))
        hits = (state or {}).get("hits") or []
        if action == "more":
            if index < 0:
                index = int((state or {}).get("selected", -1))
            if not 0 <= index < len(hits):
                return unchanged()
            return more_like(state, index, kind_label, under)
        if action == "close":
            return (gr.update(), EMPTY_DETAIL) + unchanged()[2:]
        if action in ("browse-date", "browse-topics"):
            return execute({"browse": action.removeprefix("browse-")}, 0, [])
        if action == "topic" and index >= 0:
            return execute({"browse": TOPICS, "topic": index}, 0, [])
        if not 0 <= index < len(hits):
            return unchanged()
        state = dict(state, selected=index)
        view = lightbox.wrap(render_detail(hits[index], index), hits[index], index, len(hits))
        return (gr.update(), view, gr.update(), gr.update(), state) + unchanged()[5:]

    def from_url(qs: str, request: gr.Request | None = None):
        """The page's query string as field values and its results (on load, and on Back)."""
        decoded = url_state.decode(qs or "", SORT_LABELS)
        if decoded is None:  # no query: the browse view the URL names (by date by default)
            session = getattr(request, "session_hash", None)
            asked, page = url_state.decode_browse(qs or "")
            out = execute(asked, 0, [])
            for n in range(2, page + 1):
                if not out[4].get("hits") or len(out[4]["hits"]) < (n - 1) * PAGE_SIZE:
                    break
                out = execute(asked, len(out[4]["hits"]), out[4]["hits"], n)
            if session and searched.get(session):  # the page searched before its browse view came: it wins
                return (gr.update(),) * len(url_fields) + unchanged()
            return (gr.update(),) * len(url_fields) + tuple(out)
        f, page = decoded
        query = {"text": f["text"] or None, "image": None, "kind": KIND_LABELS.get(f["kind"]),
                 "under": f["under"], "whiten": f["whiten"], "center": f["center"], "invert": f["invert"],
                 "sort": f["sort"], "negative": [f["negative"]] if f["negative"] else [],
                 "filters": {name: f[name] for name in url_state.FILTERS}}
        if f["like"]:
            query.update(text=f"id:{f['like']}", like=f["like"])
            try:
                query["label"] = f"Items like {service.item_file(f['like'])[1]}"
            except (FileRefused, ClipsearchError):
                pass
        if f["weaker"]:
            query["min_relevance"] = "off"
        out = execute(query, 0, [])
        for n in range(2, page + 1):
            st = out[4]
            if not st.get("hits") or len(st["hits"]) < (n - 1) * PAGE_SIZE:
                break
            out = execute(query, len(st["hits"]), st["hits"], n)
        values = ("" if f["like"] else f["text"], f["negative"], f["kind"], f["under"], f["after"],
                  f["before"], f["place"], f["camera"], f["sort"])
        return values + tuple(out)

    def url_of(state) -> str:
        return url_state.encode((state or {}).get("query") or {}, int((state or {}).get("page") or 1))

    # ---- named API endpoints (gradio_client: api_name="/search" etc.) -------------------------
    def api_search(q: str, k: int = PAGE_SIZE, kind: str = "all", offset: int = 0,
                   under: str = "", whiten: bool = False, center: bool = False,
                   hybrid: bool = False, after: str = "", before: str = "", place: str = "",
                   camera: str = "", sort: str = "score", negative: str = "",
                   min_relevance: str = "auto") -> dict:
        """Text search; q may combine terms ("2:a dog + id:ITEM - indoors"), negative holds
        terms to push away. kind: all, image, video, moment, doc, frame, page, ocr,
        speech or audio; after/before
        (ISO dates), place, camera: metadata prefilters; sort: score, date or -date;
        min_relevance: auto, off or a calibrated relevance in 0..1."""
        try:
            return service.search(q, k=k, kind=kind, offset=offset, under=under, whiten=whiten,
                                  center=center, hybrid=hybrid, sort=sort, after=after, before=before,
                                  place=place, camera=camera, negative=[negative] if negative else [],
                                  min_relevance=min_relevance)
        except ClipsearchError as e:
            raise gr.Error(_error_text(e)) from None

    def api_moments(q: str, k: int = 10, under: str = "", after: str = "", before: str = "",
                    place: str = "", camera: str = "") -> dict:
        """Video moments for a text query: hits with t_start/t_end in seconds; after/before,
        place, camera: metadata prefilters, as in search."""
        try:
            return service.moments(q, k=k, under=under, after=after, before=before, place=place,
                                   camera=camera)
        except ClipsearchError as e:
            raise gr.Error(_error_text(e)) from None

    def api_info() -> dict:
        """Collection name, counts per kind, model, device, fitted transforms."""
        try:
            return service.info()
        except ClipsearchError as e:
            raise gr.Error(_error_text(e)) from None

    def api_search_image(image: str | None, q: str, k: float, kind: str, offset: float,
                         under: str) -> dict:
        if image is None:
            raise gr.Error("give an image: handle_file('photo.jpg')")
        try:
            return service.search(q or None, image, k=int(k), kind=kind, offset=int(offset), under=under)
        except ClipsearchError as e:
            raise gr.Error(_error_text(e)) from None

    with gr.Blocks(title="clipsearch", analytics_enabled=False) as demo:
        state = gr.State({"query": {}, "hits": []})
        status_md = gr.Markdown(first_line, elem_id="cs-status")
        with gr.Row():
            with gr.Column(scale=4):
                text = gr.Textbox(label="Search",
                                  placeholder="Describe what you are looking for, then press Enter",
                                  elem_id="cs-query", autofocus=True, submit_btn=True,
                                  max_lines=1)  # one line: its height never changes with the text
                query_error = gr.Markdown("", elem_id="cs-query-error", elem_classes=["cs-error"])
            with gr.Column(scale=2):
                image = query_image_box(label="…or search by image (upload, paste or drop)",
                                        sources=["upload", "clipboard"], height=130, elem_id="cs-image")
                image_error = gr.Markdown("", elem_id="cs-image-error", elem_classes=["cs-error"])
        with gr.Row():
            not_box = gr.Textbox(label="Not", scale=4, elem_id="cs-not", max_lines=1,
                                 placeholder="what to push away, e.g. indoors (terms: a + b), then Enter")
            chips = gr.HTML("", elem_id="cs-chips", js_on_load=CLICK_JS, padding=False, scale=2)
        with gr.Row():
            kind = gr.Radio(list(KIND_LABELS), value="All", label="Kind", elem_id="cs-kind", scale=3)
            with gr.Column(scale=2, min_width=160):
                under = gr.Dropdown([""] + first_roots, value="", label="Folder", allow_custom_value=True,
                                    elem_id="cs-under")
                under_error = gr.Markdown("", elem_id="cs-under-error", elem_classes=["cs-error"])
            whiten = gr.Checkbox(label="Whiten", visible=offered("whiten"), elem_id="cs-whiten")
            center = gr.Checkbox(label="Center", visible=offered("center"), elem_id="cs-center")
            invert = gr.Checkbox(label="Invert", visible=offered("invert"), elem_id="cs-invert")
            options_note = gr.HTML(first_note, elem_id="cs-options-note", padding=False)
        with gr.Accordion("Filters: date, place, camera", open=False, elem_id="cs-filters"):
            with gr.Row():
                with gr.Column(scale=1, min_width=160):
                    after = gr.Textbox(label="Taken from", placeholder="2024-08", elem_id="cs-after")
                    after_error = gr.Markdown("", elem_id="cs-after-error", elem_classes=["cs-error"])
                with gr.Column(scale=1, min_width=160):
                    before = gr.Textbox(label="Taken until", placeholder="2024-08", elem_id="cs-before")
                    before_error = gr.Markdown("", elem_id="cs-before-error", elem_classes=["cs-error"])
                place = gr.Textbox(label="Place", placeholder="city, region or country",
                                   elem_id="cs-place", scale=2)
                camera = gr.Textbox(label="Camera", placeholder="e.g. iphone", elem_id="cs-camera", scale=2)
                sort = gr.Dropdown(list(SORT_LABELS), value="Best match", label="Sort", elem_id="cs-sort",
                                   scale=1)
        message = gr.Markdown(elem_id="cs-message")
        grid = gr.HTML(EMPTY_GRID, elem_id="cs-results", js_on_load=CLICK_JS + lightbox.CARD_KEYS_JS,
                       padding=False)
        weaker = gr.Button("Show weaker matches", visible=False, elem_id="cs-weaker")
        more = gr.Button("Load more", visible=False, elem_id="cs-load-more")
        detail = gr.HTML(EMPTY_DETAIL, elem_id="cs-detail", js_on_load=PLAYER_JS, padding=False)

        url_box = gr.Textbox("", elem_id="cs-url", elem_classes=["cs-hidden"], show_label=False,
                             container=False)
        inputs = [text, image, kind, under, whiten, center, invert, after, before, place, camera, sort,
                  not_box]
        outputs = [grid, detail, message, more, state, status_md, chips, weaker, image_error, query_error,
                   after_error, before_error, under_error]  # the error boxes in ERROR_PLACES' order
        url_fields = [text, not_box, kind, under, after, before, place, camera, sort]

        # a search shows its progress on the results alone: the status line and the boxes above
        # keep their size while it runs
        busy: dict[str, Any] = {"api_visibility": "private", "show_progress_on": [grid]}

        def tracked(event) -> None:
            """After a search: the URL says what it was (a new history entry when it changed)."""
            event.then(url_of, [state], [url_box], api_visibility="private").then(
                None, [url_box], None, js=url_state.PUSH_JS, api_visibility="private")

        tracked(text.submit(submit_search, inputs, outputs, **busy))
        tracked(not_box.submit(submit_search, inputs, outputs, **busy))
        dropped = chips.click(drop_chip, [state, text, not_box], [text, image, not_box],
                              api_visibility="private")
        tracked(dropped.then(new_search, inputs, outputs, **busy))
        tracked(image.change(new_search, inputs, outputs, **busy))
        # .input, not .change: the URL sets these fields without starting a second search
        for f in (kind, whiten, center, invert, sort):
            tracked(f.input(new_search, inputs, outputs, **busy))
        tracked(under.change(new_search, inputs, outputs, **busy))
        for box in (after, before, place, camera):
            tracked(box.submit(new_search, inputs, outputs, **busy))
        tracked(more.click(load_more, [state], outputs, **busy))
        tracked(weaker.click(show_weaker, [state], outputs, **busy))
        tracked(grid.click(on_click, [state, kind, under], outputs, **busy))
        tracked(detail.click(on_click, [state, kind, under], outputs, **busy))
        demo.load(filter_updates, None, [status_md, under, whiten, center, invert, options_note],
                  api_visibility="private", show_progress="hidden")  # no "processing" flash on load
        demo.load(from_url, [url_box], url_fields + outputs, js=url_state.READ_JS, **busy)
        gr.Timer(15).tick(status, None, status_md, api_visibility="private",
                          show_progress="hidden")  # no "0.0s" tick on the status line

        gr.api(api_search, api_name="search")
        gr.api(api_moments, api_name="moments")
        gr.api(api_info, api_name="info")
        with gr.Column(visible=False):
            # gr.File, not gr.Image: the upload reaches api_search_image undecoded, which checks
            # it and says clearly what is wrong with a non-image.
            a_img = gr.File(type="filepath", file_count="single", label="image")
            a_q = gr.Textbox(label="q")
            a_k = gr.Number(PAGE_SIZE, label="k", precision=0)
            a_kind = gr.Textbox("all", label="kind")
            a_off = gr.Number(0, label="offset", precision=0)
            a_under = gr.Textbox("", label="under")
            a_out = gr.JSON(label="result")
        a_img.upload(api_search_image, [a_img, a_q, a_k, a_kind, a_off, a_under], a_out,
                     api_name="search_image")
    duplicates_page.add_page(demo, service)
    return demo


def like_image_path(service: SearchService, hit: dict) -> str:
    """The picture a "More like this" query starts from: the image itself, else its thumbnail."""
    if hit["kind"] == "image" and hit.get("id"):
        return service.item_file(hit["id"])[0]
    url = hit.get("thumb_url") or ""
    if url.startswith("/files/thumb/"):
        return service.item_thumb(url[len("/files/thumb/"):].split("?", 1)[0])
    raise FileRefused(404, "this item has no picture to search from")
