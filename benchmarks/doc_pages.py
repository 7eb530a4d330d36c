"""Document page retrieval benchmark: does a query find the right page of the right PDF?

The harness (corpus, queries, indexing, scoring) is `clipsearch.tiny.eval_docs`, which the tests
run too; this is its command line plus the memory measurement. Every result names the model_id
and weights sha256 it was measured with.

    python -m benchmarks.doc_pages                  # 12 documents of 5-10 pages
    python -m benchmarks.doc_pages --memory 50 500  # peak RSS indexing 50- and 500-page PDFs
    python -m benchmarks.doc_pages --renderer independent  # figures drawn by clipsearch.tiny.world2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clipsearch.indexers.base import IndexContext
from clipsearch.indexers.document import DocumentIndexer

from clipsearch.tiny.eval_docs import run, write_long_pdf


def _memory_child(pdf: Path, model: str) -> dict:
    """Index one PDF in this process and report its peak RSS (run in a fresh subprocess)."""
    from clipsearch.encoders import Encoder

    encoder = Encoder.load(model, device="cpu")
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        records = DocumentIndexer().extract(pdf, encoder, IndexContext(thumb_dir=Path(tmp)))
        elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rows": len(records), "seconds": round(elapsed, 1),
            "rss_after_model_mib": round(rss_model / 1024), "peak_rss_mib": round(peak / 1024)}


def measure_memory(page_counts: list[int], model: str = "clipsearch-tiny") -> list[dict]:
    """Peak RSS of indexing PDFs of each length, each in its own process, same model."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in page_counts:
            pdf = write_long_pdf(Path(tmp) / f"long_{n}.pdf", n)
            cmd = [sys.executable, "-m", "benchmarks.doc_pages", "--memory-child", str(pdf), "--model", model]
            repo = Path(__file__).resolve().parents[1]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=repo)
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row.update(pages=n, pdf_mib=round(pdf.stat().st_size / 2**20, 1))
            out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=12)
    ap.add_argument("--min-pages", type=int, default=5)
    ap.add_argument("--max-pages", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="clipsearch-tiny")
    ap.add_argument("--ablation", action="store_true", help="also score each ranking alone")
    ap.add_argument("--renderer", choices=("synth", "independent"), default="synth",
                    help="who draws the figures: the training renderer or clipsearch.tiny.world2")
    ap.add_argument("--page-tiles", type=float, default=None, help="indexer option page_tiles (0 = off)")
    ap.add_argument("--memory", type=int, nargs="+", metavar="PAGES",
                    help="peak RSS for PDFs of these lengths")
    ap.add_argument("--memory-child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        print(json.dumps(_memory_child(args.memory_child, args.model)))
        return
    if args.memory:
        for row in measure_memory(args.memory, args.model):
            print(json.dumps(row))
        return
    res = run(args.docs, (args.min_pages, args.max_pages), args.seed, args.model, ablation=args.ablation,
              page_tiles=args.page_tiles, renderer=args.renderer)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

