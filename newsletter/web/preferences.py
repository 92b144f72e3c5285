"""`/preferences/<token>`: a reader's public lists, joined and left by themselves.

    GET  /preferences/<token>   the public lists, ticked where the address gets them
    POST /preferences/<token>   `list` fields name the lists wanted; the others are left

The token follows the unsubscribe token's rules (HMAC, strict decoding, one
per subscriber; `newsletter.email.linktokens`), so a bad one gets the same
404 page whether or not the address exists.  A suppression the reader cannot
lift (the owner's, a bounce, a complaint) lets them leave lists, never join;
nor is a list joined that the owner took them off (the page says so).
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from newsletter.audience import members as subs
from newsletter.audience import signup as flow
from newsletter.config import Settings, utcnow
from newsletter.email.linktokens import verify_preferences_token
from newsletter.errors import StoreError, SubscriberError
from newsletter.web.bodies import buffered
from newsletter.web.pages import PRIVATE_HEADERS, method_route, public_page

MAX_BODY = 16 * 1024


def _masked(email: str) -> str:
    local, _, domain = email.partition("@")
    return f"{local[:1]}•••@{domain}"


def _subscriber(request: Request) -> subs.SubscriberRow | None:
    state = request.app.state.public
    uid = verify_preferences_token(state.secret, request.path_params["token"])
    return subs.get_by_uid(state.engine, uid) if uid is not None else None


def _page(
    request: Request, person: subs.SubscriberRow, status: int = 200, **extra: Any
) -> HTMLResponse:
    state = request.app.state.public
    settings: Settings = state.settings
    fresh = subs.get_by_id(state.engine, person.id) or person
    return public_page(
        settings,
        "public_preferences.html",
        status,
        headers=PRIVATE_HEADERS,
        site_title=settings.site.title,
        site_url=settings.site.home,
        action=request.url.path,
        address=_masked(fresh.email),
        choices=flow.choices(state.engine, settings, fresh.id),
        locked=fresh.suppressed and not flow.self_suppressed(fresh),
        **{"saved": None, **extra},
    )


def _invalid(request: Request) -> HTMLResponse:
    settings: Settings = request.app.state.public.settings
    return public_page(settings, "public_invalid.html", 404, headers=PRIVATE_HEADERS)


def _unavailable() -> Response:
    return Response(
        "cannot reach the subscriber database right now; please try again in a minute\n",
        status_code=503,
        media_type="text/plain",
        headers={"Retry-After": "60"},
    )


def preferences_form(request: Request) -> Response:
    try:
        person = _subscriber(request)
        if person is None:
            return _invalid(request)
        return _page(request, person)
    except StoreError:
        return _unavailable()


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


async def preferences_save(request: Request) -> Response:
    state = request.app.state.public
    whole = await buffered(request, MAX_BODY)
    if whole is None:
        return Response("request body too large\n", status_code=413, media_type="text/plain")
    try:
        form = await whole.form(max_files=0, max_fields=100)
        wanted = {v for v in form.getlist("list") if isinstance(v, str)}
    except (HTTPException, MultiPartException, UnicodeDecodeError):
        return Response("the form could not be read\n", status_code=400, media_type="text/plain")
    try:
        person = await run_in_threadpool(_subscriber, request)
        if person is None:
            return _invalid(request)
        if not _is_form(request):
            return Response(
                "expected the preferences form\n", status_code=415, media_type="text/plain"
            )
        done = await run_in_threadpool(
            flow.set_preferences, state.engine, state.settings, person.id, wanted, utcnow()
        )
        titles = state.settings.lists
        saved = tuple(
            tuple(titles[n].title for n in names)
            for names in (done.joined, done.left, done.refused)
        )
        return _page(request, person, saved=saved)
    except SubscriberError:
        return _invalid(request)
    except StoreError:
        return _unavailable()


def _is_form(request: Request) -> bool:
    """Whether the body is a form: Starlette reads any other body as an empty
    form, and an empty form means "no list ticked", so JSON or a bare POST (a
    scanner, a script) left every list.  A browser always sends the form's
    type, even with nothing ticked."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    return kind in FORM_TYPES


def preferences_routes() -> list[Route]:
    return [
        method_route("/preferences/{token}", {"GET": preferences_form, "POST": preferences_save})
    ]
