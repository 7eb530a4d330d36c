"""What makes a cold text query start fast, and that none of it changes an answer: the export's
files hashed once (not on every start), the ONNX text tower loaded from its derived fast copy
(memory-mapped weights), and Lance imported without pandas."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_backends import EXTRA_TEXTS, exported_encoder, needs

from clipsearch.backends import cache, fastload
from clipsearch.backends.exported import ExportedEncoder
from clipsearch.model_registry import resolve


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A cache of this test alone, seeded with the shared tiny export's listed files only."""
    needs("onnx")
    shared = exported_encoder("onnx", "fp32").export
    monkeypatch.setenv("CLIPSEARCH_CACHE_DIR", str(tmp_path))
    folder = cache.export_dir(shared.model_id)
    folder.mkdir(parents=True)
    for name in [*shared.manifest["files"], cache.MANIFEST]:
        shutil.copy2(shared.folder / name, folder / name)
    return folder


def fresh_encoder() -> ExportedEncoder:
    """An encoder over the cache as a new process finds it (nothing checked or loaded yet)."""
    export = cache.load(resolve("clipsearch-tiny").model_id())
    assert export is not None
    return ExportedEncoder(resolve("clipsearch-tiny"), export, "onnx", "fp32")


def test_an_export_file_is_hashed_once_and_not_again_while_unchanged(own_cache, monkeypatch):
    first = fresh_encoder()
    first.encode_texts(["a red star"])
    stamps = json.loads((own_cache / cache.VERIFIED).read_text())
    assert {"text.onnx", "tokenizer.json"} <= set(stamps)

    def no_hashing(path):
        raise AssertionError(f"{path} hashed again")
    monkeypatch.setattr(cache, "sha256_file", no_hashing)
    fresh_encoder().encode_texts(["a red star"])  # a new process: the stamps answer


def test_a_file_rewritten_after_its_check_is_hashed_again_and_refused(own_cache):
    fresh_encoder().encode_texts(["a red star"])
    text = own_cache / "text.onnx"
    data = bytearray(text.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, new bytes: only the hash tells, and the stat changed
    text.write_bytes(bytes(data))
    with pytest.raises(cache.CorruptExport, match="does not match its sha256"):
        fresh_encoder().encode_texts(["a red star"])


def test_the_text_tower_loads_from_its_fast_copy_with_the_same_vectors(own_cache):
    graph, weights = fastload.fast_names("text.onnx")
    made = fresh_encoder()
    want = made.encode_texts(EXTRA_TEXTS)  # the first use derives the copy (and uses that session)
    assert (own_cache / graph).is_file() and (own_cache / weights).stat().st_size > 1000
    assert (own_cache / graph).stat().st_size < (own_cache / "text.onnx").stat().st_size / 4
    again = fresh_encoder()
    got = again.encode_texts(EXTRA_TEXTS)
    assert again._runner("text").path == own_cache / graph  # type: ignore[attr-defined]
    assert float(np.min(np.sum(want * got, axis=1))) > 0.99999
    source = fastload.OnnxRuntimeRunner(own_cache / "text.onnx")
    plain = made._normalise(source(made.tokenizer(EXTRA_TEXTS)))
    assert float(np.min(np.sum(plain * got, axis=1))) > 0.99999


def test_a_touched_or_damaged_fast_copy_is_made_again(own_cache):
    graph, weights = fastload.fast_names("text.onnx")
    want = fresh_encoder().encode_texts(["two green circles"])
    (own_cache / weights).write_bytes(b"\0" * 100)  # truncated: the stat no longer matches
    enc = fresh_encoder()
    got = enc.encode_texts(["two green circles"])
    assert float(want[0] @ got[0]) > 0.99999
    assert (own_cache / weights).stat().st_size > 1000
    assert fresh_encoder().export.derived_current([graph, weights], "text.onnx")


def test_a_cache_that_cannot_be_written_serves_the_export_as_it_is(own_cache, monkeypatch):
    """No fast copy can be made (the lock file of a read-only cache cannot be opened): the
    tower loads from the export's own file, with the same vectors."""
    want = fresh_encoder().encode_texts(["a yellow square"])
    for name in fastload.fast_names("text.onnx"):
        (own_cache / name).unlink()

    def read_only(model_id):
        raise PermissionError(13, "Permission denied", str(own_cache.parent))
    monkeypatch.setattr(cache, "locked", read_only)
    enc = fresh_encoder()
    got = enc.encode_texts(["a yellow square"])
    assert enc._runner("text").path == own_cache / "text.onnx"  # type: ignore[attr-defined]
    assert float(want[0] @ got[0]) > 0.99999


def test_lance_is_imported_without_pandas_and_pandas_still_works_after(tmp_path):
    """In a fresh interpreter: Lance opens a table without importing pandas; pandas, imported
    afterwards, still converts both ways, and Lance still knows pandas is installed."""
    script = textwrap.dedent(f"""
        import sys
        import pyarrow as pa
        from clipsearch.lance_import import lance
        lance = lance()
        ds = lance.write_dataset(pa.table({{"a": [1, 2, 3]}}), {str(tmp_path / "t.lance")!r})
        assert ds.to_table().num_rows == 3
        assert "pandas" not in sys.modules, "pandas imported"
        import lance.dependencies
        assert lance.dependencies._PANDAS_AVAILABLE
        import pandas as pd
        assert ds.to_table().to_pandas()["a"].tolist() == [1, 2, 3]
        assert pa.array(pd.Series([1.0, None])).null_count == 1
        assert pa.Table.from_pandas(pd.DataFrame({{"b": [1]}})).num_rows == 1
        print("ok")
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
