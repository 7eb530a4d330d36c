"""The lab of the bundled demo model clipsearch-tiny: its synthetic world, training and evaluation.

Nothing in the product (``clipsearch`` outside this package, ``clipsearch.indexers``,
``clipsearch.ui``) imports it: the product only loads the model's shipped files from
``clipsearch/models``. Tests, benchmarks and examples use it to make data the model knows.

    python -m clipsearch.tiny.train --out /tmp/tiny --seed 0     # stage 1, then stage 2
    python -m clipsearch.tiny.tune --model-dir DIR --seed 0 --out OUT
    python -m clipsearch.tiny.eval --model-dir clipsearch/models
"""
