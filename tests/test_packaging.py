"""The wheel ships indexers/ and ui/ as clipsearch.indexers and clipsearch.ui, the model, its lab,
py.typed and the license; not the repo's dev tools."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    if p.returncode:
        pytest.skip(f"cannot build a wheel here: {p.stderr.strip()[-300:]}")
    return next(out.glob("clipsearch-*.whl"))


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for must in ("clipsearch/indexers/image.py", "clipsearch/indexers/video.py",
                 "clipsearch/indexers/document.py", "clipsearch/ui/server.py", "clipsearch/__main__.py",
                 "clipsearch/py.typed", "clipsearch/models/clipsearch-tiny.safetensors",
                 "clipsearch/models/clipsearch-tiny.json", "clipsearch/models/clipsearch-tiny.captions.txt",
                 "clipsearch/tiny/synth/shapes.py", "clipsearch/tiny/train.py",
                 "clipsearch/engines/ray_engine.py"):
        assert must in names, must
    assert not any(n.startswith(("indexers/", "ui/", "tests/", "scripts/", "benchmarks/")) for n in names)
    # Lab-only tooling that needs dev dependencies stays out; the lab has its own package.
    assert not any(n.endswith("screenshot.py") for n in names)
    old_lab = ("clipsearch/train_tiny.py", "clipsearch/tiny_tune.py", "clipsearch/eval_tiny.py")
    assert not any(n.startswith("clipsearch/synth/") or n in old_lab for n in names)
    licenses = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert licenses, sorted(n for n in names if ".dist-info/" in n)
    text = zipfile.ZipFile(wheel).read(licenses[0]).decode()
    assert "Apache License" in text and "Version 2.0" in text
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    header = zipfile.ZipFile(wheel).read(meta).decode().split("\n\n")[0]
    assert "License-Expression: Apache-2.0" in header.splitlines()
    assert "Provides-Extra: ui" in header and "Requires-Dist: gradio>=6.24; extra == \"ui\"" in header


def test_wheel_imports_outside_the_repo(wheel, tmp_path):
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = ("import clipsearch.indexers.image, clipsearch.ui.files, clipsearch.model_registry as r; "
            "print(r.tiny_files()[1].is_file())")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "True"


def test_editable_install_maps_the_root_folders():
    import clipsearch.indexers
    import clipsearch.ui

    assert Path(clipsearch.indexers.__file__).parent == ROOT / "indexers"
    assert Path(clipsearch.ui.__file__).parent == ROOT / "ui"


def test_python_m_clipsearch_is_the_cli():
    p = subprocess.run([sys.executable, "-m", "clipsearch", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("Usage: clipsearch ") and "serve" in p.stdout
