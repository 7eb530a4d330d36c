"""The caption set clipsearch-tiny ships beside its weights (``clipsearch-tiny.captions.txt``).

Centering estimates the text-side mean on captions; for this model most of them must come from
its own world, drawn by the same caption generator it was trained with. The product reads the
file through `clipsearch.model_registry.domain_captions`; this module writes it.

    python -m clipsearch.tiny.captions --out clipsearch/models
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from clipsearch.tiny.model import MODEL_NAME
from clipsearch.tiny.synth import caption, random_spec

N_CAPTIONS = 2400  # four fifths of the 3,000 built-in centering captions


def tiny_captions(n: int = N_CAPTIONS, seed: int = 0) -> list[str]:
    """``n`` captions over the shapes vocabulary, a pure function of ``seed``."""
    rng = np.random.default_rng(seed)
    return [caption(random_spec(rng), rng) for _ in range(n)]


def write_captions(out_dir: str | Path, n: int = N_CAPTIONS) -> Path:
    """Write ``OUT/clipsearch-tiny.captions.txt``, one caption a line."""
    path = Path(out_dir) / f"{MODEL_NAME}.captions.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(tiny_captions(n)) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("clipsearch/models"))
    print(write_captions(ap.parse_args(argv).out))


if __name__ == "__main__":
    main()
