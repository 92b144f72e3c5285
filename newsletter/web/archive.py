"""The public archive: every email that went out, as a web page.

Only posts with a finished mailing (or at least one delivery actually sent)
are listed, so drafts and unsent posts never leak through the archive, nor
a post pulled mid-mailing (`sent_posts`).  The
per-recipient placeholders are replaced with neutral words and the
unsubscribe link points at a page that explains where the real one is: an
archive page must never carry a working token.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, and_, exists, or_, select
from sqlalchemy.exc import SQLAlchemyError

from newsletter.config import ListSettings, Settings
from newsletter.email.message import Recipient, fill_placeholders
from newsletter.email.rendered import RenderedEmail
from newsletter.errors import StoreError, database_reason
from newsletter.store import reading
from newsletter.store.halts import HALTED
from newsletter.store.schema import deliveries, lists, mailings


@dataclass(frozen=True)
class ArchiveEntry:
    post_id: str
    list_name: str
    sent_at: datetime | None


def neutral_recipient(settings: Settings) -> Recipient:
    """Who an archive page is "for": nobody in particular, with no token."""
    return Recipient(
        # "You are receiving this because you subscribed to …" still reads right.
        email="you",
        name="reader",
        unsubscribe_url=f"{settings.web.public_url.rstrip('/')}/unsubscribe/",
        preferences_url=f"{settings.web.public_url.rstrip('/')}/unsubscribe/",
    )


def neutral_html(rendered: RenderedEmail, settings: Settings) -> str:
    return fill_placeholders(rendered, neutral_recipient(settings))[0]


def sent_posts(engine: Engine) -> list[ArchiveEntry]:
    """One entry per sent post (its first list), the latest sent first (the
    index page orders them by the posts' own dates, which it shows).

    A post whose unfinished mailing the daemon halted (`store.halts`: pulled,
    opted out or re-dated into the future, which Jekyll does not publish
    yet) is left out until it may go again; one the owner cancelled stays
    (the post is live, and the emails that went out link here).
    """
    was_sent = exists().where(
        deliveries.c.mailing_id == mailings.c.id, deliveries.c.status == "sent"
    )
    shown = or_(mailings.c.state == "done", and_(was_sent, mailings.c.state.not_in(HALTED)))
    query = (
        select(
            mailings.c.post_id,
            mailings.c.post_ids,
            mailings.c.kind,
            lists.c.name,
            mailings.c.finished_at,
            mailings.c.created_at,
        )
        .join(lists, lists.c.id == mailings.c.list_id)
        .where(shown)
        .order_by(mailings.c.id)
    )
    try:
        with reading(engine) as conn:
            rows = conn.execute(query).all()
    except SQLAlchemyError as exc:
        raise StoreError(f"database read failed: {database_reason(exc)}") from exc
    found: dict[str, ArchiveEntry] = {}
    for row in rows:
        post_ids = list(row.post_ids or []) if row.kind == "digest" else [row.post_id]
        for post_id in post_ids:
            found.setdefault(
                str(post_id),
                ArchiveEntry(str(post_id), row.name, row.finished_at or row.created_at),
            )
    return sorted(found.values(), key=_newest_first)


@dataclass(frozen=True)
class DigestEntry:
    mailing_id: int
    list_name: str
    post_ids: tuple[str, ...]


# mailings.id is an Integer column: 32-bit on PostgreSQL, which answers a
# bigger number with "integer out of range" (SQLite's driver overflows at 2**63).
MAX_ID = 2**31


def sent_digest(engine: Engine, mailing_id: int) -> DigestEntry | None:
    """The digest mailing `mailing_id` when it went out (finished, or at least
    one delivery sent); None for an unknown id, a post mailing or an unsent one."""
    if not 0 < mailing_id < MAX_ID:
        return None  # no such row; asking the driver would overflow (a 500)
    was_sent = exists().where(
        deliveries.c.mailing_id == mailings.c.id, deliveries.c.status == "sent"
    )
    query = (
        select(mailings.c.post_ids, lists.c.name)
        .join(lists, lists.c.id == mailings.c.list_id)
        .where(mailings.c.id == mailing_id, mailings.c.kind == "digest")
        .where(or_(mailings.c.state == "done", was_sent))
    )
    try:
        with reading(engine) as conn:
            row = conn.execute(query).first()
    except SQLAlchemyError as exc:
        raise StoreError(f"database read failed: {database_reason(exc)}") from exc
    if row is None or not row.post_ids:
        return None
    return DigestEntry(mailing_id, row.name, tuple(str(p) for p in row.post_ids))


def _newest_first(entry: ArchiveEntry) -> float:
    return -entry.sent_at.timestamp() if entry.sent_at is not None else 0.0


def list_for(settings: Settings, name: str) -> ListSettings:
    """The list as configured now, or a stand-in when it was removed since."""
    return settings.lists.get(name) or ListSettings(name=name, title=name)
