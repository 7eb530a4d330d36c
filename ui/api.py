"""The server's query layer and its REST routes.

`SearchService` is what both the Gradio UI and the HTTP API call: it opens the collection
lazily (so a server started before the first `clipsearch index` picks the collection up once it
exists), runs queries through the public `Collection` API, and turns hits into JSON with URLs
the browser may fetch. `rest_router` exposes it as plain REST under /api and /files.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipsearch.ui.files import FileGuard, FileRefused, Signer, has_dotdot, item_url, media_type, thumb_url
from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError

from clipsearch.collection import Collection
from clipsearch.errors import ClipsearchError, CollectionNotFound, UsageError
from clipsearch.objectstore import Location, is_remote, open_collection

log = logging.getLogger(__name__)

PAGE_SIZE = 24
MAX_K = 200
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_QUERY_PIXELS = 50_000_000
PREVIEW_SIDE = 384
REMOTE_META_SECONDS = 10.0  # how often a server over object storage re-reads the indexed roots
# UI labels → the `kind` the core understands ("doc" needs text; image queries use pages).
KIND_LABELS: dict[str, str | None] = {
    "All": None,
    "Images": "image",
    "Video moments": "moment",
    "Videos": "video",
    "Document pages": "doc",
}
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO")


class UploadRejected(UsageError):
    """An uploaded query image that is too large or not an image. `status` is the HTTP code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message, hint="upload a jpg, png, webp, gif, bmp or tiff image under 20 MB")
        self.status = status


