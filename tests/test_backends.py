"""ONNX Runtime and OpenVINO backends with clipsearch-tiny: the same vectors as PyTorch, the same
retrieval, a cache that survives damage and concurrent exports, and a text search without torch.

conftest.py pins the rest of the suite to the torch backend and points the export cache at a
folder of this run; the tiny model is exported once here (`exported`) and shared.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import open_clip
import pytest
from PIL import Image
from support import run_cli_fresh, write_shapes

from clipsearch.backends import agreement, cache, choose, export, load_encoder, runtime
from clipsearch.backends.exported import ExportedEncoder
from clipsearch.backends.preprocess import ImageTransform
from clipsearch.backends.tokenizer import PROBE_TEXTS, TextTokenizer, verify
from clipsearch.backends.tokenizer import build as build_tokenizer
from clipsearch.encoders import Encoder
from clipsearch.errors import ModelMismatch, UsageError
from clipsearch.model_registry import resolve, tiny_files

pytest.importorskip("onnx")
pytest.importorskip("tokenizers")
if not all(p.is_file() for p in tiny_files()):
    pytest.skip("clipsearch-tiny is not installed", allow_module_level=True)

VARIANTS = [("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "bf16")]
EXTRA_TEXTS = ["a red star on a blue background", "two green circles", "a yellow square, small",
               "the purple cross in the corner", "an orange diamond " * 12]


def needs(backend: str) -> None:
    if not runtime.installed(backend):
        pytest.skip(f"{runtime.MODULES[backend]} is not installed")


@pytest.fixture(scope="module")
def tiny():
    return Encoder.load("clipsearch-tiny", device="cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Image.Image]:
    """Rendered shapes written as JPEGs and decoded, as the indexer reads them."""
    folder = tmp_path_factory.mktemp("shapes")
    write_shapes(folder, per_class=1, seed=3)
    return [Image.open(p).convert("RGB") for p in sorted(folder.iterdir())]


def exported_encoder(backend: str, precision: str) -> ExportedEncoder:
    needs(backend)
    enc = load_encoder(resolve("clipsearch-tiny"), device="cpu", backend=backend, precision=precision)
    assert isinstance(enc, ExportedEncoder), f"{backend}/{precision} fell back to torch"
    return enc


# ---- preprocessing and tokenizer ---------------------------------------------------------------
@pytest.mark.parametrize("size", [64, 224])
def test_numpy_preprocessing_matches_open_clips_transform(size):
    theirs = open_clip.image_transform(size, is_train=False)
    ours = ImageTransform.from_open_clip(theirs)
    rng = np.random.default_rng(0)
    for w, h in [(640, 480), (480, 640), (size, size), (31, 47), (3000, 200), (size - 1, size + 1)]:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        a, b = ours(im), theirs(im).numpy()
        assert a.shape == b.shape == (3, size, size)
        assert np.abs(a - b).max() < 1e-5, (w, h)
    grey = Image.fromarray(rng.integers(0, 256, (90, 120), dtype=np.uint8), "L")
    assert np.abs(ours(grey) - theirs(grey).numpy()).max() < 1e-5


@pytest.mark.parametrize("arch", ["ViT-B-32", "clipsearch-tiny"])
def test_tokenizer_gives_open_clips_ids_and_counts(arch, tiny, tmp_path):
    from clipsearch.tokens import count_tokens

    reference = tiny.tokenizer if arch == "clipsearch-tiny" else open_clip.get_tokenizer(arch)
    ours = TextTokenizer(tmp_path / "tokenizer.json", build_tokenizer(reference, tmp_path))
    verify(reference, ours)  # raises on any difference
    texts = [*PROBE_TEXTS, *EXTRA_TEXTS]
    assert np.array_equal(ours(texts), np.asarray(reference(texts)))
    long = "a photo of " * 60
    assert ours.count(long) == count_tokens(reference, long) > reference.context_length


def test_tokenizer_verification_notices_a_difference(tiny, tmp_path):
    from clipsearch.backends.tokenizer import UnsupportedTokenizer

    config = build_tokenizer(tiny.tokenizer, tmp_path)
    wrong = TextTokenizer(tmp_path / "tokenizer.json", {**config, "clean": "whitespace"})  # keeps case
    with pytest.raises(UnsupportedTokenizer):
        verify(tiny.tokenizer, wrong)


# ---- vectors and retrieval ---------------------------------------------------------------------
@pytest.mark.parametrize("backend,precision", VARIANTS)
def test_vectors_agree_with_pytorch_on_decoded_images_and_texts(backend, precision, tiny, images):
    enc = exported_encoder(backend, precision)
    threshold = agreement.THRESHOLDS[precision]
    assert export.min_cosine(enc.encode_images(images), tiny.encode_images(images)) >= threshold
    texts = [*EXTRA_TEXTS, *PROBE_TEXTS]
    assert export.min_cosine(enc.encode_texts(texts), tiny.encode_texts(texts)) >= threshold
    assert enc.count_tokens(EXTRA_TEXTS[-1]) == tiny.count_tokens(EXTRA_TEXTS[-1])
    assert (enc.dim, enc.image_size, enc.context_length) == (tiny.dim, tiny.image_size, tiny.context_length)


@pytest.mark.parametrize("backend,precision", VARIANTS)
def test_top10_retrieval_overlap_on_the_sample_collection(backend, precision, tiny, sample_collection):
    _, manifest, _ = sample_collection
    enc = exported_encoder(backend, precision)
    files = [Image.open(row["file"]).convert("RGB") for row in manifest["images"]]
    queries = sorted({row["query"] for row in manifest["images"]})
    ref = tiny.encode_texts(queries) @ tiny.encode_images(files).T
    got = enc.encode_texts(queries) @ enc.encode_images(files).T
    overlaps = [len(set(np.argsort(-r)[:10]) & set(np.argsort(-g)[:10])) / 10
                for r, g in zip(ref, got, strict=True)]
    assert np.mean(overlaps) >= 0.98, overlaps


def test_auto_picks_a_probed_variant_and_remembers_why(tiny):
    needs("onnx")
    enc = load_encoder(resolve("clipsearch-tiny"), device="cpu", backend="auto")
    assert isinstance(enc, ExportedEncoder)
    m = enc.export.manifest
    assert m["choice"] == {"backend": enc.backend, "precision": enc.precision}
    passed = {k: v for k, v in m["variants"].items() if v["passed"]}
    assert max(passed, key=lambda k: passed[k]["images_per_s"]) == f"{enc.backend}/{enc.precision}"
    assert m["versions"]["torch"] and m["versions"]["onnx"] and m["preprocess"]["interpolation"] == "bicubic"
    for name, rec in m["files"].items():
        assert cache.sha256_file(enc.export.folder / name) == rec["sha256"]


def test_an_openvino_encoder_can_run_its_text_tower_on_onnx_runtime(tiny):
    """What `auto` does when it picks OpenVINO: queries encode one text, and ONNX Runtime's text
    tower starts faster; the vectors still agree with PyTorch's."""
    needs("onnx")
    needs("openvino")
    exported_encoder("onnx", "fp32")  # its variant probed first, as auto's export does
    ov = exported_encoder("openvino", "fp32")
    mixed = ExportedEncoder(ov.spec, ov.export, "openvino", "fp32", text_on=("onnx", "fp32"))
    assert mixed.text_on == ("onnx", "fp32")
    texts = [*EXTRA_TEXTS, "a blue circle"]
    got = mixed.encode_texts(texts)
    assert type(mixed._runner("text")).__name__ == "OnnxRuntimeRunner"
    assert type(mixed._runner("image")).__name__ == "OpenVinoRunner"
    assert "text: onnx fp32" in mixed.describe()
    want = tiny.encode_texts(texts)
    assert float(np.min(np.sum(got * want, axis=1))) >= 0.9995
    # a text variant that never passed its probe is not used
    assert ExportedEncoder(ov.spec, ov.export, "openvino", "fp32", text_on=("onnx", "int4")).text_on is None


