"""`newsletter serve`: the public endpoints, behind a TLS reverse proxy.

    POST /unsubscribe/<token>        RFC 8058 one-click (also the confirm button)
    GET  /unsubscribe/<token>        a confirm page; changes nothing
    POST /unsubscribe/<token>/undo   reverse that token's own unsubscribe (15 minutes)
    GET  /unsubscribe/<token>/undo   303 back to /unsubscribe/<token>; changes nothing
    GET  /unsubscribe/               where the archive's unsubscribe link goes
    GET  /archive/ , /archive/<post> every sent email as a web page
    GET  /archive/digest/<mailing>   a sent digest, whole ("View in browser")
    GET  /healthz                    liveness and database check
    /subscribe, /confirm/<token>     double opt-in signup (`signup`)
    /preferences/<token>             a reader's lists (`preferences`)

Every bad token (forged, truncated, for a deleted subscriber or list) gets the
same 404 page, so the answer never says whether an address is subscribed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from newsletter.audience import members as subs
from newsletter.audience.signup import owner_left, self_suppressed
from newsletter.audience.unsubscribes import UNDO_WINDOW, undoable, unsubscribe_by_link
from newsletter.audience.unsubscribes import undo as undo_unsubscribe
from newsletter.config import Settings
from newsletter.email.linktokens import make_preferences_token, preferences_url
from newsletter.email.render import digest_archive_url, render_digest
from newsletter.email.rendercache import cached_render
from newsletter.email.tokens import ALL_LISTS, checked_secret, verify_token
from newsletter.errors import (
    NewsletterError,
    PostError,
    StoreError,
    SubscriberError,
    database_reason,
)
from newsletter.posts.collection import PostCollection
from newsletter.store import open_store, reading
from newsletter.web.archive import list_for, neutral_html, sent_digest, sent_posts
from newsletter.web.bodies import buffered
from newsletter.web.origins import origin_of
from newsletter.web.pages import (
    PRIVATE_HEADERS,
    PrefixMiddleware,
    SecureStarlette,
    method_route,
    url_prefix,
)
from newsletter.web.pages import public_page as public
from newsletter.web.preferences import preferences_routes
from newsletter.web.signup import signup_routes
from newsletter.web.site import Site

ONE_CLICK = "One-Click"
MAX_BODY = 64 * 1024  # a one-click body is 26 bytes; refuse anything silly
ARCHIVE_CSP = "script-src 'none'; frame-ancestors 'none'; form-action 'none'; base-uri 'none'"
# Archive pages are public, but which issue someone reads is their business:
# links out of an email (to the blog or elsewhere) carry no Referer.
ARCHIVE_HEADERS = {"Referrer-Policy": "no-referrer"}


@dataclass(frozen=True)
class Target:
    """What a genuine token names: a subscriber, and a list (None: every list)."""

    subscriber: subs.SubscriberRow
    list_name: str | None
    list_title: str


class PublicState:
    def __init__(self, settings: Settings, engine: Engine, secret: bytes) -> None:
        self.settings = settings
        self.engine = engine
        self.secret = secret
        # What this app has already said in the log that it says only once.
        self.told: set[str] = set()
        # Re-reads posts when their files change, so new posts show up
        # without a restart.
        self._site = Site(lambda: settings)

    def posts(self) -> PostCollection:
        return self._site.posts()


def _state(request: Request) -> PublicState:
    state: PublicState = request.app.state.public
    return state


# --------------------------------------------------------------------------- tokens


def resolve_token(state: PublicState, token: str) -> Target | None:
    """The target of a genuine token, None for any bad one; StoreError when the
    database cannot answer (that is a 503, not a "bad link")."""
    claim = verify_token(state.secret, token)
    if claim is None:
        return None
    row = subs.get_by_uid(state.engine, claim.subscriber_uid)
    if row is None:
        return None
    if claim.list_name == ALL_LISTS:
        return Target(row, None, "every list")
    if not _list_exists(state.engine, claim.list_name):
        return None
    return Target(row, claim.list_name, list_for(state.settings, claim.list_name).title)


def _list_exists(engine: Engine, name: str) -> bool:
    try:
        with reading(engine) as conn:
            subs.list_id(conn, name)
    except SubscriberError:
        return False
    except SQLAlchemyError as exc:
        raise StoreError(f"database read failed: {database_reason(exc)}") from exc
    return True


def is_subscribed(state: PublicState, target: Target) -> bool:
    row = subs.get_by_id(state.engine, target.subscriber.id)
    if row is None or row.status != subs.ACTIVE:
        return False
    if target.list_name is None:
        return True
    member_of = subs.membership_lists(state.engine, row.id)
    return target.list_name in member_of and member_of[target.list_name] is None


def _still_left(state: PublicState, target: Target) -> list[str]:
    """A global undo: the titles of the lists left on their own before (the
    undo brings back the status, not those)."""
    if target.list_name is not None:
        return []
    member_of = subs.membership_lists(state.engine, target.subscriber.id)
    return [list_for(state.settings, n).title for n, left in sorted(member_of.items()) if left]


def can_undo(state: PublicState, target: Target) -> bool:
    return undoable(state.engine, target.subscriber.id, target.list_name)


def masked(email: str) -> str:
    """`r•••@example.com`: enough for the reader to recognise, not to harvest."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}•••@{domain}"


