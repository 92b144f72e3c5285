"""Double opt-in signup from the blog: `POST /subscribe` and `/confirm/<token>`.

    GET  /subscribe           the signup form (the same one `newsletter snippet` prints)
    POST /subscribe           an HTML form post or JSON; the answer never says
                              whether the address was known (no enumeration)
    OPTIONS /subscribe        CORS preflight, for `[signup] allowed_origins` only
    GET  /confirm/<token>     a page with a button: link scanners never confirm
    POST /confirm/<token>     confirms; then the welcome email

Abuse: a honeypot field (`website`), per-IP and per-address limits counted in
the database, at most `pending_per_address_per_day` confirmations per
address, Origin/Referer checked on form posts.  Decisions live in
`newsletter.audience.signup`; the emails are `newsletter.email.notices`,
sent through the configured transport.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from newsletter.audience import signup as flow
from newsletter.config import Settings, utcnow
from newsletter.delivery.transports import Transport, TransportError, make_transport
from newsletter.email.linktokens import (
    confirm_url,
    make_confirm_token,
    make_preferences_token,
    preferences_url,
    verify_confirm_token,
)
from newsletter.email.notices import build_notice
from newsletter.errors import NewsletterError, StoreError, SubscriberError
from newsletter.web.bodies import buffered
from newsletter.web.origins import host_origin, origin_of
from newsletter.web.pages import PRIVATE_HEADERS, method_route, url_prefix
from newsletter.web.pages import public_page as page

log = logging.getLogger("newsletter.web")

MAX_BODY = 16 * 1024
HONEYPOT = "website"
SENT_MESSAGE = (
    "Thanks! If the address can be subscribed, a confirmation email is on its way: "
    "open the link in it to finish."
)


def _state(request: Request) -> Any:
    return request.app.state.public


def form_origins(settings: Settings) -> set[str]:
    """Where the HTML form may be posted from: the blog, this app, and the listed."""
    found = {origin_of(settings.site.url), origin_of(settings.web.public_url)}
    return {o for o in found if o is not None} | cors_origins(settings)


def cors_origins(settings: Settings) -> set[str]:
    """`[signup] allowed_origins`, as browsers spell them (`origins.origin_of`)."""
    found = (origin_of(o) for o in settings.signup.allowed_origins)
    return {o for o in found if o is not None}


def _sender_origin(request: Request) -> str | None:
    origin = request.headers.get("origin", "")
    if origin and origin != "null":
        return origin_of(origin)
    return origin_of(request.headers.get("referer", ""))


def _same_origin(request: Request, origin: str | None) -> bool:
    """A form on this app's own host (what `Host` names), however it is proxied."""
    if origin is None:
        return False
    return origin == host_origin(origin.partition(":")[0], request.headers.get("host", ""))


def _cors_headers(settings: Settings, request: Request) -> dict[str, str]:
    origin = request.headers.get("origin", "")
    if origin and origin_of(origin) in cors_origins(settings):
        # As the browser sent it: it compares this header with its own origin.
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return {"Vary": "Origin"}


# --------------------------------------------------------------------------- the form


def _form_context(settings: Settings, **extra: Any) -> dict[str, Any]:
    return {
        "site_title": settings.site.title,
        "site_url": settings.site.home,
        "action": f"{url_prefix(settings.web.public_url)}/subscribe",
        "public_lists": settings.public_lists,
        "error": None,
        "given_email": "",
        "given_name": "",
        "chosen": None,
        "signup_link": False,
        **extra,
    }


def _given(settings: Settings, fields: dict[str, Any]) -> dict[str, Any]:
    """What the reader typed and ticked, for the form shown again after a
    refusal: a fixed address must not go out for the first list instead of
    the ones they chose.  Only public lists' names are kept (nothing else
    they sent is ever shown)."""
    public = {lst.name for lst in settings.public_lists}
    email, name, lists = fields.get("email"), fields.get("name"), fields.get("lists")
    return {
        "given_email": email if isinstance(email, str) else "",
        "given_name": name[:200] if isinstance(name, str) else "",
        "chosen": [n for n in lists if n in public] if isinstance(lists, list) else [],
    }


