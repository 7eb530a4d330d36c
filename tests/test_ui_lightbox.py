"""The lightbox and the keyboard, in a real headless Chromium at a desktop and a phone size.

A result opens over the grid wherever the page is scrolled; ←/→, Esc, swipe and Tab work; the
page passes an axe-core scan with no serious violations.
"""

from __future__ import annotations

import pytest
from test_ui_browser import browser, search, show_weaker  # noqa: F401  (fixture)
from ui_views import context, open_page  # noqa: F401  (fixture)

pytestmark = pytest.mark.browser

TOUCH = True  # the phone context has touch (ui_views.context): swipes


@pytest.fixture
def page(context, server):  # noqa: F811
    return open_page(context, server + "/")


def results(pg, sample) -> list:
    data, _ = sample
    query, _ = data.unique_query(0)
    search(pg, query)
    show_weaker(pg)
    pg.wait_for_function("document.querySelectorAll('#cs-results .cs-card').length >= 4")
    return pg.locator("#cs-results .cs-card").all()


def lightbox_title(pg) -> str:
    return pg.locator("#cs-detail .cs-lightbox .cs-f-path").inner_text()


def wait_title(pg, expected: str) -> None:
    pg.wait_for_function("t => document.querySelector('#cs-detail .cs-f-path')?.innerText === t",
                         arg=expected)


def assert_over_the_grid(pg) -> None:
    """The dialog's panel lies inside the viewport, above everything else."""
    box = pg.locator("#cs-detail .cs-lb-panel").bounding_box()
    vw, vh = pg.viewport_size["width"], pg.viewport_size["height"]
    assert box["x"] >= -1 and box["y"] >= -1, box
    assert box["x"] + box["width"] <= vw + 1 and box["y"] + box["height"] <= vh + 1, (box, vw, vh)
    top = pg.evaluate("() => { const r = document.querySelector('#cs-detail .cs-lb-close')"
                      ".getBoundingClientRect(); const e = document.elementFromPoint(r.x + r.width / 2,"
                      " r.y + r.height / 2); return !!e.closest('.cs-lightbox'); }")
    assert top, "something covers the lightbox"


def test_click_opens_over_the_grid_after_scrolling_and_arrows_step(page, sample):
    cards = results(page, sample)
    last = cards[-1]
    last.scroll_into_view_if_needed()
    assert page.evaluate("window.scrollY") > 0 or page.viewport_size["height"] >= 1000
    last.locator("img, .cs-noimg").first.click()
    page.wait_for_selector("#cs-detail .cs-lightbox")
    assert lightbox_title(page) == last.get_attribute("title")
    assert_over_the_grid(page)
    assert page.locator("#cs-detail .cs-f-kind").inner_text() in {"Photo", "Page", "Video", "Video moment",
                                                                   "Words", "Text"}
    assert page.locator("#cs-detail .cs-lb-next").is_disabled()  # the last one
    page.keyboard.press("ArrowLeft")
    wait_title(page, cards[-2].get_attribute("title"))
    page.keyboard.press("ArrowRight")
    wait_title(page, last.get_attribute("title"))
    page.keyboard.press("Escape")
    page.wait_for_selector("#cs-detail .cs-lightbox", state="detached")
    page.wait_for_function("document.activeElement?.classList.contains('cs-card')")
    assert page.evaluate("document.activeElement.dataset.index") == last.get_attribute("data-index")


def test_keyboard_only(page, sample):
    cards = results(page, sample)
    page.locator("body").click(position={"x": 2, "y": 2})
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.closest('#cs-query') !== null")
    cards[0].focus()
    outline = cards[0].evaluate("c => getComputedStyle(c).outlineStyle")
    assert outline not in ("", "none")  # visible focus
    page.keyboard.press("Tab")  # the card's own "More like this" comes next, then the next card
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.index") == "1"
    page.keyboard.press("Enter")
    page.wait_for_selector("#cs-detail .cs-lightbox")
    assert lightbox_title(page) == cards[1].get_attribute("title")
    assert page.evaluate("document.activeElement.closest('.cs-lightbox') !== null")  # focus moved in
    for _ in range(12):  # Tab stays inside the dialog
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.closest('.cs-lightbox') !== null")
    page.locator("#cs-detail .cs-lb-copy").focus()
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#cs-detail .cs-lb-copy')?.dataset.copied")
    copied = page.locator("#cs-detail .cs-lb-copy").get_attribute("data-copied")
    assert copied == cards[1].get_attribute("title")
    page.locator("#cs-detail .cs-lb-combine").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#cs-detail .cs-lightbox", state="detached")
    box = page.locator("#cs-query textarea, #cs-query input").first
    typed = sample[0].unique_query(0)[0]
    assert box.input_value().startswith("id:") and box.input_value().endswith(f" + {typed}")
    assert page.evaluate("document.activeElement.closest('#cs-query') !== null")


def test_swipe_steps_on_a_phone(page, sample):
    if page.viewport_size["width"] > 600:
        pytest.skip("touch is the phone's")
    cards = results(page, sample)
    cards[0].locator("img, .cs-noimg").first.click()
    page.wait_for_selector("#cs-detail .cs-lightbox")
    page.evaluate("""() => {
      const el = document.querySelector('#cs-detail .cs-lb-panel');
      const t = (x) => new Touch({identifier: 1, target: el, clientX: x, clientY: 300});
      el.dispatchEvent(new TouchEvent('touchstart', {touches: [t(320)], changedTouches: [t(320)],
                                                     bubbles: true}));
      el.dispatchEvent(new TouchEvent('touchend', {touches: [], changedTouches: [t(80)], bubbles: true}));
    }""")
    wait_title(page, cards[1].get_attribute("title"))


def test_no_serious_accessibility_violations(page, sample):
    from axe_playwright_python.sync_playwright import Axe

    cards = results(page, sample)
    axe = Axe()
    serious = {"serious", "critical"}

    def check(what: str) -> None:
        found = axe.run(page).response["violations"]
        bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in found
               if v["impact"] in serious]
        assert not bad, f"{what}: {bad}"

    check("results")
    cards[0].locator("img, .cs-noimg").first.click()
    page.wait_for_selector("#cs-detail .cs-lightbox")
    check("lightbox")
