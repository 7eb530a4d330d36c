"""clipsearch: search your own photos, videos and documents by meaning."""

from clipsearch.errors import ClipsearchError

__version__ = "0.1.0"
__all__ = ["Collection", "Hit", "ClipsearchError", "__version__"]


def __getattr__(name: str):
    # Lazy: `import clipsearch` must stay cheap (no torch) for the CLI's --help and tooling.
    if name in ("Collection", "Hit"):
        from clipsearch import collection

        return getattr(collection, name)
    raise AttributeError(name)
