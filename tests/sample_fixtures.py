"""The quick start's sample collection (examples/make_sample_collection.py), indexed once per
session with clipsearch-tiny: images of shapes, two videos and a five-page PDF whose second
page is the only one that mentions turbines."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "make_sample_collection.py"


def load_example():
    spec = importlib.util.spec_from_file_location("make_sample_collection", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def sample_collection(tmp_path_factory):
    """(Collection, ground-truth manifest, collection directory)."""
    from clipsearch.model_registry import tiny_files

    if not all(p.is_file() for p in tiny_files()):
        pytest.skip("clipsearch-tiny is not installed")
    from clipsearch import Collection

    root = tmp_path_factory.mktemp("sample")
    manifest = load_example().make_sample(root / "files", seed=0)
    col = Collection.create(root / "db", model="clipsearch-tiny", device="cpu")
    col.add([root / "files"], workers=2)
    return col, manifest, root / "db"
