"""The UI's Duplicates page (`/duplicates`, a page of its own in the app's nav bar): find the
groups, review each as a row (the suggested keeper first, with why; the copies beside it with
size, date and similarity), and move the copies after a confirmation.

Moving is off unless the server was started with a folder to move into (`clipsearch serve
--duplicates-to DIR`, `build_app(duplicates_to=...)`): the browser never names a path on the
server. A move acts only on groups shown on the page that are still groups when it runs
(`duplicates_view.move_shown`), and never deletes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr
from clipsearch.ui.duplicates_view import duplicates_json, move_shown, render_groups

from clipsearch.errors import ClipsearchError
from clipsearch.fsutil import is_within

if TYPE_CHECKING:
    from clipsearch.ui.api import SearchService

PATH = "/duplicates"
INTRO = ("Files that show the same picture: exact copies (same bytes) and near-duplicates (resized, "
         "re-encoded, lightly cropped or rotated, burst shots, a photo that is a frame of a video). "
         "Nothing here deletes a file.")


def _error(e: ClipsearchError) -> str:
    return f"⚠️ {e}" + (f" — {e.hint}" if e.hint else "")


def add_page(demo: gr.Blocks, service: SearchService) -> None:
    """Add the Duplicates page to `demo` (call after its main page is built, outside it)."""
    dest = service.duplicates_to

    def find(threshold: str, kind: str) -> tuple[str, dict[str, Any], Any, Any, str]:
        try:
            data = duplicates_json(service, threshold, kind)
        except ClipsearchError as e:
            return (f"<div class='cs-dup-error'>{_error(e)}</div>", {}, gr.update(visible=False),
                    gr.update(visible=False), "")
        # copies already in the folder stay there (a move never moves them again)
        others = [f["source"] for g in data["groups"] for f in g["files"]
                  if not f["keeper"] and not (dest is not None and is_within(f["source"], str(dest)))]
        shown = {"threshold": threshold, "kind": kind, "others": others}
        can_move = dest is not None and bool(others)
        label = f"Move the {len(others)} copies to {dest}…" if can_move else "Move the copies…"
        return (render_groups(data, movable=dest is not None), shown,
                gr.update(visible=can_move, value=label), gr.update(visible=False), "")

    def ask(shown: dict[str, Any]) -> tuple[Any, str]:
        n = len(shown.get("others", []))
        return gr.update(visible=True), (f"Move **{n}** files (every copy but each group's keeper) to "
                                         f"`{dest}`? Nothing is deleted; the collection follows the move.")

    def confirm(shown: dict[str, Any]) -> tuple[str, dict[str, Any], Any, Any, str]:
        try:
            line = move_shown(service, shown.get("threshold") or "auto", shown.get("kind") or "all",
                              shown.get("others", []))
        except ClipsearchError as e:
            return (gr.skip(), shown, gr.skip(), gr.update(visible=False), _error(e))
        html_, new_shown, move, _, _ = find(shown.get("threshold") or "auto", shown.get("kind") or "all")
        return html_, new_shown, move, gr.update(visible=False), f"✅ {line}"

    with demo.route("Duplicates", PATH):
        gr.Markdown("## Duplicates\n" + INTRO, elem_id="cs-dup-intro")
        with gr.Row():
            threshold = gr.Textbox("auto", label="Threshold (auto or a similarity)",
                                   elem_id="cs-dup-threshold", scale=1)
            kind = gr.Radio([("All", "all"), ("Photo", "image"), ("Video", "video")], value="all",
                            label="Kind", elem_id="cs-dup-kind", scale=2)  # human labels, same values
            go = gr.Button("Find duplicates", elem_id="cs-dup-go", variant="primary", scale=1)
        shown = gr.State({})
        with gr.Row():
            move = gr.Button("Move the copies…", visible=False, elem_id="cs-dup-move", scale=0)
            result = gr.Markdown("", elem_id="cs-dup-result")
        with gr.Row(visible=False, elem_id="cs-dup-confirm-row") as confirm_row:
            question = gr.Markdown("", elem_id="cs-dup-question")
            yes = gr.Button("Yes, move them", elem_id="cs-dup-confirm", variant="stop", scale=0)
            no = gr.Button("Cancel", elem_id="cs-dup-cancel", scale=0)
        groups = gr.HTML("", elem_id="cs-dups", padding=False)
        outputs = [groups, shown, move, confirm_row, result]
        go.click(find, [threshold, kind], outputs, api_visibility="private")
        move.click(ask, [shown], [confirm_row, question], api_visibility="private")
        no.click(lambda: gr.update(visible=False), None, confirm_row, api_visibility="private")
        yes.click(confirm, [shown], outputs, api_visibility="private")
