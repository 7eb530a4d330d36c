"""Indexing engines: how the per-file work is distributed.

The local engine is `clipsearch.pipeline.run` (threads + one model in this process); the Ray
engine (`clipsearch.engines.ray_engine.index_with_ray`) spreads decoding over Ray tasks and
embedding over an actor pool. Both plan with `pipeline.plan` and write the same collection.
"""
