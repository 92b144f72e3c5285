"""`newsletter preview`: the local app writers keep open while they write.

Routes (all behind `LocalOnlyMiddleware`):
    GET  /                      posts, status per list, warning counts
    GET  /post/<id>?list=L      the email as `send` builds it, text, headers, lint
    GET  /html/<id>?list=L      the HTML part alone (the iframe's source)
    GET  /eml/<id>?list=L       the raw message, as a download
    POST /send-test/<id>        "Send a test to…" (same as `send --test`)
    GET  /outbox/ , /outbox/<key>[/html|/eml]   the maildir outbox
    GET  /events                server-sent events for live reload
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from newsletter.config import ListSettings, Settings
from newsletter.errors import NewsletterError, PostError, Problem
from newsletter.posts.collection import Post, PostCollection, find_post_or_draft
from newsletter.web.hostcheck import LocalOnlyMiddleware
from newsletter.web.pages import SecureStarlette, kept_pages, page
from newsletter.web.reload import Broadcaster, FirstAnswer, watch
from newsletter.web.site import Preview, Site, list_status, mailing_states, watched_dirs
from newsletter.web.site import watched_files as config_files

if TYPE_CHECKING:
    from newsletter.web.emailview import EmailView

# What only one route needs (sending a test, the outbox) is imported there:
# the preview is ready (GET / answered) without it.

# The email itself runs no script and may not navigate the preview around it.
EMAIL_CSP = "script-src 'none'; frame-ancestors 'self'; form-action 'none'"
MAX_TEST_ADDRESSES = 10
MAX_NOTICES = 32  # test sends' notices kept for the page after them


class PreviewState:
    def __init__(self, load: Callable[[], Settings], live: bool) -> None:
        self.site = Site(load)
        self.broadcaster = Broadcaster()
        self.live = live
        self.answered: asyncio.Event | None = None  # the first answer went out (live)
        # What a test send said, by a random key the redirect after it carries:
        # the page shows only these, never text a link brings (`?notice=`).
        self.notices: dict[str, tuple[str, str]] = {}

    def keep_notice(self, level: str, notice: str) -> str:
        """Keep a test send's (level, notice) for the page after it; its key."""
        key = secrets.token_urlsafe(12)
        self.notices[key] = (level, notice)
        while len(self.notices) > MAX_NOTICES:  # the oldest first (dicts keep order)
            del self.notices[next(iter(self.notices))]
        return key


def _state(request: Request) -> PreviewState:
    state: PreviewState = request.app.state.preview
    return state


def _page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """One of the preview's pages, its templates' compiled code kept in the
    state folder (beside the email theme's) from one start to the next."""
    state = _state(request)
    settings = state.site.last_good
    return page(
        name,
        status,
        compiled=kept_pages(settings) if settings is not None else None,
        live=state.live,
        generation=state.broadcaster.generation,
        title="Preview",
        **context,
    )


def _error_page(request: Request, exc: NewsletterError, status: int = 500) -> HTMLResponse:
    return _page(request, "preview_error.html", status, error=str(exc))


# --------------------------------------------------------------------------- index


def index(request: Request) -> Response:
    site = _state(request).site
    try:
        settings = site.settings()
        posts = site.posts()
    except NewsletterError as exc:
        return _error_page(request, exc)
    states = mailing_states(site.engine())
    rows = [
        {
            "post": post,
            "statuses": [
                (name, list_status(settings, post, lst, states))
                for name, lst in settings.lists.items()
            ],
        }
        for post in reversed(posts.posts)
    ]
    errors, warnings = _problems(posts)
    return _page(
        request,
        "preview_index.html",
        site_title=settings.site.title,
        rows=rows,
        lists=list(settings.lists),
        errors=errors,
        warnings=warnings,
    )


def _problems(posts: PostCollection) -> tuple[list[Problem], list[Problem]]:
    """The errors (posts that cannot be read) apart from the warnings: a
    listed post's warnings are counted on its row (and shown on its page),
    so only the others (the site's, say) are listed under their own heading."""
    listed = {post.path for post in posts.posts}
    errors = [p for p in posts.problems if p.severity == "error"]
    warnings = [p for p in posts.problems if p.severity != "error" and p.path not in listed]
    return errors, warnings


# --------------------------------------------------------------------------- one post


def _resolve(request: Request) -> tuple[Settings, Post, ListSettings]:
    """The post and list a request names; PostError (→ 404) when it names none."""
    site = _state(request).site
    settings = site.settings()
    post = find_post_or_draft(site.posts(), request.path_params["post_id"], settings)
    if not settings.lists:
        # No list declared yet: preview against an implicit one so writers
        # can still see their post.
        return settings, post, ListSettings(name="default", title=settings.site.title)
    name = request.query_params.get("list") or next(iter(settings.lists))
    if name not in settings.lists:
        raise PostError(f"no list named {name!r} in the configuration")
    return settings, post, settings.lists[name]


