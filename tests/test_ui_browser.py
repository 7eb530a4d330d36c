"""End-to-end: the search UI in a real headless Chromium (Debian's /usr/bin/chromium + Playwright).

Expected results come from the fixture's ground truth and from the HTTP API, never hard-coded.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
from support import PDF_PAGES, VIDEO_SEGMENTS, ServerThread, build_collection, tiny_model_args

from clipsearch.tiny.planted import make_planted
from clipsearch.tiny.synth.shapes import canonical_query

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CLIPSEARCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not os.path.isfile(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.third_party = []  # no fonts, scripts or analytics from anywhere but the server
    pg.on("request", lambda r: None if r.url.startswith((server, "data:", "blob:"))
          else pg.third_party.append(r.url))
    pg.goto(server + "/")
    pg.wait_for_selector("#cs-query textarea, #cs-query input")
    yield pg
    context.close()


def search(pg, text: str, kind: str | None = None) -> None:
    if kind:  # the label exactly: "Video" is also in "Video moment"
        pg.locator("#cs-kind label").filter(has_text=re.compile(rf"^\s*{re.escape(kind)}\s*$")).click()
    box = pg.locator("#cs-query textarea, #cs-query input").first
    box.fill(text)
    box.press("Enter")


def wait_cards(pg, kind: str | None = None):
    sel = "#cs-results .cs-card" + (f"[data-kind='{kind}']" if kind else "")
    pg.wait_for_selector(sel)
    return pg.locator(sel)


def mark_results(pg) -> None:
    """Tag what the results area shows now, so that `wait_new_results` tells the next answer
    from it (a count or a message can match the old page as well as the new one)."""
    pg.evaluate("() => document.querySelectorAll('#cs-results .cs-grid, #cs-results .cs-empty')"
                ".forEach(e => { e.dataset.stale = '1'; })")


def wait_new_results(pg) -> None:
    """Wait for the answer that replaced the results `mark_results` tagged."""
    pg.wait_for_selector("#cs-results .cs-grid:not([data-stale]), #cs-results .cs-empty:not([data-stale])")


def wait_url(pg, key: str, value: str | None = None) -> None:
    """Wait for the URL the app pushes once an answer is drawn to name `key` (= `value`): the
    answer to this query, not an earlier view still on the page (the kind click's browse)."""
    pg.wait_for_function("([k, v]) => { const p = new URLSearchParams(location.search);"
                         " return v === null ? p.has(k) : p.get(k) === v; }", arg=[key, value])


def show_weaker(pg) -> None:
    """Click "Show N weaker matches" when the relevance cut left some, and wait for them.
    Call it once the answer to act on is on the page (`wait_cards`, `wait_new_results`)."""
    pg.wait_for_selector("#cs-results .cs-grid, #cs-results .cs-empty")
    # One read of the page: a grid re-drawn between two locator calls must not leave one waiting.
    cut = pg.evaluate("""() => {
        const b = document.querySelector('#cs-weaker');
        const g = document.querySelector('#cs-results .cs-grid');
        return (!!b && b.offsetParent !== null) || (!!g && Number(g.dataset.weaker || 0) > 0);
    }""")
    if cut:
        button = pg.locator("#cs-weaker")
        button.wait_for(state="visible")  # the grid and the button are drawn in the same update
        mark_results(pg)
        button.click()
        wait_new_results(pg)
        pg.wait_for_selector("#cs-results .cs-grid:not([data-stale]) .cs-card")


def assert_thumbnail_loads(pg, card, timeout_ms: int = 15_000) -> None:
    """The card's thumbnail finishes loading with real pixels. Cards appear before their images
    have downloaded, so an immediate check races the server on a busy machine; this waits."""
    img = card.locator("img").element_handle()
    pg.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img, timeout=timeout_ms)
    assert img.evaluate("img => img.naturalWidth") > 0


def test_typed_query_shows_the_described_image_first(page, sample):
    data, _ = sample
    query, expected = data.unique_query(1)
    search(page, query)
    cards = wait_cards(page, "image")
    first = page.locator("#cs-results .cs-card").first
    assert first.get_attribute("title") == str(expected)
    assert first.locator(".cs-score").inner_text().replace(".", "", 1).isdigit()  # relevance, 0..1
    assert_thumbnail_loads(page, first)
    show_weaker(page)
    assert cards.count() > 1
    assert page.third_party == []


def test_uploaded_image_finds_its_near_duplicates_first(page, sample, tmp_path):
    data, _ = sample
    query = tmp_path / "query.jpg"
    query.write_bytes(data.dup_query)
    page.set_input_files("#cs-image input[type=file]", str(query))
    show_weaker(page)
    page.wait_for_function("document.querySelectorAll('#cs-results .cs-card').length >= 4")
    titles = [c.get_attribute("title") for c in page.locator("#cs-results .cs-card").all()]
    assert sorted(titles[: len(data.dups)]) == sorted(str(p) for p in data.dups)