def load_upload(data: bytes) -> Image.Image:
    """Decode an uploaded query image, refusing oversized and non-image input with a clear error."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadRejected(f"the upload is {len(data) / 1e6:.1f} MB; the limit is "
                             f"{MAX_UPLOAD_BYTES // (1024 * 1024)} MB", status=413)
    if not data:
        raise UploadRejected("the upload is empty")
    try:
        im = Image.open(io.BytesIO(data))
        if im.format not in UPLOAD_FORMATS:
            raise UploadRejected(f"the upload is {im.format or 'an unknown format'}, not a supported "
                                 "image", status=415)
        if im.width * im.height > MAX_QUERY_PIXELS:
            raise UploadRejected(f"the image is {im.width}x{im.height}; that is too many pixels", 413)
        im.load()
        return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise UploadRejected("the upload is not an image", status=415) from None


def load_query_image(path: str | os.PathLike) -> Image.Image:
    """An image file a client uploaded through Gradio (already on disk) → RGB, same rules."""
    size = os.path.getsize(path)
    if size > MAX_UPLOAD_BYTES:
        raise UploadRejected(f"the upload is {size / 1e6:.1f} MB; the limit is 20 MB", status=413)
    return load_upload(Path(path).read_bytes())


class SearchService:
    """Queries over one collection (a directory or an s3://... URI), safe to call from many threads.

    For a collection on object storage `db` is its local cache directory (thumbnails) and
    `location` reads its metadata where the table lives.
    """

    def __init__(self, db: str | os.PathLike, device: str | None = "auto",
                 signer: Signer | None = None) -> None:
        self.location = Location(str(db)) if is_remote(db) else None
        self.db = self.location.cache_dir if self.location else \
            Path(os.path.abspath(os.path.expanduser(os.fspath(db))))
        self.where = self.location.uri if self.location else str(self.db)  # for messages
        self.device = device
        self.signer = signer  # set when a login is required: media URLs then carry a signature
        self._col: Collection | None = None
        self._lock = threading.Lock()  # one query at a time: the encoder shares the CPU anyway
        self._roots: tuple[float, list[str]] = (-1.0, [])
        self._info: tuple[tuple, dict] | None = None
        self.guard = FileGuard(self.db, self.db / "thumbs", self.roots)

    # ---- the collection ----------------------------------------------------------------------
    @property
    def col(self) -> Collection:
        if self._col is None:
            with self._lock:
                if self._col is None:
                    self._col = open_collection(self.location.uri if self.location else self.db,
                                                device=self.device)
        return self._col

    def exists(self) -> bool:
        if self.location is not None:
            return self._col is not None or self.location.exists("clipsearch.json")
        return Collection.exists(self.db)

    def roots(self) -> list[str]:
        """Indexed roots, re-read when another process (`clipsearch index`) added some."""
        if self.location is not None:
            return self._remote_roots()
        meta = self.db / "clipsearch.json"
        try:
            mtime = meta.stat().st_mtime
        except OSError:
            return []
        if mtime != self._roots[0]:
            try:
                roots = list(json.loads(meta.read_text()).get("roots", []))
            except (OSError, ValueError):
                return self._roots[1]
            self._roots = (mtime, roots)
        return list(self._roots[1])

    def _remote_roots(self) -> list[str]:
        """Roots from the metadata on object storage, read at most every REMOTE_META_SECONDS."""
        now = time.monotonic()
        if self._roots[0] < 0 or now - self._roots[0] >= REMOTE_META_SECONDS:
            meta = self.location.read_json() or {}
            self._roots = (now, list(meta.get("roots", [])))
        return list(self._roots[1])

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
        key = (col.store.version, self._roots[0])
        if self._info is None or self._info[0] != key:
            info = col.info()
            # gradio_client takes any dict with a "path" key for a file to download
            info["db"] = info.pop("path")
            info["name"] = self.where.rstrip("/").rsplit("/", 1)[-1]
            info["roots"] = self.roots()
            info["device"] = self._device_name()
            info["transforms_fitted"] = info.get("transforms") is not None
            # doc_page rows include zoomed tiles of a page: count pages and documents instead
            pages = col.store.scan(["source", "page"], "kind = 'doc_page'").to_pylist()
            info["pages"] = len({(r["source"], r["page"]) for r in pages})
            info["documents"] = len({r["source"] for r in pages})
            self._info = (key, info)
        return dict(self._info[1])

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
        counts = [(kinds.get("image", 0), "image"), (kinds.get("video", 0), "video"),
                  (info["documents"], "document"), (info["pages"], "page")]
        parts = [f"{info['items']} items"]
        parts += [f"{n} {label}{'s' if n != 1 else ''}" for n, label in counts if n]
        return (f"clipsearch · collection **{info['name']}** · " + " · ".join(parts)
                + f" · model `{info['model']}` · device `{info['device']}`")

    # ---- search ------------------------------------------------------------------------------
    def search(self, text: str | None = None, image: Image.Image | str | None = None, *,
               k: int = PAGE_SIZE, kind: str | None = None, under: str | None = None,
               offset: int = 0, whiten: bool = False, center: bool = False, invert: bool = False,
               hybrid: bool = False) -> dict[str, Any]:
        """Run a query; returns {"hits", "offset", "k", "more", "message"} as plain JSON."""
        text = (text or "").strip() or None
        if text is None and image is None:
            raise UsageError("type something to search for, or give an image",
                             hint="e.g. 'a red star', or drop a picture on the image box")
        if not 1 <= int(k) <= MAX_K:
            raise UsageError(f"k must be between 1 and {MAX_K}, got {k}")
        kind = (kind or "").strip().lower() or None
        kind = KIND_LABELS.get(kind, kind) if kind else None  # also accept the UI's labels
        if kind == "all":
            kind = None
        if kind == "doc" and text is None:
            kind = "page"  # document search ranks by text; an image query compares the pages
        if kind == "moment" and image is not None and text is None:
            raise UsageError("video moments are found by text", hint="type what happens in the video")
        under = (under or "").strip() or None
        if under and has_dotdot(under):
            raise UsageError("the folder filter must not contain '..'", hint="give an absolute folder")
        if not self.exists():
            raise CollectionNotFound(f"no collection at {self.where}",
                                     hint=f"create one with `clipsearch index FOLDER --db {self.where}`")
        col = self.col
        if col.store.count() == 0:
            return {"hits": [], "offset": offset, "k": k, "more": False,
                    "message": f"This collection is empty. Add files with `clipsearch index FOLDER "
                               f"--db {self.where}`; they show up here without a restart."}
        with self._lock:
            hits = col.search(text=text, image=image, k=int(k), kind=kind, under=under,
                              offset=int(offset), whiten=whiten, center=center, invert=invert,
                              hybrid=hybrid)
        out = [self.hit_json(h, offset + i) for i, h in enumerate(hits)]
        message = None
        if not out:
            message = ("No more results." if offset else
                       "Nothing matched. Try other words, another kind, or clear the folder filter.")
        return {"hits": out, "offset": offset, "k": k, "more": len(out) == k, "message": message}

    def moments(self, text: str, k: int = 10, under: str | None = None) -> dict[str, Any]:
        return self.search(text, kind="moment", k=k, under=under)

    def browse(self, order: str = "atypical", *, kind: str | None = None, k: int = PAGE_SIZE,
               offset: int = 0, under: str | None = None) -> dict[str, Any]:
        """No query: the collection by typicality (outliers first by default), same JSON as search."""
        if not 1 <= int(k) <= MAX_K:
            raise UsageError(f"k must be between 1 and {MAX_K}, got {k}")
        kind = KIND_LABELS.get((kind or "").strip(), kind)  # also accept the UI's labels
        kind = "video" if kind == "moment" else kind  # a video browses as its frames
        under = (under or "").strip() or None
        if under and has_dotdot(under):
            raise UsageError("the folder filter must not contain '..'", hint="give an absolute folder")
        if not self.exists():
            raise CollectionNotFound(f"no collection at {self.where}",
                                     hint=f"create one with `clipsearch index FOLDER --db {self.where}`")
        col = self.col  # opened outside the query lock, which opening takes
        with self._lock:
            hits = col.browse(order=order, kind=kind, k=int(k), offset=int(offset), under=under)
        out = [self.hit_json(h, offset + i) for i, h in enumerate(hits)]
        message = None if out else ("No more results." if offset else "Nothing to browse here.")
        return {"hits": out, "offset": offset, "k": k, "more": len(out) == k, "message": message}

    # ---- hits → JSON with URLs ---------------------------------------------------------------
    def hit_json(self, hit, rank: int) -> dict[str, Any]:
        d = hit.to_dict()
        d["rank"] = rank
        d["name"] = os.path.basename(hit.source)
        media_id = hit.id or self.source_item_id(hit.source)
        thumb = thumb_url(hit.thumb, self.guard.thumb_dir)
        if media_id:
            d["media_url"] = self.signed(item_url(media_id))
            if thumb is None and hit.kind == "image":
                thumb = item_url(media_id, preview=True)
        d["thumb_url"] = self.signed(thumb) if thumb else None
        d.pop("thumb", None)  # a path inside the db directory: of no use to a client
        return d

    def source_item_id(self, source: str) -> str | None:
        """Id of any row of `source` (moment and document hits carry none): serves the file."""
        from clipsearch.store import sql_str

        t = self.col.store.scan(["id"], f"source = {sql_str(source)}")
        return t.column("id")[0].as_py() if t.num_rows else None

    def signed(self, url: str) -> str:
        if self.signer is None:
            return url
        return f"{url}?sig={self.signer.sign(url)}"

    # ---- files -------------------------------------------------------------------------------
    def item_file(self, item_id: str) -> str:
        """Real path of an item's source file, checked against the roots."""
        from clipsearch.ui.files import ID_RE

        if not ID_RE.match(item_id):
            raise FileRefused(400, "bad item id")
        if not self.exists():
            raise FileRefused(404, "no such item")
        rows = self.col.store.rows_by_id([item_id]).to_pylist()
        if not rows:
            raise FileRefused(404, "no such item")
        return self.guard.check(rows[0]["source"])


# ---- REST --------------------------------------------------------------------------------------
def _error(e: Exception) -> JSONResponse:
    if isinstance(e, FileRefused):
        return JSONResponse({"error": e.message}, status_code=e.status)
    status = getattr(e, "status", None) or (404 if isinstance(e, CollectionNotFound) else
                                             400 if isinstance(e, UsageError) else 500)
    body = {"error": str(e)}
    if getattr(e, "hint", None):
        body["hint"] = e.hint
    return JSONResponse(body, status_code=status)


def basic_auth_dependency(auth: tuple[str, str] | None) -> Callable:
    """A FastAPI dependency: HTTP Basic for /api; /files also accepts a URL signature."""

    def check(request: Request) -> None:
        if auth is None:
            return
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            try:
                user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, pw = "", ""
            ok_user = hmac.compare_digest(user.encode(), auth[0].encode())
            if ok_user & hmac.compare_digest(pw.encode(), auth[1].encode()):
                return
        raise HTTPException(401, "login required", headers={"WWW-Authenticate": 'Basic realm="clipsearch"'})

    return check


def _file_response(real: str) -> Response:
    mtype, inline = media_type(real)
    name = os.path.basename(real).replace('"', "")
    disp = "inline" if inline else "attachment"
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=300",
               "Content-Disposition": f"{disp}; filename*=UTF-8''" + _rfc5987(name)}
    return FileResponse(real, media_type=mtype, headers=headers)


