"""Which files the web server may send, and the URLs it hands out for them.

The server can be reached by a browser, so every file request is treated as hostile: the
parameter must not contain a `..` segment (raw or percent-encoded), the path is resolved with
realpath (symlinks followed) and the result must lie inside one of the collection's indexed
roots or its thumbnail cache. The collection directory itself (the table, metadata, ANN index)
is never served, even when it sits inside an indexed root. Serving by item id is preferred: the
id is looked up in the table, so a client never names a path at all.
"""

from __future__ import annotations

import hashlib
import hmac
import mimetypes
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, unquote

ID_RE = re.compile(r"^[0-9a-f]{32}$")
THUMB_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}$")
# Media types we send inline; anything else goes out as an opaque download.
INLINE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/tiff",
                "video/mp4", "video/webm", "video/quicktime", "video/x-matroska", "video/x-msvideo",
                "application/pdf", "text/plain", "text/markdown")


class FileRefused(Exception):
    """A file request that must not be answered. `status` is the HTTP status to send.

    Messages never include the requested path's content or whether a refused file exists.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def has_dotdot(value: str) -> bool:
    """True if `value` has a `..` path segment, also after (repeated) percent-decoding."""
    for _ in range(4):
        if any(seg == ".." for seg in re.split(r"[/\\]", value)):
            return True
        decoded = unquote(value)
        if decoded == value:
            return False
        value = decoded
    return True  # still changing after 4 rounds of decoding: refuse rather than guess


def is_inside(path: str, base: str) -> bool:
    """Whether real path `path` is `base` or below it (both already realpath'ed)."""
    base = base.rstrip(os.sep) or os.sep
    return path == base or path.startswith(base if base == os.sep else base + os.sep)


def media_type(path: str) -> tuple[str, bool]:
    """(content type, inline?) for a file we are about to send."""
    guessed, _ = mimetypes.guess_type(path)
    if guessed == "text/markdown":
        return "text/plain; charset=utf-8", True
    if guessed in INLINE_TYPES:
        return (guessed + "; charset=utf-8") if guessed.startswith("text/") else guessed, True
    return "application/octet-stream", False


class FileGuard:
    """Resolves file requests to real paths inside the allowed directories, or refuses them.

    `roots` is a callable so that roots added by an indexing process after the server started
    are honoured without a restart.
    """

    def __init__(self, db_dir: str | os.PathLike, thumb_dir: str | os.PathLike,
                 roots: Callable[[], list[str]]) -> None:
        self.db_dir = os.path.realpath(db_dir)
        self.thumb_dir = os.path.realpath(thumb_dir)
        self._roots = roots

    def allowed_bases(self) -> list[str]:
        return [os.path.realpath(r) for r in self._roots()] + [self.thumb_dir]

    def check(self, candidate: str | os.PathLike) -> str:
        """The real path of `candidate` if it may be served; raises FileRefused otherwise."""
        raw = os.fspath(candidate)
        if "\0" in raw or has_dotdot(raw):
            raise FileRefused(400, "path segments '..' are not allowed")
        if not os.path.isabs(raw):
            raise FileRefused(400, "give an absolute path inside an indexed folder")
        real = os.path.realpath(raw)
        in_thumbs = is_inside(real, self.thumb_dir)
        if not in_thumbs and is_inside(real, self.db_dir):
            raise FileRefused(403, "the collection's own files are not served")
        if not in_thumbs and not any(is_inside(real, b) for b in self.allowed_bases()):
            raise FileRefused(403, "only files inside the collection's indexed folders are served")
        if not os.path.isfile(real):
            raise FileRefused(404, "no such file")
        return real

    def thumb(self, name: str) -> str:
        """A thumbnail by file name (no directories) from the collection's thumbnail cache."""
        if has_dotdot(name) or not THUMB_NAME_RE.match(name):
            raise FileRefused(400, "bad thumbnail name")
        return self.check(os.path.join(self.thumb_dir, name))


class Signer:
    """HMAC signatures for media URLs the UI hands to the browser when a login is required.

    The UI only runs for logged-in users, so a URL it produced carries that login; the secret
    is random per server process, so URLs stop working when the server restarts.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        self._key = secret or secrets.token_bytes(32)

    def sign(self, path: str) -> str:
        return hmac.new(self._key, path.encode(), hashlib.sha256).hexdigest()[:32]

    def verify(self, path: str, sig: str | None) -> bool:
        return bool(sig) and hmac.compare_digest(self.sign(path), sig)


def item_url(item_id: str, preview: bool = False) -> str:
    """URL of an item's source file (or a downscaled JPEG preview of it)."""
    return f"/files/item/{item_id}" + ("/preview" if preview else "")


def thumb_url(thumb_path: str | None, thumb_dir: str | os.PathLike) -> str | None:
    """URL of a thumbnail the indexer wrote, or None when it is not in the thumbnail cache."""
    if not thumb_path:
        return None
    real_dir = os.path.realpath(thumb_dir)
    if not is_inside(os.path.realpath(os.path.dirname(thumb_path)), real_dir):
        return None
    return "/files/thumb/" + quote(Path(thumb_path).name)
