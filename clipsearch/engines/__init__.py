"""Indexing engines: how the per-file work is distributed.

The local engine is `clipsearch.pipeline.run` (threads + one model in this process); the Ray
engine (`clipsearch.engines.ray_engine.index_with_ray`) spreads decoding over Ray tasks and
embedding over an actor pool. Both plan with `pipeline.plan` and write the same collection.
"""

from __future__ import annotations

ENGINES = ("local", "ray")


def index_with_ray(*args, **kwargs):
    """Lazy alias of `ray_engine.index_with_ray`, so importing this package never imports Ray."""
    from clipsearch.engines.ray_engine import index_with_ray as impl

    return impl(*args, **kwargs)
