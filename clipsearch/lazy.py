"""A module imported on first use: heavy imports (FAISS) stay off the paths that never use them
(`info`, an unchanged `index` run).

A proxy rather than `importlib.util.LazyLoader`: the proxy imports under a lock, so threads of
the server that search at once import it once (LazyLoader is not thread-safe before Python 3.12),
and the module enters `sys.modules` only when it is really imported.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module `name`; the first attribute read imports it."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None
        self._lock = threading.Lock()

    def _load(self) -> ModuleType:
        if self._module is None:
            with self._lock:
                if self._module is None:
                    self._module = importlib.import_module(self._name)
        return self._module

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<lazy module {self._name!r} ({state})>"


def lazy_import(name: str) -> Any:
    """`name` as a `LazyModule` (typed Any: modules import the real one under TYPE_CHECKING)."""
    return LazyModule(name)