def subscribe_page(request: Request) -> Response:
    settings: Settings = _state(request).settings
    if not settings.public_lists:
        return page(settings, "public_signup_closed.html", 404, **_form_context(settings))
    return page(settings, "public_signup.html", **_form_context(settings))


def subscribe_preflight(request: Request) -> Response:
    """CORS preflight for the JSON form: only `[signup] allowed_origins` pass."""
    settings: Settings = _state(request).settings
    headers = _cors_headers(settings, request)
    if "Access-Control-Allow-Origin" not in headers:
        return Response(status_code=403, headers=headers)
    headers |= {
        "Access-Control-Allow-Methods": "POST",
        "Access-Control-Allow-Headers": "Content-Type",
        "Access-Control-Max-Age": "600",
    }
    return Response(status_code=204, headers=headers)


async def _read(request: Request) -> tuple[dict[str, Any], bool]:
    """The posted fields and whether they came as JSON; ValueError when unreadable."""
    whole = await buffered(request, MAX_BODY)
    if whole is None:
        raise ValueError("request body too large")
    if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
        body = await whole.body()
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            # ValueError: JSONDecodeError, UnicodeDecodeError, and an integer
            # longer than Python converts (4,300 digits), whose own words
            # would reach the reader; RecursionError: nested deeper than the
            # parser goes (16 KB of "[").
            raise ValueError("the body is not valid JSON") from exc
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        lists = data.get("lists", data.get("list", []))
        data["lists"] = [lists] if isinstance(lists, str) else lists
        return data, True
    try:
        form = await whole.form(max_files=0, max_fields=30)
    except (HTTPException, MultiPartException, UnicodeDecodeError) as exc:
        raise ValueError("the form could not be read") from exc
    fields: dict[str, Any] = {k: form.get(k) for k in ("email", "name", HONEYPOT)}
    fields["lists"] = form.getlist("list")
    return fields, False


def _lists(settings: Settings, given: Any) -> tuple[str, ...]:
    public = [lst.name for lst in settings.public_lists]
    if not isinstance(given, list) or not all(isinstance(n, str) for n in given):
        raise SubscriberError("lists must be list names")
    if not given and len(public) == 1:
        return tuple(public)
    chosen = tuple(dict.fromkeys(given))
    if not chosen:
        raise SubscriberError("choose at least one list")
    unknown = [n for n in chosen if n not in public]
    if unknown:
        raise SubscriberError(f"no public list named {unknown[0]!r}")
    return chosen


async def subscribe(request: Request) -> Response:
    state = _state(request)
    settings: Settings = state.settings
    try:
        fields, as_json = await _read(request)
    except ValueError as exc:
        # With the CORS headers of an allowed origin, as every other answer
        # to it: without them its script sees a network error, not this.
        return JSONResponse(
            {"error": str(exc)}, status_code=400, headers=_cors_headers(settings, request)
        )
    refusal = _check_origin(request, settings, as_json)
    if refusal is not None:
        return refusal
    cors = _cors_headers(settings, request) if as_json else {}
    if fields.get(HONEYPOT):
        # A bot filled the field people cannot see: the usual answer, nothing done.
        return _sent(request, settings, as_json, cors)
    email, name = fields.get("email"), fields.get("name") or ""
    try:
        if not isinstance(email, str) or not isinstance(name, str):
            raise SubscriberError("email and name must be text")
        wanted = flow.SignupRequest(
            email=email,
            name=name[:200],
            lists=_lists(settings, fields.get("lists", [])),
            source="json" if as_json else "form",
            client=request.client.host if request.client else "unknown",
        )
        pending = await run_in_threadpool(
            flow.request_signup, state.engine, settings, state.secret, wanted, utcnow()
        )
    except flow.RateLimited as exc:
        return _refused(request, settings, as_json, cors, str(exc), 429, fields)
    except StoreError:
        message = "please try again in a minute"
        return _refused(request, settings, as_json, cors, message, 503, fields)
    except SubscriberError as exc:
        message = "that does not look like an email address" if "@" not in str(email) else str(exc)
        return _refused(request, settings, as_json, cors, message, 400, fields)
    answer = _sent(request, settings, as_json, cors)
    if pending is not None:
        # After the answer has gone: how long sending takes must not tell
        # the requester whether the address needed a confirmation.
        answer.background = BackgroundTask(_send_confirmation, request, pending)
    return answer