def public_page(
    request: Request, name: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """A page of the public app (`pages.public_page`)."""
    return public(_state(request).settings, name, status_code, **context)


def _invalid(request: Request) -> HTMLResponse:
    # One answer for every bad token: no hint whether the address exists.
    return public_page(request, "public_invalid.html", 404, headers=PRIVATE_HEADERS)


def _target_page(request: Request, name: str, target: Target, **extra: Any) -> HTMLResponse:
    state = _state(request)
    return public_page(
        request,
        name,
        headers=PRIVATE_HEADERS,
        site_title=state.settings.site.title,
        site_url=state.settings.site.home,
        address=masked(target.subscriber.email),
        list_title=target.list_title,
        action=request.url.path.removesuffix("/undo"),
        undo_minutes=int(UNDO_WINDOW.total_seconds() // 60),
        **extra,
    )


# --------------------------------------------------------------------------- unsubscribe


def _unavailable() -> PlainTextResponse:
    # 503 tells an RFC 8058 sender to try again later; a 404 would say "gone".
    return PlainTextResponse(
        "cannot reach the subscriber database right now; please try again in a minute\n",
        status_code=503,
        headers={"Retry-After": "60"},
    )


def unsubscribe_form(request: Request) -> Response:
    """GET changes nothing: link scanners and prefetchers follow every link."""
    state = _state(request)
    try:
        target = resolve_token(state, request.path_params["token"])
        if target is None:
            return _invalid(request)
        subscribed = is_subscribed(state, target)
        undo_offered = not subscribed and can_undo(state, target)
    except StoreError:
        return _unavailable()
    if subscribed:
        return _target_page(request, "public_confirm.html", target)
    return _target_page(
        request, "public_unsubscribed.html", target, changed=False, can_undo=undo_offered
    )


async def one_click(request: Request) -> Response:
    """RFC 8058 §3.2: a POST with List-Unsubscribe=One-Click; answer 200, no redirect."""
    whole = await buffered(request, MAX_BODY)
    if whole is None:
        return PlainTextResponse("request body too large\n", status_code=413)
    try:
        form = await whole.form(max_files=0, max_fields=20)
        value = form.get("List-Unsubscribe")
    except (HTTPException, MultiPartException, UnicodeDecodeError):  # a malformed body
        value = None
    state = _state(request)
    try:
        target = resolve_token(state, request.path_params["token"])
        if target is None:
            return _invalid(request)
        if value != ONE_CLICK:
            return PlainTextResponse(
                "expected the form field List-Unsubscribe=One-Click (RFC 8058)\n", status_code=400
            )
        changed = unsubscribe_by_link(
            state.engine, target.subscriber.id, target.list_name, reason="one-click (RFC 8058)"
        )
        undo_offered = can_undo(state, target)
    except StoreError:
        return _unavailable()
    return _target_page(
        request, "public_unsubscribed.html", target, changed=changed, can_undo=undo_offered
    )


async def undo(request: Request) -> Response:
    """Reverse what this token's own unsubscribe changed (the page's undo button).

    Only from our own page (Origin), only within UNDO_WINDOW, and only that
    change: a suppression made anywhere else is the owner's to lift.
    """
    state = _state(request)
    if not _from_public_origin(request, state.settings):
        return PlainTextResponse("cross-origin request refused\n", status_code=403)
    try:
        target = resolve_token(state, request.path_params["token"])
        if target is None:
            return _invalid(request)
        outcome = undo_unsubscribe(state.engine, target.subscriber.id, target.list_name)
        subscribed = is_subscribed(state, target)
    except StoreError:
        return _unavailable()
    if subscribed:
        left = _still_left(state, target)
        return _target_page(request, "public_resubscribed.html", target, still_left=left)
    # Not subscribed now: too late, or stopped by something this link did not do.
    return _target_page(
        request,
        "public_cannot_undo.html",
        target,
        expired=outcome == "expired",
        preferences_url=_preferences_link(state, target),
        rejoin=_can_rejoin(state, target),
    )


def _preferences_link(state: PublicState, target: Target) -> str:
    """The reader's own preferences page, as their emails link it (under
    `[web] public_url`, path prefix included): the same person as the token."""
    token = make_preferences_token(state.secret, target.subscriber.uid)
    return preferences_url(state.settings, token)


def _can_rejoin(state: PublicState, target: Target) -> bool:
    """Whether the preferences page could give this token's mail back: it
    joins only public lists, and never lifts an owner's stop, a bounce or a
    complaint (it says so itself; this page then promises nothing)."""
    person = subs.get_by_id(state.engine, target.subscriber.id) or target.subscriber
    if person.suppressed and not self_suppressed(person):
        return False
    public = tuple(lst.name for lst in state.settings.public_lists)
    wanted = public if target.list_name is None else (target.list_name,)
    joinable = set(wanted) & set(public)
    # A list the owner took them off is one the page will not join either.
    return bool(joinable - owner_left(state.engine, person.id, tuple(joinable)))


def back_to_page(request: Request) -> Response:
    """GET (or HEAD) of the undo URL: the address bar shows it after the
    button, so a reload or the history opens it.  Undo only on the button's
    POST (the Origin check); this just goes back to the unsubscribe page,
    which shows the current state, and the button while it still works."""
    page = request.url.path.removesuffix("/undo")  # the path prefix stays
    return RedirectResponse(page, status_code=303, headers=PRIVATE_HEADERS)


def _from_public_origin(request: Request, settings: Settings) -> bool:
    """The POST comes from a page of `[web] public_url` (RFC 6454 Origin; Referer
    when a browser sent no Origin).  Our pages use `Referrer-Policy: same-origin`,
    with which browsers send the real Origin on a same-origin form POST."""
    source = request.headers.get("origin") or request.headers.get("referer") or ""
    expected = origin_of(settings.web.public_url)
    return expected is not None and origin_of(source) == expected


def unsubscribe_help(request: Request) -> Response:
    state = _state(request)
    return public_page(
        request,
        "public_help.html",
        site_title=state.settings.site.title,
        site_url=state.settings.site.home,
    )


# --------------------------------------------------------------------------- archive


def _not_in_archive(request: Request) -> HTMLResponse:
    """404 as a page: readers reach it from an email's "View in browser" link
    once its post was unpublished, so it explains and links the index."""
    settings = _state(request).settings
    return public_page(
        request,
        "public_not_in_archive.html",
        404,
        headers=ARCHIVE_HEADERS,
        site_title=settings.site.title,
        site_url=settings.site.home,
        archive_url=f"{settings.web.public_base}/archive/",  # as the emails link it
    )


def archive_index(request: Request) -> Response:
    state = _state(request)
    try:
        entries = sent_posts(state.engine)
        posts = state.posts()
    except NewsletterError:
        return PlainTextResponse("the archive is unavailable right now\n", status_code=503)
    found = ((e, posts.with_id(e.post_id, whole=False)) for e in entries)  # titles only
    items = [(e, post) for e, post in found if post is not None and post.published]
    # By the dates the page shows, newest first: an older post sent after a
    # newer one (a late send, a resend) was listed above it.  Posts of one
    # date keep the order they were sent in.
    items.sort(key=lambda item: item[1].date, reverse=True)
    return public_page(
        request,
        "public_archive.html",
        headers=ARCHIVE_HEADERS,
        site_title=state.settings.site.title,
        site_url=state.settings.site.home,
        items=items,
    )


def archive_post(request: Request) -> Response:
    state = _state(request)
    post_id = request.path_params["post_id"]
    try:
        entry = next((e for e in sent_posts(state.engine) if e.post_id == post_id), None)
        if entry is None:
            return _not_in_archive(request)
        # The post the mailing sent, by its exact id: never a lookalike, never a draft.
        post = state.posts().with_id(entry.post_id)
        if post is None or not post.published:
            return _not_in_archive(request)
        rendered = cached_render([post], state.settings, list_for(state.settings, entry.list_name))
    except PostError:
        return _not_in_archive(request)
    except NewsletterError:
        return PlainTextResponse("the archive is unavailable right now\n", status_code=503)
    return HTMLResponse(
        neutral_html(rendered, state.settings),
        headers={"Content-Security-Policy": ARCHIVE_CSP, **ARCHIVE_HEADERS},
    )


def archive_digest(request: Request) -> Response:
    """A digest mailing as it was sent, its posts by their exact ids; a post
    unpublished since is left out, and with none left there is no page."""
    state = _state(request)
    try:
        entry = sent_digest(state.engine, request.path_params["mailing_id"])
        if entry is None:
            return _not_in_archive(request)
        posts = state.posts()
        found = (posts.with_id(post_id) for post_id in entry.post_ids)
        shown = [post for post in found if post is not None and post.published]
        if not shown:
            return _not_in_archive(request)
        rendered = render_digest(
            shown,
            state.settings,
            list_for(state.settings, entry.list_name),
            archive_url=digest_archive_url(state.settings, entry.mailing_id),
        )
    except PostError:
        return _not_in_archive(request)
    except NewsletterError:
        return PlainTextResponse("the archive is unavailable right now\n", status_code=503)
    return HTMLResponse(
        neutral_html(rendered, state.settings),
        headers={"Content-Security-Policy": ARCHIVE_CSP, **ARCHIVE_HEADERS},
    )


# --------------------------------------------------------------------------- health


def healthz(request: Request) -> Response:
    try:
        with reading(_state(request).engine) as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})


