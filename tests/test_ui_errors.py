"""Errors in plain words, once, next to what caused them; no traceback on the server for a user
error; options only when they can work."""

from __future__ import annotations

import logging

import httpx
import pytest
from test_ui_browser import browser  # noqa: F401  (fixture)
from ui_views import context, open_page  # noqa: F401  (fixture)


@pytest.fixture
def page(context, server):  # noqa: F811
    return open_page(context, server + "/")


@pytest.mark.browser
def test_a_non_image_on_the_image_box_says_so_once(page, tmp_path, caplog):
    bad = tmp_path / "notes.jpg"
    bad.write_text("these are words, not pixels\n" * 20)
    with caplog.at_level(logging.INFO):
        page.set_input_files("#cs-image input[type=file]", str(bad))
        page.wait_for_function(
            "document.querySelector('#cs-image-error')?.innerText.includes('not an image')")
        page.wait_for_timeout(500)
    body = page.locator("body").inner_text()
    assert body.count("not an image") == 1, body
    msg = page.locator("#cs-image-error").inner_text()
    assert "JPG" in msg and "--" not in msg
    assert page.locator("#cs-message").inner_text().strip() == ""
    assert page.locator(".toast-body, .error").filter(has_text="Error").count() == 0
    assert not any("Traceback" in r.getMessage() or r.exc_info for r in caplog.records)
    assert_next_to(page, "#cs-image-error", "#cs-image")


def assert_next_to(page, error: str, control: str) -> None:
    """The error is drawn right by its control: beneath it (or beside it) and within 80 px."""
    e, c = page.locator(error).bounding_box(), page.locator(control).bounding_box()
    assert e and c and e["height"] > 0, (e, c)
    gap = e["y"] - (c["y"] + c["height"])
    overlaps_across = e["x"] < c["x"] + c["width"] and c["x"] < e["x"] + e["width"]
    assert overlaps_across and -1 <= gap <= 80, (error, e, control, c)


@pytest.mark.browser
def test_a_bad_date_is_said_by_its_box(page):
    page.locator("#cs-filters").get_by_text("Filters: date, place, camera").click()
    box = page.locator("#cs-after input, #cs-after textarea").first
    box.fill("last tuesday")
    query = page.locator("#cs-query textarea, #cs-query input").first
    query.fill("a red star")
    query.press("Enter")
    page.wait_for_function("document.querySelector('#cs-after-error')?.innerText.includes('not a date')")
    msg = page.locator("#cs-after-error").inner_text()
    assert "Taken from" in msg and "--" not in msg and "2024-08" in msg, msg
    assert page.locator("body").inner_text().count("not a date") == 1
    assert_next_to(page, "#cs-after-error", "#cs-after")


@pytest.mark.browser
def test_a_bad_query_term_is_said_by_the_search_box(page):
    query = page.locator("#cs-query textarea, #cs-query input").first
    query.fill("a red star + ./secret.jpg")
    query.press("Enter")
    page.wait_for_function("document.querySelector('#cs-query-error')?.innerText.length > 0")
    msg = page.locator("#cs-query-error").inner_text()
    assert "--" not in msg and "Traceback" not in msg, msg
    assert page.locator("#cs-message").inner_text().strip() == ""
    assert_next_to(page, "#cs-query-error", "#cs-query")


@pytest.mark.browser
def test_a_refused_folder_is_said_by_the_folder_box(context, server):  # noqa: F811
    pg = open_page(context, server + "/?q=a%20red%20star&under=..%2F..%2Fetc")
    pg.wait_for_function("document.querySelector('#cs-under-error')?.innerText.includes('..')")
    msg = pg.locator("#cs-under-error").inner_text()
    assert "folder" in msg and "--" not in msg and "Traceback" not in msg, msg
    assert pg.locator("#cs-message").inner_text().strip() == ""
    assert pg.locator("body").inner_text().count("must not contain") == 1
    assert_next_to(pg, "#cs-under-error", "#cs-under")


@pytest.mark.browser
def test_messages_never_name_cli_flags(page, server, sample):
    data, _ = sample
    query, _ = data.unique_query(0)
    whiten = page.locator("#cs-whiten")
    r = httpx.post(server + "/api/search/image", files={"file": ("q.jpg", data.dup_query, "image/jpeg")},
                   data={"whiten": "true"}, timeout=120)
    if r.status_code == 400:  # whitening is not fitted here: the box is absent, the reason in a tooltip
        page.wait_for_selector("#cs-options-note .cs-opt-note")
        assert not whiten.is_visible()
        assert "Whiten is not offered" in page.locator("#cs-options-note .cs-opt-note").get_attribute("title")
        return
    box = page.locator("#cs-query textarea, #cs-query input").first
    box.fill(query)
    box.press("Enter")
    page.wait_for_selector("#cs-results .cs-card, #cs-weaker:visible")
    whiten.locator("input").check()
    page.wait_for_function("document.querySelector('#cs-message')?.innerText.length > 0")
    msg = page.locator("#cs-message").inner_text()
    assert "--" not in msg and "clipsearch fit-transforms" not in msg, msg


def test_rest_whiten_form_field_is_never_a_500(server, sample):
    data, _ = sample
    r = httpx.post(server + "/api/search/image", files={"file": ("q.jpg", data.dup_query, "image/jpeg")},
                   data={"whiten": "true"}, timeout=120)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        body = r.json()
        assert body.get("error") and "Traceback" not in r.text
    r = httpx.get(server + "/api/search", params={"q": "a red circle", "whiten": "true"}, timeout=120)
    assert r.status_code in (200, 400), r.text


def test_plain_messages_drop_cli_words():
    from clipsearch.ui import messages
    from clipsearch.ui.api import UploadRejected, collection_name

    from clipsearch.errors import TransformError, UsageError

    assert messages.plain(UploadRejected("the upload is not an image", status=415)) == messages.NOT_AN_IMAGE
    said = messages.plain(UsageError("--whiten applies to image queries",
                                     hint="use --center for text queries"))
    assert "--" not in said and "Whiten" in said
    said = messages.plain(TransformError("whitening is unavailable", hint="run `clipsearch fit-transforms`"))
    assert said == "whitening is unavailable"
    assert collection_name("/home/me/photos/db") == "photos"
    assert collection_name("/x/db", {"name": "Holiday 2024"}) == "Holiday 2024"
