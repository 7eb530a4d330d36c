"""Take the README screenshot: serve a collection, run a query in headless Chromium, save a PNG.

    python scripts/screenshot.py --db DIR --query "a red star" --out docs/screenshot.png

A dev tool, not shipped in the wheel. Needs Playwright (the `dev` extra) and a Chromium binary
(Debian: apt-get install chromium); Playwright's own browser download is not used. The server
runs in-process on a free loopback port.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(db: str, device: str):
    import uvicorn
    from clipsearch.ui.server import build_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(db, device=device), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}/"


def take_screenshot(db: str, query: str, out: Path, chromium: str = "/usr/bin/chromium",
                    open_result: int = 0, kind: str | None = None, device: str = "auto",
                    size: tuple[int, int] = (1400, 1000), theme: str = "light") -> Path:
    """Search `query` in the UI over `db`, open result `open_result` in the lightbox, write a PNG
    to `out`; `theme` light or dark (Gradio's `__theme` URL parameter)."""
    from playwright.sync_api import sync_playwright

    if not os.path.isfile(chromium):
        raise SystemExit(f"no Chromium at {chromium}: apt-get install chromium, or pass --chromium")
    server, url = _start_server(db, device)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            page.set_default_timeout(180_000)
            page.goto(url + f"?__theme={theme}")
            page.wait_for_function("document.documentElement.classList.contains('cs-ready')")  # drawn whole
            if kind:  # the label exactly: "Video" is also in "Video moment"
                exact = re.compile(rf"^\s*{re.escape(kind)}\s*$")
                page.locator("#cs-kind label").filter(has_text=exact).click()
            box = page.locator("#cs-query textarea, #cs-query input").first
            box.fill(query)
            box.press("Enter")
            page.wait_for_selector("#cs-results .cs-card")
            page.locator("#cs-results .cs-card").nth(open_result).click()
            page.wait_for_selector("#cs-detail .cs-lightbox .cs-detail")
            page.wait_for_function(  # every visible thumbnail decoded: no holes in the picture
                "[...document.querySelectorAll('#cs-results img, #cs-detail img')]"
                ".filter(i => i.getBoundingClientRect().top < window.innerHeight)"
                ".every(i => i.complete && i.naturalWidth > 0)")
            page.wait_for_function(  # a video in the detail view shows a frame, not a spinner
                "[...document.querySelectorAll('#cs-detail video')]"
                ".every(v => v.readyState >= 3 && !v.seeking)")
            page.evaluate("document.activeElement && document.activeElement.blur()")
            time.sleep(0.5)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=False)
            browser.close()
    finally:
        server.should_exit = True
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True, help="collection directory to serve")
    ap.add_argument("--query", default="a red star", help="text to search for")
    ap.add_argument("--kind", default=None, help="kind filter label, e.g. 'Photo' or 'Video moment'")
    ap.add_argument("--open", type=int, default=0, help="which result to open in the detail view")
    ap.add_argument("--out", type=Path, default=Path("docs/screenshot.png"))
    ap.add_argument("--chromium", default=os.environ.get("CLIPSEARCH_CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--theme", choices=["light", "dark", "both"], default="both",
                    help="both: OUT and OUT with -dark before its suffix")
    args = ap.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    themes = ["light", "dark"] if args.theme == "both" else [args.theme]
    for theme in themes:
        out = args.out if theme == "light" or args.theme == "dark" else \
            args.out.with_name(f"{args.out.stem}-dark{args.out.suffix}")
        path = take_screenshot(args.db, args.query, out, chromium=args.chromium, open_result=args.open,
                               kind=args.kind, device=args.device, theme=theme)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
