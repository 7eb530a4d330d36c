"""`clipsearch serve`: one FastAPI app carrying the REST API, guarded file routes and the UI.

The Gradio Blocks are mounted at "/" with no `allowed_paths`, so Gradio's own file route only
serves what Gradio itself created (uploads, its cache); media come from /files, which checks
every path against the collection's roots. Binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from clipsearch.ui.api import MAX_UPLOAD_BYTES, SearchService, UploadLimit, rest_router  # noqa: E402
from clipsearch.ui.files import Signer  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from clipsearch.collection import Collection  # noqa: E402
from clipsearch.errors import UsageError  # noqa: E402

log = logging.getLogger(__name__)


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    """'user:password' → (user, password); a clear error for anything else."""
    if auth is None:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise UsageError("--auth must look like user:password", hint="e.g. --auth alice:s3cret")
    return user, password


def build_app(collection: Collection | str | os.PathLike, *, auth: str | tuple[str, str] | None = None,
              device: str | None = "auto") -> FastAPI:
    """The whole server as an ASGI app: run it with uvicorn, or in-process with a TestClient.

    `collection` may be a Collection, a directory or an object-storage URI; one that holds no
    collection yet still serves, with a message saying how to create one.
    """
    import gradio as gr
    from clipsearch.ui.app import CSS, build_blocks

    creds = parse_auth(auth) if isinstance(auth, str) or auth is None else auth
    db = (getattr(collection, "uri", None) or collection.path) if isinstance(collection, Collection) \
        else collection  # a directory or an s3://... URI
    service = SearchService(db, device=device, signer=Signer() if creds else None)
    if isinstance(collection, Collection):
        service._col = collection
    # No Swagger page: it loads its scripts from a CDN. The schema is at /api/openapi.json.
    app = FastAPI(title="clipsearch", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.include_router(rest_router(service, creds))
    app.add_middleware(UploadLimit)
    app.state.service = service
    blocks = build_blocks(service)
    blocks.queue(default_concurrency_limit=2)
    app = gr.mount_gradio_app(app, blocks, path="/", auth=creds, allowed_paths=[],
                              max_file_size=MAX_UPLOAD_BYTES, footer_links=["api"], show_error=False,
                              run_history=False, ssr_mode=False, css=CSS,
                              auth_message="clipsearch: log in to search this collection")
    # Gradio checks that a file named in a request was uploaded (not any server path) only for
    # Blocks that went through launch(); a mounted app skips that check, letting a client make
    # the server copy /etc/passwd into Gradio's cache. Mark it launched so the check runs.
    blocks.has_launched = True
    return app


def serve(db: str | os.PathLike, host: str = "127.0.0.1", port: int = 7860, auth: str | None = None,
          device: str | None = "auto") -> None:
    """Run the UI + HTTP API until Ctrl-C."""
    import uvicorn

    creds = parse_auth(auth)
    if host not in ("127.0.0.1", "localhost", "::1") and creds is None:
        log.warning("serving on %s without --auth: anyone who can reach this port can search and "
                    "view the indexed files", host)
    app = build_app(db, auth=creds, device=device)
    service: SearchService = app.state.service
    if not service.exists():
        print(f"No collection at {service.where} yet; the UI says how to create one.")
    else:
        service.warm_up()
    print(f"clipsearch: http://{host}:{port}/  (API: /api/search?q=..., schema: /api/openapi.json)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
