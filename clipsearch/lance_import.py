"""Import Lance without pandas: pyarrow's dataset module, which Lance imports, pulls in pandas
(half of `import lance`'s cost) only to ask, at its own import, whether a scalar is a pandas
object; clipsearch never hands pandas objects to Arrow.

While Lance is imported, an import of pandas fails (a finder first on `sys.meta_path`), so
pyarrow records that pandas is absent for those checks. pyarrow's pandas-needing calls
(`to_pandas`, `from_pandas`) still import it when called: they retry the import themselves.
A process that has imported pandas already keeps it as it is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import threading
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

_lock = threading.Lock()


class _NoPandas(importlib.abc.Loader):
    """A meta path finder whose pandas cannot be imported (while it is on `sys.meta_path`).

    It still finds pandas (`importlib.util.find_spec` answers): Lance asks that once, to learn
    whether pandas is installed at all, and must keep its answer true."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if name == "pandas" or name.startswith("pandas."):
            return ModuleSpec(name, self)
        return None

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        raise ModuleNotFoundError(f"{spec.name} is not imported while Lance is (clipsearch.lance_import)",
                                  name=spec.name)

    def exec_module(self, module: ModuleType) -> None:  # never reached: create_module refuses
        raise ModuleNotFoundError(module.__name__)


def lance() -> ModuleType:
    """The `lance` module, imported without pandas unless pandas is already there."""
    found = sys.modules.get("lance")
    if found is not None:
        return found
    with _lock:
        if "pandas" in sys.modules or "pyarrow.dataset" in sys.modules:
            return importlib.import_module("lance")
        finder = _NoPandas()
        sys.meta_path.insert(0, finder)
        try:
            return importlib.import_module("lance")
        finally:
            sys.meta_path.remove(finder)