def _check_origin(request: Request, settings: Settings, as_json: bool) -> Response | None:
    """Form posts must come from the blog or this app; JSON from a listed origin."""
    if as_json:
        sent = request.headers.get("origin", "")
        origin = origin_of(sent)
        if not sent or origin in cors_origins(settings) or _same_origin(request, origin):
            return None  # no Origin: not a browser, so no one else's cookies or forms
        return JSONResponse({"error": "origin not allowed"}, status_code=403)
    origin = _sender_origin(request)
    if origin in form_origins(settings) or _same_origin(request, origin):
        return None
    if origin is None and _hides_its_origin(request):
        return _hidden_origin_refused(request, settings)
    return page(
        settings,
        "public_signup_error.html",
        403,
        **_form_context(settings, error="This form can only be sent from the site's own pages."),
    )


HIDDEN_ORIGIN = (
    "The page you sent this form from does not say which site it is on (as that page "
    "asks, your browser left out its origin), so it cannot be told apart from a form "
    "on another site, and nothing was sent. Please subscribe on this site's signup "
    "page instead."
)
OWNER_HINT = (
    "a signup form was posted from a page that hides which site it is on (Origin: null "
    "and no Referer), and refused (403) as another site's would be: a page whose "
    "referrer policy is no-referrer or same-origin makes browsers send this. On the "
    "blog's pages holding the form, use a referrer policy that sends the origin, such "
    'as strict-origin-when-cross-origin (the browsers\' default): <meta name="referrer" '
    'content="strict-origin-when-cross-origin"> or the Referrer-Policy header; or link '
    "readers to %s/subscribe instead (docs/web.md; said once per process)"
)


def _hides_its_origin(request: Request) -> bool:
    """A browser's post that names no page: `Origin: null` and no Referer.
    What a blog page with `no-referrer` or `same-origin` sends (the Fetch
    standard), as do a sandboxed frame or a file on disk.  No Origin at all
    is not a browser's (they all send one with a POST): not this case."""
    return request.headers.get("origin") == "null" and not request.headers.get("referer")


def _hidden_origin_refused(request: Request, settings: Settings) -> Response:
    """The 403 for a page that hides its origin, in words true for the
    reader (who may well be on the blog), and the owner told once what to
    change.  Still refused: another site can hide its origin the same way,
    and the check keeps it from using visitors to mail strangers."""
    told: set[str] = _state(request).told
    if "hidden origin" not in told:
        told.add("hidden origin")
        log.warning(OWNER_HINT, settings.web.public_url.rstrip("/"))
    context = _form_context(settings, error=HIDDEN_ORIGIN, signup_link=True)
    return page(settings, "public_signup_error.html", 403, **context)


def _sent(request: Request, settings: Settings, as_json: bool, cors: dict[str, str]) -> Response:
    if as_json:
        return JSONResponse({"status": "ok", "message": SENT_MESSAGE}, 202, headers=cors)
    return page(
        settings, "public_signup_sent.html", **_form_context(settings, message=SENT_MESSAGE)
    )


def _refused(
    request: Request,
    settings: Settings,
    as_json: bool,
    cors: dict[str, str],
    message: str,
    status: int,
    fields: dict[str, Any],
) -> Response:
    headers = {**cors, **({"Retry-After": "3600"} if status == 429 else {})}
    if as_json:
        return JSONResponse({"error": message}, status, headers=headers)
    context = _form_context(settings, error=message, **_given(settings, fields))
    return page(settings, "public_signup.html", status, headers=headers, **context)


def _transport(request: Request, settings: Settings) -> Transport:
    given: Transport | None = getattr(request.app.state, "notice_transport", None)
    return given if given is not None else make_transport(settings)


def _deliver(
    request: Request, settings: Settings, kind: str, to: str, name: str, **ctx: Any
) -> None:
    """One reader email through the configured transport; a failure is logged,
    never shown (the answer must not depend on the address)."""
    try:
        notice = build_notice(settings, kind, to, name, ctx)
        with _transport(request, settings) as transport:
            result = transport.send(notice.sender, notice.recipient, notice.data)
        if not result.ok:
            log.warning("%s email refused for a signup: %s %s", kind, result.code, result.text)
    except (NewsletterError, TransportError, OSError) as exc:
        log.error("cannot send the %s email: %s", kind, exc)


