"""Document page retrieval benchmark: does a query find the right page of the right PDF?

Generates multi-page PDFs with reportlab. Every page has a title, several paragraphs of
distinct text and one figure drawn by the shapes renderer. Queries, each with one correct
(document, page):
- figure: "a green triangle", for colour+shape pairs that appear on one page only (up to 40);
- text:   a phrase of 4-6 consecutive words from one page that contains a word found on no
          other page (what a user remembers: a name, a figure, a rare term);
- both:   the figure query and the phrase together.
The PDFs go through the real DocumentIndexer into a real LanceDB table (clipsearch.store),
the FTS index is built with ensure_fts_index, and search_documents answers. Reported:
page-level R@1 and R@5 per query type, for the fused search and for each ranking alone.

`renderer="independent"` draws the figures with clipsearch.tiny.world2 instead (its own geometry,
fills, colours and panels, then a JPEG/H.264/resampling chain): figure-page recall that does
not only measure how well the model knows its training renderer.

The library half of benchmarks/doc_pages.py (the command line), shared with the tests:

    python -m benchmarks.doc_pages                  # 12 documents of 5-10 pages
    python -m benchmarks.doc_pages --memory 50 500  # peak RSS indexing 50- and 500-page PDFs
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen import canvas

from clipsearch.docsearch import DEFAULT_WEIGHTS, ensure_fts_index, search_documents
from clipsearch.indexers.base import IndexContext
from clipsearch.indexers.document import DEFAULT_PAGE_TILES, DocumentIndexer
from clipsearch.records import path_bytes
from clipsearch.store import SourceRows, Store
from clipsearch.tiny.model import encoder_identity
from clipsearch.tiny.synth import COLORS, SHAPES, ShapeSpec, canonical_query, draw_shape_on

PAGE_W, PAGE_H = 612, 792  # US letter, points
MARGIN = 60
BODY_FONT, BODY_SIZE, LEADING = "Helvetica", 10, 13

# A plain business/science vocabulary with no colour or shape words, so a figure query
# can only be answered by the figure. Zipf-weighted when drawn: some words are everywhere.
_VOCAB = """
the of and to in for on with by from that this is was are were be has have will can
report revenue quarter growth market customer product service team project budget cost
sales region division plan result analysis model data system process design review study
method sample measure value rate level change increase decrease total average annual
monthly weekly target goal risk issue update support network energy water supply demand
price share profit margin forecast strategy policy research program training quality
safety schedule delivery contract partner vendor account invoice payment asset capital
investment return period summary section table chart appendix note figure reference
experiment trial baseline control variable factor effect response signal noise error
estimate parameter function structure component module interface platform release version
feature request ticket incident outage recovery backup storage server cluster region
latency throughput capacity usage traffic load balance memory compute transfer protocol
survey interview feedback score index benchmark metric indicator dashboard milestone
council committee board meeting agenda minutes decision vote proposal approval audit
compliance regulation license permit inspection standard guideline procedure manual
harbor railway airport bridge tunnel highway warehouse factory laboratory office campus
river valley coast mountain island village district province county harbour estate
""".split()

_SYLLABLES = "ka lo mi ner vo tra quin zel dor fen gal hu jor ket lum mar nov pel rin sut tav vel".split()


@dataclass
class PageSpec:
    doc: int
    page: int  # 1-based
    figure: ShapeSpec
    title: str
    text: str


@dataclass
class Query:
    kind: str  # figure | text | both
    text: str
    source: str
    page: int


# --- corpus ------------------------------------------------------------------------------


def _pseudo_word(rng: np.random.Generator, taken: set[str]) -> str:
    """A made-up proper name ("Velmorin"): the kind of rare term users search for."""
    while True:
        word = "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4)))).capitalize()
        if word not in taken and len(word) >= 5:
            taken.add(word)
            return word


def _paragraphs(rng: np.random.Generator, names: list[str], n_words: int) -> str:
    """Random sentences from the Zipf-weighted vocabulary, with this page's rare names woven in."""
    ranks = np.arange(1, len(_VOCAB) + 1)
    p = (1 / ranks) / (1 / ranks).sum()
    words = list(rng.choice(_VOCAB, size=n_words, p=p))
    for name in names:
        words.insert(int(rng.integers(3, len(words) - 3)), name)
    sentences, i = [], 0
    while i < len(words):
        n = int(rng.integers(8, 16))
        s = words[i : i + n]
        sentences.append(" ".join(s).capitalize() + ".")
        i += n
    return " ".join(sentences)


