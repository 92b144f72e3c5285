"""No link before its page is live: hold a post's mailing until its URL answers 200.

A Jekyll build leaves a future-dated post out until the site is rebuilt after
its date, so an email sent on the dot can point at a 404.  With
`[schedule] wait_for_page` (the default for an https site) the daemon asks
for the post's URL before a post mailing's first send.  Until it answers
200 the mailing is ``waiting``: `paused_until` says when to ask again (the
wait doubles, from `wait_for_page_retry` up to 15 minutes) and `last_error`
keeps the last answer for `status`.  After `wait_for_page_timeout` since the
mailing was planned it is ``held``: the daemon leaves it alone until the
owner sends it with `newsletter send POST --list L`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine

from newsletter.config import Settings
from newsletter.errors import PostError
from newsletter.posts.collection import PostCollection
from newsletter.store import mailings as q

log = logging.getLogger("newsletter.daemon")

WAITING = "waiting"
HELD = "held"
MAX_RETRY = timedelta(minutes=15)
REQUEST_TIMEOUT = 10.0
# Mailings in these states have not sent anything yet: the page is checked.
_UNSTARTED = ("planned", WAITING)


@dataclass(frozen=True)
class Answer:
    """What the post's URL said: an HTTP status, or why there was none."""

    status: int | None
    text: str

    @property
    def live(self) -> bool:
        return self.status == 200


Fetch = Callable[[str], Answer]


def fetch_status(url: str) -> Answer:
    """GET the URL (following redirects) and keep only the status line."""
    # Imported on use: a pass with no mailing to start asks no page.
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "newsletter (page check)"})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            return Answer(response.status, f"{response.status} {response.reason}")
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, f"{exc.code} {exc.reason}")
    except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Answer(None, f"no answer ({reason})")


def page_ready(
    engine: Engine,
    settings: Settings,
    mailing_id: int,
    posts: PostCollection,
    at: datetime,
    fetch: Fetch = fetch_status,
) -> bool:
    """Whether the daemon may send this mailing now; records why not."""
    with engine.connect() as conn:
        mailing = q.get_mailing(conn, mailing_id)
    if not settings.waits_for_page:
        if mailing is not None and mailing.state in (WAITING, HELD):
            # Turned off while it waited: it goes now, and its note with it.
            with engine.begin() as conn:
                q.open_gate(conn, mailing_id)
        return True
    if mailing is None or mailing.kind != "post":
        return True
    if mailing.state == HELD:
        return False
    if mailing.state not in _UNSTARTED:
        return True  # it started sending: the page was live then
    if mailing.state == WAITING and mailing.paused_until and mailing.paused_until > at:
        return False
    try:
        url = posts.find(mailing.post_id).url
    except PostError:
        return True  # delivery reports the missing post in `status`
    answer = fetch(url)
    if answer.live:
        q.set_gate(engine, mailing_id, "planned", None, None)
        if mailing.state == WAITING:
            log.info("mailing %d: %s is live now", mailing_id, url)
        return True
    _not_yet(engine, settings, mailing_id, mailing.created_at or at, at, url, answer)
    return False


def _not_yet(
    engine: Engine,
    settings: Settings,
    mailing_id: int,
    planned_at: datetime,
    at: datetime,
    url: str,
    answer: Answer,
) -> None:
    waited = at - planned_at
    limit = timedelta(seconds=settings.schedule.wait_for_page_timeout)
    stamp = at.strftime("%H:%M:%SZ")
    if waited >= limit:
        note = (
            f"held: {url} did not answer 200 within {_span(limit)} "
            f"(last answer at {stamp}: {answer.text}); once the page is live, "
            f"`newsletter send` this post to the list to send it"
        )
        q.set_gate(engine, mailing_id, HELD, None, note)
        log.warning("mailing %d %s", mailing_id, note)
        return
    first = timedelta(seconds=settings.schedule.wait_for_page_retry)
    delay = min(max(first, waited), MAX_RETRY, limit - waited)
    retry_at = at + delay
    note = (
        f"waiting for the page: {url} answered {answer.text} at {stamp}; "
        f"next check {retry_at.strftime('%H:%M:%SZ')}"
    )
    q.set_gate(engine, mailing_id, WAITING, retry_at, note)
    log.info("mailing %d %s", mailing_id, note)


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"