# ---- the cache ---------------------------------------------------------------------------------
@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    """An export cache of this test alone, seeded with a copy of the shared tiny export."""
    needs("onnx")
    exported_encoder("onnx", "fp32")  # the shared export exists
    model_id = resolve("clipsearch-tiny").model_id()
    src = cache.export_dir(model_id)
    monkeypatch.setenv("CLIPSEARCH_CACHE_DIR", str(tmp_path))
    shutil.copytree(src, cache.export_dir(model_id))
    return cache.export_dir(model_id)


def test_a_truncated_export_is_discarded_and_redone(own_cache, tiny, images):
    text = own_cache / "text.onnx"
    text.write_bytes(text.read_bytes()[: text.stat().st_size // 2])
    assert cache.load(resolve("clipsearch-tiny").model_id()) is None  # detected by its size
    enc = exported_encoder("onnx", "fp32")
    assert (own_cache / "text.onnx").stat().st_size == enc.export.manifest["files"]["text.onnx"]["bytes"]
    assert export.min_cosine(enc.encode_texts(EXTRA_TEXTS), tiny.encode_texts(EXTRA_TEXTS)) >= 0.9995


def test_an_altered_export_is_detected_by_its_sha256_and_redone(own_cache, tiny, images, caplog):
    image = own_cache / "image.onnx"
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the hash tells
    image.write_bytes(bytes(data))
    enc = exported_encoder("onnx", "fp32")
    with caplog.at_level(logging.WARNING):
        vecs = enc.encode_images(images)
    assert "does not match its sha256" in caplog.text
    assert export.min_cosine(vecs, tiny.encode_images(images)) >= 0.9995
    assert cache.sha256_file(image) == enc.export.manifest["files"]["image.onnx"]["sha256"]


def test_an_unreadable_manifest_is_discarded(own_cache):
    (own_cache / cache.MANIFEST).write_text("{not json")
    assert cache.load(resolve("clipsearch-tiny").model_id()) is None
    assert not own_cache.exists()


EXPORT_SCRIPT = textwrap.dedent("""
    import json, sys
    from clipsearch.backends import load_encoder
    from clipsearch.model_registry import resolve
    enc = load_encoder(resolve("clipsearch-tiny"), device="cpu", backend="onnx")
    print(json.dumps({"backend": getattr(enc, "backend", "torch"),
                      "created": enc.export.manifest["created"],
                      "vec": enc.encode_texts(["a red star"])[0].tolist()}))
""")


def test_two_processes_exporting_at_once_take_turns(tmp_path):
    needs("onnx")
    env = {**os.environ, "CLIPSEARCH_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", EXPORT_SCRIPT], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert {r["backend"] for r in results} == {"onnx"}
    assert results[0]["created"] == results[1]["created"], "both exported: the lock did not hold"
    assert np.allclose(results[0]["vec"], results[1]["vec"])
    left = sorted(p.name for p in (tmp_path / "exports").iterdir())
    model_id = resolve("clipsearch-tiny").model_id()
    assert [n for n in left if not n.endswith(".lock")] == [cache.safe_name(model_id)]
    assert cache.load(resolve("clipsearch-tiny").model_id()) is not None


# ---- fallback, mismatch, choices ---------------------------------------------------------------
def test_an_export_that_fails_falls_back_to_torch_with_one_warning(tmp_path, monkeypatch, caplog):
    needs("onnx")
    monkeypatch.setenv("CLIPSEARCH_CACHE_DIR", str(tmp_path))

    def cannot_trace(*args, **kwargs):
        raise export.ExportRefused("the ONNX exporter could not trace it (TracerError: unsupported op)")

    monkeypatch.setattr(export, "export_towers", cannot_trace)
    with caplog.at_level(logging.WARNING):
        enc = load_encoder(resolve("clipsearch-tiny"), device="cpu", backend="onnx")
    assert isinstance(enc, Encoder)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "clipsearch-tiny" in lines[0] and "onnx" in lines[0] and "could not trace" in lines[0]
    # remembered: the next load falls back without exporting again
    monkeypatch.setattr(export, "make", lambda *a, **k: pytest.fail("exported again"))
    assert isinstance(load_encoder(resolve("clipsearch-tiny"), device="cpu", backend="onnx"), Encoder)


def test_a_variant_that_drifts_is_refused(monkeypatch, tmp_path, caplog):
    needs("onnx")
    monkeypatch.setenv("CLIPSEARCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(agreement.THRESHOLDS, "fp32", 1.0 + 1e-6)  # nothing can pass this
    with caplog.at_level(logging.WARNING):
        enc = load_encoder(resolve("clipsearch-tiny"), device="cpu", backend="onnx", precision="fp32")
    assert isinstance(enc, Encoder)
    assert "drift from PyTorch" in caplog.text


def test_a_writer_that_disagrees_with_pytorch_is_a_mismatch(sample_collection, tmp_path):
    needs("onnx")
    from clipsearch import Collection

    _, _, db = sample_collection
    copy = tmp_path / "db"
    shutil.copytree(db, copy)
    meta = json.loads((copy / "clipsearch.json").read_text())
    drifted = {"backend": "openvino", "precision": "fp16", "image_min_cos": 0.97, "text_min_cos": 0.98}
    meta["backends"] = [*meta.get("backends", []), drifted]
    (copy / "clipsearch.json").write_text(json.dumps(meta))
    col = Collection.open(copy, device="cpu", backend="onnx", precision="fp32")
    with pytest.raises(ModelMismatch, match="openvino fp16"):
        col.search(text="a red star", k=3)
    assert agreement.trusted({"backend": "onnx", "precision": "fp32", "image_min_cos": 0.9999,
                              "text_min_cos": 0.99999})
    agreement.check([drifted], type("Same", (), {"backend": "openvino", "precision": "fp16",
                                                  "agreement": {"image": 0.97, "text": 0.98}})(), "x")


def test_indexing_records_the_backend_and_other_trusted_backends_can_query(tmp_path):
    needs("onnx")
    from clipsearch import Collection

    photos = tmp_path / "photos"
    labels = write_shapes(photos, per_class=1, seed=5)
    col = Collection.create(tmp_path / "db", model="clipsearch-tiny", device="cpu", backend="onnx")
    col.add([photos], workers=2)
    meta = json.loads((tmp_path / "db" / "clipsearch.json").read_text())
    assert [(w["backend"], w["precision"]) for w in meta["backends"]] == [("onnx", "fp32")]
    assert meta["backends"][0]["image_min_cos"] >= 0.9995
    name, label = next(iter(labels.items()))
    by_onnx = [h.source for h in col.search(text=f"a {label}", k=5)]
    torch_col = Collection.open(tmp_path / "db", device="cpu", backend="torch")
    assert [h.source for h in torch_col.search(text=f"a {label}", k=5)] == by_onnx
    assert torch_col.info()["backend"]["vectors_by"][0]["backend"] == "onnx"


@pytest.mark.parametrize("backend,precision", [("torch", "int8"), ("onnx", "bf16"), ("openvino", "int8"),
                                               ("tensorrt", "auto"), ("onnx", "fp8")])
def test_unsupported_requests_are_usage_errors(backend, precision):
    with pytest.raises(UsageError):
        choose.requested(backend, precision)


def test_environment_chooses_when_no_argument_does(monkeypatch):
    monkeypatch.setenv("CLIPSEARCH_BACKEND", "openvino")
    monkeypatch.setenv("CLIPSEARCH_PRECISION", "bf16")
    assert choose.requested() == ("openvino", "bf16")
    assert choose.requested("onnx", "fp32") == ("onnx", "fp32")


# ---- a text search without torch ---------------------------------------------------------------
NO_MODEL = ("torch", "open_clip")


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_a_text_search_on_an_exported_backend_imports_neither_torch_nor_open_clip(backend,
                                                                                 sample_collection):
    exported_encoder(backend, "fp32")  # exported already: a search only loads it
    _, _, db = sample_collection
    # the precision probed above: with "auto" a variant not probed yet would be probed now, in torch
    env = {**os.environ, "CLIPSEARCH_BACKEND": backend, "CLIPSEARCH_PRECISION": "fp32"}
    p = run_cli_fresh(["search", "a red star", "--db", str(db), "-k", "3", "--kind", "image"],
                      (*NO_MODEL, "ftfy", "lancedb", "pandas"), env)  # nor ftfy (ASCII), LanceDB, pandas
    assert p.code == 0, p.stdout + p.stderr
    assert p.loaded == [], p.stderr
    assert "red_star" in p.stdout.splitlines()[0], p.stdout


def test_the_torch_control_does_import_torch(sample_collection):
    """The control: the same probe sees torch when the search runs on it."""
    _, _, db = sample_collection
    p = run_cli_fresh(["search", "a red star", "--db", str(db), "-k", "1", "--backend", "torch"], NO_MODEL)
    assert p.code == 0 and "torch" in p.loaded, p.stdout + p.stderr


def test_info_shows_the_backend_from_the_manifest_without_torch(sample_collection):
    exported_encoder("onnx", "fp32")
    _, _, db = sample_collection
    env = {**os.environ, "CLIPSEARCH_BACKEND": "onnx", "CLIPSEARCH_PRECISION": "fp32"}
    p = run_cli_fresh(["info", "--db", str(db)], NO_MODEL, env)
    assert p.code == 0 and p.loaded == [], p.stdout + p.stderr
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("backend"))
    assert "onnx fp32" in line and "min cosine" in line, line
    assert "vectors by torch fp32" in p.stdout


def test_the_http_status_names_the_backend_in_use(sample_collection):
    pytest.importorskip("fastapi")
    from clipsearch.ui.api import SearchService

    exported_encoder("onnx", "fp32")
    _, _, db = sample_collection
    service = SearchService(db, device="cpu", backend="onnx", precision="fp32")
    service.search(text="a red star", k=3)
    info = service.info()
    assert (info["backend"]["backend"], info["backend"]["precision"]) == ("onnx", "fp32")
    assert "backend `onnx fp32`" in service.status_line()


def test_plain_ascii_cleans_as_ftfy_cleans_it_without_importing_it():
    """The fast path of the torch-free tokenizer's cleaning: for printable ASCII without '&'
    ftfy + html.unescape are the identity, so skipping them changes no query."""
    import html
    import random
    import string

    import ftfy

    from clipsearch.backends import tokenizer

    PUNCT = str.maketrans("", "", string.punctuation)
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + " \t\n\r" + string.punctuation.replace("&", "")
    texts = ["a red star", "  Café? no: cafe  ", "x<y>z 'q' \"w\" \\ ~ ^ `", "line\r\nbreak\ttab"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(3000)]
    fast = 0
    for t in texts:
        want = html.unescape(html.unescape(ftfy.fix_text(t))).strip()
        for mode in ("lower", "whitespace", "canonicalize"):
            got = tokenizer.clean(t, mode)
            words = " ".join(want.split())
            ref = {"lower": words.lower(), "whitespace": words,
                   "canonicalize": " ".join(want.replace("_", " ").translate(PUNCT).lower().split())}
            assert got == ref[mode], (t, mode)
        fast += bool(tokenizer._PLAIN.fullmatch(t))
    assert fast > 2900  # the fast path was the one exercised
    # and what it must not take: entities, control characters, non-ASCII
    for t in ["fish &amp; chips", "bell\x07", "v\x0btab", "Café"]:
        assert not tokenizer._PLAIN.fullmatch(t)
        assert tokenizer.clean(t, "lower") == " ".join(
            html.unescape(html.unescape(ftfy.fix_text(t))).strip().split()).lower()


def test_the_export_race_is_not_decided_by_a_burst_of_load():
    """The variants take turns and each keeps its best batch: a variant whose first timed
    batches met a burst of load elsewhere is still found the faster one."""
    import time

    def runner(seconds: float, burst: int):
        calls = {"n": 0}

        def run(_x):
            calls["n"] += 1
            time.sleep(seconds * (10 if 1 < calls["n"] <= 1 + burst else 1))  # call 1: warm-up
        return run

    pixels = np.zeros((2, 3, 8, 8), np.float32)
    speeds = export.race({"steady": runner(0.004, 0), "bursty": runner(0.002, 3)}, pixels)
    assert speeds["bursty"] > 1.5 * speeds["steady"], speeds
