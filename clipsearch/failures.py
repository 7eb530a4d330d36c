"""Storage and network failures as one line and a hint.

LanceDB, Lance, pyarrow and the OS report a full disk, a damaged table file or an unreachable
object store as OSError, pyarrow.ArrowInvalid, RuntimeError("lance error: ...") or ValueError,
with Rust source locations in the text. `storage_failure` turns those into a `StorageError`
that names the place, says what happened and what to do; anything else is left alone, so a
programming error still shows its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import re
from collections.abc import Callable, Iterator
from typing import TypeVar

from clipsearch.errors import ClipsearchError, StorageError

F = TypeVar("F", bound=Callable)

_RUST_LOCATION = re.compile(r",?\s*/\S+\.rs:\d+:\d+")
_PREFIXES = re.compile(r"^(External error: |lance error: |LanceError\(\w+\): |Wrapped error: "
                       r"|Generic \w+ error: )+")
_STORAGE_WORDS = ("lance", "arrow", "object store", "object_store", "was not found", "no space left",
                  "dispatch failure", "error sending request", "retryerror", "httperror",
                  "failed to connect")
_NETWORK = ("connection refused", "error sending request", "dispatch failure", "dns error",
            "failed to lookup address", "timed out", "timeout", "connection reset", "broken pipe",
            "tcp connect", "unreachable", "endpoint", "kind: connect", "failed to connect")
_URI = re.compile(r"uri: Some\((\w+://[^/\s)]+)")
_DAMAGED = ("not found", "too small", "failed to fill whole buffer", "corrupt", "invalid", "unexpected eof",
            "checksum", "protobuf", "decode")
KEPT = "committed work is kept"


def detail(exc: BaseException) -> str:
    """The exception's first line without Rust source locations and wrapper prefixes."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = _RUST_LOCATION.sub("", text)
    server = _URI.search(text)
    if server and "kind: connect" in text.lower():  # object_store's retry report: only the gist
        return f"cannot connect to {server.group(1)}"
    while True:
        stripped = _PREFIXES.sub("", text)
        if stripped == text:
            break
        text = stripped
    return text[:300]


def _is_storage(exc: BaseException) -> bool:
    if isinstance(exc, ClipsearchError):
        return False
    if isinstance(exc, OSError):  # not a socket a server binds: that is no storage failure
        return getattr(exc, "errno", None) not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL)
    if any(c.__name__ == "ArrowException" for c in type(exc).__mro__):
        return True
    if isinstance(exc, (RuntimeError, ValueError)):
        low = str(exc).lower()
        return any(w in low for w in _STORAGE_WORDS)
    return False


def storage_failure(exc: BaseException, where: str) -> StorageError | None:
    """A one-line `StorageError` for a storage or network failure at `where` (a path or URI),
    or None when `exc` is something else."""
    if not _is_storage(exc):
        return None
    code = getattr(exc, "errno", None)
    what = detail(exc)
    name = getattr(exc, "filename", None)
    if isinstance(exc, OSError) and getattr(exc, "strerror", None):
        what = f"{name}: {exc.strerror}" if name else str(exc.strerror)
    low = f"{what} {exc}".lower()
    if code == errno.ENOSPC or "no space left" in low:
        return StorageError(f"{where}: the disk is full ({what})",
                            hint=f"free space on the disk that holds {where}, then run the same "
                                 f"command again; {KEPT}")
    if code == errno.ENOTDIR or "not a directory" in low:
        return StorageError(f"{where}: a part of the path is a regular file, not a folder ({what})",
                            hint="give --db a path made of folders (a new collection's folder is created)")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS) or any(
            w in low for w in ("permission denied", "read-only file system", "access denied", "forbidden")):
        return StorageError(f"{where}: not allowed to write or read there ({what})",
                            hint="pick a --db folder you may write to, or fix its permissions")
    if code == errno.ENOENT and isinstance(exc, OSError):
        return StorageError(f"{where}: cannot be created or read there ({what})",
                            hint="give --db a folder on a disk you may write to (not under /proc or /sys)")
    if any(w in low for w in _NETWORK):
        return StorageError(f"{where}: the object store cannot be reached ({what})",
                            hint=f"check the server (AWS_ENDPOINT_URL) is up and reachable and the "
                                 f"credentials are valid, then run again; {KEPT}")
    if not isinstance(exc, OSError) or any(w in low for w in _DAMAGED):
        return StorageError(f"the collection's table at {where} is damaged or incomplete ({what})",
                            hint="restore the collection folder from a backup, or re-index into a "
                                 "new --db; the table is the system of record and cannot be rebuilt "
                                 "from the derived files")
    return StorageError(f"{where}: {what}", hint=f"check the disk or server holding {where}, then "
                                                    f"run again; {KEPT}")


@contextlib.contextmanager
def storage_errors(where: str) -> Iterator[None]:
    """Re-raise storage and network failures inside the block as one-line `StorageError`s."""
    try:
        yield
    except Exception as e:
        err = storage_failure(e, where)
        if err is None:
            raise
        raise err from e


def guarded(method: F) -> F:
    """Decorate a method of an object with a `db_dir`: its storage failures name that place."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def gen(self, *args, **kwargs):
            with storage_errors(str(self.db_dir)):
                yield from method(self, *args, **kwargs)
        return gen  # type: ignore[return-value]

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with storage_errors(str(self.db_dir)):
            return method(self, *args, **kwargs)
    return wrapper  # type: ignore[return-value]
