"""Errors as the browser UI says them: plain words and what to do, never a CLI flag.

The core's messages are written for the command line ("--whiten applies to image queries",
"run `clipsearch fit-transforms`"); the UI shows the same facts in its own terms.
"""

from __future__ import annotations

import re

from clipsearch.ui.api import UploadRejected

NOT_AN_IMAGE = "this file is not an image; try a JPG, PNG, HEIC or WebP"
# (pattern in the core's message, what the UI says instead)
REWRITES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"--whiten applies to image queries"),
     "Whiten works on image queries only; untick it for a text search"),
    (re.compile(r"--center"), "Center"),
    (re.compile(r"--whiten"), "Whiten"),
    (re.compile(r"--invert"), "Invert"),
    # the filters' boxes, by their labels in the UI
    (re.compile(r"--after\b"), "Taken from"),
    (re.compile(r"--before\b"), "Taken until"),
    (re.compile(r"--place\b"), "Place"),
    (re.compile(r"--camera\b"), "Camera"),
)
_FLAG = re.compile(r"(?<![\w-])--[a-z][\w-]*")
_CLI_HINT = re.compile(r"`?clipsearch [a-z-]+[^`]*`?")


def plain(e: Exception) -> str:
    """One line for the UI: what happened and, when there is one a UI user can act on, what to do."""
    if isinstance(e, UploadRejected) and getattr(e, "status", None) == 415:
        return NOT_AN_IMAGE
    text = str(e)
    for pattern, said in REWRITES:
        text = pattern.sub(said, text)
    hint = getattr(e, "hint", None) or ""
    if hint and not _CLI_HINT.search(hint) and not _FLAG.search(hint):
        text += f"; {hint}"
    return _FLAG.sub("this option", text)
