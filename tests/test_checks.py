"""The guide's checks stay wired in: CI runs ruff and mypy, the public API is strict and typed."""

from __future__ import annotations

import inspect
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PUBLIC_MODULES = {"clipsearch.collection", "clipsearch.errors", "clipsearch.moments", "clipsearch.records",
                  "clipsearch.search", "clipsearch.store"}


def test_ci_runs_lint_and_the_type_checker():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/ruff check ." in ci and "scripts/typecheck.sh" in ci
    assert "mypy" in (ROOT / "scripts" / "typecheck.sh").read_text()
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert any(r.startswith("mypy>=") for r in extras["test"])
    assert any(r.startswith("mypy>=") for r in extras["dev"])


def test_the_public_api_modules_are_checked_strictly():
    strict = [o for o in PYPROJECT["tool"]["mypy"]["overrides"] if o.get("disallow_untyped_defs")]
    assert strict and PUBLIC_MODULES <= set(strict[0]["module"])
    assert all(strict[0].get(flag) for flag in ("disallow_any_generics", "disallow_incomplete_defs",
                                                "disallow_untyped_calls", "warn_return_any"))


def _entry_points():
    from clipsearch.collection import Collection
    from clipsearch.moments import find_moments
    from clipsearch.search import Searcher

    return [Collection.add, Collection.search, Collection.moments, Collection.open, Collection.create,
            Collection.encoder.fget, Collection.store.fget, Searcher.search, find_moments]


@pytest.mark.parametrize("fn", _entry_points(), ids=lambda f: f.__qualname__)
def test_public_entry_points_are_fully_annotated(fn):
    sig = inspect.signature(fn)
    missing = [n for n, p in sig.parameters.items()
               if n not in ("self", "cls") and p.annotation is inspect.Parameter.empty]
    assert not missing, f"{fn.__qualname__}: parameters without a type: {missing}"
    assert sig.return_annotation is not inspect.Signature.empty, f"{fn.__qualname__}: no return type"
