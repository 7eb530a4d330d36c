"""Shareable URLs: a search writes its query into the URL, loading that URL shows the same
results, Back and Forward go between searches; Enter in an empty box keeps what is shown."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest
from clipsearch.ui import url_state
from test_ui_browser import browser, search, wait_cards  # noqa: F401  (fixture)
from ui_views import context, open_page  # noqa: F401  (fixture)

pytestmark = pytest.mark.browser

def titles(pg) -> list[str]:
    return [c.get_attribute("title") for c in pg.locator("#cs-results .cs-card").all()]


def wait_query(pg, q: str) -> None:
    pg.wait_for_function("q => new URLSearchParams(location.search).get('q') === q", arg=q)


def test_url_carries_the_query_and_reproduces_it(context, server, sample):  # noqa: F811
    data, _ = sample
    query, expected = data.unique_query(1)
    pg = open_page(context, server + "/")
    search(pg, query, kind="Photo")
    wait_cards(pg, "image")
    wait_query(pg, query)
    params = parse_qs(urlparse(pg.url).query)
    assert params["q"] == [query] and params["kind"] == ["image"]
    shown = titles(pg)
    assert shown[0] == str(expected)

    again = open_page(context, pg.url)  # a shared link
    wait_cards(again, "image")
    again.wait_for_function("n => document.querySelectorAll('#cs-results .cs-card').length === n",
                            arg=len(shown))
    assert titles(again) == shown
    assert again.locator("#cs-query textarea, #cs-query input").first.input_value() == query
    assert again.locator("#cs-kind input[value='Photo']").is_checked()


def test_back_and_forward_between_searches(context, server, sample):  # noqa: F811
    data, _ = sample
    first, _ = data.unique_query(0)
    second, _ = data.unique_query(1)
    pg = open_page(context, server + "/")
    search(pg, first)
    wait_cards(pg)
    wait_query(pg, first)
    shown_first = titles(pg)
    search(pg, second)
    wait_query(pg, second)
    pg.wait_for_function("t => document.querySelector('#cs-results .cs-card')?.title !== t",
                         arg=shown_first[0])
    pg.go_back()
    wait_query(pg, first)
    pg.wait_for_selector("#cs-results .cs-card")
    pg.wait_for_function("t => document.querySelector('#cs-results .cs-card')?.title === t",
                         arg=shown_first[0])
    assert pg.locator("#cs-query textarea, #cs-query input").first.input_value() == first
    pg.go_forward()
    wait_query(pg, second)
    pg.wait_for_function("q => document.querySelector('#cs-query textarea, #cs-query input')?.value === q",
                         arg=second)


def test_enter_in_an_empty_box_keeps_the_results(context, server, sample):  # noqa: F811
    data, _ = sample
    query, _ = data.unique_query(0)
    pg = open_page(context, server + "/")
    search(pg, query)
    wait_cards(pg)
    n = pg.locator("#cs-results .cs-card").count()
    box = pg.locator("#cs-query textarea, #cs-query input").first
    box.fill("")
    box.press("Enter")
    pg.wait_for_timeout(1500)  # nothing should happen; give a wrong wipe time to show
    assert pg.locator("#cs-results .cs-card").count() == n


def test_encode_decode_round_trip_and_hostile_urls():
    query = {"text": "a dog & <b>", "kind": "moment", "negative": ["indoors"], "under": "/x",
             "filters": {"after": "2024-08", "camera": "iphone"}, "sort": "Newest first",
             "min_relevance": "off"}
    fields, page = url_state.decode(url_state.encode(query, 3), {"Best match": None, "Newest first": "-date"})
    assert (fields["text"], fields["kind"], fields["negative"], fields["under"]) == \
        ("a dog & <b>", "Video moment", "indoors", "/x")
    assert (fields["after"], fields["camera"], fields["sort"], fields["weaker"], page) == \
        ("2024-08", "iphone", "Newest first", True, 3)
    assert url_state.decode("?page=2&kind=image", {}) is None  # no query
    fields, page = url_state.decode("?q=x&page=99999&sort=evil&kind=<script>&like=../../etc", {})
    assert page == url_state.MAX_PAGES and fields["sort"] == "Best match" and fields["kind"] == "All"
    assert fields["like"] is None and fields["text"] == "x"
