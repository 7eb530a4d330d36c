"""`clipsearch serve`: one FastAPI app carrying the REST API, guarded file routes and the UI.

Every request first passes ASGI middleware, outermost first: security headers on every
response (`http_guard.SecurityHeaders`), the Host/Origin check (`http_guard.HostCheck`), the
login (`login.LoginGate`, before any body is read) and the streaming body cap
(`http_guard.BodyLimit`). The Gradio Blocks are mounted at "/" with no `allowed_paths`, so
Gradio's own file route only serves what Gradio itself stored (uploads), in a private temporary
folder removed at exit; media come from /files, which serves rows of the collection only.
Binds to 127.0.0.1 unless told otherwise. See docs/security.md.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterable
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from clipsearch.ui.api import MAX_UPLOAD_BYTES, SearchService, install_error_handlers, rest_router  # noqa: E402
from clipsearch.ui.duplicates_view import check_move_folder  # noqa: E402
from clipsearch.ui.files import Signer  # noqa: E402
from clipsearch.ui.http_guard import BodyLimit, HostCheck, HostPolicy, SecurityHeaders  # noqa: E402
from clipsearch.ui.login import LoginGate, LoginThrottle, load_credentials, parse_credentials  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from clipsearch.collection import Collection  # noqa: E402

log = logging.getLogger(__name__)
UPLOAD_DIR_ENV = "GRADIO_TEMP_DIR"
WATCH_STOP_SECONDS = 30  # at shutdown, how long a run in progress may take to finish its commits
_upload_dir: str | None = None


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    """'user:password' → (user, password); a clear error for anything else."""
    return None if auth is None else parse_credentials(auth, "--auth")


def private_upload_dir() -> str:
    """A folder only this user can read (mode 0700) where Gradio keeps query uploads; made
    once per process, pointed to by $GRADIO_TEMP_DIR, and removed when the process exits."""
    global _upload_dir
    if _upload_dir is None or not os.path.isdir(_upload_dir):
        parent = os.environ.get(UPLOAD_DIR_ENV) or None
        if parent:
            os.makedirs(parent, exist_ok=True)
        _upload_dir = tempfile.mkdtemp(prefix="clipsearch-uploads-", dir=parent)
        os.environ[UPLOAD_DIR_ENV] = _upload_dir
        atexit.register(remove_upload_dir)
    return _upload_dir


def remove_upload_dir() -> None:
    """Delete the private upload folder and everything clients uploaded into it."""
    global _upload_dir
    if _upload_dir is not None:
        shutil.rmtree(_upload_dir, ignore_errors=True)
        _upload_dir = None


def _gradio_app(app: FastAPI):
    """The Gradio App mounted inside `app` (it holds the login form's session tokens)."""
    from gradio.routes import App
    from starlette.routing import Mount

    return next(r.app for r in app.routes if isinstance(r, Mount) and isinstance(r.app, App))


def watch_lifespan(service: SearchService, options: dict[str, Any]):
    """The app's lifespan when serving with --watch: a `Watcher` in a background thread from
    start-up to shutdown, writing through its own Collection (the server's readers see its
    commits as they see any other writer's) that shares the server's encoder: one model in
    memory. At shutdown a run in progress may finish its commits; one cut short is resumed by
    the next start."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        from clipsearch.watch import Watcher

        watcher = None
        if service.exists():
            writer = Collection.open(service.storage, device=service.device, backend=service.backend,
                                     precision=service.precision)
            writer.share_encoder(service.col)
            watcher = Watcher(writer, **options)
            service.watcher = watcher
            watcher.start()
        else:
            log.warning("--watch: no collection at %s yet, so nothing is watched; index a folder "
                        "first (clipsearch index FOLDER --db %s)", service.where, service.where)
        try:
            yield
        finally:
            if watcher is not None and not await asyncio.to_thread(watcher.stop, WATCH_STOP_SECONDS):
                log.warning("the watcher's run in progress did not finish; the next start resumes it")

    return lifespan


def build_app(collection: Collection | str | os.PathLike, *, auth: str | tuple[str, str] | None = None,
              device: str | None = "auto", host: str = "127.0.0.1", allowed_hosts: Iterable[str] = (),
              max_pixels: int | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES,
              throttle: LoginThrottle | None = None, watch: dict[str, Any] | None = None,
              backend: str | None = None, precision: str | None = None,
              duplicates_to: str | os.PathLike | None = None) -> FastAPI:
    """The whole server as an ASGI app: run it with uvicorn, or in-process with a TestClient.

    `collection` may be a Collection, a directory or an object-storage URI; one that holds no
    collection yet still serves, with a message saying how to create one. `host` is the address it
    will be bound to (the Host check accepts it); `max_pixels` is the one limit for every image decode.
    `watch`: keep the collection current while serving (`Watcher` keyword arguments, {} for the
    defaults; see `watch_lifespan`); None: no watching. `backend`, `precision`: the encoder's
    (see `clipsearch.backends`; default auto). `duplicates_to`: the folder the Duplicates page
    may move copies into (checked now; None: the page only shows them).
    """
    import gradio as gr

    private_upload_dir()  # before Gradio reads $GRADIO_TEMP_DIR
    from clipsearch.ui.app import CSS, build_blocks
    from clipsearch.ui.steady_load import HEAD

    creds = parse_auth(auth) if isinstance(auth, str) or auth is None else auth
    db = collection.uri if isinstance(collection, Collection) else collection  # a directory or a URI
    signer = Signer() if creds else None
    service = SearchService(db, device=device, signer=signer, max_pixels=max_pixels,
                            collection=collection if isinstance(collection, Collection) else None,
                            backend=backend, precision=precision)
    if duplicates_to is not None:
        service.duplicates_to = check_move_folder(service, duplicates_to)
    # No Swagger page: it loads its scripts from a CDN. The schema is at /api/openapi.json.
    lifespan = watch_lifespan(service, watch) if watch is not None else None
    app = FastAPI(title="clipsearch", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json",
                  lifespan=lifespan)
    app.include_router(rest_router(service))
    install_error_handlers(app)
    app.state.service = service
    blocks = build_blocks(service)
    blocks.queue(default_concurrency_limit=2)
    app = gr.mount_gradio_app(app, blocks, path="/", auth=creds, allowed_paths=[],
                              max_file_size=max_upload_bytes, footer_links=["api"], show_error=False,
                              run_history=False, ssr_mode=False, css=CSS, head=HEAD,
                              auth_message="clipsearch: log in to search this collection")
    # Gradio checks that a file named in a request was uploaded (not any server path) only for
    # Blocks that went through launch(); a mounted app skips that check, letting a client make
    # the server copy /etc/passwd into Gradio's cache. Mark it launched so the check runs.
    blocks.has_launched = True
    # add_middleware wraps outside what was added before: the last one here sees requests first.
    app.add_middleware(BodyLimit, limit=max_upload_bytes)
    if creds:
        app.add_middleware(LoginGate, credentials=creds, gradio_app=_gradio_app(app), url_signer=signer,
                           throttle=throttle)
    app.add_middleware(HostCheck, policy=HostPolicy(host, allowed_hosts))
    app.add_middleware(SecurityHeaders)
    return app


def serve(db: str | os.PathLike, host: str = "127.0.0.1", port: int = 7860, auth: str | None = None,
          device: str | None = "auto", *, auth_file: str | os.PathLike | None = None,
          allowed_hosts: Iterable[str] = (), max_pixels: int | None = None,
          watch: dict[str, Any] | None = None, backend: str | None = None,
          precision: str | None = None, duplicates_to: str | os.PathLike | None = None) -> None:
    """Run the UI + HTTP API until Ctrl-C. The login comes from `auth`, `auth_file` or
    $CLIPSEARCH_AUTH (see `login.load_credentials`); `watch` as in `build_app`."""
    import uvicorn

    creds = load_credentials(auth, auth_file)
    allowed_hosts = list(allowed_hosts)
    if host not in ("127.0.0.1", "localhost", "::1") and creds is None:
        log.warning("serving on %s without a login (--auth-file): anyone who can reach this port "
                    "can search and view the indexed files", host)
    app = build_app(db, auth=creds, device=device, host=host, allowed_hosts=allowed_hosts,
                    max_pixels=max_pixels, watch=watch, backend=backend, precision=precision,
                    duplicates_to=duplicates_to)
    service: SearchService = app.state.service
    if not service.exists():
        print(f"No collection at {service.where} yet; the UI says how to create one.")
    else:
        service.warm_up()
    shown = f"[{host}]" if ":" in host else host
    print(f"clipsearch: http://{shown}:{port}/  (API: /api/search?q=..., schema: /api/openapi.json)")
    if host in ("0.0.0.0", "::") and not allowed_hosts:
        print("Reach it by IP address, or name each host name it is reached by with --allowed-host.")
    try:
        # Gradio keeps event streams open (heartbeat); without a deadline Ctrl-C would wait on them.
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
    finally:
        remove_upload_dir()
