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

pytest.register_assert_rewrite("ui_fixtures")
from ui_fixtures import (  # noqa: E402
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

pytest_plugins = ["ui_fixtures"]
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
    hit = httpx_get(server, "/api/search", q="a shape", k=1, kind="image")["hits"][0]
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
    hit = httpx_get(server, "/api/search", q="a shape", k=1)["hits"][0]
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
    from clipsearch.synth.shapes import ShapeSpec, render_shape

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
        res = httpx_get(hostile_server, "/api/search", q="vm hostname", k=20, kind=kind)
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
    page_hits = httpx_get(hostile_server, "/api/search", q="meeting notes", k=5, kind="doc")["hits"]
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
    hits = httpx_get(hostile_server, "/api/search", q="a green star", k=10, kind="image")["hits"]
    hit = next(h for h in hits if h.get("id") == odd_id)
    assert "\\xe9" in hit["source"]
    status, headers, body = raw_request(hostile_server, "GET", hit["media_url"])
    assert status == 200 and body == Path(os.fsdecode(hostile["odd"])).read_bytes()
    assert headers["content-type"] == "image/png"
    assert "filename*=UTF-8''caf%5Cxe9.png" in headers["content-disposition"]
    status, headers, body = raw_request(hostile_server, "GET", hit["thumb_url"])
    assert status == 200 and headers["content-type"] == "image/jpeg" and body[:3] == b"\xff\xd8\xff"
