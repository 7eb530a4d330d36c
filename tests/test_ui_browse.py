"""Browsing without a query in a real headless Chromium, at a desktop and a phone size: the
empty page shows the collection by date (month headings, Load more), a Topics tab shows labelled
topics, a click shows a topic's items, the URL carries the view and Back returns to the last one.
Expected items come from the HTTP API."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from clipsearch.ui import url_state
from test_ui_browser import browser  # noqa: F401  (fixture)
from ui_views import context, open_page  # noqa: F401  (fixture)

pytestmark = pytest.mark.browser

def tiles(pg) -> list[str]:
    return [c.get_attribute("title") for c in pg.locator("#cs-results .cs-tile").all()]


def params(pg) -> dict[str, list[str]]:
    return parse_qs(urlparse(pg.url).query)


def test_an_empty_query_browses_by_date(context, server):  # noqa: F811
    by_date = httpx.get(f"{server}/api/browse", params={"by": "date", "k": 100}).json()
    pg = open_page(context, server + "/")
    pg.wait_for_selector("#cs-results .cs-tile")
    first_page = tiles(pg)
    assert first_page == [h["source"] for h in by_date["hits"][:len(first_page)]]
    assert pg.locator("#cs-results .cs-card").count() == 0  # browse tiles are not search results
    headings = [h.inner_text() for h in pg.locator("#cs-results .cs-month").all()]
    assert headings == [m["label"] for m in by_date["months"]][:len(headings)] and headings
    assert pg.locator("#cs-results [role='tab'][data-by='date']").get_attribute("aria-selected") == "true"
    more = pg.locator("#cs-load-more")
    if len(by_date["hits"]) > len(first_page):
        more.click()
        pg.wait_for_function("n => document.querySelectorAll('#cs-results .cs-tile').length > n",
                             arg=len(first_page))
        assert tiles(pg) == [h["source"] for h in by_date["hits"][:len(tiles(pg))]]
        pg.wait_for_function("() => new URLSearchParams(location.search).get('page') === '2'")
    # a tile opens the lightbox, over the grid, wherever the page is scrolled
    tile = pg.locator("#cs-results .cs-tile").last
    tile.scroll_into_view_if_needed()
    tile.click()
    pg.wait_for_selector("#cs-detail .cs-lightbox")
    assert pg.locator("#cs-detail .cs-lightbox .cs-f-path").inner_text() == tile.get_attribute("title")
    box = pg.locator("#cs-detail .cs-lb-panel").bounding_box()
    assert box is not None and box["y"] >= -1 and box["y"] < pg.viewport_size["height"] / 2
    pg.keyboard.press("Escape")
    pg.wait_for_selector("#cs-detail .cs-lightbox", state="detached")


def test_topics_a_click_away_with_the_url_and_back(context, server):  # noqa: F811
    topics = httpx.get(f"{server}/api/browse", params={"by": "topics"}).json()["topics"]
    assert len(topics) >= 2
    pg = open_page(context, server + "/")
    pg.wait_for_selector("#cs-results .cs-tile")
    pg.locator("#cs-results [role='tab'][data-by='topics']").click()
    pg.wait_for_selector("#cs-results .cs-topic")
    pg.wait_for_function("() => new URLSearchParams(location.search).get('browse') === 'topics'")
    shown = pg.locator("#cs-results .cs-topic")
    assert shown.count() == len(topics)
    assert [c.locator(".cs-topic-label").inner_text() for c in shown.all()] == [t["label"] for t in topics]
    assert shown.first.locator(".cs-topic-count").inner_text() == f"{topics[0]['size']} items"
    assert shown.first.locator("img").count() == len(topics[0]["examples"])
    pick = topics[1]
    shown.nth(1).click()
    pg.wait_for_selector("#cs-results .cs-tile")
    pg.wait_for_function("t => new URLSearchParams(location.search).get('topic') === t", arg=str(pick["id"]))
    items = httpx.get(f"{server}/api/browse", params={"by": "topics", "topic": pick["id"], "k": 100}).json()
    assert tiles(pg) == [h["source"] for h in items["hits"][:len(tiles(pg))]]
    assert pick["label"] in pg.locator("#cs-results .cs-topic-title").inner_text()
    url = pg.url
    pg.go_back()  # to the list of topics
    pg.wait_for_function("() => !new URLSearchParams(location.search).has('topic')")
    pg.wait_for_selector("#cs-results .cs-topic")
    pg.go_forward()
    pg.wait_for_selector("#cs-results .cs-tile")
    assert pg.locator("#cs-results .cs-topic-title").inner_text().startswith(pick["label"])
    again = open_page(context, url)  # a shared link to a topic
    again.wait_for_selector("#cs-results .cs-tile")
    assert tiles(again) == tiles(pg)
    again.locator("#cs-results .cs-back").click()  # "All topics"
    again.wait_for_selector("#cs-results .cs-topic")
    # the keyboard reaches a topic: Tab to it, Enter opens it
    again.locator("#cs-results .cs-topic").first.focus()
    again.keyboard.press("Enter")
    again.wait_for_function("() => new URLSearchParams(location.search).get('topic') === '0'")


def test_a_search_leaves_the_browse_view(context, server, sample):  # noqa: F811
    from test_ui_browser import search, wait_cards

    data, _ = sample
    query, expected = data.unique_query(0)
    pg = open_page(context, server + "/?browse=topics")
    pg.wait_for_selector("#cs-results .cs-topic")
    search(pg, query)
    wait_cards(pg)
    assert pg.locator("#cs-results .cs-topic, #cs-results .cs-tile").count() == 0
    pg.wait_for_function("q => new URLSearchParams(location.search).get('q') === q", arg=query)
    assert "browse" not in params(pg)


def test_browse_urls_round_trip_and_hostile_ones():
    assert url_state.encode({"browse": "date"}) == ""
    assert url_state.encode({"browse": "date"}, 2) == "?browse=date&page=2"
    assert url_state.encode({"browse": "topics", "topic": 3}) == "?browse=topics&topic=3"
    assert url_state.decode_browse("?browse=topics&topic=3") == ({"browse": "topics", "topic": 3}, 1)
    assert url_state.decode_browse("") == ({"browse": "date"}, 1)
    assert url_state.decode_browse("?browse=<x>&topic=-1&page=zz") == ({"browse": "date"}, 1)
    assert url_state.decode_browse("?browse=topics&topic=99999999&page=999") == (
        {"browse": "topics"}, url_state.MAX_PAGES)
