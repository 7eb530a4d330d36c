"""Write the small demo collection the README quick start uses (see clipsearch.tiny.sample).

    python examples/make_sample_collection.py sample/files [--seed 0]

It writes `images/`, `videos/` and `docs/` of rendered shapes the bundled model knows, plus
`manifest.json` with the ground truth.
"""

from clipsearch.tiny.sample import main

if __name__ == "__main__":
    main()