def test_moment_player_starts_at_t_start(page, server):
    query = canonical_query(VIDEO_SEGMENTS[2])
    expected = httpx.get(server + "/api/search", params={"q": query, "kind": "moment", "k": 3},
                         timeout=120).json()["hits"][0]
    search(page, query, kind="Video moment")
    wait_cards(page, "moment").first.click()
    video = page.locator("#cs-detail video.cs-player")
    video.wait_for()
    page.wait_for_function("document.querySelector('#cs-detail video.cs-player').readyState >= 1")
    t = video.evaluate("v => v.currentTime")
    assert abs(t - expected["t_start"]) < 0.05, (t, expected)
    assert float(video.get_attribute("data-end")) == pytest.approx(expected["t_end"], abs=1e-3)
    width = page.locator("#cs-detail .cs-seg").evaluate("e => e.getBoundingClientRect().width")
    assert width > 0  # the segment is marked on the timeline


def test_document_hit_shows_its_page_number(page):
    j = 1
    search(page, canonical_query(PDF_PAGES[j]), kind="Page")
    first = wait_cards(page, "doc").first
    assert first.locator(".cs-kind").inner_text() == f"Page {j + 1}"
    assert canonical_query(PDF_PAGES[j]) in first.locator(".cs-snippet").inner_text()
    assert_thumbnail_loads(page, first)
    first.click()
    page.wait_for_selector("#cs-detail .cs-f-page")
    assert page.locator("#cs-detail .cs-f-page").inner_text() == str(j + 1)


def test_more_like_this_and_load_more(page, sample):
    data, _ = sample
    query, expected = data.unique_query(0)
    search(page, query, kind="Photo")
    wait_url(page, "q", query)
    cards = wait_cards(page, "image")
    show_weaker(page)  # with weaker matches cut, they come first; paging goes on after them
    n = cards.count()
    page.locator("#cs-load-more").click()
    page.wait_for_function(f"document.querySelectorAll('#cs-results .cs-card').length > {n}")
    second = page.locator("#cs-results .cs-card").nth(1)
    source = second.get_attribute("title")
    mark_results(page)
    second.locator(".cs-more").click()
    wait_new_results(page)
    wait_url(page, "like")
    show_weaker(page)  # the picture itself is relevant; its neighbours may all be weaker
    page.wait_for_function(
        "t => document.querySelector('#cs-results .cs-card')?.getAttribute('title') === t", arg=source)
    assert "Items like" in page.locator("#cs-message").inner_text()
    page.locator("#cs-results .cs-card").first.click()
    page.wait_for_selector("#cs-detail .cs-f-path")
    assert page.locator("#cs-detail .cs-f-path").inner_text() == source
    assert Path(source).exists()


def test_weaker_matches_control(page, server):
    """A gibberish query: no relevant card, a message saying so and "Show N weaker matches" with
    N the API's count; clicking it shows them, dimmed, with relevance (never a negative score)
    as their headline."""
    query = "xqzzv plorbnik 12345"
    api = httpx.get(server + "/api/search", params={"q": query, "k": 24}, timeout=120).json()
    assert api["hits"] == [] and api["weaker"]
    search(page, query)
    button = page.locator("#cs-weaker")
    button.wait_for(state="visible")
    assert button.inner_text() == f"Show {len(api['weaker'])} weaker matches"
    assert page.locator("#cs-results .cs-card").count() == 0
    assert "weaker" in page.locator("#cs-results").inner_text()
    button.click()
    page.wait_for_selector("#cs-results .cs-card.cs-weak")
    scores = [c.inner_text() for c in page.locator("#cs-results .cs-card .cs-score").all()]
    assert scores and all(0.0 <= float(x) <= 1.0 for x in scores)
    assert not button.is_visible()


def test_missing_collection_gets_a_friendly_message(browser, tmp_path):
    from clipsearch.ui.server import build_app

    with ServerThread(build_app(tmp_path / "no-db-here", device="cpu")) as srv:
        context = browser.new_context()
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        pg.goto(srv.url + "/")
        pg.wait_for_function("document.querySelector('#cs-status')?.innerText.includes('No collection')")
        assert "clipsearch index" in pg.locator("#cs-status").inner_text()
        search(pg, "a red star")
        pg.wait_for_function("document.querySelector('#cs-message')?.innerText.includes('no collection')")
        context.close()


def test_login_form_then_search_with_thumbnails(browser, sample):
    """With a login: Gradio's form, then the UI; its thumbnails load on the session cookie."""
    from clipsearch.ui.server import build_app

    data, db = sample
    with ServerThread(build_app(db, auth=("alice", "pw-browser"), device="cpu")) as srv:
        context = browser.new_context()
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        refused = []
        pg.on("response", lambda r: refused.append((r.status, r.url)) if r.status >= 400 else None)
        pg.goto(srv.url + "/")
        pg.locator("input[type=text]").first.fill("alice")
        pg.locator("input[type=password]").fill("pw-browser")
        pg.locator("button", has_text="Login").click()
        pg.wait_for_selector("#cs-query textarea, #cs-query input")
        query, expected = data.unique_query(0)
        search(pg, query, kind="Photo")
        first = wait_cards(pg, "image").first
        assert first.get_attribute("title") == str(expected)
        assert_thumbnail_loads(pg, first)
        assert refused == []
        context.close()


