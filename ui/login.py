"""One login for the whole server: where the password comes from, who may pass, and back-off.

`LoginGate` is ASGI middleware in front of every route (REST, /files and Gradio's), so a
request without a valid login is refused before its body is read. It accepts HTTP Basic, the
session cookie Gradio's login form sets, and (on /files) a URL signature the UI made for a
logged-in page. Only what the login page itself needs passes without a login; Gradio then
shows its form. Failed logins, by Basic or by the form, put the client on an exponential
back-off (429) that a correct password does not skip.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import math
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

from clipsearch.ui.http_guard import header, send_json

from clipsearch.errors import UsageError

log = logging.getLogger(__name__)

AUTH_ENV = "CLIPSEARCH_AUTH"
# Paths Gradio's login page needs before anyone is logged in.
OPEN_EXACT = frozenset({"/", "/login", "/login/", "/favicon.ico", "/theme.css", "/gradio_api/theme.css",
                        "/manifest.json", "/robots.txt"})
OPEN_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon")
LOGIN_FORM = frozenset({"/login", "/login/"})
# Routes whose 401 invites a Basic prompt; Gradio's own routes answer 401 without one, so the
# browser does not pop up a dialog over Gradio's login form.
BASIC_CHALLENGE_PREFIXES = ("/api/", "/files/")
MAX_LOGIN_BODY = 16 * 1024


def parse_credentials(value: str, source: str) -> tuple[str, str]:
    """'user:password' → (user, password), with an error naming where the value came from."""
    user, sep, password = value.strip("\r\n").partition(":")
    if not sep or not user or not password:
        raise UsageError(f"{source} must look like user:password",
                         hint="e.g. a file holding the single line alice:s3cret")
    return user, password


def load_credentials(auth: str | None = None, auth_file: str | os.PathLike | None = None,
                     environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """The login from `--auth`, `--auth-file` or $CLIPSEARCH_AUTH (in that order; one at most
    of the first two). `--auth` works but shows the password to anyone who can run `ps`."""
    environ = os.environ if environ is None else environ
    if auth is not None and auth_file is not None:
        raise UsageError("give --auth or --auth-file, not both",
                         hint="--auth-file keeps the password out of the process list")
    if auth is not None:
        log.warning("--auth puts the password in the process list (ps); "
                    "prefer --auth-file FILE or $%s", AUTH_ENV)
        return parse_credentials(auth, "--auth")
    if auth_file is not None:
        path = Path(auth_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--auth-file {path}: cannot read it ({e.__class__.__name__})",
                             hint="give a readable file holding one line user:password") from None
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) != 1:
            raise UsageError(f"--auth-file {path}: expected one line user:password, found {len(lines)}",
                             hint="put exactly one user:password line in the file")
        if path.stat().st_mode & 0o077:
            log.warning("%s can be read by other users; chmod 600 it", path)
        return parse_credentials(lines[0], f"--auth-file {path}")
    value = environ.get(AUTH_ENV)
    if value:
        return parse_credentials(value, f"${AUTH_ENV}")
    return None


class LoginThrottle:
    """Per-client back-off after failed logins, in bounded memory.

    The first `free` failures within `window` seconds cost nothing; each further one locks the
    client out for twice as long as the last (1 s, 2 s, 4 s … up to `max_lock` s). Attempts made
    while locked out are refused unchecked, so they neither succeed nor extend the lock.
    Only the `max_clients` most recent clients are remembered.
    """

    def __init__(self, free: int = 5, window: float = 300.0, max_lock: float = 300.0,
                 max_clients: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.free, self.window, self.max_lock = free, window, max_lock
        self.max_clients = max_clients
        self.clock = clock
        self._clients: OrderedDict[str, tuple[int, float, float]] = OrderedDict()  # failures, last, until

    def retry_after(self, client: str) -> float:
        """Seconds until `client` may try again (0: now)."""
        entry = self._clients.get(client)
        return max(0.0, entry[2] - self.clock()) if entry else 0.0

    def failed(self, client: str) -> None:
        now = self.clock()
        failures, last, until = self._clients.pop(client, (0, now, 0.0))
        if now - last > self.window:
            failures = 0
        failures += 1
        if failures > self.free:
            until = now + min(self.max_lock, 2.0 ** (failures - self.free - 1))
        self._clients[client] = (failures, now, until)
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)


class LoginGate:
    """ASGI middleware: a valid login, or only the login page.

    `gradio_app` is Gradio's mounted App: its session tokens say who logged in through the
    form. A request with valid Basic credentials on a Gradio route is given a session token
    of its own, so Gradio (which only reads its cookie) sees the same user.
    """

    def __init__(self, app, credentials: tuple[str, str], gradio_app=None,
                 url_signer=None, throttle: LoginThrottle | None = None) -> None:
        self.app = app
        self.user, self._password = credentials
        self.gradio_app = gradio_app
        self.signer = url_signer
        self.throttle = throttle or LoginThrottle()
        self._basic_token = secrets.token_urlsafe(24)

    # ---- what a request carries ----------------------------------------------------------
    def _cookie_names(self) -> tuple[str, ...]:
        cid = getattr(self.gradio_app, "cookie_id", None)
        return (f"access-token-{cid}", f"access-token-unsecure-{cid}") if cid else ()

    def has_session(self, scope) -> bool:
        """A Gradio session cookie naming a live login."""
        tokens = getattr(self.gradio_app, "tokens", None)
        raw = header(scope, b"cookie")
        if not tokens or not raw:
            return False
        from http.cookies import CookieError, SimpleCookie

        jar = SimpleCookie()
        try:
            jar.load(raw)
        except CookieError:
            return False
        return any(name in jar and tokens.get(jar[name].value) == self.user
                   for name in self._cookie_names())

    def basic(self, scope) -> bool | None:
        """True/False for Basic credentials that are right/wrong; None when there are none."""
        value = header(scope, b"authorization") or ""
        if not value[:6].lower() == "basic ":
            return None
        try:
            user, _, password = base64.b64decode(value[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        ok_user = hmac.compare_digest(user.encode(), self.user.encode())
        return ok_user & hmac.compare_digest(password.encode(), self._password.encode())

    def signed(self, scope) -> bool:
        path = scope.get("path", "")
        if self.signer is None or not path.startswith("/files/"):
            return False
        from urllib.parse import parse_qs

        sig = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("sig", [None])[0]
        return self.signer.verify(path, sig)

    def _as_gradio_session(self, scope) -> dict:
        """`scope` with Gradio's session cookies replaced by ones naming the Basic user."""
        tokens = getattr(self.gradio_app, "tokens", None)
        names = self._cookie_names()
        if tokens is None or not names:
            return scope
        tokens[self._basic_token] = self.user  # again after a logout removed it
        others = [c.strip() for c in (header(scope, b"cookie") or "").split(";")
                  if c.strip() and c.split("=", 1)[0].strip() not in names]
        cookie = "; ".join(others + [f"{n}={self._basic_token}" for n in names])
        headers = [(k, v) for k, v in scope.get("headers") or [] if k != b"cookie"]
        headers.append((b"cookie", cookie.encode("latin-1")))
        return dict(scope, headers=headers)

    # ---- the gate ------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("?", 0))[0]
        path = scope.get("path", "")
        if self.has_session(scope) or self.signed(scope):
            await self.app(scope, receive, send)
            return
        basic = self.basic(scope)
        if basic is not None or path in LOGIN_FORM:
            wait = self.throttle.retry_after(client)
            if wait > 0:
                await self._refuse(scope, send, 429, "too many failed logins; wait before trying again",
                                   [(b"retry-after", str(math.ceil(wait)).encode())])
                return
        if basic:
            self.throttle.succeeded(client)
            await self.app(self._as_gradio_session(scope), receive, send)
            return
        if basic is False:
            self.throttle.failed(client)
            await self._refuse(scope, send, 401, "wrong user name or password")
            return
        if path in LOGIN_FORM:
            await self._login_form(scope, receive, send, client)
            return
        if path in OPEN_EXACT or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        await self._refuse(scope, send, 401, "login required")

    async def _login_form(self, scope, receive, send, client: str) -> None:
        """Gradio's login form: small bodies only, and its answer counted for the back-off."""
        length = header(scope, b"content-length")
        if length is None or not length.isdigit() or int(length) > MAX_LOGIN_BODY:
            await send_json(send, 413 if length else 411, {"error": "a login form is a small form"})
            return

        async def observe(message) -> None:
            if message["type"] == "http.response.start":
                if message["status"] == 200:
                    self.throttle.succeeded(client)
                elif 400 <= message["status"] < 500:
                    self.throttle.failed(client)
            await send(message)

        await self.app(scope, receive, observe)

    async def _refuse(self, scope, send, status: int, message: str,
                      headers: list[tuple[bytes, bytes]] | None = None) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = list(headers or [])
        if status == 401 and scope.get("path", "").startswith(BASIC_CHALLENGE_PREFIXES):
            headers.append((b"www-authenticate", b'Basic realm="clipsearch"'))
        await send_json(send, status, {"error": message,
                                       "hint": "log in with the user and password the server was "
                                               "started with (--auth-file)"}, headers)
