"""The server's query layer and its REST routes.

`SearchService` is what both the Gradio UI and the HTTP API call: it opens the collection
lazily (so a server started before the first `clipsearch index` picks the collection up once it
exists), runs queries through the public `Collection` API, and turns hits into JSON with URLs
the browser may fetch. `rest_router` exposes it as plain REST under /api and /files.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from clipsearch.indexers.base import DEFAULT_MAX_PIXELS
from clipsearch.indexers.image import TooManyPixels, load_image
from clipsearch.indexers.photo_formats import RAW_EXTENSIONS
from clipsearch.ui.files import (
    ID_RE,
    FileGuard,
    FileRefused,
    Signer,
    has_dotdot,
    item_url,
    sniff_media_type,
    thumb_url,
)
from clipsearch.ui.http_guard import mb
from clipsearch.ui.names import KIND_CHOICES, kind_of_label
from fastapi import APIRouter, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipsearch import query_terms, thumbs
from clipsearch.collection import Collection
from clipsearch.collection import collection_name as core_collection_name
from clipsearch.errors import ClipsearchError, CollectionNotFound, SkipFile, TransformError, UsageError
from clipsearch.query_terms import QueryTerm
from clipsearch.storage import storage_for

if TYPE_CHECKING:
    from clipsearch.watch import Watcher

log = logging.getLogger(__name__)

PAGE_SIZE = 24
MAX_K = 200
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
PREVIEW_SIDE = 384
# Image files browsers do not display: the detail view shows their JPEG preview instead.
NOT_IN_BROWSERS = frozenset({".heic", ".heif", ".hif", ".jxl", ".tif", ".tiff"}) | RAW_EXTENSIONS
REMOTE_META_SECONDS = 10.0  # how often a server over object storage checks for new metadata
KIND_LABELS = KIND_CHOICES  # the UI's Kind labels → the `kind` the core understands
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF", "JXL")  # JPEG opens MPO


# The metadata prefilters a search takes (`Collection.search`), as HTTP query parameters.
MIN_RELEVANCE_HELP = "auto (default), off, or a calibrated relevance in 0..1 (docs/relevance.md)"
FILTER_PARAMS = ("after", "before", "camera", "place", "near", "format", "min_pixels", "where")


class UploadRejected(UsageError):
    """An uploaded query image that is too large or not an image. `status` is the HTTP code."""

    def __init__(self, message: str, status: int = 400, hint: str | None = None) -> None:
        super().__init__(message, hint=hint or "upload a jpg, png, webp, gif, bmp, tiff, heic, avif or "
                                               f"jxl image under {mb(MAX_UPLOAD_BYTES)}")
        self.status = status


def too_big(size: int) -> UploadRejected:
    return UploadRejected(f"the upload is {mb(size)}; the limit is {mb(MAX_UPLOAD_BYTES)}", status=413)


def decode_query_image(src: bytes | str | os.PathLike | IO[bytes], max_pixels: int) -> Image.Image:
    """Decode a query image (bytes, an uploaded file's path, or an open file) under the pixel
    limit, which is checked from the header before any pixel is decoded."""
    if isinstance(src, bytes | bytearray):
        if not src:
            raise UploadRejected("the upload is empty")
        src = io.BytesIO(src)
    try:
        return load_image(src, max_pixels, formats=UPLOAD_FORMATS)
    except TooManyPixels as e:
        raise UploadRejected(f"the image is {e.size}: more than the {max_pixels:,} pixels this "
                             "server decodes", status=413,
                             hint="send a smaller picture (or start the server with a larger "
                                  "--max-pixels)") from None
    except SkipFile:
        raise UploadRejected("the upload is not an image (or not a supported format)", status=415) from None


def load_upload(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an uploaded query image, refusing oversized and non-image input with a clear error."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise too_big(len(data))
    return decode_query_image(data, max_pixels)


def collection_name(where: str, meta: dict[str, Any] | None = None) -> str:
    """What the UI calls a collection (`Collection.name`, from its metadata alone)."""
    return core_collection_name(meta or {}, where)


def watch_note(status: dict[str, Any] | None) -> str:
    """The status line's words for the watcher: watching (or rescanning, past the watch limit)
    or stopped, when it last brought the collection up to date, and a failure ('' when the
    server does not watch)."""
    if not status:
        return ""
    if not status["watching"]:
        return " · not watching (stopped)"
    how = "rescanning" if status["mode"] == "rescan" else "watching"
    when = status.get("last_run")
    note = f" · {how}, updated {time.strftime('%H:%M:%S', time.localtime(when))}" if when else f" · {how}"
    return note + (f" · last run failed: {status['error']}" if status.get("error") else "")


def folder_filter(under: str | None) -> str | None:
    """A search's folder filter, None when blank; refused with '..' in it (the UI says so by the
    Folder box)."""
    under = (under or "").strip() or None
    if under and has_dotdot(under):
        raise UsageError("the folder filter must not contain '..'", hint="give an absolute folder")
    return under


class SearchService:
    """Queries over one collection (a directory or an s3://... URI), safe to call from many threads.

    `storage` says where the collection lives (`clipsearch.storage`); `db` is its local
    directory of derived state (thumbnails), the collection directory itself when it is local.
    Metadata another process saves (new roots, scan options) is picked up without reopening
    (`Collection.reload_meta`).
    """

    def __init__(self, db: str | os.PathLike, device: str | None = "auto",
                 signer: Signer | None = None, max_pixels: int | None = None,
                 collection: Collection | None = None, backend: str | None = None,
                 precision: str | None = None) -> None:
        """`collection`: one already open (its `path` should be `db`), used instead of opening it.
        `backend`, `precision`: the encoder's (see `clipsearch.backends`)."""
        self.storage = collection.storage if collection is not None else storage_for(db)
        self.db: Path = self.storage.cache_dir
        self.where = self.storage.uri  # for messages
        self.device = device
        self.backend, self.precision = backend, precision
        self.signer = signer  # set when a login is required: media URLs then carry a signature
        self._max_pixels = max_pixels
        self._col: Collection | None = collection
        self._lock = threading.Lock()  # opening the collection only: queries run concurrently
        self._meta_checked = -1.0  # when the metadata was last checked for changes (monotonic)
        self._meta_generation = 0  # how many changes were picked up (part of the info cache key)
        self._info: tuple[tuple, dict] | None = None
        self.watcher: Watcher | None = None  # set by `serve --watch` (see server.watch_lifespan)
        self.duplicates_to: Path | None = None  # set by `serve --duplicates-to`: the UI may move copies there
        self.guard = FileGuard(self.db, self.db / thumbs.FOLDER, self.roots)

    # ---- the collection ----------------------------------------------------------------------
    @property
    def col(self) -> Collection:
        if self._col is None:
            with self._lock:
                if self._col is None:
                    self._col = Collection.open(self.storage, device=self.device, backend=self.backend,
                                                precision=self.precision)
        return self._col

    def exists(self) -> bool:
        if self._col is not None and self.storage.remote:
            return True  # a round trip per call otherwise; a removed bucket fails its queries
        return self.storage.holds_collection()

    @property
    def max_pixels(self) -> int:
        """The one pixel limit for every image this server decodes (uploads, previews, "more
        like this"): --max-pixels, else the collection's own, else the indexer's default."""
        if self._max_pixels:
            return self._max_pixels
        meta = self._col.meta if self._col is not None else {}
        return int(meta.get("max_pixels") or DEFAULT_MAX_PIXELS)

    def decode(self, src: bytes | str | os.PathLike) -> Image.Image:
        """A query image → RGB under `max_pixels`: upload bytes (also capped in size), or a file
        on the server (an upload Gradio stored under its own cap, or an item for "More like
        this")."""
        if isinstance(src, bytes | bytearray):
            return load_upload(bytes(src), self.max_pixels)
        return decode_query_image(src, self.max_pixels)

    def roots(self) -> list[str]:
        """Indexed roots, as saved last (by this server's watcher or another process)."""
        if not self.exists():
            return []
        self.reload_meta()
        return self.col.roots

    def reload_meta(self) -> None:
        """Take metadata another process saved: a stat per call here, on object storage one
        request at most every REMOTE_META_SECONDS."""
        now = time.monotonic()
        if self.storage.remote and 0 <= self._meta_checked and now - self._meta_checked < REMOTE_META_SECONDS:
            return
        self._meta_checked = now
        if self.col.reload_meta():
            self._meta_generation += 1

    def warm_up(self) -> None:
        """Load the model now, so the first query does not wait for it."""
        if self.exists():
            self.col.encoder  # noqa: B018 - property access loads the weights

    # ---- info --------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Collection name, item counts, model and device; cached per table version."""
        if not self.exists():
            raise CollectionNotFound(f"no collection at {self.where}",
                                     hint=f"create one with `clipsearch index FOLDER --db {self.where}`")
        col = self.col
        self.reload_meta()
        key = (col.store.version, self._meta_generation)
        if self._info is None or self._info[0] != key:
            info = col.info()
            # gradio_client takes any dict with a "path" key for a file to download
            info["db"] = info.pop("path")
            info["roots"] = self.roots()
            info["device"] = self._device_name()
            info["transforms_fitted"] = info.get("transforms") is not None
            # doc_page rows include zoomed tiles of a page: count pages and documents instead
            pages = col.store.scan(["source", "page"], "kind = 'doc_page'").to_pylist()
            info["pages"] = len({(r["source"], r["page"]) for r in pages})
            info["documents"] = len({r["source"] for r in pages})
            self._info = (key, info)
        return {**self._info[1], "backend": col.backend_info(), "watch": self.watch_status()}

    def watch_status(self) -> dict[str, Any] | None:
        """What the collection's watcher is doing (`WatchStatus` fields): this server's own
        (`serve --watch`), else what a `clipsearch watch` process published; None when the
        collection was never watched."""
        if self.watcher is not None:
            return self.watcher.status.to_dict()
        if self.storage.remote:
            return None  # a watcher of a remote collection publishes on its own machine
        from clipsearch.watch import watch_state

        return watch_state(self.db)

    def _device_name(self) -> str:
        from clipsearch.encoders import pick_device

        return pick_device(self.device)

    def status_line(self) -> str:
        """One line for the top of the UI: name, counts, model, device."""
        try:
            info = self.info()
        except CollectionNotFound as e:
            return f"**No collection** at `{self.db}`. {e.hint}."
        kinds = info["kinds"]
        counts = [(kinds.get("image", 0), "photo"), (kinds.get("video", 0), "video"),
                  (info["documents"], "document"), (info["pages"], "page")]
        parts = [f"{info['items']} items"]
        parts += [f"{n} {label}{'s' if n != 1 else ''}" for n, label in counts if n]
        taken = info.get("taken") or {}
        if taken.get("first"):
            span = f"{taken['first'][:10]} – {taken['last'][:10]}"
            top = [name for name, _ in (taken.get("places") or [])[:2]]
            top += [name for name, _ in (taken.get("cameras") or [])[:1]]
            parts.append("taken " + span + (f" ({' · '.join(top)})" if top else ""))
        return (f"clipsearch · collection **{info['name']}** · " + " · ".join(parts)
                + f" · model `{info['model']}` · device `{info['device']}`"
                + f" · backend `{info['backend']['backend']} {info['backend']['precision']}`"
                + watch_note(info["watch"]))

    # ---- search ------------------------------------------------------------------------------
    def search(self, text: str | None = None, image: Image.Image | bytes | str | None = None, *,
               k: int = PAGE_SIZE, kind: str | None = None, under: str | None = None,
               offset: int = 0, whiten: bool = False, center: bool = False, invert: bool = False,
               hybrid: bool = False, sort: str | None = None, negative: Sequence[str] = (),
               words_only: bool = False, visual_only: bool = False,
               min_relevance: str | float | None = "auto", **filters: Any) -> dict[str, Any]:
        """Run a query; returns {"hits", "offset", "k", "more", "message", "warnings", "terms",
        "weaker", "min_relevance"} as plain JSON (`warnings`: lines the caller should see, e.g.
        that a long query was cut; `terms`: the parts of the query as understood, each with
        `from`: q, image or not). `min_relevance` (auto, a number in 0..1, or off) cuts the hits
        below that calibrated relevance; `weaker` are the hits it cut from this page (the UI's
        "show N weaker matches").
        `filters`: the metadata prefilters of `Collection.search` (after, before, camera, place,
        near, format, min_pixels, where); empty values are no filter. `sort`: score, date, -date.

        `text` is the inline form of query terms (`clipsearch.query_terms`), `negative` more of
        them to push away (the "not" box, `not=`), read as a server must: no term opens a path,
        and an `id:` term must name a servable item. `image` may be a decoded picture, upload
        bytes or a file path (from the server itself: an upload Gradio stored, "More like
        this"); anything not yet decoded is decoded here, under the server's pixel limit. Hits
        whose source lies outside the collection's roots are left out (see `servable`)."""
        text = (text or "").strip() or None
        negative = [n for n in (negative or ()) if (n or "").strip()]
        if text is None and image is None:
            raise UsageError("type something to search for, or give an image",
                             hint="e.g. 'a red star', or drop a picture on the image box")
        terms = self.query_terms(text, negative)
        if not 1 <= int(k) <= MAX_K:
            raise UsageError(f"k must be between 1 and {MAX_K}, got {k}")
        kind = (kind or "").strip().lower() or None
        kind = kind_of_label(kind)  # also accept the UI's labels
        if kind == "all":
            kind = None
        if kind == "doc" and text is None:
            kind = "page"  # document search ranks by text; an image query compares the pages
        if kind == "moment" and image is not None and text is None:
            raise UsageError("video moments are found by text", hint="type what happens in the video")
        under = self._checked_under(under)
        col = self.col
        if col.store.count() == 0:
            return {"hits": [], "offset": offset, "k": k, "more": False,
                    "message": f"This collection is empty. Add files with `clipsearch index FOLDER "
                               f"--db {self.where}`; they show up here without a restart.",
                    "warnings": col.query_warnings(text), "terms": terms_json(terms), "weaker": [],
                    "min_relevance": None}
        if image is not None and not isinstance(image, Image.Image):
            image = self.decode(image)
        if image is not None:
            at = next((i for i, (_, origin) in enumerate(terms) if origin == "not"), len(terms))
            terms.insert(at, (query_terms.image(image), "image"))
        unknown = set(filters) - set(FILTER_PARAMS)
        if unknown:
            raise UsageError(f"unknown filter {sorted(unknown)[0]!r}",
                             hint="one of: " + ", ".join(FILTER_PARAMS))
        filters = {key: value for key, value in filters.items() if value not in (None, "")}
        self._check_items([t for t, _ in terms if t.kind == "item"])
        hits = col.search(terms=[t for t, _ in terms], k=int(k), kind=kind, under=under,
                          offset=int(offset), whiten=whiten, center=center, invert=invert,
                          hybrid=hybrid, sort=(sort or "").strip() or None, words_only=words_only,
                          visual_only=visual_only,
                          min_relevance="off" if min_relevance in (None, "") else min_relevance, **filters)
        out = self.hits_json(hits, offset)
        weaker = self.hits_json(getattr(hits, "weaker", []), offset + len(out))
        message = None
        if not out:
            message = ("No more results." if offset else
                       f"No relevant match: {len(weaker)} weaker match{'es' if len(weaker) != 1 else ''} "
                       "below the relevance cut." if weaker else
                       "Nothing matched. Try other words, another kind, or clear the folder filter.")
        return {"hits": out, "offset": offset, "k": k, "more": len(hits) == k, "message": message,
                "warnings": list(getattr(hits, "warnings", [])), "terms": terms_json(terms),
                "weaker": weaker, "min_relevance": getattr(hits, "min_relevance", None)}

    @staticmethod
    def query_terms(text: str | None, negative: Sequence[str] = ()) -> list[tuple[QueryTerm, str]]:
        """(term, where it came from: "q" or "not") of a query typed into a server: the inline
        form, read with no path opened (`query_terms.parse_query(paths=False)`)."""
        terms = [(t, "q") for t in query_terms.parse_query(text, paths=False)] if text else []
        for words in negative:
            terms += [(t, "not") for t in query_terms.negated(
                query_terms.parse_query(words, paths=False, name="the not box"))]
        return terms

    def _check_items(self, items: list[QueryTerm]) -> None:
        """`id:` terms must name rows this server would show: inside the roots (as hits are)."""
        if not items:
            return
        from clipsearch.store import sql_in

        ids = sorted({str(t.value) for t in items})
        rows = {r["id"]: r for r in self.col.store.scan(["id", "source_raw"], sql_in("id", ids)).to_pylist()}
        roots = self.guard.real_roots()
        for rid in ids:
            row = rows.get(rid)
            if row is None or not self.guard.source_allowed(row["source_raw"], roots):
                raise UsageError(f"query term 'id:{rid}': no such item",
                                 hint="use the id of a search hit")

    def _checked_under(self, under: str | None) -> str | None:
        """The folder filter (`folder_filter`); and the collection must exist."""
        under = folder_filter(under)
        if not self.exists():
            raise CollectionNotFound(f"no collection at {self.where}",
                                     hint=f"create one with `clipsearch index FOLDER --db {self.where}`")
        return under

    def hits_json(self, hits: list[Any], offset: int) -> list[dict[str, Any]]:
        """Hits as JSON with URLs, leaving out any whose source is no row under the roots."""
        rows = self.page_rows(hits)
        return [self.hit_json(h, offset + i, rows) for i, h in enumerate(hits) if h.source in rows.sources]

    def moments(self, text: str, k: int = 10, under: str | None = None,
                min_relevance: str | float | None = "auto", **filters: Any) -> dict[str, Any]:
        """Video moments; `min_relevance` and `filters` as in `search`."""
        return self.search(text, kind="moment", k=k, under=under, min_relevance=min_relevance, **filters)

    def browse(self, order: str = "atypical", *, kind: str | None = None, k: int = PAGE_SIZE,
               offset: int = 0, under: str | None = None, by: str = "typicality",
               topic: int | None = None) -> dict[str, Any]:
        """No query: the collection by typicality (outliers first by default), by date (newest
        first, with `months`: each month on the page, its label and how many hits) or by topic
        (`topics`, each with example hits; with `topic`, that topic's items), same hits JSON as
        search."""
        if not 1 <= int(k) <= MAX_K:
            raise UsageError(f"k must be between 1 and {MAX_K}, got {k}")
        kind = kind_of_label(kind) or kind  # also accept the UI's labels
        kind = "video" if kind == "moment" else kind  # a video browses as its frames
        under = self._checked_under(under)
        if topic is not None and by != "topics":
            raise UsageError("'topic' needs by=topics", hint="/api/browse?by=topics&topic=0")
        if by == "topics" and topic is None:
            return {"by": by, "topics": self.topics_json(self.col.browse_topics(kind=kind))}
        if by == "date":
            hits = self.col.browse_by_date(kind=kind, k=int(k), offset=int(offset), under=under)
        elif by == "topics":
            assert topic is not None
            hits = self.col.browse_topic(int(topic), kind=kind, k=int(k), offset=int(offset))
        elif by == "typicality":
            hits = self.col.browse(order=order, kind=kind, k=int(k), offset=int(offset), under=under)
        else:
            raise UsageError(f"unknown browse 'by={by}'", hint="one of: typicality, date, topics")
        out = self.hits_json(hits, offset)
        message = None if out else ("No more results." if offset else "Nothing to browse here.")
        reply = {"hits": out, "offset": offset, "k": k, "more": len(out) == k, "message": message, "by": by}
        if by == "date":
            from clipsearch.browse_date import months_of

            reply["months"] = months_of(out)
        if by == "topics":
            reply["topic"] = next((t.to_dict() for t in self.col.browse_topics(kind=kind)
                                   if t.id == topic), None)
        return reply

    def topics_json(self, topics: list[Any]) -> list[dict[str, Any]]:
        """Topics as JSON, each example an item hit (with its thumbnail URL) this server may show."""
        hits = self.col.items([i for t in topics for i in t.examples])
        shown = {h["id"]: h for h in self.hits_json(hits, 0)}
        out = []
        for t in topics:
            d = t.to_dict()
            d["examples"] = [shown[i] for i in t.examples if i in shown]
            out.append(d)
        return out

    # ---- hits → JSON with URLs ---------------------------------------------------------------
    def page_rows(self, hits) -> PageRows:
        """For one page of hits, in one table scan: the servable sources (real path inside a
        root) with an item id each, and the row id that names each thumbnail."""
        from clipsearch.store import sql_str

        names = sorted({h.source for h in hits})
        page = PageRows()
        if not names:
            return page
        where = "source IN (" + ",".join(sql_str(n) for n in names) + ")"
        t = self.col.store.scan(["id", "source", "source_raw", "thumb"], where).to_pylist()
        roots = self.guard.real_roots()
        allowed = {raw: self.guard.source_allowed(raw, roots) for raw in {r["source_raw"] for r in t}}
        for r in t:
            if not allowed[r["source_raw"]]:
                continue
            page.sources.setdefault(r["source"], r["id"])
            if r["thumb"]:  # keyed as hits name it: resolved in this collection's directory
                page.thumbs.setdefault(thumbs.resolve(self.db, r["thumb"]) or "", r["id"])
        return page

    def hit_json(self, hit, rank: int, rows: PageRows) -> dict[str, Any]:
        d = hit.to_dict()
        d["rank"] = rank
        d["name"] = os.path.basename(hit.source)
        media_id = hit.id or rows.sources.get(hit.source)
        thumb_id = rows.thumbs.get(hit.thumb) if hit.thumb else None
        thumb = thumb_url(thumb_id) if thumb_id else None
        if media_id:
            d["media_url"] = self.signed(item_url(media_id))
            if thumb is None and (hit.kind == "image" or (hit.kind == "ocr" and hit.page is None
                                                          and hit.t_start is None)):
                thumb = item_url(media_id, preview=True)
            if hit.kind == "image" and os.path.splitext(hit.source)[1].lower() in NOT_IN_BROWSERS:
                d["view_url"] = self.signed(item_url(media_id, preview=True))
        d["thumb_url"] = self.signed(thumb) if thumb else None
        if hit.companion_id:  # served by id like any item: the guard decides when it is asked for
            d["companion_url"] = self.signed(item_url(hit.companion_id))
        d.pop("thumb", None)  # a path inside the db directory: of no use to a client
        return d

    def signed(self, url: str) -> str:
        if self.signer is None:
            return url
        return f"{url}?sig={self.signer.sign(url)}"

    # ---- files -------------------------------------------------------------------------------
    def _row(self, item_id: str) -> dict:
        if not ID_RE.match(item_id):
            raise FileRefused(400, "bad item id")
        if not self.exists():
            raise FileRefused(404, "no such item")
        rows = self.col.store.rows_by_id([item_id]).to_pylist()
        if not rows:
            raise FileRefused(404, "no such item")
        return rows[0]

    def item_file(self, item_id: str) -> tuple[str, str]:
        """(path to open, display name) of an item's source file; only a row of the table,
        opened by its raw path bytes, and only inside the roots."""
        row = self._row(item_id)
        return self.guard.source(row["source_raw"]), os.path.basename(row["source"])

    def item_thumb(self, item_id: str) -> str:
        """Path of the thumbnail row `item_id` names, while its source is servable."""
        row = self._row(item_id)
        if not self.guard.source_allowed(row["source_raw"]):
            raise FileRefused(403, "only files inside the collection's indexed folders are served")
        return self.guard.thumb(thumbs.resolve(self.db, row["thumb"]))


def terms_json(terms: Sequence[tuple[QueryTerm, str]]) -> list[dict[str, Any]]:
    """The parts of a query for a client (the UI's chips): kind, label, weight, and `from`."""
    return [{**t.to_dict(), "from": origin} for t, origin in terms]


class PageRows:
    """What `SearchService.page_rows` found: servable source → an item id; thumb → row id."""

    def __init__(self) -> None:
        self.sources: dict[str, str] = {}
        self.thumbs: dict[str, str] = {}


# ---- REST --------------------------------------------------------------------------------------
def _error(e: Exception) -> JSONResponse:
    if isinstance(e, FileRefused):
        return JSONResponse({"error": e.message}, status_code=e.status)
    status = getattr(e, "status", None) or (404 if isinstance(e, CollectionNotFound) else
                                             400 if isinstance(e, (UsageError, TransformError)) else 500)
    body = {"error": str(e)}
    if hint := getattr(e, "hint", None):
        body["hint"] = hint
    return JSONResponse(body, status_code=status)


SCHEMA_HINT = "see /api/openapi.json for this endpoint's parameters"


def validation_error_body(exc: RequestValidationError) -> dict[str, str]:
    """FastAPI's parameter errors as the API's one shape: {"error": "<param>: <what>", "hint"}."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("query", "path", "body", "header")]
        msg = str(err.get("msg", "is not valid"))
        parts.append(f"{'.'.join(loc) or 'request'}: {msg[:1].lower() + msg[1:]}")
    return {"error": "; ".join(parts) or "bad request", "hint": SCHEMA_HINT}


def install_error_handlers(app: FastAPI) -> None:
    """Bad parameters answer 400 and every HTTP error of these routes answers {"error", ...},
    as docs/http_api.md says, instead of FastAPI's 422/{"detail"}. Gradio's mounted app keeps
    its own handlers (its client expects them)."""

    async def bad_parameters(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_error_body(exc), status_code=400)

    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=exc.headers)
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(RequestValidationError, bad_parameters)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]


def content_disposition(name: str, inline: bool) -> str:
    """inline/attachment with an ASCII fallback name and the exact name in RFC 5987 form."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in name)
    return (f"{'inline' if inline else 'attachment'}; filename=\"{fallback or 'file'}\"; "
            f"filename*=UTF-8''{quote(name, safe='')}")


def _file_response(real: str, name: str | None = None) -> Response:
    mtype, inline = sniff_media_type(real)
    name = name or os.path.basename(real)
    headers = {"Cache-Control": "private, max-age=300",
               "Content-Disposition": content_disposition(name, inline)}
    return FileResponse(real, media_type=mtype, headers=headers)


def _preview(real: str, max_pixels: int) -> Response:
    """A small JPEG of an image file, so a result grid does not pull full-size photos."""
    try:
        im = load_image(real, max_pixels, min_side=PREVIEW_SIDE)  # HEIC and RAW too, upright
        im.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
    except TooManyPixels as e:
        raise FileRefused(413, f"the image is {e.size}: more than the {max_pixels:,} pixels this "
                               "server decodes; open the original instead") from None
    except (SkipFile, OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        raise FileRefused(415, "not a previewable image") from None
    return Response(buf.getvalue(), media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=300",
                             "Content-Disposition": 'inline; filename="preview.jpg"'})


def rest_router(service: SearchService) -> APIRouter:
    """/api/* (JSON) and /files/* (media) routes over `service`. Login, Host/Origin checks and
    the upload cap are ASGI middleware in front of these (see `clipsearch.ui.server`)."""
    router = APIRouter()

    def run(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (ClipsearchError, FileRefused) as e:
            return _error(e)

    @router.get("/api/info")
    def api_info() -> Any:
        """Collection name, counts per kind, model, device, transforms."""
        return run(service.info)

    @router.get("/api/search")
    def api_search(q: str = Query(..., description="text query"), k: int = PAGE_SIZE,
                   kind: str | None = None, offset: int = Query(0, ge=0), under: str | None = None,
                   whiten: bool = False, center: bool = False, hybrid: bool = False,
                   words_only: bool = Query(False, description="rank by the words in items alone"),
                   visual_only: bool = Query(False, description="rank by what items show alone"),
                   sort: str | None = Query(None, description="score, date (oldest first) or -date"),
                   after: str | None = Query(None, description="taken on or after: 2024, 2024-08, ..."),
                   before: str | None = Query(None, description="taken before the end of this date"),
                   camera: str | None = Query(None, description="camera make/model contains this"),
                   place: str | None = Query(None, description="city, region or country contains this"),
                   near: str | None = Query(None, description="LAT,LON[,KM] (default 10 km)"),
                   format: str | None = Query(None, description="file format: jpg, png, heic, mp4, pdf..."),
                   min_pixels: int | None = Query(None, ge=0, description="width × height at least"),
                   where: str | None = Query(None, description="SQL over the documented columns"),
                   not_: list[str] = Query([], alias="not", description="terms to push away (repeatable)"),
                   min_relevance: str = Query("auto", description=MIN_RELEVANCE_HELP)) -> Any:
        """Text search. `q` may combine terms: "2:golden retriever + id:ITEM - indoors" (README,
        "Query operators"); `not` (repeatable) pushes terms away. kind: image, video, moment,
        doc, frame, page, ocr, speech, audio or all; the metadata filters are prefilters (README, "Filters").
        Hits found by their words carry them as `text`, `matched` (visual, words or both) and,
        for words read by OCR, `box`; speech and moments carry `evidence`
        (visual, speech or both); `min_relevance` (auto by default) cuts the weak hits."""
        filters: dict[str, Any] = {"after": after, "before": before, "camera": camera, "place": place,
                                   "near": near, "format": format, "min_pixels": min_pixels, "where": where}
        return run(lambda: service.search(q, k=k, kind=kind, offset=offset, under=under,
                                          whiten=whiten, center=center, hybrid=hybrid, sort=sort,
                                          negative=not_, words_only=words_only, visual_only=visual_only,
                                          min_relevance=min_relevance, **filters))

    @router.get("/api/moments")
    def api_moments(q: str, k: int = 10, under: str | None = None,
                    after: str | None = Query(None, description="taken on or after: 2024, 2024-08, ..."),
                    before: str | None = Query(None, description="taken before the end of this date"),
                    camera: str | None = Query(None, description="camera make/model contains this"),
                    place: str | None = Query(None, description="city, region or country contains this"),
                    near: str | None = Query(None, description="LAT,LON[,KM] (default 10 km)"),
                    format: str | None = Query(None, description="file format: mp4, mov, mkv..."),
                    min_pixels: int | None = Query(None, ge=0, description="width × height at least"),
                    where: str | None = Query(None, description="SQL over the documented columns"),
                    min_relevance: str = Query("auto", description=MIN_RELEVANCE_HELP)) -> Any:
        """Where in which video `q` happens: hits with t_start/t_end in seconds; the metadata
        filters of /api/search keep only the videos they match."""
        filters: dict[str, Any] = {"after": after, "before": before, "camera": camera, "place": place,
                                   "near": near, "format": format, "min_pixels": min_pixels, "where": where}
        return run(lambda: service.moments(q, k=k, under=under, min_relevance=min_relevance, **filters))

    @router.get("/api/browse")
    def api_browse(order: str = "atypical", k: int = PAGE_SIZE, kind: str | None = None,
                   offset: int = Query(0, ge=0), under: str | None = None,
                   by: str = Query("typicality", description="typicality, date (newest first, by month) "
                                                             "or topics (clusters, labelled)"),
                   topic: int | None = Query(None, ge=0, le=10_000,
                                             description="with by=topics: this topic's items"),
                   page: int | None = Query(None, ge=0, le=1_000_000,
                                            description="page number from 0 (offset = page * k)")) -> Any:
        """No query: items by typicality (order: atypical, outliers first, or typical), by
        date, or the topics (by=topics; with topic=N, its items); kind: image, video, frame,
        doc, page or all."""
        start = page * k if page is not None else offset
        return run(lambda: service.browse(order, kind=kind, k=k, offset=start, under=under, by=by,
                                          topic=topic))

    @router.get("/api/duplicates")
    def api_duplicates(threshold: str = Query("auto", description="auto, or a cosine similarity in (0, 1]"),
                       kind: str = Query("all", description="image, video or all")) -> Any:
        """Groups of exact and near-duplicate files with a suggested keeper (read-only: moving
        the others is `clipsearch duplicates --move-to DIR`)."""
        from clipsearch.ui.duplicates_view import duplicates_json

        return run(lambda: duplicates_json(service, threshold, kind))

    @router.post("/api/search/image")
    def api_search_image(file: UploadFile = File(...), q: str = Form(""),
                         k: int = Form(PAGE_SIZE), kind: str = Form(""), offset: int = Form(0),
                         under: str = Form(""), whiten: bool = Form(False),
                         center: bool = Form(False), invert: bool = Form(False), sort: str = Form(""),
                         after: str = Form(""), before: str = Form(""), camera: str = Form(""),
                         place: str = Form(""), near: str = Form(""), format: str = Form(""),
                         min_pixels: int | None = Form(None), where: str = Form(""),
                         not_: list[str] = Form([], alias="not"),
                         min_relevance: str = Form("auto")) -> Any:
        """Image (optionally + text) search from a multipart upload named `file`; `q` and `not`
        (repeatable) take query terms as in /api/search; the metadata filters of /api/search as
        form fields (empty: not given); `min_relevance` as in /api/search."""
        filters: dict[str, Any] = {"after": after or None, "before": before or None, "camera": camera or None,
                                   "place": place or None, "near": near or None, "format": format or None,
                                   "min_pixels": min_pixels, "where": where or None}

        def query() -> Any:
            if file.size is not None and file.size > MAX_UPLOAD_BYTES:
                raise too_big(file.size)
            image = service.decode(file.file.read(MAX_UPLOAD_BYTES + 1))
            return service.search(q or None, image, k=k, kind=kind, offset=offset, under=under,
                                  whiten=whiten, center=center, invert=invert, sort=sort or None,
                                  negative=not_, min_relevance=min_relevance, **filters)

        return run(query)

    @router.get("/files/item/{item_id}")
    def file_item(item_id: str) -> Any:
        """An item's source file, sent as the type its magic bytes say."""
        return run(lambda: _file_response(*service.item_file(item_id)))

    @router.get("/files/item/{item_id}/preview")
    def file_item_preview(item_id: str) -> Any:
        """A ≤384 px JPEG of an image item."""
        return run(lambda: _preview(service.item_file(item_id)[0], service.max_pixels))

    @router.get("/files/thumb/{item_id}")
    def file_thumb(item_id: str) -> Any:
        """The thumbnail the row `item_id` names (video frames, document pages)."""
        return run(lambda: _file_response(service.item_thumb(item_id)))

    @router.api_route("/api/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                      include_in_schema=False)
    def api_unknown(rest: str, request: Request) -> Any:
        """Unknown /api paths would otherwise fall through to the mounted UI's own 404."""
        allowed = sorted({m for r in router.routes if isinstance(r, APIRoute) and r.name != "api_unknown"
                          and r.path_regex.match(request.url.path) for m in r.methods or ()})
        if allowed:
            return JSONResponse({"error": f"{request.method} is not allowed on {request.url.path}",
                                 "hint": "use " + " or ".join(allowed)}, status_code=405,
                                headers={"Allow": ", ".join(allowed)})
        return JSONResponse({"error": f"no such endpoint: /api/{rest}",
                             "hint": "see /api/openapi.json for the endpoints"}, status_code=404)

    return router
