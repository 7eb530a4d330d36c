"""The product does not depend on the demo model's lab (clipsearch.tiny)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAB = "clipsearch.tiny"
# The product's source trees and the package each one is shipped as.
PRODUCT = {ROOT / "clipsearch": "clipsearch", ROOT / "indexers": "clipsearch.indexers",
           ROOT / "ui": "clipsearch.ui"}


def _imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of every module a file imports (relative imports resolved)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def _product_files() -> list[tuple[Path, str]]:
    out = []
    for root, package in PRODUCT.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root)
            if package == "clipsearch" and rel.parts[0] == "tiny":
                continue
            sub = ".".join((package, *rel.with_suffix("").parts[:-1]))
            out.append((path, sub))
    return out


def test_no_product_module_imports_the_lab():
    files = _product_files()
    assert len(files) > 30  # the scan sees the product
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in _imported_modules(p, pkg)
                                                   if m == LAB or m.startswith(LAB + "."))
                 for p, pkg in files}
    assert {f: m for f, m in offenders.items() if m} == {}


def test_the_scan_sees_a_lab_import():
    """The AST scan is not vacuous: it finds the lab in a lab module and in relative imports."""
    lab_train = ROOT / "clipsearch" / "tiny" / "train.py"
    assert any(m.startswith(LAB) for m in _imported_modules(lab_train, LAB))


def test_importing_the_product_loads_no_lab_module():
    code = ("import json, sys; import clipsearch.collection, clipsearch.search, clipsearch.cli; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('clipsearch'))))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    loaded = json.loads(p.stdout.strip().splitlines()[-1])
    assert "clipsearch.search" in loaded and "clipsearch.cli" in loaded
    assert [m for m in loaded if m == LAB or m.startswith(LAB + ".")] == []


def test_fitting_transforms_with_the_tiny_model_loads_no_lab_module(tmp_path):
    """Centering's text side for clipsearch-tiny comes from the file shipped beside its weights."""
    code = (
        "import json, sys; from clipsearch.encoders import Encoder; "
        "from clipsearch.transforms import embed_builtin_captions; "
        "enc = Encoder.load('clipsearch-tiny', device='cpu'); "
        "v = embed_builtin_captions(enc, limit=50); "
        "print(json.dumps([v.shape[0], sorted(m for m in sys.modules if m.startswith('clipsearch.tiny'))]))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1]) == [50, []]
