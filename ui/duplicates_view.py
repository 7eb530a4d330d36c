"""Duplicate groups for the browser: JSON with signed thumbnail URLs (`/api/duplicates`) and
the side-by-side review HTML of the UI's "Duplicates" section.

Read-only: the server never moves or deletes a file. Moving the extra copies stays with the
CLI (`clipsearch duplicates --move-to DIR`) and the Python API (`Collection.move_duplicates`).
Only files the server may serve (rows of the collection inside its roots) are shown; a group
left with fewer than two such files is left out.
"""

from __future__ import annotations

import html
import os
from typing import TYPE_CHECKING, Any

from clipsearch.ui.files import item_url, thumb_url

if TYPE_CHECKING:
    from clipsearch.ui.api import SearchService

MAX_GROUPS = 500
MOVE_NOTE = ("Nothing here moves or deletes a file. To move the extra copies: "
             "clipsearch duplicates --move-to DIR (or Collection.move_duplicates).")


def duplicates_json(service: SearchService, threshold: str | None = "auto", kind: str | None = "all",
                    max_groups: int = MAX_GROUPS) -> dict[str, Any]:
    """The collection's duplicate groups as JSON (see the module docstring)."""
    report = service.col.duplicates(threshold=threshold or "auto", kind=kind or "all")
    ids = [f.id for g in report.groups[:max_groups] for f in g.files]
    rows = {r["id"]: r for r in service.col.store.rows_by_id(ids).to_pylist()} if ids else {}
    roots = service.guard.real_roots()
    groups = []
    for g in report.groups[:max_groups]:
        files = []
        for f in g.files:
            row = rows.get(f.id)
            if row is None or not service.guard.source_allowed(row["source_raw"], roots):
                continue
            thumb = thumb_url(f.id) if row.get("thumb") else (item_url(f.id, preview=True)
                                                                if f.kind == "image" else None)
            files.append({"name": os.path.basename(f.source), "source": f.source, "kind": f.kind,
                          "width": f.width, "height": f.height,
                          "taken_at": f.taken_at.isoformat() if f.taken_at else None,
                          "similarity": round(f.similarity, 6), "exact": f.exact,
                          "keeper": f.source == g.keeper.source,
                          "media_url": service.signed(item_url(f.id)),
                          "thumb_url": service.signed(thumb) if thumb else None})
        if len(files) >= 2 and any(x["keeper"] for x in files):
            groups.append({"keeper": g.keeper.source, "reason": g.reason, "exact": g.exact, "files": files})
    return {"threshold": round(report.threshold, 6), "auto": report.auto, "how": report.how,
            "kind": report.kind, "items": report.items, "groups": groups,
            "truncated": len(report.groups) > max_groups, "note": MOVE_NOTE}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render_groups(data: dict[str, Any]) -> str:
    """Each group as a row of cards, the keeper first and marked, with size, date and similarity."""
    head = (f"<div class='cs-dup-summary'>{len(data['groups'])} groups among {data['items']} files; "
            f"threshold {data['threshold']:.4f} ({_e(data['how'])})</div>"
            f"<div class='cs-dup-note'>{_e(data['note'])}</div>")
    rows = []
    for n, g in enumerate(data["groups"], 1):
        cards = []
        for f in g["files"]:
            img = (f"<img src='{_e(f['thumb_url'])}' alt='{_e(f['name'])}' loading='lazy'>"
                   if f["thumb_url"] else f"<div class='cs-noimg'>{_e(f['kind'])}</div>")
            size = f"{f['width']}×{f['height']}" if f["width"] and f["height"] else "size ?"
            badge = "keep" if f["keeper"] else ("same bytes" if f["exact"] else f"{f['similarity']:.4f}")
            cards.append(f"<div class='cs-dup-card{' cs-dup-keeper' if f['keeper'] else ''}' "
                         f"title='{_e(f['source'])}'>{img}<div class='cs-cap'>"
                         f"<span class='cs-dup-badge'>{_e(badge)}</span> <span>{_e(size)}</span>"
                         f"<div class='cs-name'>{_e(f['name'])}</div>"
                         f"<div class='cs-dup-date'>{_e(f['taken_at'] or '')}</div></div></div>")
        rows.append(f"<div class='cs-dup-group' data-group='{n}'><div class='cs-dup-why'>group {n}: keep "
                    f"{_e(os.path.basename(g['keeper']))} ({_e(g['reason'])})</div>"
                    f"<div class='cs-dup-row'>{''.join(cards)}</div></div>")
    if not rows:
        rows.append("<div class='cs-dup-none'>No duplicates found.</div>")
    return "<div class='cs-dups'>" + head + "".join(rows) + "</div>"


CSS = """
.cs-dup-group { margin: 10px 0; padding: 6px; border: 1px solid #8884; border-radius: 6px; }
.cs-dup-row { display: flex; gap: 8px; overflow-x: auto; }
.cs-dup-card { width: 170px; flex: none; border: 2px solid transparent; border-radius: 6px; }
.cs-dup-card img { width: 100%; height: 140px; object-fit: contain; background: #0001; }
.cs-dup-keeper { border-color: #2a9d4b; }
.cs-dup-badge { font-weight: 600; }
.cs-dup-why, .cs-dup-summary { font-weight: 600; margin: 4px 0; }
.cs-dup-note { font-size: 0.85em; opacity: 0.8; }
"""