def test_text_plus_image_shows_both_parts_as_chips_and_a_chip_removes_its_part(page, sample, tmp_path):
    data, _ = sample
    query, expected = data.unique_query(1)
    picture = tmp_path / "query.jpg"
    picture.write_bytes(data.dup_query)
    page.set_input_files("#cs-image input[type=file]", str(picture))
    show_weaker(page)  # an image query's hits may all fall under the relevance cut
    search(page, query)
    page.wait_for_function("document.querySelectorAll('#cs-chips .cs-chip').length === 2")
    chips = page.locator("#cs-chips .cs-chip")
    assert query in chips.nth(0).inner_text() and "image" in chips.nth(1).inner_text()
    chips.nth(1).locator("button[data-action='drop']").click()  # the image's ×
    # the image leaves its box, the chips go (plain text has none), and the text query runs alone
    page.wait_for_function("document.querySelectorAll('#cs-chips .cs-chip').length === 0")
    page.wait_for_function(
        "t => document.querySelector('#cs-results .cs-card')?.getAttribute('title') === t", arg=str(expected))


@pytest.fixture(scope="module")
def planted_server(tmp_path_factory):
    """A server over a small world of planted near-duplicates (`clipsearch.tiny.planted`),
    whose Duplicates page may move copies into `moved/`: (url, world, moved folder)."""
    from clipsearch.ui.server import build_app

    tiny_model_args()
    root = tmp_path_factory.mktemp("planted-ui")
    world = make_planted(root / "files", distinct=40, per_type=2, seed=5,
                         types=("resize", "jpeg40", "crop90", "rotate10", "burst"))
    build_collection(root / "db", [root / "files"])
    with ServerThread(build_app(root / "db", device="cpu", duplicates_to=root / "moved")) as srv:
        yield srv.url, world, root / "moved"


def test_duplicates_page_shows_the_planted_groups_and_moves_the_copies_after_confirming(browser,
                                                                                       planted_server):
    """The Duplicates page (/duplicates) draws the groups /api/duplicates returns, one row
    each, keeper first and marked with its reason, the copies beside it with size and
    similarity; the planted copies are in them. Its move asks first, then moves every copy
    (never the keeper) into the server's folder, and the page then shows them there, with
    nothing left to move."""
    url, world, moved = planted_server
    expected = httpx.get(url + "/api/duplicates", timeout=300).json()
    truth = world.all_pairs()
    found = {frozenset((a["source"], b["source"])) for g in expected["groups"]
             for a in g["files"] for b in g["files"] if a["source"] < b["source"]}
    assert len(found & truth) >= 0.9 * len(truth), (len(found & truth), len(truth))
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    try:
        pg.goto(url + "/duplicates")
        pg.locator("#cs-dup-go").click()
        pg.wait_for_selector("#cs-dups .cs-dup-group")
        groups = pg.locator("#cs-dups .cs-dup-group").all()
        assert len(groups) == len(expected["groups"])
        for shown, want in zip(groups, expected["groups"], strict=True):
            cards = shown.locator(".cs-dup-card").all()
            assert [c.get_attribute("title") for c in cards] == [f["source"] for f in want["files"]]
            assert "cs-dup-keeper" in (cards[0].get_attribute("class") or "")
            assert want["reason"] in shown.locator(".cs-dup-why").inner_text()
            for card, f in zip(cards[1:], want["files"][1:], strict=True):
                text = card.inner_text()
                assert f"{f['width']}×{f['height']}" in text
                assert "same bytes" in text if f["exact"] else f"{f['similarity']:.4f}" in text
        assert_thumbnail_loads(pg, pg.locator("#cs-dups .cs-dup-card").first)
        copies = [f["source"] for g in expected["groups"] for f in g["files"] if not f["keeper"]]
        keepers = [g["keeper"] for g in expected["groups"]]
        pg.locator("#cs-dup-move").click()
        pg.wait_for_selector("#cs-dup-confirm-row:visible")
        assert f"{len(copies)}" in pg.locator("#cs-dup-question").inner_text()
        pg.locator("#cs-dup-cancel").click()
        pg.wait_for_selector("#cs-dup-confirm-row", state="hidden")
        assert all(os.path.exists(c) for c in copies)  # cancelled: nothing moved
        pg.locator("#cs-dup-move").click()
        pg.locator("#cs-dup-confirm").click()
        pg.wait_for_function("document.querySelector('#cs-dup-result').innerText.includes('moved')",
                             timeout=300_000)
        assert f"moved {len(copies)} files" in pg.locator("#cs-dup-result").inner_text()
        assert not any(os.path.exists(c) for c in copies) and all(os.path.exists(k) for k in keepers)
        assert len([p for p in moved.rglob("*") if p.is_file()]) == len(copies)
        # found again: the copies are still copies, now in the folder, with nothing left to move
        pg.wait_for_selector("#cs-dup-move", state="hidden")
        copies_now = pg.locator("#cs-dups .cs-dup-card:not(.cs-dup-keeper)").all()
        titles = [c.get_attribute("title") for c in copies_now]
        assert titles and all(t.startswith(str(moved)) for t in titles), titles
    finally:
        context.close()
