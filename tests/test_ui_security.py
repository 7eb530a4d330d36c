"""What the server refuses: foreign hosts and origins, anonymous requests, oversized bodies and
images, files that are not rows of the collection or lie outside its roots.

Everything runs against real servers (uvicorn on 127.0.0.1, a free port) and real files.
Raw requests go through http.client or a socket so that `..`, percent-encodings, foreign Host
headers and chunked bodies reach the server exactly as an attacker would send them.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np
import pytest
from clipsearch.ui.files import FileGuard, FileRefused, Signer, has_dotdot, sniff_media_type
from clipsearch.ui.http_guard import HostPolicy
from clipsearch.ui.login import LoginThrottle, load_credentials
from PIL import Image
from support import (  # noqa: E402
    CountingApp,
    ServerThread,
    add_rows,
    build_collection,
    chunked_upload,
    free_port,
    raw_request,
    write_png_bomb,
)

from clipsearch.errors import UsageError  # noqa: E402
from clipsearch.thumbs import resolve as resolve_thumb  # noqa: E402

SECRET = "TOP-SECRET-CONTENT-7f3a"


def raw_get(base: str, target: str, headers: dict | None = None) -> tuple[int, bytes]:
    """GET `target` verbatim (no normalisation, no re-encoding)."""
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request("GET", target, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("outside") / "secret.txt"
    p.write_text(SECRET)
    return p


# ---- the pieces, without a server --------------------------------------------------------------
@pytest.mark.parametrize("value,bad", [
    ("../../etc/passwd", True), ("/a/../b", True), ("%2e%2e/x", True), ("%252e%252e%252fx", True),
    ("..\\x", True), ("a..b.jpg", False), ("/photos/x.png", False), ("%2e%2e", True),
])
def test_dotdot_detection_sees_through_encodings(value, bad):
    assert has_dotdot(value) is bad


def test_guard_refuses_sources_outside_the_roots(tmp_path, secret_file):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    ok = root / "sub" / "ok.jpg"
    ok.write_bytes(b"x")
    db = root / "db"  # a collection inside an indexed root must still stay private
    (db / "thumbs").mkdir(parents=True)
    (db / "clipsearch.json").write_text("{}")
    (db / "thumbs" / "t.jpg").write_bytes(b"t")
    (root / "escape.jpg").symlink_to(secret_file)
    (db / "thumbs" / "evil.jpg").symlink_to(secret_file)
    (root / "dirlink").symlink_to(secret_file.parent, target_is_directory=True)
    guard = FileGuard(db, db / "thumbs", lambda: [str(root)])

    assert guard.source(os.fsencode(ok)) == os.path.realpath(ok)
    assert guard.thumb(str(db / "thumbs" / "t.jpg")) == os.path.realpath(db / "thumbs" / "t.jpg")
    for p in (secret_file, root / "escape.jpg", root / "dirlink" / "secret.txt", db / "clipsearch.json",
              Path("sub/ok.jpg"), Path("/etc/passwd")):
        assert not guard.source_allowed(os.fsencode(p))
        with pytest.raises(FileRefused):
            guard.source(os.fsencode(p))
    for stored in (str(db / "thumbs" / "evil.jpg"), str(secret_file), str(db / "clipsearch.json"),
                   str(db / "thumbs"), None):
        with pytest.raises(FileRefused):
            guard.thumb(stored)
    # Rows name thumbnails relative to the collection (or, older ones, absolute somewhere else):
    # resolved against it, they still reach only files of its thumbnail cache.
    for stored in ("thumbs/t.jpg", "/moved/away/thumbs/t.jpg"):
        assert guard.thumb(resolve_thumb(db, stored)) == os.path.realpath(db / "thumbs" / "t.jpg")
    for stored in ("thumbs/evil.jpg", "/moved/away/thumbs/evil.jpg", "thumbs/../clipsearch.json",
                   "../sub/ok.jpg", "thumbs/../../escape.jpg", "thumbs", "thumbs/", "clipsearch.json"):
        with pytest.raises(FileRefused):
            guard.thumb(resolve_thumb(db, stored))


def test_signatures_bind_to_the_url():
    s = Signer(b"k" * 32)
    sig = s.sign("/files/item/" + "a" * 32)
    assert s.verify("/files/item/" + "a" * 32, sig)
    assert not s.verify("/files/item/" + "b" * 32, sig)
    assert not s.verify("/files/item/" + "a" * 32, None)
    assert not Signer().verify("/files/item/" + "a" * 32, sig)


def test_host_policy_names():
    local = HostPolicy("127.0.0.1", ["photos.lan"])
    for ok in ("localhost", "127.0.0.1", "127.3.4.5", "::1", "photos.lan"):
        assert local.allows(ok), ok
    for bad in ("attacker.example", "localhost.attacker.example", "10.0.0.2", "", "photos.lan.evil"):
        assert not local.allows(bad), bad
    lan = HostPolicy("0.0.0.0")
    assert lan.allows("192.168.1.20") and not lan.allows("attacker.example")
    assert local.origin_allowed("http://127.0.0.1:7860", "127.0.0.1:7860")
    assert local.origin_allowed("https://photos.lan", "127.0.0.1:7860")
    for bad in ("http://attacker.example:7860", "null", "http://127.0.0.1:9999", "file://"):
        assert not local.origin_allowed(bad, "127.0.0.1:7860"), bad


def test_login_throttle_backs_off_in_bounded_memory():
    now = [0.0]
    t = LoginThrottle(free=3, window=60, max_lock=8, max_clients=100, clock=lambda: now[0])
    for _ in range(3):
        t.failed("a")
    assert t.retry_after("a") == 0  # the first few mistakes are free
    waits = []
    for _ in range(5):
        t.failed("a")
        waits.append(t.retry_after("a"))
        now[0] += waits[-1]
    assert waits == [1, 2, 4, 8, 8]  # doubling, capped
    assert t.retry_after("b") == 0  # per client
    t.succeeded("a")
    assert t.retry_after("a") == 0
    for i in range(1000):
        t.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(t._clients) == 100


def test_credentials_come_from_a_file_or_the_environment(tmp_path, caplog):
    f = tmp_path / "auth"
    f.write_text("alice:s3cr:et\n")
    f.chmod(0o600)
    assert load_credentials(auth_file=f, environ={}) == ("alice", "s3cr:et")
    assert load_credentials(environ={"CLIPSEARCH_AUTH": "bob:pw"}) == ("bob", "pw")
    assert load_credentials(environ={}) is None
    with caplog.at_level("WARNING"):
        assert load_credentials(auth="carol:pw", environ={}) == ("carol", "pw")
    assert "process list" in caplog.text
    f.chmod(0o644)
    with caplog.at_level("WARNING"):
        load_credentials(auth_file=f, environ={})
    assert "chmod 600" in caplog.text
    for bad in ("no-colon\n", "a:b\nc:d\n", ":pw\n"):
        f.write_text(bad)
        with pytest.raises(UsageError, match="auth-file"):
            load_credentials(auth_file=f, environ={})
    with pytest.raises(UsageError, match="not both"):
        load_credentials(auth="a:b", auth_file=f)
    with pytest.raises(UsageError, match="cannot read"):
        load_credentials(auth_file=tmp_path / "missing", environ={})


def test_content_type_comes_from_magic_bytes(tmp_path):
    png = tmp_path / "looks.txt"
    Image.new("RGB", (4, 4)).save(png, "PNG")
    html = tmp_path / "page.png"
    html.write_text("<html><script>alert(1)</script></html>")
    exe = tmp_path / "tool.pdf"
    exe.write_bytes(b"MZ\x90\x00" + bytes(range(256)) * 4)
    assert sniff_media_type(str(png)) == ("image/png", True)
    assert sniff_media_type(str(html)) == ("text/plain; charset=utf-8", True)
    assert sniff_media_type(str(exe)) == ("application/octet-stream", False)


def test_defaults_bind_loopback_and_disable_analytics():
    import inspect

    from clipsearch.ui import server as srv

    assert inspect.signature(srv.serve).parameters["host"].default == "127.0.0.1"
    assert os.environ.get("GRADIO_ANALYTICS_ENABLED") == "False"


def test_result_html_escapes_names_and_text():
    from clipsearch.ui.app import render_detail, render_grid

    evil = "<img src=x onerror=alert(1)>"
    hit = {"source": f"/p/{evil}.png", "name": f"{evil}.png", "kind": "doc", "score": 0.5, "page": 2,
           "text": evil, "thumb_url": "/files/thumb/a.jpg' onerror='alert(1)",
           "media_url": "/files/item/" + "a" * 32}
    for html in (render_grid([hit]), render_detail(hit, 0)):
        assert evil not in html
        assert "onerror='alert(1)" not in html
        assert "&lt;img src=x onerror=alert(1)&gt;" in html


# ---- the sample collection's server -----------------------------------------------------------
def _assert_refused(status: int, body: bytes) -> None:
    assert status in (400, 401, 403, 404, 405, 422), status
    assert SECRET.encode() not in body
    assert b"root:x:" not in body
    assert b'"model_id"' not in body  # the collection's metadata


def test_no_route_takes_a_path(server, sample, secret_file):
    data, db = sample
    photo = next(iter(data.images))
    targets = [
        "/api/file?path=" + quote(photo),  # the path route is gone: files are served by id
        "/api/file?path=/etc/passwd",
        "/api/file?path=" + quote(str(db / "clipsearch.json")),
        "/files/thumb/..%2F..%2Fclipsearch.json",
        "/files/thumb/%2e%2e%2fclipsearch.json",
        "/files/thumb/../clipsearch.json",
        "/files/thumb/..%252fclipsearch.json",
        "/files/thumb/" + "0" * 32,
        "/files/item/..%2F..%2Fetc%2Fpasswd",
        "/files/item/" + "0" * 32,
        "/files/item/" + quote(str(secret_file), safe=""),
        "/gradio_api/file=/etc/passwd",
        "/gradio_api/file=" + str(secret_file),
        "/gradio_api/file=" + str(db / "clipsearch.json"),
        "/gradio_api/file=" + photo,  # Gradio itself serves nothing from the roots
        "/file=/etc/passwd",
    ]
    for t in targets:
        status, body = raw_get(server, t)
        _assert_refused(status, body)


def test_every_response_carries_the_security_headers(server, sample):
    hit = httpx_get(server, "/api/search", q="a shape", k=1, kind="image", min_relevance="off")["hits"][0]
    for target in ("/", "/api/info", "/config", "/gradio_api/info", "/api/openapi.json", hit["media_url"],
                   hit["thumb_url"], "/files/item/" + "0" * 32, "/no/such/page"):
        status, headers, _ = raw_request(server, "GET", target)
        assert headers.get("x-content-type-options") == "nosniff", target
        assert headers.get("x-frame-options") == "DENY", target
        assert "frame-ancestors 'none'" in headers.get("content-security-policy", ""), target
    status, headers, body = raw_request(server, "GET", hit["media_url"])
    assert status == 200 and headers["content-type"] == "image/png" and body[:4] == b"\x89PNG"
    assert headers["content-disposition"].startswith("inline; filename=")


def test_foreign_host_is_refused_on_every_route(server, sample):
    """DNS rebinding: a page at attacker.example whose name now resolves to 127.0.0.1."""
    hit = httpx_get(server, "/api/search", q="a shape", k=1, min_relevance="off")["hits"][0]
    port = urlsplit(server).port
    routes = [("GET", "/"), ("GET", "/api/info"), ("GET", "/api/search?q=x"), ("GET", hit["media_url"]),
              ("GET", hit["thumb_url"]), ("GET", "/config"), ("GET", "/gradio_api/info"),
              ("GET", "/gradio_api/queue/data?session_hash=abc"), ("GET", "/gradio_api/heartbeat/abc"),
              ("GET", "/api/openapi.json"), ("POST", "/gradio_api/upload"),
              ("POST", "/gradio_api/queue/join")]
    for bad_host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1.nip.io:{port}", ""):
        for method, target in routes:
            status, _, body = raw_request(server, method, target, {"Host": bad_host},
                                          body=b"{}" if method == "POST" else None)
            assert status == 421, (bad_host, target, status)
            assert b"allowed-host" in body and b"cs-query" not in body
    for good in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST"):
        status, _, _ = raw_request(server, "GET", hit["media_url"], {"Host": good})
        assert status == 200, good


def test_allowed_host_names_are_answered(sample):
    _, db = sample
    from clipsearch.ui.server import build_app

    with ServerThread(build_app(db, device="cpu", allowed_hosts=["photos.lan"])) as srv:
        assert raw_request(srv.url, "GET", "/api/info", {"Host": "photos.lan:80"})[0] == 200
        assert raw_request(srv.url, "GET", "/api/info", {"Host": "other.lan"})[0] == 421


def test_foreign_origin_is_refused(server, sample):
    """A hostile page in the same browser posting to the server (CSRF) or reading its API."""
    data, _ = sample
    port = urlsplit(server).port
    same = f"http://127.0.0.1:{port}"
    body = json.dumps({"data": ["a red star", 3, "all", 0, "", False, False, False]}).encode()
    for origin in ("http://attacker.example", f"http://attacker.example:{port}", "null",
                   f"http://localhost:{port + 1}"):
        for method, target, payload in (("GET", "/api/search?q=star", None), ("GET", "/api/info", None),
                                        ("POST", "/gradio_api/call/search", body),
                                        ("POST", "/gradio_api/upload", b"x")):
            status, _, _ = raw_request(server, method, target, {"Origin": origin,
                                                                 "Content-Type": "application/json"},
                                       body=payload)
            assert status == 403, (origin, target, status)
    import httpx

    r = httpx.post(server + "/api/search/image", headers={"Origin": same}, timeout=120,
                   files={"file": ("q.jpg", data.dup_query, "image/jpeg")}, data={"k": "2"})
    assert r.status_code == 200, r.text
    assert raw_request(server, "POST", "/gradio_api/call/search", {"Origin": same,
                       "Content-Type": "application/json"}, body=body)[0] == 200


def test_gradio_file_data_cannot_name_a_server_path(server, secret_file):
    """The named image endpoint must not read a path the client made up."""
    u = urlsplit(server)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    payload = {"data": [{"path": str(secret_file), "meta": {"_type": "gradio.FileData"}},
                        "", 5, "all", 0, ""]}
    conn.request("POST", "/gradio_api/call/search_image", body=json.dumps(payload),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    if r.status == 200:  # queued: the result stream must be an error without the content
        event_id = json.loads(body)["event_id"]
        status, stream = raw_get(server, f"/gradio_api/call/search_image/{event_id}")
        assert b"event: error" in stream
        body = stream
    assert SECRET.encode() not in body
    assert secret_file.name.encode() not in body  # not even a copy's path in the message
    from gradio.utils import get_upload_folder

    copies = Path(get_upload_folder()).glob(f"*/{secret_file.name}")
    assert not any(SECRET in p.read_text(errors="replace") for p in copies)


def test_query_uploads_stay_in_a_private_folder(server, sample):
    from gradio.utils import get_upload_folder
    from gradio_client import Client, handle_file

    data, _ = sample
    folder = Path(get_upload_folder())
    assert folder.name.startswith("clipsearch-uploads-")
    assert folder.stat().st_mode & 0o777 == 0o700
    q = folder.parent / "private_check_query.jpg"
    q.write_bytes(data.dup_query)
    try:
        Client(server + "/", verbose=False).predict(image=handle_file(str(q)), q="", k=2, kind="all",
                                                    offset=0, under="", api_name="/search_image")
    finally:
        q.unlink()
    assert any(p.name == q.name for p in folder.rglob("*")), "the upload went somewhere else"


def test_uploads_have_a_size_limit_and_must_be_images(server):
    import httpx

    big = b"\xff\xd8\xff" + b"0" * (21 * 1024 * 1024)
    r = httpx.post(server + "/api/search/image", files={"file": ("big.jpg", big, "image/jpeg")}, timeout=120)
    assert r.status_code == 413 and r.json()["error"] == "the upload is 21.0 MB; the limit is 20 MB"
    r = httpx.post(server + "/api/search/image", files={"file": ("notes.txt", b"hello", "text/plain")},
                   timeout=60)
    assert r.status_code == 415 and "not an image" in r.json()["error"]
    assert "hint" in r.json()
    status, _, body = raw_request(server, "POST", "/api/search/image",
                                  {"Content-Length": str(3 * 1024**3), "Content-Type": "multipart/form-data"},
                                  body=b"")
    assert status == 413 and json.loads(body)["error"] == "the upload is 3072 MB; the limit is 20 MB"


def test_chunked_uploads_are_cut_off_while_streaming(sample):
    """10x the cap, chunked (no Content-Length): refused after about the cap, not after all of it."""
    from clipsearch.ui.api import MAX_UPLOAD_BYTES
    from clipsearch.ui.server import build_app

    _, db = sample
    app = CountingApp(build_app(db, device="cpu"))
    with ServerThread(app) as srv:
        for target in ("/api/search/image", "/gradio_api/upload"):
            from gradio.utils import get_upload_folder

            before = {p for p in Path(get_upload_folder()).rglob("*")}
            app.received = 0
            status, reply, sent = chunked_upload(srv.url, target, 10 * MAX_UPLOAD_BYTES)
            assert status == 413, (target, reply[:300])
            assert app.received <= 2 * MAX_UPLOAD_BYTES, (target, app.received)
            assert sent < 5 * MAX_UPLOAD_BYTES
            time.sleep(0.5)
            after = {p for p in Path(get_upload_folder()).rglob("*") if p.is_file()}
            assert not after - before, f"{target} left {after - before}"
        assert b"limit" in reply or b"maximum allowed size" in reply


def httpx_get(base: str, path: str, **params) -> dict:
    import httpx

    r = httpx.get(base + path, params=params, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


# ---- a collection with hostile rows -----------------------------------------------------------
@pytest.fixture(scope="module")
def hostile(tmp_path_factory, secret_file):
    """A collection over real files, plus rows as an older scanner would have written them:
    a symlinked folder leading outside (its text, a PDF page with a thumbnail) and an image of
    20000x20000 pixels. Also a non-UTF-8 file name and an HTML page saved as .txt."""
    base = tmp_path_factory.mktemp("hostile")
    root = base / "root"
    root.mkdir()
    rng = np.random.default_rng(0)
    from clipsearch.tiny.synth.shapes import ShapeSpec, render_shape

    render_shape(ShapeSpec("circle", "red"), rng, size=96, background="plain").save(root / "photo.png")
    odd = os.path.join(os.fsencode(root), b"caf\xe9.png")
    render_shape(ShapeSpec("star", "green"), rng, size=96, background="plain").save(odd.decode(
        "utf-8", "surrogateescape"))
    (root / "notes.txt").write_text("<html><body><script>alert('notes')</script>meeting notes</body></html>")
    db = base / "db"
    col = build_collection(db, [root])
    # after indexing, so that no scanner (fixed or not) follows them itself
    outside = secret_file.parent
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / ".env").write_text(f"PASSWORD={SECRET}\n")
    bomb = write_png_bomb(root / "bomb.png")
    thumb = col.thumb_dir / "outside_page.jpg"
    Image.new("RGB", (32, 32), (200, 0, 0)).save(thumb)
    ids = {
        "text": add_rows(col, root / "linked" / "secret.txt", "doc_text", col.embed_text("vm hostname"),
                         page=1, text=SECRET, extra={"chunk": 0}),
        "page": add_rows(col, root / "linked" / "outside.pdf", "doc_page",
                         col.embed_text("a red square page"), page=1, thumb=str(thumb)),
        "bomb": add_rows(col, bomb, "image", col.embed_text("a black picture")),
    }
    col.refresh(fit_transforms=False)
    odd_id = next(r["id"] for r in col.store.scan(["id", "source_raw"]).to_pylist() if r["source_raw"] == odd)
    return {"root": root, "db": db, "col": col, "ids": ids, "odd": odd, "odd_id": odd_id, "bomb": bomb}


@pytest.fixture(scope="module")
def hostile_server(hostile):
    from clipsearch.ui.server import build_app

    with ServerThread(build_app(hostile["db"], device="cpu")) as srv:
        yield srv.url


def test_hits_outside_the_roots_are_never_returned(hostile_server, hostile):
    """Rows indexed through a symlink that leads out: no text, thumbnail or file of them."""
    from gradio_client import Client

    linked = str(hostile["root"] / "linked")
    client = Client(hostile_server + "/", verbose=False)
    for kind in ("doc_text", "page", "doc", "all"):
        res = httpx_get(hostile_server, "/api/search", q="vm hostname", k=20, kind=kind, min_relevance="off")
        assert SECRET not in json.dumps(res), kind
        assert not any(h["source"].startswith(linked) for h in res["hits"]), kind
        ui = client.predict(q="vm hostname", k=20, kind=kind, api_name="/search")
        assert SECRET not in json.dumps(ui)
    for item in hostile["ids"]["text"], hostile["ids"]["page"]:
        for target in (f"/files/item/{item}", f"/files/item/{item}/preview", f"/files/thumb/{item}"):
            status, body = raw_get(hostile_server, target)
            assert status == 403, target
            assert SECRET.encode() not in body


def test_only_rows_are_served(hostile_server, hostile):
    """Files that are not rows (a dotfile, the collection's own files, stray thumbnails) have no
    URL at all; a thumbnail only while a row names it."""
    col = hostile["col"]
    stray = col.thumb_dir / "stray.jpg"
    Image.new("RGB", (8, 8)).save(stray)
    photo_id = next(r["id"] for r in col.store.scan(["id", "source"]).to_pylist()
                    if r["source"].endswith("photo.png"))
    for target in ("/api/file?path=" + quote(str(hostile["root"] / ".env")),
                   "/files/item/" + quote(str(hostile["root"] / ".env"), safe=""),
                   "/files/thumb/stray.jpg", f"/files/thumb/{photo_id}",  # an image row names no thumb
                   "/gradio_api/file=" + str(hostile["root"] / ".env")):
        status, body = raw_get(hostile_server, target)
        _assert_refused(status, body)
    page_hits = httpx_get(hostile_server, "/api/search", q="meeting notes", k=5, kind="doc",
                          min_relevance="off")["hits"]
    assert any(h["source"].endswith("notes.txt") for h in page_hits)


def test_files_are_typed_by_their_bytes(hostile_server, hostile):
    """An HTML page saved as notes.txt is sent as text/plain, never text/html."""
    col = hostile["col"]
    notes = next(r["id"] for r in col.store.scan(["id", "source"]).to_pylist()
                 if r["source"].endswith("notes.txt"))
    status, headers, body = raw_request(hostile_server, "GET", f"/files/item/{notes}")
    assert status == 200 and b"<script>" in body
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-disposition"] == "inline; filename=\"notes.txt\"; filename*=UTF-8''notes.txt"


def test_non_utf8_names_are_served_and_previewed(hostile_server, hostile):
    odd_id = hostile["odd_id"]
    hits = httpx_get(hostile_server, "/api/search", q="a green star", k=10, kind="image",
                     min_relevance="off")["hits"]
    hit = next(h for h in hits if h.get("id") == odd_id)
    assert "\\xe9" in hit["source"]
    status, headers, body = raw_request(hostile_server, "GET", hit["media_url"])
    assert status == 200 and body == Path(os.fsdecode(hostile["odd"])).read_bytes()
    assert headers["content-type"] == "image/png"
    assert "filename*=UTF-8''caf%5Cxe9.png" in headers["content-disposition"]
    status, headers, body = raw_request(hostile_server, "GET", hit["thumb_url"])
    assert status == 200 and headers["content-type"] == "image/jpeg" and body[:3] == b"\xff\xd8\xff"


# ---- one login -------------------------------------------------------------------------------
USER, PASSWORD = "alice", "pw-9c1e"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
# Everything but the login page needs a login, Gradio's event streams and the schema included.
PROTECTED = ["/api/info", "/api/search?q=star", "/api/openapi.json", "/config", "/gradio_api/info",
             "/gradio_api/heartbeat/abc", "/gradio_api/queue/data?session_hash=abc",
             "/gradio_api/openapi.json", "/files/item/" + "0" * 32]


@pytest.fixture(scope="module")
def auth_server(sample):
    from clipsearch.ui.server import build_app

    _, db = sample
    app = CountingApp(build_app(db, auth=(USER, PASSWORD), device="cpu"))
    with ServerThread(app) as srv:
        srv.app = app
        yield srv


def test_one_login_works_on_every_route(auth_server):
    import httpx

    base = auth_server.url
    for target in PROTECTED:
        status, headers, body = raw_request(base, "GET", target, timeout=30)
        assert status == 401, target
        assert ("www-authenticate" in headers) == target.startswith(("/api/", "/files/")), target
        assert b"cs-query" not in body
    status, _, page = raw_request(base, "GET", "/")
    assert status == 200 and b"cs-query" not in page  # Gradio's login form, not the app

    hit = httpx.get(base + "/api/search", params={"q": "a red circle", "k": 3, "kind": "image",
                                                  "min_relevance": "off"},
                    headers=BASIC, timeout=120).json()["hits"][0]
    unsigned = hit["media_url"].split("?")[0]
    basic_ok = [t for t in PROTECTED if "heartbeat" not in t and "queue/data" not in t and "0" * 32 not in t]
    for target in basic_ok + [unsigned, "/"]:
        status, _, body = raw_request(base, "GET", target, BASIC, timeout=60)
        assert status == 200, target
    assert b"cs-query" in raw_request(base, "GET", "/", BASIC)[2]  # Basic opens the UI itself

    # Gradio's login form sets the session cookie; it works on the REST and file routes too.
    with httpx.Client(base_url=base, timeout=120) as browser:
        r = browser.post("/login", data={"username": USER, "password": PASSWORD})
        assert r.status_code == 200 and browser.cookies
        for target in basic_ok + [unsigned]:
            assert browser.get(target).status_code == 200, target
        stale = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
        browser.get("/logout")
        assert browser.get("/api/info").status_code == 401
    # Basic still opens Gradio's own routes next to a stale session cookie
    status, _, body = raw_request(base, "GET", "/", {**BASIC, "Cookie": stale})
    assert status == 200 and b"cs-query" in body
    # Media URLs the UI made carry a signature: a page's <img> loads them, nothing else does.
    assert "sig=" in hit["media_url"]
    assert raw_request(base, "GET", hit["media_url"])[0] == 200
    assert raw_request(base, "GET", unsigned + "?sig=" + "0" * 32)[0] == 401

    from gradio_client import Client

    client = Client(base + "/", auth=(USER, PASSWORD), verbose=False)
    found = client.predict(q="a red circle", k=2, kind="image", min_relevance="off", api_name="/search")
    assert found["hits"]


def test_login_is_checked_before_the_body_is_read(auth_server):
    from clipsearch.ui.api import MAX_UPLOAD_BYTES

    wrong = {"Authorization": "Basic " + base64.b64encode(b"alice:nope").decode()}
    for target in ("/api/search/image", "/gradio_api/upload"):
        for headers in ({}, wrong):
            auth_server.app.received = 0
            status, reply, sent = chunked_upload(auth_server.url, target, 10 * MAX_UPLOAD_BYTES, headers)
            assert status == 401, (target, reply[:200])
            assert auth_server.app.received == 0, target
            assert sent < 5 * MAX_UPLOAD_BYTES


def test_failed_logins_back_off_per_client(sample):
    import httpx
    from clipsearch.ui.server import build_app

    _, db = sample

    def client(address: str) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=60)

    with ServerThread(build_app(db, auth=(USER, PASSWORD), device="cpu")) as srv, \
            client("127.0.0.2") as attacker, client("127.0.0.3") as form_user:
        codes = [attacker.get(srv.url + "/api/info", auth=(USER, f"guess{i}")).status_code
                 for i in range(50)]
        assert codes.count(401) <= 7 and codes.count(429) >= 43, codes
        r = attacker.get(srv.url + "/api/info", auth=(USER, PASSWORD))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1  # even the right one waits
        assert attacker.post(srv.url + "/login", data={"username": USER, "password": PASSWORD}
                             ).status_code == 429
        assert httpx.get(srv.url + "/api/info", auth=(USER, PASSWORD), timeout=60).status_code == 200
        form = [form_user.post(srv.url + "/login", data={"username": USER, "password": f"g{i}"}).status_code
                for i in range(8)]
        assert form[:5] == [400] * 5 and form[-1] == 429, form


# ---- the real command: `clipsearch serve --auth-file`, one pixel limit, peak memory ----------
class ServeProcess:
    """`python -m clipsearch.cli serve` in a subprocess on a free loopback port."""

    def __init__(self, args: list[str], env: dict, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "clipsearch.cli", "serve", "--port", str(self.port),
                    "--device", "cpu", *args]
        self.env, self.log = env, log

    def __enter__(self) -> ServeProcess:
        self.out = open(self.log, "wb")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self.out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if raw_request(self.url, "GET", "/api/info", BASIC, timeout=10)[0] == 200:
                    return self
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()

    def status_kb(self, field: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(field)


def ui_image_search(base: str, headers: dict, upload: Path) -> str:
    """Drop `upload` on the UI's image box the way the browser does (upload, then the box's
    change event through Gradio's queue); returns the messages the UI shows (the line above the
    results and the error boxes by the controls)."""
    import httpx

    with httpx.Client(base_url=base, headers=headers, timeout=120) as c:
        config = c.get("/config").json()
        box = next(x["id"] for x in config["components"] if x.get("props", {}).get("elem_id") == "cs-image")
        dep = next(d for d in config["dependencies"] if [box, "change"] in d["targets"])
        path = c.post("/gradio_api/upload", files={"files": (upload.name, upload.read_bytes(), "image/png")}
                      ).json()[0]
        image = {"path": path, "orig_name": upload.name, "size": upload.stat().st_size,
                 "mime_type": "image/png", "meta": {"_type": "gradio.FileData"}}
        session = "securitytest"
        r = c.post("/gradio_api/queue/join", json={
            # the search box's inputs: text, image, kind, folder, whiten, center, invert, then the
            # filters (taken from, until, place, camera), the sort and the "not" box
            "data": ["", image, "All", "", False, False, False, "", "", "", "", "Best match", ""],
            "fn_index": dep["id"],
            "trigger_id": box, "session_hash": session, "event_data": None})
        assert r.status_code == 200, r.text
        with c.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    assert msg.get("success"), msg
                    data = msg["output"]["data"]  # the message line, then the error boxes (8 on)
                    return " ".join(x for x in [data[2], *data[8:]] if isinstance(x, str) and x)
    raise AssertionError("no answer from the queue")


@pytest.mark.slow
def test_one_pixel_limit_everywhere_and_the_password_stays_out_of_ps(hostile, tmp_path):
    """A 20000x20000 PNG (a few hundred KB) through the UI's image box, the named Gradio
    endpoint, REST and a preview: each gets a clear refusal, and the server's peak memory
    stays near its idle size. The login comes from --auth-file, so `ps` never shows it."""
    import httpx
    from gradio_client import Client, handle_file

    auth = tmp_path / "auth"
    auth.write_text(f"{USER}:{PASSWORD}\n")
    auth.chmod(0o600)
    tmp_root = tmp_path / "tmp"
    tmp_root.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CLIPSEARCH_AUTH"}
    env.update(GRADIO_TEMP_DIR=str(tmp_root), OMP_NUM_THREADS="1")
    bomb = hostile["bomb"]
    assert bomb.stat().st_size < 1_000_000
    with ServeProcess(["--db", str(hostile["db"]), "--auth-file", str(auth)], env, tmp_path / "log") as srv:
        cmdline = Path(f"/proc/{srv.proc.pid}/cmdline").read_bytes()
        assert PASSWORD.encode() not in cmdline and str(auth).encode() in cmdline
        small = tmp_path / "small.png"
        Image.new("RGB", (64, 64), (0, 200, 0)).save(small)
        r = httpx.post(srv.url + "/api/search/image", headers=BASIC, timeout=120,
                       files={"file": ("small.png", small.read_bytes(), "image/png")})
        assert r.status_code == 200, r.text
        assert "Nothing matched" not in ui_image_search(srv.url, BASIC, small)
        client = Client(srv.url + "/", auth=(USER, PASSWORD), verbose=False)
        client.predict(image=handle_file(str(small)), q="", k=2, kind="all", offset=0, under="",
                       api_name="/search_image")
        idle_kb = srv.status_kb("VmRSS")
        Path(f"/proc/{srv.proc.pid}/clear_refs").write_text("5")  # restart the peak (VmHWM) here

        size = "400,000,000 pixels"  # 20000 x 20000
        assert size in ui_image_search(srv.url, BASIC, bomb)
        with pytest.raises(Exception, match=size):
            client.predict(image=handle_file(str(bomb)), q="", k=2, kind="all", offset=0, under="",
                           api_name="/search_image")
        r = httpx.post(srv.url + "/api/search/image", headers=BASIC, timeout=120,
                       files={"file": ("bomb.png", bomb.read_bytes(), "image/png")})
        assert r.status_code == 413 and size in r.json()["error"] and r.json()["hint"]
        r = httpx.get(srv.url + f"/files/item/{hostile['ids']['bomb']}/preview", headers=BASIC, timeout=120)
        assert r.status_code == 413 and size in r.json()["error"]
        peak_kb = srv.status_kb("VmHWM")
        print(f"server RSS idle {idle_kb // 1024} MB, peak during the bomb requests {peak_kb // 1024} MB")
        assert (peak_kb - idle_kb) < 300 * 1024, (idle_kb, peak_kb)
        uploads = list(tmp_root.glob("clipsearch-uploads-*"))
        assert len(uploads) == 1 and uploads[0].stat().st_mode & 0o777 == 0o700
        assert any(p.is_file() for p in uploads[0].rglob("*"))  # the queries are in there
    log = (tmp_path / "log").read_text()
    assert srv.proc.returncode is not None, log[-2000:]
    assert not list(tmp_root.glob("clipsearch-uploads-*")), ("query uploads left behind", log[-3000:],
                                                             srv.proc.returncode)
    assert PASSWORD not in log


def test_serve_refuses_a_bad_login_source_before_starting(tmp_path):
    from click.testing import CliRunner

    from clipsearch.cli import main

    runner = CliRunner()
    r = runner.invoke(main, ["serve", "--db", str(tmp_path / "db"), "--auth-file", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "--auth-file" in r.output and "hint:" in r.output
    (tmp_path / "f").write_text("a:b\n")
    r = runner.invoke(main, ["serve", "--db", str(tmp_path / "db"), "--auth", "a:b", "--auth-file",
                             str(tmp_path / "f")])
    assert r.exit_code == 2 and "not both" in r.output
    r = runner.invoke(main, ["serve", "--help"])
    assert "--auth-file" in r.output and "--allowed-host" in r.output and "--max-pixels" in r.output
