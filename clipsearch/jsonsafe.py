"""Strict JSON for everything clipsearch prints or serves.

Python's `json` writes NaN and Infinity by default, which no other JSON parser accepts (and
Starlette refuses to encode them, turning a response into a 500). A score or cosine can be
non-finite, e.g. for a keyword-only hybrid match that has no vector similarity; such values
become null.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any


def finite(obj: Any) -> Any:
    """`obj` with every non-finite float (also inside dicts, lists, tuples) replaced by None;
    numpy scalars become plain Python numbers."""
    if isinstance(obj, bool | str | None):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """`json.dumps` that always writes valid JSON (non-finite numbers as null)."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)
