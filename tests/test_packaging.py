"""The wheel ships indexers/ and ui/ as clipsearch.indexers and clipsearch.ui, plus the model."""

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
                 "clipsearch/indexers/document.py", "clipsearch/ui/server.py",
                 "clipsearch/models/clipsearch-tiny.safetensors", "clipsearch/models/clipsearch-tiny.json",
                 "clipsearch/tiny/synth/shapes.py", "clipsearch/engines/ray_engine.py"):
        assert must in names, must
    assert not any(n.startswith(("indexers/", "ui/", "tests/")) for n in names)  # no top-level clutter


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
