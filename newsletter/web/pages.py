"""The web apps' own pages: Jinja2 templates in newsletter/web/templates/."""

from __future__ import annotations

import secrets
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.datastructures import MutableHeaders
from starlette.responses import HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_env = Environment(
    loader=PackageLoader("newsletter.web", "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

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


def render_page(name: str, **context: Any) -> str:
    return _env.get_template(name).render(**context)


def page(
    name: str,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    *,
    csp: str | None = None,
    **context: Any,
) -> HTMLResponse:
    """A page from our templates; `csp` replaces the nonce policy (public pages)."""
    nonce = secrets.token_urlsafe(18)  # 144 bits, new for every response
    return HTMLResponse(
        render_page(name, csp_nonce=nonce, **context),
        status_code=status_code,
        headers={"Content-Security-Policy": csp or app_csp(nonce), **(headers or {})},
    )


class NoSniffMiddleware:
    """`X-Content-Type-Options: nosniff` on every response, the router's and the
    guards' own included: a browser must never read a text or JSON answer as
    HTML or script."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
            await send(message)

        await self.app(scope, receive, send_with_header)
