"""Exception hierarchy: every error a user can cause is a ClipsearchError with a hint."""

from __future__ import annotations


class ClipsearchError(Exception):
    """Base class. `hint` tells the user what to do next; `exit_code` is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class UsageError(ClipsearchError):
    """Bad arguments or options (CLI exit code 2)."""

    exit_code = 2


class ModelUnavailable(ClipsearchError):
    """Weights cannot be found locally and cannot be downloaded."""


class ModelMismatch(ClipsearchError):
    """A collection is opened with a different model than the one it was built with."""


class CollectionNotFound(ClipsearchError):
    """No collection exists at the given path."""


class WriterBusy(ClipsearchError):
    """Another process holds the collection's writer lock (it is indexing): a watcher waits and
    retries instead of giving up."""


class StorageError(ClipsearchError):
    """The disk, the table's files or the object store failed (full disk, damaged file, no server)."""


class TransformError(ClipsearchError):
    """A transform is missing, unfittable or corrupt."""


class MissingDependency(ClipsearchError):
    """A feature's optional dependency is not installed; the hint names the extra that brings it."""

    @classmethod
    def require(cls, modules: tuple[str, ...], feature: str, extra: str) -> None:
        """Import ``modules`` (what the extra installs), or raise one line naming the extra."""
        import importlib

        for name in modules:
            try:
                importlib.import_module(name)
            except ImportError as e:
                raise cls(f"{feature} needs {e.name or name}, which is not installed",
                          hint=f"pip install 'clipsearch[{extra}]'") from e


class SkipFile(Exception):
    """Raised by an indexer for one file that cannot be indexed; the job goes on.

    Not a ClipsearchError: it never reaches the user as an error, only as a skip reason.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
