"""Pause points for crash tests: a writer stopped on cue in the middle of a maintenance step.

A test sets `$CLIPSEARCH_TEST_PAUSE_AT` to a step name (`STEPS`) and `$CLIPSEARCH_TEST_PAUSE_FILE`
to a path; the writer process reaching that step's pause point writes the file (the cue that
it stands mid-step) and sleeps until the test kills it with SIGKILL. Unset, which it always is
outside tests, a pause point costs one environment lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_ENV = "CLIPSEARCH_TEST_PAUSE_AT"
READY_ENV = "CLIPSEARCH_TEST_PAUSE_FILE"
# where each pause point stands (the maintenance steps, the touch batches of the scan, and the
# catalog's new base of file states, written before its delta and the catalog naming both)
STEPS = ("touch", "fts", "compact", "scalar_index", "thumbs", "ann", "transforms", "cleanup", "catalog")
MOVE_STEP = "move"  # after each file that `duplicates --move-to` moved (clipsearch.duplicate_moves)


def pause_at(step: str) -> None:
    """Stop here when `$CLIPSEARCH_TEST_PAUSE_AT` names `step` (see the module docstring)."""
    if os.environ.get(PAUSE_ENV) != step:
        return
    ready = os.environ.get(READY_ENV)
    if ready:
        Path(ready).write_text(f"{os.getpid()} {step}\n")
    time.sleep(3600)  # the test kills the process long before this ends