def plan_corpus(n_docs: int, pages: tuple[int, int], seed: int) -> list[list[PageSpec]]:
    """Which figure and text every page gets. Every colour+shape pair appears on one page only,
    except that beyond 48 pages 8 reserved pairs are reused for the extra pages (and never
    queried), so a larger corpus still has 40 figure queries with one right answer each."""
    rng = np.random.default_rng(seed)
    sizes = [int(rng.integers(pages[0], pages[1] + 1)) for _ in range(n_docs)]
    total = sum(sizes)
    deck = [ShapeSpec(s, c) for s in SHAPES for c in COLORS]
    deck = [deck[i] for i in rng.permutation(len(deck))]
    reserved = 8 if total > len(deck) else 0
    unique = deck[: min(total, len(deck) - reserved)]
    spare = deck[len(deck) - reserved :]
    extra = [spare[i % reserved] for i in range(total - len(unique))] if reserved else []
    figures = [(unique + extra)[i] for i in rng.permutation(total)]
    taken: set[str] = set()
    docs, n = [], 0
    for d, n_pages in enumerate(sizes):
        doc = []
        for p in range(1, n_pages + 1):
            names = [_pseudo_word(rng, taken) for _ in range(2)]
            title = f"{_pseudo_word(rng, taken)} {rng.choice(_VOCAB[20:]).capitalize()} {d + 1}.{p}"
            text = _paragraphs(rng, names, int(rng.integers(380, 560)))
            doc.append(PageSpec(d, p, figures[n], title, text))
            n += 1
        docs.append(doc)
    return docs


RENDERERS = ("synth", "independent")


def _figure_image(spec: ShapeSpec, rng: np.random.Generator, px: int, renderer: str = "synth") -> Image.Image:
    """A figure panel: light or white box, one shape filling most of it (as on training pages)."""
    if renderer == "independent":
        from clipsearch.tiny.world2 import figure_panel
        from clipsearch.tiny.world2.chains import random_chain

        return random_chain(figure_panel(spec, rng, px), rng)
    bg = (242, 242, 246) if rng.random() < 0.5 else (255, 255, 255)
    img = Image.new("RGB", (px, int(px * rng.uniform(0.75, 1.0))), bg)
    s = min(img.size) * rng.uniform(0.55, 0.8)
    cx, cy = img.width / 2, img.height / 2
    return draw_shape_on(img, spec, (int(cx - s / 2), int(cy - s / 2), int(cx + s / 2), int(cy + s / 2)), rng)


def _wrap(text: str, width: float) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        trial = f"{cur} {word}".strip()
        if cur and stringWidth(trial, BODY_FONT, BODY_SIZE) > width:
            lines.append(cur)
            cur = word
        else:
            cur = trial
    return lines + ([cur] if cur else [])


def draw_page(c: canvas.Canvas, page: PageSpec, rng: np.random.Generator, renderer: str = "synth") -> None:
    """Title, body text in the column, and the figure inset at a random height and side."""
    c.setFont("Helvetica-Bold", 16)
    c.drawString(MARGIN, PAGE_H - MARGIN, page.title)
    fig_w = float(rng.uniform(0.35, 0.55) * (PAGE_W - 2 * MARGIN))
    img = _figure_image(page.figure, rng, 320, renderer)
    fig_h = fig_w * img.height / img.width
    fig_x = MARGIN if rng.random() < 0.5 else PAGE_W - MARGIN - fig_w
    fig_top = float(rng.uniform(MARGIN + fig_h + 30, PAGE_H - MARGIN - 40))
    c.drawImage(ImageReader(img), fig_x, fig_top - fig_h, fig_w, fig_h)
    c.setFont(BODY_FONT, 8)
    c.drawString(fig_x, fig_top - fig_h - 11, f"Figure {page.doc + 1}.{page.page}")
    c.setFont(BODY_FONT, BODY_SIZE)
    y = PAGE_H - MARGIN - 30
    full = PAGE_W - 2 * MARGIN
    words = page.text.split()
    while words and y > MARGIN:  # narrow lines beside the figure, full-width lines elsewhere
        beside = fig_top - fig_h - 18 <= y <= fig_top + 4
        width = full - fig_w - 15 if beside else full
        x = MARGIN + fig_w + 15 if beside and fig_x == MARGIN else MARGIN
        line = _wrap(" ".join(words[:40]), width)[0]
        c.drawString(x, y, line)
        words = words[len(line.split()) :]
        y -= LEADING
    c.showPage()