def _rfc5987(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


def _preview(real: str) -> Response:
    """A small JPEG of an image file, so a result grid does not pull full-size photos."""
    try:
        with Image.open(real) as im:
            if im.width * im.height > MAX_QUERY_PIXELS * 4:
                raise FileRefused(415, "image too large to preview")
            im.draft("RGB", (PREVIEW_SIDE, PREVIEW_SIDE))
            from PIL import ImageOps

            im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85)
    except (OSError, UnidentifiedImageError, ValueError):
        raise FileRefused(415, "not a previewable image") from None
    return Response(buf.getvalue(), media_type="image/jpeg",
                    headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=300"})


class UploadLimit:
    """ASGI middleware: refuse POST bodies announcing more than `limit` (+ form overhead) before
    anything reads them. A pure ASGI wrapper, so Gradio's streamed responses pass untouched."""

    def __init__(self, app, limit: int = MAX_UPLOAD_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            length = dict(scope.get("headers") or []).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit + 65536:
                mb = self.limit // (1024 * 1024)
                response = JSONResponse({"error": f"the upload is over the {mb} MB limit",
                                         "hint": "upload a smaller image"}, status_code=413)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def rest_router(service: SearchService, auth: tuple[str, str] | None = None) -> APIRouter:
    """/api/* (JSON) and /files/* (media) routes over `service`."""
    need_login = basic_auth_dependency(auth)
    router = APIRouter()

    def file_access(request: Request) -> None:
        """Signed URLs (made by the UI for a logged-in user) or HTTP Basic."""
        if auth is None:
            return
        if service.signer and service.signer.verify(request.url.path, request.query_params.get("sig")):
            return
        need_login(request)

    def run(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (ClipsearchError, FileRefused) as e:
            return _error(e)

    @router.get("/api/info", dependencies=[Depends(need_login)])
    def api_info() -> Any:
        """Collection name, counts per kind, model, device, transforms."""
        return run(service.info)

    @router.get("/api/search", dependencies=[Depends(need_login)])
    def api_search(q: str = Query(..., description="text query"), k: int = PAGE_SIZE,
                   kind: str | None = None, offset: int = Query(0, ge=0), under: str | None = None,
                   whiten: bool = False, center: bool = False, hybrid: bool = False) -> Any:
        """Text search. kind: image, video, moment, doc, frame, page or all."""
        return run(lambda: service.search(q, k=k, kind=kind, offset=offset, under=under,
                                          whiten=whiten, center=center, hybrid=hybrid))

    @router.get("/api/moments", dependencies=[Depends(need_login)])
    def api_moments(q: str, k: int = 10, under: str | None = None) -> Any:
        """Where in which video `q` happens: hits with t_start/t_end in seconds."""
        return run(lambda: service.moments(q, k=k, under=under))

    @router.get("/api/browse", dependencies=[Depends(need_login)])
    def api_browse(order: str = "atypical", k: int = PAGE_SIZE, kind: str | None = None,
                   offset: int = Query(0, ge=0), under: str | None = None) -> Any:
        """No query: items by typicality. order: atypical (outliers first) or typical;
        kind: image, video, frame, doc, page or all."""
        return run(lambda: service.browse(order, kind=kind, k=k, offset=offset, under=under))

    @router.post("/api/search/image", dependencies=[Depends(need_login)])
    async def api_search_image(request: Request, file: UploadFile = File(...), q: str = Form(""),
                               k: int = Form(PAGE_SIZE), kind: str = Form(""), offset: int = Form(0),
                               under: str = Form(""), whiten: bool = Form(False),
                               center: bool = Form(False), invert: bool = Form(False)) -> Any:
        """Image (optionally + text) search from a multipart upload named `file`."""
        data = await file.read(MAX_UPLOAD_BYTES + 1)
        try:
            image = load_upload(data)
        except UploadRejected as e:
            return _error(e)
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(run, lambda: service.search(
            q or None, image, k=k, kind=kind, offset=offset, under=under, whiten=whiten,
            center=center, invert=invert))

    @router.get("/api/file", dependencies=[Depends(need_login)])
    def api_file(path: str) -> Any:
        """A file by absolute path; only inside the indexed folders or the thumbnail cache."""
        return run(lambda: _file_response(service.guard.check(path)))

    @router.get("/files/item/{item_id}", dependencies=[Depends(file_access)])
    def file_item(item_id: str) -> Any:
        return run(lambda: _file_response(service.item_file(item_id)))

    @router.get("/files/item/{item_id}/preview", dependencies=[Depends(file_access)])
    def file_item_preview(item_id: str) -> Any:
        return run(lambda: _preview(service.item_file(item_id)))

    @router.get("/files/thumb/{name}", dependencies=[Depends(file_access)])
    def file_thumb(name: str) -> Any:
        return run(lambda: _file_response(service.guard.thumb(name)))

    return router
