"""Duplicate groups for the browser: JSON with signed thumbnail URLs (`/api/duplicates`), the
side-by-side review HTML of the UI's Duplicates page (`duplicates_page`), and its move.

The server never deletes a file, and moves one only from the Duplicates page of a server
started with a folder to move into (`clipsearch serve --duplicates-to DIR`): `move_shown`.
Otherwise moving stays with the CLI (`clipsearch duplicates --move-to DIR`) and the Python API
(`Collection.move_duplicates`). Only files the server may serve (rows of the collection inside
its roots) are shown; a group left with fewer than two such files is left out.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipsearch.ui.files import item_url, thumb_url
from clipsearch.ui.names import kind_name

from clipsearch.errors import UsageError
from clipsearch.fsutil import is_within

if TYPE_CHECKING:
    from clipsearch.ui.api import SearchService

MAX_GROUPS = 500
MOVE_NOTE = ("Nothing here deletes a file. To move the extra copies: clipsearch duplicates "
             "--move-to DIR (or Collection.move_duplicates), or the Duplicates page of a server "
             "started with clipsearch serve --duplicates-to DIR.")


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


def check_move_folder(service: SearchService, folder: str | os.PathLike[str]) -> Path:
    """`serve --duplicates-to`: the folder as an absolute path, refused (a usage error naming it)
    inside the collection's folder or onto a file (`move_duplicates` checks it again per move)."""
    dest = Path(os.path.abspath(os.path.expanduser(os.fspath(folder))))
    if is_within(str(dest), str(Path(service.db).resolve())) or is_within(str(dest), str(service.db)):
        raise UsageError(f"--duplicates-to {dest} is inside the collection's folder",
                         hint="name a folder of your own, e.g. ~/Pictures/duplicates")
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"--duplicates-to {dest} is a file, not a folder",
                         hint="name a folder (it is created)")
    return dest


def move_shown(service: SearchService, threshold: str | None, kind: str | None, shown: list[str]) -> str:
    """Move the copies of the groups the page showed (`shown`: the non-keepers' sources) into
    the server's `duplicates_to` folder; one line saying what moved. The groups are found again
    first, and only a group whose copies were all shown moves, so a page older than the
    collection never moves a file its user did not see."""
    dest = service.duplicates_to
    if dest is None:
        raise UsageError("this server does not move files",
                         hint="start it with clipsearch serve --duplicates-to DIR, or run "
                              "clipsearch duplicates --move-to DIR")
    seen = set(shown)
    report = service.col.duplicates(threshold=threshold or "auto", kind=kind or "all")
    groups = [g for g in report.groups if g.others and all(f.source in seen for f in g.others)]
    if not groups:
        return "nothing to move: no group shown is still a group"
    return service.col.move_duplicates(dest, groups=groups).line()


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render_groups(data: dict[str, Any], movable: bool = False) -> str:
    """Each group as a row of cards, the keeper first and marked, with size, date and similarity.
    `movable`: this server can move the copies (the page's move button), so no CLI note."""
    copies = sum(1 for g in data["groups"] for f in g["files"] if not f["keeper"])
    head = (f"<div class='cs-dup-summary' data-groups='{len(data['groups'])}'>{len(data['groups'])} groups "
            f"({copies} copies) among {data['items']} files; threshold {data['threshold']:.4f}</div>"
            f"<details class='cs-dup-how'><summary>how the threshold was chosen</summary>{_e(data['how'])}"
            f"</details>" + ("" if movable else f"<div class='cs-dup-note'>{_e(data['note'])}</div>"))
    rows = []
    for n, g in enumerate(data["groups"], 1):
        cards = []
        for f in g["files"]:
            img = (f"<img src='{_e(f['thumb_url'])}' alt='{_e(f['name'])}' loading='lazy'>"
                   if f["thumb_url"] else f"<div class='cs-noimg'>{_e(kind_name(f['kind']))}</div>")
            size = f"{f['width']}×{f['height']}" if f["width"] and f["height"] else "size ?"
            badge = ("keep" if f["keeper"] else "same bytes" if f["exact"]
                     else f"similarity {f['similarity']:.4f}")
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
