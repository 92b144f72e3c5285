"""Guards for the local preview: a Host allow-list and a same-origin check.

The preview listens on 127.0.0.1 only, but a page on any web site can still
reach it through DNS rebinding (a hostile name that resolves to 127.0.0.1):
the browser then sends that hostile name as `Host`, which is why every request
whose Host is not a loopback name is refused.  State-changing requests (POST)
must also come from the preview's own pages: the `Origin` header (sent by
every current browser on POST, RFC 6454 §7) must name the same host and port.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def split_host(value: str) -> tuple[str, str]:
    """`host[:port]` → (host, port); IPv6 literals keep their brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end == -1:
            return value, ""
        rest = value[end + 1 :]
        return value[: end + 1], rest[1:] if rest.startswith(":") else ""
    host, _, port = value.partition(":")
    return host, port


def is_loopback_host(value: str) -> bool:
    host, port = split_host(value)
    return host in LOOPBACK_NAMES and (port == "" or port.isdigit())


def is_same_origin(origin: str, host_header: str) -> bool:
    """True when an Origin (or Referer) URL names exactly the host being served."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    return parts.netloc.lower() == host_header.strip().lower()


class LocalOnlyMiddleware:
    """Refuse foreign Host headers (400/403) and cross-origin POSTs (403)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        problem = _refusal(scope.get("method", "GET"), host, headers)
        if problem is not None:
            status, message = problem
            await PlainTextResponse(message, status_code=status)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _refusal(method: str, host: str, headers: dict[str, str]) -> tuple[int, str] | None:
    if not host:
        return 400, "missing Host header\n"
    if not is_loopback_host(host):
        return 403, "this preview only answers to localhost, 127.0.0.1 or [::1]\n"
    if method in SAFE_METHODS:
        return None
    source = headers.get("origin") or headers.get("referer") or ""
    if source == "null" or not is_same_origin(source, host):
        return 403, "cross-origin request refused\n"
    return None
