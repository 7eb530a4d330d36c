"""The dependencies pyproject.toml declares are the ones the code uses, at floors that have its APIs."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import inspect
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PRODUCT_DIRS = (ROOT / "clipsearch", ROOT / "indexers", ROOT / "ui")
# Imported by the product only behind `except ImportError` (an optional speed-up), so not declared.
OPTIONAL_IMPORTS = {"timm"}
# Declared but used through another package's API rather than imported by name.
INDIRECT = {"pylance": "lancedb's Table.to_lance()", "python-multipart": "FastAPI's Form/File uploads"}

# The API each floor exists for: (distribution, the oldest release that has it, checks on it).
# A check is "module:attribute.path", or "module:callable(param, ...)" for keyword parameters.
API_FLOORS = [
    ("av", "14.1", ["av.video.frame:VideoFrame.rotation"]),
    ("scenedetect", "0.7", ["scenedetect.common:Timecode", "scenedetect.common:FrameTimecode",
                            "scenedetect:AdaptiveDetector"]),
    ("gradio", "6.24", ["gradio:mount_gradio_app(footer_links, css, run_history, ssr_mode)", "gradio:api",
                        "gradio:Timer"]),
    ("lancedb", "0.25", ["lancedb.index:FTS", "lancedb.index:IvfPq"]),
    ("open_clip_torch", "3.0", ["open_clip.transformer:text_global_pool", "open_clip:get_pretrained_cfg",
                                "open_clip:add_model_config"]),
    ("torchvision", "0.19", ["torchvision.io:decode_jpeg", "torchvision.transforms.v2.functional:resize"]),
    ("faiss-cpu", "1.9", ["faiss:IndexRefineSearchParameters", "faiss:SearchParametersIVF",
                          "faiss:IDSelectorBatch"]),
    ("pypdfium2", "4.30", ["pypdfium2:PdfDocument", "pypdfium2:PdfiumError",
                           "pypdfium2.raw:FPDF_ERR_PASSWORD"]),
    ("rawpy", "0.21", ["rawpy:RawPy.open_buffer", "rawpy:RawPy.extract_thumb", "rawpy:ThumbFormat",
                       "rawpy:LibRawUnsupportedThumbnailError"]),
    ("pillow-heif", "0.18", ["pillow_heif:register_heif_opener"]),
    ("huggingface_hub", "0.20", ["huggingface_hub:try_to_load_from_cache"]),
    ("watchfiles", "0.21", ["watchfiles:watch(stop_event, debounce, step, rust_timeout, yield_on_timeout, "
                            "force_polling, ignore_permission_denied)"]),
]


def _requirements(*groups: str) -> list[Requirement]:
    out = [Requirement(r) for r in PROJECT["dependencies"]]
    for g in groups:
        out += [Requirement(r) for r in PROJECT["optional-dependencies"][g]]
    return [r for r in out if canonicalize_name(r.name) != "clipsearch"]


def _declared(*groups: str) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in _requirements(*groups)}


def test_every_declared_dependency_is_installed_at_its_floor():
    bad = []
    for req in _requirements(*PROJECT["optional-dependencies"]):
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            bad.append(f"{req} is not installed")
            continue
        if not req.specifier.contains(have, prereleases=True):
            bad.append(f"{req}: {have} is installed")
    assert bad == []


def test_the_extras_have_a_readable_shape():
    extras = PROJECT["optional-dependencies"]
    assert {"ui", "ray", "lab", "test", "dev"} <= set(extras)
    for name, reqs in {"dependencies": PROJECT["dependencies"], **extras}.items():
        names = [canonicalize_name(Requirement(r).name) for r in reqs]
        assert names == sorted(names), f"{name}: keep one per line, sorted by name"
    assert "clipsearch[lab,photos-extra,ray,ui]" in extras["test"] and "clipsearch[test]" in extras["dev"]
    base = _declared()
    for unused in ("tantivy", "reportlab", "moto", "gradio", "playwright"):  # scipy: duplicates group with it
        assert unused not in base, unused  # not needed by index + search


@pytest.mark.parametrize(("dist", "floor", "checks"), API_FLOORS, ids=[d for d, _, _ in API_FLOORS])
def test_floor_has_the_api_the_code_uses(dist, floor, checks):
    req = _declared(*PROJECT["optional-dependencies"])[canonicalize_name(dist)]
    floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
    assert floors and floors[0] >= Version(floor), f"{req}: the code needs {dist} >= {floor}"
    for check in checks:
        module, _, attr = check.partition(":")
        params = None
        if "(" in attr:
            attr, params = attr.rstrip(")").split("(")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        if params:
            have = inspect.signature(obj).parameters
            assert [p for p in params.replace(" ", "").split(",") if p not in have] == [], check


def _third_party_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("clipsearch", "__future__")}


def test_the_product_imports_exactly_what_it_declares():
    """Every third-party module the product imports is declared (base or the ui/ray/cpu-fast/
    photos-extra/speech extras), and every base dependency is used by the product."""
    owners = md.packages_distributions()
    imported = set()
    for root in PRODUCT_DIRS:
        for path in root.rglob("*.py"):
            if "tiny" in path.relative_to(ROOT).parts:
                continue
            imported |= _third_party_imports(path)
    dists = {canonicalize_name(d) for m in imported - OPTIONAL_IMPORTS for d in owners.get(m, [m])}
    declared = _declared("ui", "ray", "cpu-fast", "photos-extra", "speech")
    assert sorted(dists - set(declared)) == []
    unused = set(_declared()) - dists - {canonicalize_name(d) for d in INDIRECT}
    assert sorted(unused) == []


def test_every_shipped_module_imports():
    names = []
    for pkg in ("clipsearch", "clipsearch.indexers", "clipsearch.ui"):  # mapped from three folders
        mod = importlib.import_module(pkg)
        names += [m.name for m in pkgutil.walk_packages(mod.__path__, pkg + ".")]
    assert {"clipsearch.cli", "clipsearch.indexers.video", "clipsearch.ui.app", "clipsearch.tiny.train",
            "clipsearch.engines.ray_engine", "clipsearch.__main__"} <= set(names)
    for name in names:
        importlib.import_module(name)


def test_a_missing_optional_dependency_is_one_line_naming_the_extra(tmp_path):
    code = ("import sys; sys.modules['gradio'] = None; from clipsearch.cli import main; "
            f"main(['serve', '--db', {str(tmp_path / 'db')!r}])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip().splitlines() == ["error: clipsearch serve needs gradio, which is not installed",
                                             "hint: pip install 'clipsearch[ui]'"]
