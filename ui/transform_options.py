"""Which query transforms the collection can apply, and why the others are absent.

The UI offers Whiten, Center and Invert only where they can work; an unfitted one is hidden and
its reason goes into the tooltip of what is shown (the Kind row), not into an error after a click.
"""

from __future__ import annotations

from clipsearch.ui.api import SearchService

from clipsearch.errors import ClipsearchError


def available(service: SearchService) -> dict[str, str | None]:
    """{"whiten"|"center"|"invert": None when it can be used, else why not}."""
    none_yet = "the collection has no fitted transforms yet (its owner can fit them)"
    reasons: dict[str, str | None] = {"whiten": none_yet, "center": none_yet, "invert": none_yet}
    if not service.exists():
        return reasons
    try:
        ts = service.col.searcher.transforms()
    except ClipsearchError:
        return reasons
    skipped = getattr(ts, "skipped", {}) or {}
    why_not = {name: f"{name}: {skipped.get(name, 'not fitted')}" for name in ("whiten", "center")}
    reasons["whiten"] = None if ts.whitening is not None else why_not["whiten"]
    reasons["center"] = None if ts.image_mean is not None else why_not["center"]
    reasons["invert"] = None if ts.whitening is not None or ts.image_mean is not None else reasons["center"]
    return reasons
