"""The web apps' own pages: Jinja2 templates in newsletter/web/templates/."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.responses import HTMLResponse

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
# The app's own pages run their inline script and nothing else.
APP_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src * data:; frame-ancestors 'self'; form-action 'self'"
)


def render_page(name: str, **context: Any) -> str:
    return _env.get_template(name).render(**context)


def page(
    name: str, status_code: int = 200, headers: dict[str, str] | None = None, **context: Any
) -> HTMLResponse:
    return HTMLResponse(
        render_page(name, **context),
        status_code=status_code,
        headers={"Content-Security-Policy": APP_CSP, **(headers or {})},
    )
