"""Big documents: rows are committed in batches while the file is read, a text-chunk cap keeps
one huge file from swamping the collection, and a kill midway is redone by the next run."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import lancedb
import pytest
from clipsearch.indexers import document
from clipsearch.indexers.base import IndexContext, Part
from clipsearch.indexers.document import DocumentIndexer, TextPieces, text_encoding
from reportlab.pdfgen import canvas

from clipsearch import Collection, pipeline
from clipsearch.chunking import chunk_text
from clipsearch.errors import SkipFile
from clipsearch.records import Record
from clipsearch.store import PARTIAL_SIZE, Store

MODEL = "clipsearch-tiny"
ENV = {**os.environ, "CLIPSEARCH_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def write_big_text(path: Path, megabytes: float, seed: int = 0) -> Path:
    """Lines of made-up words, `megabytes` MiB of them (written fast: a shuffled block repeated)."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(3000)]
    lines = [" ".join(rng.choice(vocab) for _ in range(rng.randint(4, 14))) for _ in range(4000)]
    block = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(int(megabytes * 2**20) // len(block) + 1):
            f.write(f"section{i} " + block)
    return path


class Watching:
    """A DocumentIndexer that notes the table's version and the file's row count at every part
    it yields: what another reader would see while the file is still being read."""

    medium = "document"

    def __init__(self, store: Store) -> None:
        self.inner, self.store, self.seen, self.parts = DocumentIndexer(), store, [], []

    def accepts(self, path, head):
        return self.inner.accepts(path, head)

    def extract(self, path, encoder, ctx):
        return self.inner.extract(path, encoder, ctx)

    def extract_parts(self, path, encoder, ctx):
        for part in self.inner.extract_parts(path, encoder, ctx):
            self.seen.append((self.store.version, self.store.count(f"source = '{path}'")))
            self.parts.append(part)
            yield part


class Postfixes:
    """Stands in for tqdm: records what the bar would show."""

    shown: list[str] = []

    def __init__(self, *args, **kwargs) -> None:
        Postfixes.shown = []

    def set_postfix_str(self, s, refresh=True):
        Postfixes.shown.append(s)

    def update(self, n=1):
        pass

    def close(self):
        pass


@pytest.fixture(scope="module")
def col(tmp_path_factory) -> Collection:
    return Collection.create(tmp_path_factory.mktemp("big") / "db", model=MODEL)


def _run(col: Collection, root: Path, indexer, options: dict, commit_rows: int) -> pipeline.IndexReport:
    ctx = IndexContext(thumb_dir=col.thumb_dir, options=options)
    return pipeline.run(col.store, col.encoder, [os.fsencode(root)], ctx, [indexer],
                        commit_rows=commit_rows, progress=True)


def test_big_text_is_committed_in_batches_up_to_the_cap(col, tmp_path, monkeypatch) -> None:
    big = write_big_text(tmp_path / "logs" / "big.txt", 20)
    watch = Watching(col.store)
    monkeypatch.setattr(pipeline, "tqdm", Postfixes)
    before = col.store.version
    report = _run(col, big.parent, watch, {"max_text_chunks": 3000}, commit_rows=500)

    where = f"source = '{big}'"
    assert col.store.count(where) == 3000 == report.items  # exactly the cap
    # rows were in the table while the file was still being read, a batch at a time
    counts = [n for _, n in watch.seen]
    assert counts[0] == 0 and counts[-1] >= 2500 and counts == sorted(counts)
    assert len({v for v, _ in watch.seen}) >= 5 and watch.seen[-1][0] > before
    # only the head of the 20 MB file was read
    assert watch.parts[-1].done < 2 and 20 <= watch.parts[-1].total < 21
    assert any(re.fullmatch(r"big\.txt \d+(\.\d)?/20(\.\d)? MB", s) for s in Postfixes.shown)
    # the note, in the report and its summary
    assert report.notes == [(str(big), watch.parts[-1].note)]
    assert "only the first 3,000 text chunks were indexed (lines 1-" in report.notes[0][1]
    assert "1 indexed in part: big.txt: only the first 3,000 text chunks" in report.summary()
    state = col.store.file_states()[os.fsencode(big)]
    assert state.complete and state.size == big.stat().st_size

    # the rows are the first 3,000 chunks of the file, with spans and lines into it
    t = col.store.scan(["text", "extra"], where).to_pylist()
    extras = sorted((json.loads(r["extra"]) for r in t), key=lambda e: e["chunk"])
    assert [e["chunk"] for e in extras] == list(range(3000))
    head = big.read_text(encoding="utf-8")[: extras[-1]["span"][1] + 1]
    for e in extras[::250]:
        start, end = e["span"]
        assert head.count("\n", 0, start) + 1 == e["lines"][0]
    expected = chunk_text(head, col.encoder.count_tokens, col.encoder.context_length,
                          (col.encoder.context_length - 2) // 4)[:3000]
    assert sorted(r["text"] for r in t) == sorted(c.text for c in expected)

    again = _run(col, big.parent, Watching(col.store), {"max_text_chunks": 3000}, commit_rows=500)
    assert again.unchanged == 1 and again.indexed == 0


def make_long_pdf(path: Path, pages: int) -> Path:
    c = canvas.Canvas(str(path), pagesize=(300, 400))
    for p in range(1, pages + 1):
        y = 370
        for line in range(4):
            c.drawString(20, y, " ".join(f"page{p}word{line}x{i}" for i in range(3)))
            y -= 14
        c.showPage()
    c.save()
    return path


def test_many_page_pdf_commits_as_it_goes_and_shows_pages(col, tmp_path, monkeypatch) -> None:
    pdf = make_long_pdf((tmp_path / "pdfs").mkdir() or tmp_path / "pdfs" / "long.pdf", 240)
    watch = Watching(col.store)
    monkeypatch.setattr(pipeline, "tqdm", Postfixes)
    opts = {"page_size": 128, "page_tiles": 0, "page_batch": 16, "max_text_chunks": 150}
    report = _run(col, pdf.parent, watch, opts, commit_rows=100)

    src = f"source = '{pdf}'"
    assert col.store.count(src + " AND kind = 'doc_page'") == 240  # every page's image
    assert col.store.count(src + " AND kind = 'doc_text'") == 150  # text up to the cap
    counts = [n for _, n in watch.seen]
    assert counts[0] == 0 and 0 < counts[len(counts) // 2] < counts[-1]
    assert [p.done for p in watch.parts] == sorted(p.done for p in watch.parts)
    assert {p.total for p in watch.parts} == {240} and watch.parts[-1].done == 240
    assert "long.pdf 16/240 pages" in Postfixes.shown and "long.pdf 240/240 pages" in Postfixes.shown
    (path, note), = report.notes
    assert path == str(pdf) and "the text stops on page" in note and "of 240" in note
    assert col.store.file_states()[os.fsencode(pdf)].complete


class BreaksMidway:
    """A streaming indexer whose file turns out bad after two committed batches."""

    medium = "document"

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def accepts(self, path, head):
        return path.suffix == ".bad"

    def extract_parts(self, path, encoder, ctx):
        import numpy as np

        v = np.ones(self.dim, np.float32) / np.sqrt(self.dim)
        for k in range(3):
            yield Part([Record("doc_text", v, text="x", extra={"chunk": 10 * k + i}) for i in range(10)])
        raise SkipFile(f"{path}: broken after page 3")


def test_a_file_that_fails_midway_keeps_no_rows(col, tmp_path) -> None:
    (tmp_path / "bad").mkdir()
    bad = tmp_path / "bad" / "doc.bad"
    bad.write_bytes(b"whatever")
    report = _run(col, bad.parent, BreaksMidway(col.encoder.dim), {}, commit_rows=10)
    assert report.skipped == [(str(bad), f"{bad}: broken after page 3")]
    assert col.store.count(f"source = '{bad}'") == 0 and report.indexed == 0


def test_streamed_text_decoding_across_block_boundaries(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(document, "TEXT_BLOCK", 7)  # cut inside multi-byte characters
    text = "naïve café Zürich — “quoted” 🙂\n" * 40
    f = tmp_path / "u.txt"
    f.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert text_encoding(f) == "utf-8-sig" and "".join(TextPieces(f, "utf-8-sig")) == text
    late = tmp_path / "late.txt"  # Windows-1252, which only shows well past the first block
    late.write_bytes(b"plain ascii " * 20 + "naïve".encode("cp1252"))
    assert text_encoding(late) == "cp1252"
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"text " * 30 + b"\x00")
    with pytest.raises(SkipFile, match="NUL"):
        text_encoding(nul)
    wide = tmp_path / "w.txt"
    wide.write_bytes(text.encode("utf-16"))
    assert "".join(TextPieces(wide, text_encoding(wide))) == text


def _index_cmd(root: Path, db: Path) -> list[str]:
    return [sys.executable, "-m", "clipsearch.cli", "index", str(root), "--db", str(db), "--model", MODEL,
            "-q", "--max-text-chunks", "8000", "--commit-rows", "400"]


def test_kill_9_midway_through_a_big_file_then_rerun(tmp_path) -> None:
    big = write_big_text(tmp_path / "docs" / "big.txt", 20, seed=1)
    db = tmp_path / "db"
    proc = subprocess.Popen(_index_cmd(big.parent, db), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=ENV)
    table, deadline = None, time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if table is None and (db / "items.lance").is_dir():
                table = lancedb.connect(str(db), read_consistency_interval=timedelta(0)).open_table("items")
            if table is not None and table.count_rows() > 0:
                break  # the first batch of the file is in
        except Exception:
            pass  # the table is being created
        time.sleep(0.05)
    assert proc.poll() is None, "indexing finished before it could be killed; make the file bigger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    col = Collection.open(db)
    committed = col.store.count()
    state = col.store.file_states()[os.fsencode(big)]
    assert 0 < committed < 8000 and committed % document.TEXT_PART == 0  # whole parts only
    assert not state.complete and state.size == PARTIAL_SIZE  # the next run must not skip it

    done = subprocess.run(_index_cmd(big.parent, db), capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "indexed 1 files (8000 items), 0 unchanged" in done.stdout
    assert f"note: {big}: only the first 8,000 text chunks" in done.stdout
    assert (db / "skipped.log").read_text().count("\tnote: only the first 8,000") == 1
    col = Collection.open(db)
    t = col.store.scan(["id", "extra", "text", "size"]).to_pylist()
    assert len(t) == 8000 == len({r["id"] for r in t})
    assert sorted(json.loads(r["extra"])["chunk"] for r in t) == list(range(8000))
    assert {r["size"] for r in t} == {big.stat().st_size}
    head = big.read_text(encoding="utf-8")[:2_000_000]
    for r in t[::400]:
        start, end = json.loads(r["extra"])["span"]
        assert head[start:end] == r["text"]

    third = pipeline.IndexReport()
    jobs, gone = pipeline.plan(col.store, [os.fsencode(big.parent)], [DocumentIndexer()], third)
    assert (jobs, gone, third.unchanged) == ([], [], 1)  # complete now: the next run skips it