def _lists_differ(site: Site, settings: Settings, post: Post) -> bool:
    seen = {
        (p.rendered.subject, p.message.html, p.message.text)
        for p in (site.preview(post, lst) for lst in settings.lists.values())
    }
    return len(seen) > 1


def post_page(request: Request) -> Response:
    site = _state(request).site
    try:
        settings, post, lst = _resolve(request)
        preview = site.preview(post, lst)
        differ = len(settings.lists) > 1 and _lists_differ(site, settings, post)
    except PostError as exc:
        return _error_page(request, exc, 404)
    except NewsletterError as exc:
        return _error_page(request, exc)
    query = urlencode({"list": lst.name})
    quoted = quote(post.post_id)
    return _page(
        request,
        "preview_post.html",
        preview=preview,
        view=preview.message,
        post=post,
        list_name=lst.name,
        lists=list(settings.lists),
        lists_differ=differ,
        html_url=f"/html/{quoted}?{query}",
        eml_url=f"/eml/{quoted}?{query}",
        send_url=f"/send-test/{quoted}?{query}",
        notice=_notice(_state(request), request.query_params.get("notice", "")),
        transport=settings.delivery.transport,
    )


def _notice(state: PreviewState, key: str) -> tuple[str, str] | None:
    """(level, text) a test send kept under `key`; None for any other key."""
    return state.notices.get(key)


def _preview_or_error(request: Request) -> Preview | Response:
    try:
        _, post, lst = _resolve(request)
        return _state(request).site.preview(post, lst)
    except PostError as exc:
        return PlainTextResponse(str(exc) + "\n", status_code=404)
    except NewsletterError as exc:
        return PlainTextResponse(str(exc) + "\n", status_code=500)


def _html_response(view: EmailView) -> Response:
    if view.html is None:
        return PlainTextResponse("this message has no HTML part\n", status_code=404)
    return HTMLResponse(view.html, headers={"Content-Security-Policy": EMAIL_CSP})


