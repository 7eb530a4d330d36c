"""The two viewports every browser test runs at, a browser context for each, and a page of the
app opened and drawn. A test module imports `browser` (test_ui_browser) beside these."""

from __future__ import annotations

import pytest
from test_ui_browser import TIMEOUT_MS

VIEWPORTS = {"desktop": (1400, 1000), "phone": (390, 844)}


@pytest.fixture(params=list(VIEWPORTS))
def context(request, browser):
    """A fresh browser context at each viewport (the phone's with touch when a test asks for
    `touch` in its module)."""
    width, height = VIEWPORTS[request.param]
    ctx = browser.new_context(viewport={"width": width, "height": height},
                              has_touch=request.param == "phone" and getattr(request.module, "TOUCH", False))
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx
    ctx.close()


def open_page(context, url: str, init_script: str | None = None):
    """A new page at `url`, returned once the search box is drawn (`init_script` runs first)."""
    pg = context.new_page()
    if init_script:
        pg.add_init_script(init_script)
    pg.goto(url)
    pg.wait_for_selector("#cs-query textarea, #cs-query input")
    return pg
