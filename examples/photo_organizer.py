"""Use clipsearch as the retrieval backend of another program, through the Python API only.

A tiny "photo organizer": given a folder and a few labels, it files each photo under the label
that retrieves it best, and prints the plan (or writes it as JSON with --json). Nothing here
knows about LanceDB, FAISS or open_clip; it only talks to `clipsearch.Collection`.

    python examples/photo_organizer.py sample/files/images "a red star" "a blue circle" --db /tmp/org
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from clipsearch import ClipsearchError, Collection


def organize(folder: str, labels: list[str], db: str, model: str = "clipsearch-tiny",
             min_score: float = 0.0) -> dict[str, list[str]]:
    """Map each label to the images it explains best (one label per image)."""
    col = Collection.open(db) if Collection.exists(db) else Collection.create(db, model=model)
    col.add([folder])
    n = col.info()["items"]
    best: dict[str, tuple[float, str]] = {}
    for label in labels:
        for hit in col.search(text=label, k=max(n, 1), kind="image", under=folder):
            if hit.score >= min_score and hit.score > best.get(hit.source, (-2.0, ""))[0]:
                best[hit.source] = (hit.score, label)
    plan: dict[str, list[str]] = defaultdict(list)
    for source, (_, label) in sorted(best.items()):
        plan[label].append(source)
    return dict(plan)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("labels", nargs="+")
    ap.add_argument("--db", required=True, help="where the collection lives")
    ap.add_argument("--model", default="clipsearch-tiny")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        plan = organize(args.folder, args.labels, args.db, args.model)
    except ClipsearchError as e:
        print(f"error: {e}" + (f"\nhint: {e.hint}" if e.hint else ""), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(plan, indent=2))
    else:
        for label, files in plan.items():
            print(f"{label}: {len(files)} photos")
            for f in files:
                print(f"    {Path(f).name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
