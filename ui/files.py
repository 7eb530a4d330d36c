"""Which files the web server may send, and the URLs it hands out for them.

Files are served by item id only: the id is looked up in the collection's table, so a client
never names a path, and a file that is not a row (a dotfile, anything never indexed) cannot be
asked for at all. The row's `source_raw` bytes are what is opened (non-UTF-8 names work), and
the source is still resolved with realpath (symlinks followed) and must lie inside one of the
collection's indexed roots, so rows indexed through a symlink that leads out are not served
(defence in depth for collections indexed before the scanner stopped following them). The
collection directory itself is never served; thumbnails only from its thumbnail cache, and
only those a row names. The content type comes from the file's magic bytes, never its name.
"""

from __future__ import annotations

import codecs
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Callable
from urllib.parse import unquote

from clipsearch.fsutil import is_within

ID_RE = re.compile(r"^[0-9a-f]{32}$")
# Media types we send inline; anything else goes out as an opaque download.
INLINE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/tiff",
                          "video/mp4", "video/webm", "video/quicktime", "video/x-matroska",
                          "video/x-msvideo", "video/x-m4v", "application/pdf",
                          "audio/mpeg", "audio/x-flac", "audio/flac", "audio/ogg", "audio/opus",
                          "audio/x-wav", "audio/wav", "audio/mp4", "audio/m4a", "audio/x-m4a"})
SNIFF_BYTES = 8192
TEXT_TYPE = "text/plain; charset=utf-8"
OPAQUE_TYPE = "application/octet-stream"


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


def _looks_like_text(head: bytes) -> bool:
    if b"\0" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def sniff_media_type(path: str | bytes) -> tuple[str, bool]:
    """(content type, inline?) from a file's first bytes: a known image, video or PDF is sent
    inline as what it is; UTF-8 text as text/plain; anything else as an opaque download."""
    import filetype

    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    kind = filetype.guess(head)
    if kind is not None:
        return (kind.mime, True) if kind.mime in INLINE_TYPES else (OPAQUE_TYPE, False)
    if head and _looks_like_text(head):
        return TEXT_TYPE, True
    return OPAQUE_TYPE, False


class FileGuard:
    """Decides whether a row's source file or thumbnail may be sent, and where it really is.

    `roots` is a callable so that roots added by an indexing process after the server started
    are honoured without a restart.
    """

    def __init__(self, db_dir: str | os.PathLike, thumb_dir: str | os.PathLike,
                 roots: Callable[[], list[str]]) -> None:
        self.db_dir = os.path.realpath(os.fsencode(db_dir))
        self.thumb_dir = os.path.realpath(os.fsencode(thumb_dir))
        self._roots = roots

    def real_roots(self) -> list[bytes]:
        return [os.path.realpath(os.fsencode(r)) for r in self._roots()]

    def source_allowed(self, raw: bytes, roots: list[bytes] | None = None) -> bool:
        """Whether the real path of source `raw` lies inside an indexed root (not the db)."""
        if not raw or b"\0" in raw or not os.path.isabs(raw):
            return False
        real = os.path.realpath(raw)
        if is_within(real, self.db_dir):
            return False
        return any(is_within(real, r) for r in (self.real_roots() if roots is None else roots))

    def source(self, raw: bytes) -> str:
        """The path to open for a row's `source_raw`, or FileRefused."""
        if not self.source_allowed(raw):
            raise FileRefused(403, "only files inside the collection's indexed folders are served")
        real = os.path.realpath(raw)
        if not os.path.isfile(real):
            raise FileRefused(404, "no such file")
        return os.fsdecode(real)

    def thumb(self, stored: str | None) -> str:
        """The path to open for a row's `thumb`: a file in the thumbnail cache, or FileRefused."""
        if not stored:
            raise FileRefused(404, "this item has no thumbnail")
        real = os.path.realpath(os.fsencode(stored))
        if not is_within(real, self.thumb_dir) or real == self.thumb_dir:
            raise FileRefused(403, "thumbnails are served only from the collection's thumbnail cache")
        if not os.path.isfile(real):
            raise FileRefused(404, "no such thumbnail")
        return os.fsdecode(real)


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
        return sig is not None and hmac.compare_digest(self.sign(path), sig)


def item_url(item_id: str, preview: bool = False) -> str:
    """URL of an item's source file (or a downscaled JPEG preview of it)."""
    return f"/files/item/{item_id}" + ("/preview" if preview else "")


def thumb_url(row_id: str) -> str:
    """URL of the thumbnail a row names (served only while that row exists)."""
    return f"/files/thumb/{row_id}"
