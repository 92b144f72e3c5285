"""The web apps' own pages: Jinja2 templates in newsletter/web/templates/."""

from __future__ import annotations

import functools
import inspect
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from newsletter.email.inlinecache import compiled_templates

if TYPE_CHECKING:
    from newsletter.config import Settings


@functools.lru_cache(maxsize=8)
def environment(compiled: Path | None = None) -> Environment:
    """Our pages' templates; with `compiled`, a folder where their compiled
    code is kept between processes (Jinja2's bytecode cache, as the email
    theme's: each template is looked up by its name and file and used only
    if the checksum of its source still matches, so an edited one is compiled
    again).  Compiling the preview's index and its base is ~10 ms of a fresh
    process, its first page; reading them back ~1 ms."""
    return Environment(
        loader=PackageLoader("newsletter.web", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        bytecode_cache=compiled_templates(compiled) if compiled is not None else None,
    )


def kept_pages(settings: Settings) -> Path:
    """Where both apps keep their pages' compiled templates: the state folder's
    jinja/, beside the email theme's (`environment`'s `compiled`)."""
    return settings.state_dir / "jinja"


# Pages about one subscriber must not be cached or indexed, and must not leak
# their URL (which holds the token) to other sites through Referer.
# "same-origin", not "no-referrer": with no-referrer a browser sends
# `Origin: null` on the page's own undo POST (Fetch standard), which the
# undo's same-origin check must refuse.
PRIVATE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Robots-Tag": "noindex, nofollow",
}


# The preview's pages run their own inline scripts, each marked with a
# nonce made fresh for every response, and nothing else: no 'unsafe-inline',
# so markup injected into a page could not run a script.
def app_csp(nonce: str) -> str:
    return (
        f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
        "img-src * data:; frame-ancestors 'self'; form-action 'self'; base-uri 'none'; "
        "object-src 'none'"
    )


# The public pages have no script at all, and must not be framed by another
# site (a framed Unsubscribe or Subscribe-again button could be clickjacked).
PUBLIC_CSP = (
    "default-src 'self'; script-src 'none'; style-src 'self' 'unsafe-inline'; "
    "img-src * data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'"
)


def render_page(name: str, compiled: Path | None = None, **context: Any) -> str:
    return environment(compiled).get_template(name).render(**context)


def page(
    name: str,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    *,
    csp: str | None = None,
    compiled: Path | None = None,
    **context: Any,
) -> HTMLResponse:
    """A page from our templates; `csp` replaces the nonce policy (public pages);
    `compiled`: where the templates' compiled code is kept (`environment`)."""
    nonce = secrets.token_urlsafe(18)  # 144 bits, new for every response
    return HTMLResponse(
        render_page(name, compiled, csp_nonce=nonce, **context),
        status_code=status_code,
        headers={"Content-Security-Policy": csp or app_csp(nonce), **(headers or {})},
    )


def public_page(
    settings: Settings, name: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """A page of the public app (`newsletter serve`): no script at all, never
    framed (PUBLIC_CSP); its templates' compiled code kept in the state folder
    from one start to the next, as the preview's."""
    return page(name, status_code, csp=PUBLIC_CSP, compiled=kept_pages(settings), **context)


# For answers that set no policy of their own (text, JSON, a download, the 500
# of an unexpected error): nothing may load, run or frame them.
FALLBACK_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


class SecurityHeadersMiddleware:
    """`X-Content-Type-Options: nosniff` on every response (a browser must never
    read a text or JSON answer as HTML or script), and FALLBACK_CSP on any
    that has no Content-Security-Policy.  `SecureStarlette` puts it outside
    Starlette's own error middleware, so the 500s that makes carry them too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers.setdefault("Content-Security-Policy", FALLBACK_CSP)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class SecureStarlette(Starlette):
    """Starlette with SecurityHeadersMiddleware outermost: middleware added with
    `add_middleware` sits inside ServerErrorMiddleware, whose 500 answer to
    an unexpected exception would otherwise go out without the headers."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeadersMiddleware(super().build_middleware_stack())


def url_prefix(public_url: str) -> str:
    """The path of `[web] public_url` (`/news` for `https://example.com/news/`),
    "" when it has none."""
    return urlsplit(public_url).path.rstrip("/")


class PrefixMiddleware:
    """Serves the app as if mounted at `prefix`: for a reverse proxy that
    forwards `<prefix>/x` as `/x`.  The prefix goes back into the request's
    path (and becomes its ASGI root_path), so every URL made from the request
    (form actions, the router's slash redirects) points under it again.  A
    request that kept the prefix (a proxy that does not strip) is left alone."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix
        self.path_prefix = unquote(prefix)  # ASGI's path is decoded, raw_path is not
        self.raw_prefix = quote(self.path_prefix).encode("ascii")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.prefix:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        scope = dict(scope, root_path=self.path_prefix)
        if not (path == self.path_prefix or path.startswith(self.path_prefix + "/")):
            scope["path"] = self.path_prefix + path
            raw = scope.get("raw_path")
            if raw is not None:
                scope["raw_path"] = self.raw_prefix + raw
        await self.app(scope, receive, send)


Handler = Callable[[Request], Any]  # returns a Response, or awaits to one


def method_route(path: str, handlers: Mapping[str, Handler]) -> Route:
    """One route for every method `path` takes, each to its own handler.

    Starlette answers a method no route takes with the 405 of the first
    route whose path matches, and its `Allow` named only that route's
    methods: `OPTIONS /unsubscribe/<token>` said `GET, HEAD`, without POST
    (RFC 9110 §15.5.6: Allow lists the methods the resource supports).
    """

    async def endpoint(request: Request) -> Response:
        handler = handlers.get(request.method) or handlers["GET"]  # HEAD: the GET page
        if inspect.iscoroutinefunction(handler):
            answer: Response = await handler(request)
        else:  # as Starlette runs a plain function: off the event loop
            answer = await run_in_threadpool(handler, request)
        return answer

    return Route(path, endpoint, methods=list(handlers))