def create_public_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    secret: bytes | None = None,
    open_engine: Callable[[Settings], Engine] = open_store,
) -> Starlette:
    """The public app; the store and the token secret are opened now, once."""
    engine = engine if engine is not None else open_engine(settings)
    subs.ensure_lists(engine, settings)
    secret = secret if secret is not None else checked_secret(settings, engine)
    state = PublicState(settings, engine, secret)
    routes = [
        Route("/healthz", healthz),
        Route("/unsubscribe/", unsubscribe_help),
        method_route("/unsubscribe/{token}", {"GET": unsubscribe_form, "POST": one_click}),
        method_route("/unsubscribe/{token}/undo", {"GET": back_to_page, "POST": undo}),
        Route("/archive/", archive_index),
        # Before the post pages, which would take "digest/<n>" as a post id.
        Route("/archive/digest/{mailing_id:int}", archive_digest),
        Route("/archive/{post_id:path}", archive_post),
        # Readers' own pages (signup, confirm, preferences) live in their modules.
        *signup_routes(),
        *preferences_routes(),
    ]
    app = SecureStarlette(routes=routes)  # security headers on every answer, 500s included
    # Behind a proxy at https://host/news, the pages' URLs keep the /news.
    app.add_middleware(PrefixMiddleware, prefix=url_prefix(settings.web.public_url))
    app.state.public = state
    return app