def write_corpus(out_dir: Path, docs: list[list[PageSpec]], seed: int, renderer: str = "synth") -> list[Path]:
    if renderer not in RENDERERS:
        raise ValueError(f"unknown renderer {renderer!r}: use one of {', '.join(RENDERERS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    paths = []
    for d, doc in enumerate(docs):
        path = out_dir / f"report_{d:02d}.pdf"
        c = canvas.Canvas(str(path), pagesize=(PAGE_W, PAGE_H))
        for page in doc:
            draw_page(c, page, rng, renderer)
        c.save()
        paths.append(path)
    return paths


def make_queries(docs: list[list[PageSpec]], paths: list[Path], seed: int) -> list[Query]:
    """Figure queries for unique colour+shape pairs; a distinctive phrase for every page."""
    rng = np.random.default_rng(seed + 2)
    counts: dict[tuple[str, str], int] = {}
    df: dict[str, int] = {}
    for doc in docs:
        for page in doc:
            pair = (page.figure.shape, page.figure.color)
            counts[pair] = counts.get(pair, 0) + 1
            for w in set(page.text.lower().replace(".", "").split()):
                df[w] = df.get(w, 0) + 1
    queries = []
    for doc, path in zip(docs, paths, strict=True):
        src = str(path.resolve())
        for page in doc:
            words = page.text.replace(".", "").split()
            n = int(rng.integers(4, 7))
            starts = [i for i in range(len(words) - n) if any(df[w.lower()] == 1 for w in words[i : i + n])]
            phrase = " ".join(words[starts[int(rng.integers(len(starts)))] :][:n]).lower()
            queries.append(Query("text", phrase, src, page.page))
            if counts[(page.figure.shape, page.figure.color)] == 1:
                fq = canonical_query(page.figure)
                queries.append(Query("figure", fq, src, page.page))
                queries.append(Query("both", f"{fq} {phrase}", src, page.page))
    return queries


# --- indexing and evaluation -------------------------------------------------------------


def index_documents(
    paths: list[Path], encoder, db_dir: Path, page_size: int = 1024, page_tiles: float | None = None
) -> Store:
    """Real indexer into a real table (one merge_insert per file, as the core does), then FTS."""
    store = Store(db_dir, encoder.dim)
    options: dict = {"page_size": page_size}
    if page_tiles is not None:  # else the indexer's default
        options["page_tiles"] = page_tiles
    ctx = IndexContext(thumb_dir=db_dir / "thumbs", options=options)
    indexer = DocumentIndexer()
    for path in paths:
        data = path.read_bytes()
        st = path.stat()
        records = indexer.extract(path, encoder, ctx)
        raw = path_bytes(path.resolve())
        digest = hashlib.blake2b(data).hexdigest()
        store.replace_sources([SourceRows(raw, st.st_mtime, st.st_size, digest, records)])
    ensure_fts_index(store.table)
    return store


VARIANTS = {"fused": DEFAULT_WEIGHTS, "fused, equal weights": (1.0, 1.0, 1.0), "page only": (1.0, 0.0, 0.0),
            "chunk only": (0.0, 1.0, 0.0), "keyword only": (0.0, 0.0, 1.0)}


def evaluate(table, encoder, queries: list[Query], variants: dict[str, tuple] | None = None) -> dict:
    """Page-level R@1 / R@5 per query kind and per ranking variant."""
    variants = variants or {"fused": VARIANTS["fused"]}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, weights in variants.items():
        ranks: dict[str, list[int]] = {}
        for q in queries:
            hits = search_documents(table, encoder, q.text, 5, weights=weights)
            keys = [(h.source, h.page) for h in hits if h.score > 0]
            rank = keys.index((q.source, q.page)) + 1 if (q.source, q.page) in keys else 99
            ranks.setdefault(q.kind, []).append(rank)
        out[name] = {kind: _recall(r) for kind, r in sorted(ranks.items())}
    return out


def _recall(ranks: list[int]) -> dict[str, float]:
    r = np.asarray(ranks)
    return {"n": len(r), "R@1": round(float(np.mean(r <= 1)), 3), "R@5": round(float(np.mean(r <= 5)), 3)}


def run(
    n_docs: int = 12,
    pages: tuple[int, int] = (5, 10),
    seed: int = 0,
    model: str = "clipsearch-tiny",
    encoder=None,
    work_dir: Path | None = None,
    ablation: bool = False,
    page_tiles: float | None = None,
    renderer: str = "synth",
) -> dict:
    """Generate, index and evaluate; returns figures (and timings) as a dict."""
    if encoder is None:
        from clipsearch.encoders import Encoder

        encoder = Encoder.load(model, device="cpu")
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        tmp_path = Path(tmp)
        docs = plan_corpus(n_docs, pages, seed)
        paths = write_corpus(tmp_path / "pdfs", docs, seed, renderer)
        queries = make_queries(docs, paths, seed)
        t0 = time.perf_counter()
        store = index_documents(paths, encoder, tmp_path / "db", page_tiles=page_tiles)
        t_index = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = evaluate(store.table, encoder, queries, VARIANTS if ablation else None)
        t_query = (time.perf_counter() - t0) / (len(queries) * (len(VARIANTS) if ablation else 1))
        return {
            "docs": n_docs,
            "renderer": renderer,
            "page_tiles": DEFAULT_PAGE_TILES if page_tiles is None else page_tiles,
            "pages": sum(len(d) for d in docs),
            "rows": store.count(),
            **encoder_identity(encoder),
            "index_s": round(t_index, 2),
            "query_ms": round(1000 * t_query, 1),
            "results": results,
        }


# --- memory ------------------------------------------------------------------------------


def write_long_pdf(path: Path, n_pages: int, seed: int = 0) -> Path:
    """A long report: every page has text and a figure (distinct figures, so distinct images)."""
    docs = plan_corpus(1, (n_pages, n_pages), seed)
    return write_corpus(path.parent, docs, seed)[0].rename(path)
