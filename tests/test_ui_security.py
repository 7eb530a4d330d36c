"""The server sends only files inside the indexed roots and the thumbnail cache, nothing else.

Raw requests go through http.client so that `..` and percent-encodings reach the server exactly
as an attacker would send them (HTTP client libraries normalise them away).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from clipsearch.ui.files import FileGuard, FileRefused, Signer, has_dotdot

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


# ---- the guard itself (no model needed) --------------------------------------------------------
@pytest.mark.parametrize("value,bad", [
    ("../../etc/passwd", True), ("/a/../b", True), ("%2e%2e/x", True), ("%252e%252e%252fx", True),
    ("..\\x", True), ("a..b.jpg", False), ("/photos/x.png", False), ("%2e%2e", True),
])
def test_dotdot_detection_sees_through_encodings(value, bad):
    assert has_dotdot(value) is bad


def test_guard_refuses_everything_outside_the_roots(tmp_path, secret_file):
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

    assert guard.check(str(ok)) == os.path.realpath(ok)
    assert guard.thumb("t.jpg") == os.path.realpath(db / "thumbs" / "t.jpg")
    refused = [str(root / "sub" / ".." / ".." / secret_file.name), str(secret_file), "/etc/passwd",
               str(root / "escape.jpg"), str(root / "dirlink" / "secret.txt"),
               str(db / "clipsearch.json"), "sub/ok.jpg", str(root / "%2e%2e" / "x"),
               str(root / "sub") + "/ok.jpg\0.png"]
    for p in refused:
        with pytest.raises(FileRefused):
            guard.check(p)
    for name in ("../clipsearch.json", "evil.jpg", "..%2fclipsearch.json", "a/b.jpg", ".hidden"):
        with pytest.raises(FileRefused):
            guard.thumb(name)


def test_signatures_bind_to_the_url():
    s = Signer(b"k" * 32)
    sig = s.sign("/files/item/" + "a" * 32)
    assert s.verify("/files/item/" + "a" * 32, sig)
    assert not s.verify("/files/item/" + "b" * 32, sig)
    assert not s.verify("/files/item/" + "a" * 32, None)
    assert not Signer().verify("/files/item/" + "a" * 32, sig)


# ---- the live server ---------------------------------------------------------------------------
def _assert_refused(status: int, body: bytes) -> None:
    assert status in (400, 401, 403, 404, 405, 422), status
    assert SECRET.encode() not in body
    assert b"root:x:" not in body
    assert b'"model_id"' not in body  # the collection's metadata


def test_traversal_attempts_fail_without_leaking(server, sample, secret_file):
    data, db = sample
    root = data.root
    photo = next(iter(data.images))
    ok_status, ok_body = raw_get(server, "/api/file?path=" + quote(photo))
    assert ok_status == 200 and ok_body[:4] == b"\x89PNG"

    rel_secret = os.path.relpath(secret_file, root / "photos")
    targets = [
        "/api/file?path=" + quote("../../etc/passwd"),
        "/api/file?path=/etc/passwd",
        "/api/file?path=" + quote(str(secret_file)),
        "/api/file?path=" + quote(f"{root}/photos/{rel_secret}"),
        "/api/file?path=" + quote(f"{root}/photos/%2e%2e/%2e%2e/{secret_file.parent.name}/secret.txt"),
        "/api/file?path=" + f"{quote(str(root))}/photos/%252e%252e/%252e%252e/etc/passwd",
        "/api/file?path=" + quote(str(db / "clipsearch.json")),
        "/files/thumb/..%2F..%2Fclipsearch.json",
        "/files/thumb/%2e%2e%2fclipsearch.json",
        "/files/thumb/../clipsearch.json",
        "/files/thumb/..%252fclipsearch.json",
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


def test_symlink_out_of_the_root_is_refused(server, sample, secret_file):
    data, db = sample
    link = data.root / "photos" / "zz_escape.png"
    thumb_link = db / "thumbs" / "zz_escape.jpg"
    link.symlink_to(secret_file)
    thumb_link.symlink_to(secret_file)
    try:
        for t in ("/api/file?path=" + quote(str(link)), "/files/thumb/zz_escape.jpg"):
            status, body = raw_get(server, t)
            _assert_refused(status, body)
    finally:
        link.unlink()
        thumb_link.unlink()


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


def test_uploads_have_a_size_limit_and_must_be_images(server):
    import httpx

    big = b"\xff\xd8\xff" + b"0" * (21 * 1024 * 1024)
    r = httpx.post(server + "/api/search/image", files={"file": ("big.jpg", big, "image/jpeg")}, timeout=120)
    assert r.status_code == 413 and "limit" in r.json()["error"]
    r = httpx.post(server + "/api/search/image", files={"file": ("notes.txt", b"hello", "text/plain")},
                   timeout=60)
    assert r.status_code == 415 and "not an image" in r.json()["error"]
    assert "hint" in r.json()


def test_auth_protects_ui_api_and_files(sample):
    import httpx
    from clipsearch.ui.server import build_app
    from support import ServerThread

    data, db = sample
    with ServerThread(build_app(db, auth="alice:pw1", device="cpu")) as srv:
        base = srv.url
        assert httpx.get(base + "/api/info").status_code == 401
        assert httpx.get(base + "/api/info", auth=("alice", "wrong")).status_code == 401
        assert httpx.get(base + "/gradio_api/info").status_code == 401
        assert httpx.get(base + "/config").status_code == 401
        r = httpx.get(base + "/api/search", params={"q": "a red circle", "k": 3}, auth=("alice", "pw1"),
                      timeout=120)
        assert r.status_code == 200
        hit = r.json()["hits"][0]
        unsigned = hit["media_url"].split("?")[0]
        assert "sig=" in hit["media_url"]
        assert httpx.get(base + unsigned).status_code == 401
        assert httpx.get(base + hit["media_url"]).status_code == 200
        assert httpx.get(base + unsigned + "?sig=" + "0" * 32).status_code == 401
        basic = "Basic " + base64.b64encode(b"alice:pw1").decode()
        status, _ = raw_get(base, unsigned, {"Authorization": basic})
        assert status == 200


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
