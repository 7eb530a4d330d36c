"""Fixtures shared by the test files; the helpers they are built from are in support.py."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# The suite's figures are PyTorch's: it runs on the torch backend unless a test asks for another
# (tests/test_backends.py), and exports go to a folder of this run, never the user's cache.
os.environ["CLIPSEARCH_BACKEND"] = "torch"
# OCR (the `ocr` extra is part of `test`) only where a test asks for it: tests/test_ocr.py
os.environ.setdefault("CLIPSEARCH_OCR", "off")
os.environ.pop("CLIPSEARCH_PRECISION", None)
os.environ.setdefault("CLIPSEARCH_CACHE_DIR", tempfile.mkdtemp(prefix="clipsearch-test-cache-"))

pytest.register_assert_rewrite("support")

from support import SampleData, ServerThread, build_collection, make_sample, tiny_model_args  # noqa: E402


@pytest.fixture(scope="session")
def sample(tmp_path_factory) -> tuple[SampleData, Path]:
    """(sample data, collection directory), indexed once per session."""
    args = tiny_model_args()  # skip before rendering anything
    assert args
    base = tmp_path_factory.mktemp("ui")
    data = make_sample(base / "library")
    db = base / "db"
    build_collection(db, [data.root])
    return data, db


@pytest.fixture(scope="session")
def server(sample):
    """A live server over the sample collection: yields its base URL."""
    from clipsearch.ui.server import build_app

    _, db = sample
    with ServerThread(build_app(db, device="cpu")) as srv:
        yield srv.url


@pytest.fixture(scope="session")
def sample_collection(tmp_path_factory):
    """The quick start's sample collection (clipsearch.tiny.sample), indexed once per session
    with clipsearch-tiny: (Collection, ground-truth manifest, collection directory)."""
    from clipsearch.model_registry import tiny_files

    if not all(p.is_file() for p in tiny_files()):
        pytest.skip("clipsearch-tiny is not installed")
    from clipsearch import Collection
    from clipsearch.tiny.sample import make_sample

    root = tmp_path_factory.mktemp("sample")
    manifest = make_sample(root / "files", seed=0)
    col = Collection.create(root / "db", model="clipsearch-tiny", device="cpu")
    col.add([root / "files"], workers=2)
    return col, manifest, root / "db"