def _eml_response(view: EmailView, filename: str) -> Response:
    return Response(
        view.raw,
        media_type="message/rfc822",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def email_html(request: Request) -> Response:
    found = _preview_or_error(request)
    return found if isinstance(found, Response) else _html_response(found.message)


def email_eml(request: Request) -> Response:
    found = _preview_or_error(request)
    if isinstance(found, Response):
        return found
    filename = re.sub(r"[^A-Za-z0-9._-]+", "-", found.post.slug) + ".eml"
    return _eml_response(found.message, filename)


# --------------------------------------------------------------------------- test send


def parse_addresses(value: str) -> tuple[str, ...]:
    return tuple(a for a in re.split(r"[\s,;]+", value) if a)


async def send_test(request: Request) -> Response:
    form = await request.form()
    addresses = parse_addresses(str(form.get("addresses", "")))
    try:
        settings, post, lst = await run_in_threadpool(_resolve, request)
    except PostError as exc:
        return PlainTextResponse(str(exc) + "\n", status_code=404)
    except NewsletterError as exc:
        return PlainTextResponse(str(exc) + "\n", status_code=500)
    level, notice = await run_in_threadpool(_send_test, settings, post, lst, addresses)
    query = urlencode({"list": lst.name, "notice": _state(request).keep_notice(level, notice)})
    return RedirectResponse(f"/post/{quote(post.post_id)}?{query}", status_code=303)


def _send_test(
    settings: Settings, post: Post, lst: ListSettings, addresses: tuple[str, ...]
) -> tuple[str, str]:
    """(level, one-line notice) for the page after a test send."""
    if not addresses:
        return "error", "give at least one address to send the test to"
    if len(addresses) > MAX_TEST_ADDRESSES:
        return "error", f"at most {MAX_TEST_ADDRESSES} test addresses at a time"
    from newsletter.delivery import mailings as delivery

    try:
        report = delivery.send_test(settings, post, lst.name, addresses)
    except NewsletterError as exc:
        return "error", f"test not sent: {exc}"
    if report.errors or report.failed or report.deferred:
        detail = "; ".join(report.errors) or "refused"
        return "error", f"sent {report.sent} of {len(addresses)}: {detail}"
    return "ok", f"sent a test to {', '.join(addresses)} via {settings.delivery.transport}"


# --------------------------------------------------------------------------- outbox


def outbox_index(request: Request) -> Response:
    from newsletter.web.outbox import list_outbox

    try:
        settings = _state(request).site.settings()
    except NewsletterError as exc:
        return _error_page(request, exc)
    outbox_dir = settings.delivery.outbox_dir
    return _page(
        request,
        "preview_outbox.html",
        outbox_dir=outbox_dir,
        entries=list_outbox(outbox_dir),
    )


def _outbox_view(request: Request) -> tuple[EmailView, str] | Response:
    from newsletter.web.outbox import read_outbox_message

    try:
        settings = _state(request).site.settings()
    except NewsletterError as exc:
        return PlainTextResponse(str(exc) + "\n", status_code=500)
    key = request.path_params["key"]
    view = read_outbox_message(Path(settings.delivery.outbox_dir), key)
    if view is None:
        return PlainTextResponse("no such message in the outbox\n", status_code=404)
    return view, key


def outbox_message(request: Request) -> Response:
    found = _outbox_view(request)
    if isinstance(found, Response):
        return found
    view, key = found
    return _page(
        request,
        "preview_message.html",
        view=view,
        key=key,
        html_url=f"/outbox/{key}/html",
        eml_url=f"/outbox/{key}/eml",
    )


def outbox_html(request: Request) -> Response:
    found = _outbox_view(request)
    return found if isinstance(found, Response) else _html_response(found[0])


def outbox_eml(request: Request) -> Response:
    found = _outbox_view(request)
    return found if isinstance(found, Response) else _eml_response(found[0], "message.eml")


# --------------------------------------------------------------------------- live reload


async def events(request: Request) -> Response:
    seen_text = request.query_params.get("g", "")
    # The page's own generation; anything else (a Unicode digit, more digits
    # than int() takes) is ignored rather than a 500.
    seen = int(seen_text) if re.fullmatch(r"[0-9]{1,18}", seen_text) else None
    return StreamingResponse(
        _state(request).broadcaster.stream(seen),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def create_preview_app(load: Callable[[], Settings], *, live: bool = True) -> Starlette:
    """The preview app; `load` re-reads the settings (called again after edits)."""
    state = PreviewState(load, live)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = asyncio.Event()
        answered = state.answered = asyncio.Event()
        task = asyncio.create_task(_watch_after_first_answer(state, stop)) if live else None
        try:
            yield
        finally:
            stop.set()
            answered.set()  # a watcher still waiting for it ends now
            state.broadcaster.close()
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, 5)

    routes = [
        Route("/", index),
        Route("/post/{post_id:path}", post_page),
        Route("/html/{post_id:path}", email_html),
        Route("/eml/{post_id:path}", email_eml),
        Route("/send-test/{post_id:path}", send_test, methods=["POST"]),
        Route("/outbox/", outbox_index),
        Route("/outbox/{key}", outbox_message),
        Route("/outbox/{key}/html", outbox_html),
        Route("/outbox/{key}/eml", outbox_eml),
        Route("/events", events),
    ]
    # Security headers on every answer: the guard's refusals and 500s included.
    app = SecureStarlette(routes=routes, lifespan=lifespan)
    app.state.preview = state
    if live:
        app.add_middleware(FirstAnswer, answered=lambda: state.answered)
    app.add_middleware(LocalOnlyMiddleware)
    return app


async def _watch_after_first_answer(state: PreviewState, stop: asyncio.Event) -> None:
    """Live reload, from the first answer on: the first page does not wait for
    inotify to be set up on the posts and the theme."""
    if state.answered is not None:
        await state.answered.wait()
    site = state.site

    async def catch_up() -> None:
        # A page served before the watcher was up shows what the site read
        # then; if a watched file changed since, that page reloads.
        if await run_in_threadpool(site.changed):
            state.broadcaster.bump()

    await watch_site(site, state.broadcaster, stop, ready=catch_up)


async def watch_site(
    site: Site,
    broadcaster: Broadcaster,
    stop: asyncio.Event,
    ready: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Bump `broadcaster` whenever a file `site` shows changes, until `stop`:
    its folders and configuration files, every `_posts` folder its posts were
    found in, and each page or file they link to or include (`{% link %}`,
    `{% include_relative %}`); planned again whenever a load of the posts
    finds them in other folders or linking elsewhere."""
    loop = asyncio.get_running_loop()
    replan = asyncio.Event()

    def plan_again() -> None:
        loop.call_soon_threadsafe(replan.set)

    site.on_replan = plan_again
    try:
        await watch(
            broadcaster,
            lambda: [*_safe(watched_dirs, site), *site.post_dirs()],
            lambda: [*_safe(config_files, site), *site.linked_files()],
            stop,
            ready=ready,
            replan=replan,
        )
    finally:
        site.on_replan = None


def _safe(paths_of: Callable[[Settings], list[Path]], site: Site) -> list[Path]:
    """Paths to watch; while the configuration is broken, keep watching its file."""
    try:
        return paths_of(site.settings())
    except NewsletterError:
        return paths_of(site.last_good) if site.last_good is not None else []
