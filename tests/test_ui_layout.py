"""The page as it draws, in a real headless Chromium at a desktop and a phone size: nothing jumps
while it loads or when the first results arrive (the browser's own layout-shift measure), no
word is split across lines on a phone, and every kind is called by its human name."""

from __future__ import annotations

import re

import pytest
import ui_views
from test_ui_browser import TIMEOUT_MS, browser, search, show_weaker  # noqa: F401  (fixture)
from ui_views import VIEWPORTS, context  # noqa: F401  (fixture)

pytestmark = pytest.mark.browser

MAX_CLS = 0.02  # "good" in the browser makers' terms is under 0.1

# Every layout shift the page makes without a user's input (the browser's Layout Instability API),
# from the first paint on: recorded before any of the page's own scripts run.
RECORD_SHIFTS = """
window.__shifts = [];
new PerformanceObserver(list => {
  for (const e of list.getEntries()) if (!e.hadRecentInput) window.__shifts.push(e.value);
}).observe({type: 'layout-shift', buffered: true});
"""

# Words (runs of letters) inside `sel` drawn on more than one line: a word split in two.
SPLIT_WORDS = r"""(sel) => {
  const split = [];
  for (const root of document.querySelectorAll(sel)) {
    const walk = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    for (let n = walk.nextNode(); n; n = walk.nextNode()) {
      const re = /\p{L}+/gu;
      for (let m = re.exec(n.data); m; m = re.exec(n.data)) {
        const r = document.createRange();
        r.setStart(n, m.index);
        r.setEnd(n, m.index + m[0].length);
        const lines = new Set([...r.getClientRects()].filter(q => q.width > 0).map(q => Math.round(q.top)));
        const where = n.parentElement.className || n.parentElement.tagName;
        if (lines.size > 1) split.push(`${m[0]} (in ${where})`);
      }
    }
  }
  return split;
}"""

# The raw kinds of the core, which the UI must never show as a label.
RAW_KINDS = {"image", "video", "video_frame", "video_window", "frame", "moment", "doc", "doc_page",
             "doc_text", "page", "ocr", "speech", "audio", "all"}
HUMAN = re.compile(r"^[A-Z]")  # a human name is written as a name: Photo, Video moment, Page 2


def open_page(context, url: str):  # noqa: F811
    """The page, drawn whole (the search box is visible only then), recording layout shifts."""
    return ui_views.open_page(context, url, RECORD_SHIFTS)


def cls(pg) -> float:
    return float(pg.evaluate("window.__shifts.reduce((a, b) => a + b, 0)"))


def test_no_layout_jump_on_load_or_when_results_arrive(context, server, sample):  # noqa: F811
    data, _ = sample
    pg = open_page(context, server + "/")
    pg.wait_for_function("document.querySelector('#cs-status')?.innerText.includes('collection')")
    pg.wait_for_timeout(1000)  # the load events (status, folders, options) have come back
    on_load = cls(pg)
    above = pg.locator("#cs-query").bounding_box()
    query, _ = data.unique_query(0)
    search(pg, query)
    pg.wait_for_selector("#cs-results .cs-card, #cs-weaker:visible")
    pg.wait_for_timeout(800)  # thumbnails, the status refresh
    assert pg.locator("#cs-query").bounding_box() == above  # the search box stays put
    assert on_load < MAX_CLS, pg.evaluate("window.__shifts")
    assert cls(pg) < MAX_CLS, pg.evaluate("window.__shifts")


def test_a_shared_link_draws_without_a_jump(context, server, sample):  # noqa: F811
    data, _ = sample
    query, _ = data.unique_query(1)
    pg = open_page(context, server + "/?q=" + query.replace(" ", "+"))
    pg.wait_for_selector("#cs-results .cs-card, #cs-weaker:visible")
    pg.wait_for_timeout(800)
    assert cls(pg) < MAX_CLS, pg.evaluate("window.__shifts")


def test_phone_layout_never_splits_a_word(browser, server):  # noqa: F811
    ctx = browser.new_context(viewport={"width": 390, "height": 844})
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        pg = open_page(ctx, server + "/")
        search(pg, "a red star")
        show_weaker(pg)
        assert pg.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
        assert pg.evaluate(SPLIT_WORDS, "gradio-app") == []
        hyphens = pg.locator("#cs-results .cs-cap").first.evaluate("e => getComputedStyle(e).hyphens")
        assert hyphens != "auto"
        kinds_seen = set()
        for card in pg.locator("#cs-results .cs-card").all():
            kind = card.get_attribute("data-kind")
            if kind in kinds_seen:
                continue
            kinds_seen.add(kind)
            card.locator("img, .cs-noimg").first.click()
            pg.wait_for_selector("#cs-detail .cs-lightbox .cs-f-path")
            assert pg.evaluate(SPLIT_WORDS, "#cs-detail .cs-lightbox") == [], kind
            pg.keyboard.press("Escape")
            pg.wait_for_selector("#cs-detail .cs-lightbox", state="detached")
        assert len(kinds_seen) >= 2  # photos and at least one other kind were looked at
    finally:
        ctx.close()


def visible_texts(pg, selector: str) -> list[str]:
    return [t.strip() for t in pg.locator(selector).all_inner_texts() if t.strip()]


def test_kinds_are_called_by_human_names(context, server):  # noqa: F811
    pg = open_page(context, server + "/")
    labels = visible_texts(pg, "#cs-kind label")
    assert labels[:6] == ["All", "Photo", "Video moment", "Video", "Page", "Words in pictures"]
    search(pg, "a red star")
    show_weaker(pg)
    shown = visible_texts(pg, "#cs-results .cs-kind") + visible_texts(pg, "#cs-results .cs-noimg")
    assert shown
    pg.locator("#cs-results .cs-card").first.click()
    pg.wait_for_selector("#cs-detail .cs-f-kind")
    shown += visible_texts(pg, "#cs-detail .cs-f-kind")
    for text in labels + shown:
        assert HUMAN.match(text), text
        assert "_" not in text and text.split()[0] not in RAW_KINDS, text  # never video_frame, doc
    assert not set(labels + shown) & RAW_KINDS
    pg.goto(server + "/duplicates")
    pg.wait_for_selector("#cs-dup-kind label")
    dup_labels = visible_texts(pg, "#cs-dup-kind label")
    assert dup_labels == ["All", "Photo", "Video"]


def test_the_kind_in_the_url_is_the_kind_itself(context, server, sample):  # noqa: F811
    data, _ = sample
    query, _ = data.unique_query(0)
    pg = open_page(context, server + "/")
    search(pg, query, kind="Photo")
    pg.wait_for_function("new URLSearchParams(location.search).get('kind') === 'image'")
