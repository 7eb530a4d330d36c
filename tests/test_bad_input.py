"""Bad input never stops the job: each case is skipped with a reason, the rest is indexed."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import write_shapes

from clipsearch import Collection
from clipsearch import pipeline as pipeline_mod


def _bomb_png(path: Path, w: int = 100_000, h: int = 100_000) -> None:
    """A tiny PNG whose header claims w x h pixels."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", w, h)  # IHDR width/height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # keep the header valid
    path.write_bytes(bytes(data))


def make_corpus(folder: Path) -> dict[str, str]:
    """Good files plus one of each bad case; returns {name: expected reason fragment}."""
    write_shapes(folder, per_class=1)
    good = folder / "red_star_0.jpg"
    data = good.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is a text file with an image extension\n" * 5)
    _bomb_png(folder / "bomb.png")
    os.symlink(folder / "does-not-exist.jpg", folder / "dangling.jpg")
    os.symlink(folder / "loop_b.jpg", folder / "loop_a.jpg")
    os.symlink(folder / "loop_a.jpg", folder / "loop_b.jpg")
    (folder / "unreadable.jpg").write_bytes(data)
    return {
        "truncated.jpg": "truncated or corrupt",
        "corrupt.png": "corrupt",
        "empty.jpg": "empty file",
        "notes.jpg": "not a supported image",
        "bomb.png": "exceeds the limit",
        "dangling.jpg": "dangling symlink",
        "loop_a.jpg": "symlink loop",
        "loop_b.jpg": "symlink loop",
        "unreadable.jpg": "unreadable",
    }


@pytest.fixture
def deny_unreadable(monkeypatch):
    """Root can read anything, so permission errors are injected for one file name."""
    real_open = open

    def guarded(path, *args, **kwargs):
        if os.fsdecode(path).endswith("unreadable.jpg"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(pipeline_mod, "open", guarded, raising=False)


def test_every_bad_case_is_skipped_with_reason(tmp_path, deny_unreadable):
    folder = tmp_path / "in"
    expected = make_corpus(folder)
    col = Collection.create(tmp_path / "db", model="clipsearch-tiny", device="cpu")
    report = col.add([folder])
    reasons = {Path(p).name: r for p, r in report.skipped}
    for name, fragment in expected.items():
        assert name in reasons, f"{name} was not reported as skipped"
        assert fragment in reasons[name], (name, reasons[name])
    assert report.indexed == 12  # every good file (and only those) made it
    assert col.info()["items"] == 12
    log = (col.path / "skipped.log").read_text()
    assert "bomb.png" in log and "dangling.jpg" in log


def test_pixel_limit_is_configurable(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((400, 500, 3), np.uint8)).save(folder / "big.png")
    col = Collection.create(tmp_path / "db", model="clipsearch-tiny", device="cpu")
    assert len(col.add([folder], max_pixels=100_000).skipped) == 1
    assert col.add([folder], max_pixels=300_000).indexed == 1


def test_non_utf8_and_non_ascii_names(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    im = Image.new("RGB", (64, 64), (200, 20, 20))
    raw_name = os.path.join(os.fsencode(folder), b"caf\xe9-\xff.jpg")  # latin-1 bytes: not UTF-8
    with open(raw_name, "wb") as f:
        im.save(f, "JPEG")
    im.save(folder / "日本語の写真.png")
    col = Collection.create(tmp_path / "db", model="clipsearch-tiny", device="cpu")
    report = col.add([folder])
    assert report.indexed == 2 and not report.skipped
    sources = {h.source for h in col.search(text="a red square", k=5)}
    assert any("日本語の写真.png" in s for s in sources)
    assert any("caf" in s and "\\xe9" in s for s in sources)  # shown escaped, stored losslessly
    raws = set(col.store.file_states())
    assert raw_name in raws
    assert col.add([folder]).unchanged == 2  # the raw bytes round-trip: nothing re-embedded