def _titles(settings: Settings, names: tuple[str, ...]) -> list[Any]:
    return [settings.lists[n] for n in names if n in settings.lists]


def _send_confirmation(request: Request, pending: flow.Pending) -> None:
    state = _state(request)
    token = make_confirm_token(state.secret, pending.nonce, pending.expires_at)
    # Anyone can type anyone's address in the form: the name given beside it
    # is a stranger's text until the owner confirms, so the confirmation
    # leaves it out (neither greeting nor To) and cannot carry a bot's message
    # to that inbox under our domain.  The welcome email uses it.
    _deliver(
        request,
        state.settings,
        "confirm",
        pending.email,
        "",
        confirm_url=confirm_url(state.settings, token),
        lists=_titles(state.settings, pending.lists),
        expires_at=pending.expires_at,
        key=pending.nonce,
    )


# --------------------------------------------------------------------------- confirm


def _confirm_page(request: Request, name: str, status: int = 200, **extra: Any) -> HTMLResponse:
    settings: Settings = _state(request).settings
    return page(
        settings,
        name,
        status,
        headers=PRIVATE_HEADERS,
        site_title=settings.site.title,
        site_url=settings.site.home,
        action=request.url.path,
        **extra,
    )


def _claim(request: Request) -> tuple[str, str]:
    state = _state(request)
    claim = verify_confirm_token(state.secret, request.path_params["token"])
    if claim is None:
        return "invalid", ""
    if claim.expired(utcnow()):
        return "expired", claim.nonce
    return "open", claim.nonce


def confirm_form(request: Request) -> Response:
    """GET changes nothing: mail scanners follow every link."""
    state = _state(request)
    verdict, nonce = _claim(request)
    try:
        if verdict == "open":
            verdict = flow.confirmation_state(state.engine, nonce, utcnow())
    except StoreError:
        return _confirm_page(
            request, "public_signup_error.html", 503, error="Please try again in a minute."
        )
    return _verdict_page(request, verdict)


def _verdict_page(request: Request, verdict: str, **extra: Any) -> Response:
    if verdict == "open":
        return _confirm_page(request, "public_signup_confirm.html")
    if verdict == "already":
        return _confirm_page(request, "public_signup_done.html", already=True, lists=[], **extra)
    if verdict == "expired":
        return _confirm_page(request, "public_signup_expired.html", 410)
    return _confirm_page(request, "public_signup_invalid.html", 404)


async def confirm(request: Request) -> Response:
    state = _state(request)
    verdict, nonce = _claim(request)
    if verdict != "open":
        return _verdict_page(request, verdict)
    try:
        done = await run_in_threadpool(flow.confirm, state.engine, state.settings, nonce, utcnow())
    except StoreError:
        return _confirm_page(
            request, "public_signup_error.html", 503, error="Please try again in a minute."
        )
    if done.outcome == "refused" or (done.outcome == "confirmed" and not done.lists):
        # Never "Welcome! You will get:" over nothing.
        return _confirm_page(request, "public_signup_refused.html")
    if done.outcome != "confirmed":
        return _verdict_page(request, done.outcome)
    token = make_preferences_token(state.secret, done.uid)
    if done.joined:
        await run_in_threadpool(
            _deliver,
            request,
            state.settings,
            "welcome",
            done.email,
            done.name,
            lists=_titles(state.settings, done.joined),
            preferences_url=preferences_url(state.settings, token),
            key=done.uid + ",".join(done.joined),
        )
    return _confirm_page(
        request,
        "public_signup_done.html",
        already=False,
        lists=_titles(state.settings, done.lists),
        preferences=preferences_url(state.settings, token),
    )


def signup_routes() -> list[Route]:
    return [
        method_route(
            "/subscribe",
            {"GET": subscribe_page, "POST": subscribe, "OPTIONS": subscribe_preflight},
        ),
        method_route("/confirm/{token}", {"GET": confirm_form, "POST": confirm}),
    ]
