"""ASGI middleware that every request to `clipsearch serve` passes before any route sees it.

- `SecurityHeaders`: no framing, no MIME sniffing, no referrer on every response.
- `HostCheck`: answers only to Host names it is meant to have (loopback, the bound address,
  `--allowed-host` names), which defeats DNS rebinding, and refuses requests whose Origin is
  another site (a hostile page in the same browser).
- `BodyLimit`: caps request bodies while they stream (Content-Length or chunked), so an
  oversized upload is refused after at most the cap, not after it has been spooled to disk.

They are plain ASGI wrappers, so Gradio's streamed responses pass through untouched.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from urllib.parse import urlsplit

from python_multipart.exceptions import MultipartParseError

Scope = dict
LOOPBACK_NAMES = frozenset({"localhost"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
FRAME_ANCESTORS = b"frame-ancestors 'none'"


def mb(n: int) -> str:
    """Bytes as the MB figure used in every size message (MiB, one decimal)."""
    return f"{n / (1024 * 1024):.1f} MB" if n % (1024 * 1024) else f"{n // (1024 * 1024)} MB"


async def send_json(send, status: int, body: dict, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """A complete JSON response straight through ASGI `send` (no route involved)."""
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), *headers]})
    await send({"type": "http.response.body", "body": data})


def header(scope: Scope, name: bytes) -> str | None:
    """One request header as text (latin-1, as HTTP defines it), or None."""
    for k, v in scope.get("headers") or []:
        if k == name:
            return v.decode("latin-1")
    return None


class SecurityHeaders:
    """Adds nosniff, DENY framing (also as CSP frame-ancestors) and no-referrer to every response."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = add_security_headers(list(message.get("headers") or []))
            await send(message)

        await self.app(scope, receive, with_headers)


def add_security_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`headers` plus ours; an existing CSP keeps its directives and gains frame-ancestors."""
    names = {k.lower() for k, _ in headers}
    out = [(k, v) for k, v in headers if k.lower() != b"content-security-policy"]
    out += [(k, v) for k, v in SECURITY_HEADERS if k not in names]
    csp = [v for k, v in headers if k.lower() == b"content-security-policy"]
    if not csp:
        out.append((b"content-security-policy", FRAME_ANCESTORS))
    for v in csp:
        out.append((b"content-security-policy",
                    v if b"frame-ancestors" in v else v.rstrip(b"; ") + b"; " + FRAME_ANCESTORS))
    return out


def host_name(value: str) -> str:
    """'Example.COM:7860' → 'example.com'; '[::1]:80' → '::1'; '' for nothing usable."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else ""
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


class HostPolicy:
    """Which Host names this server answers to.

    Loopback names and addresses always; the address it is bound to; names given with
    `--allowed-host`. Bound to a wildcard address (0.0.0.0, ::), any IP literal is accepted too:
    DNS rebinding needs a name that the attacker controls, and an address cannot be rebound.
    """

    def __init__(self, bind_host: str = "127.0.0.1", allowed: Iterable[str] = ()) -> None:
        self.bind = host_name(bind_host) if bind_host not in WILDCARD_BINDS else ""
        self.wildcard = bind_host in WILDCARD_BINDS
        self.allowed = frozenset(host_name(h) for h in allowed if host_name(h))

    def allows(self, name: str) -> bool:
        if not name:
            return False
        ip = _ip(name)
        if name in LOOPBACK_NAMES or (ip is not None and ip.is_loopback):
            return True
        if name == self.bind or name in self.allowed:
            return True
        return self.wildcard and ip is not None

    def origin_allowed(self, origin: str, host: str) -> bool:
        """Same origin as the Host the request was sent to, or an explicitly allowed name."""
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # "null" (sandboxed frames, file://) and anything odd
        if parts.netloc.lower() == host.strip().lower():
            return True
        return host_name(parts.netloc) in self.allowed


class HostCheck:
    """421 for a foreign Host, 403 for a foreign Origin, on every route (Gradio's included)."""

    def __init__(self, app, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = header(scope, b"host") or ""
        origin = header(scope, b"origin")
        problem = None
        if not self.policy.allows(host_name(host)):
            problem = (421, f"this server does not answer to the host name {host_name(host)!r}",
                       "open it by its loopback address, or start it with --allowed-host NAME")
        elif origin is not None and not self.policy.origin_allowed(origin, host):
            problem = (403, "cross-origin requests are refused",
                       "use the server's own page, or call the API from a script (no Origin header)")
        if problem is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await send_json(send, problem[0], {"error": problem[1], "hint": problem[2]})


class BodyTooLarge(MultipartParseError):
    """Raised into the app from `receive` when a request body passes the cap. A multipart parse
    error, so that the form parsers reading the body (Starlette's, Gradio's upload route) delete
    the temporary files they were writing, as they do for a malformed body."""


class BodyLimit:
    """Refuse request bodies over `limit` bytes, announced or while they arrive.

    A body announced larger (Content-Length) is refused before it is read. A chunked one is
    counted as it streams; past the cap, the app's next read raises `BodyTooLarge`, whatever
    the app answered is dropped, and the client gets a 413.
    """

    def __init__(self, app, limit: int, overhead: int = 64 * 1024) -> None:
        self.app = app
        self.limit = limit
        self.cap = limit + overhead  # multipart boundaries and form fields around the file

    def too_large(self, size: int | None) -> dict:
        if size is None:
            what = f"the upload is larger than the {mb(self.limit)} limit"
        else:
            what = f"the upload is {mb(size)}; the limit is {mb(self.limit)}"
        return {"error": what, "hint": f"send a file under {mb(self.limit)}"}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = header(scope, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.cap:
            await send_json(send, 413, self.too_large(int(length)))
            return
        received = 0
        over = False
        started = False

        async def counted_receive():
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.cap:
                    over = True
                    raise BodyTooLarge(f"request body over {self.cap} bytes")
            return message

        async def guarded_send(message) -> None:
            nonlocal started
            if over:
                return  # the app's reaction to BodyTooLarge; the 413 below replaces it
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyTooLarge:
            pass
        except Exception:
            if not over:
                raise
        if over and not started:
            await send_json(send, 413, self.too_large(None))
