"""The consent record: who joined or left what, when, and through what.

GDPR (art. 7(1)) asks whoever sends the newsletter to be able to show that
each reader consented.  Every signup, confirmation, subscribe, unsubscribe
and preference change is one row of `consent_events`, written in the same
transaction as the change itself (an import's new subscribers, added with
one consent, share one row: `history` reads it for each); `newsletter subscribers show EMAIL`
prints them.  Sources: form, json (the signup form and its JSON twin),
import, sync, cli, one-click (RFC 8058), preferences (the preferences page).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, union_all
from sqlalchemy.exc import SQLAlchemyError

from newsletter.errors import StoreError, database_reason
from newsletter.store import now, reading
from newsletter.store.schema import consent_events

SOURCES = ("form", "json", "import", "sync", "cli", "one-click", "preferences")

# An import's change of a subscriber's own status, as the record names it: a
# suppression the file gave, or (the reason the import writes) one that
# `--resubscribe` lifted.
STATUS_ACTIONS = {"unsubscribed": "unsubscribe", "bounced": "bounce", "complained": "complaint"}
RESUBSCRIBED_BY_IMPORT = "resubscribed by import"


def status_action(status: str, reason: str | None) -> str | None:
    """The event of an import that set `status` (with `reason`), or None when
    the change is not one of consent (pending to active, say)."""
    if status in STATUS_ACTIONS:
        return STATUS_ACTIONS[status]
    return "resubscribe" if reason == RESUBSCRIBED_BY_IMPORT else None


@dataclass(frozen=True)
class ConsentEvent:
    at: datetime
    action: str  # signup | confirm | subscribe | unsubscribe | resubscribe | ...
    source: str
    list_name: str | None  # None: every list
    detail: str | None = None


def record(
    conn: Connection,
    subscriber_id: int,
    action: str,
    source: str,
    list_name: str | None = None,
    detail: str | None = None,
    at: datetime | None = None,
) -> None:
    """One event, inside the caller's transaction (so it commits with the change)."""
    conn.execute(
        consent_events.insert().values(
            subscriber_id=subscriber_id,
            at=at or now(),
            action=action,
            source=source,
            list_name=list_name,
            detail=detail,
        )
    )


def record_many(conn: Connection, rows: Iterable[dict[str, Any]]) -> None:
    """Many events at once (imports): dicts with the `record` arguments' names."""
    batch = [{"list_name": None, "detail": None, "at": now(), **row} for row in rows]
    if batch:
        conn.execute(consent_events.insert(), batch)


def last_unsubscribe_source(conn: Connection, subscriber_id: int, list_name: str) -> str | None:
    """Who left this list last (the source of the latest unsubscribe from it); None if unrecorded."""
    source: str | None = conn.execute(
        select(consent_events.c.source)
        .where(
            consent_events.c.subscriber_id == subscriber_id,
            consent_events.c.action == "unsubscribe",
            consent_events.c.list_name == list_name,
        )
        .order_by(consent_events.c.at.desc(), consent_events.c.id.desc())
        .limit(1)
    ).scalar()
    return source


def history(engine: Engine, subscriber_id: int) -> list[ConsentEvent]:
    """A subscriber's events, oldest first: its own records and those of the
    imports that added it among a range of subscribers (schema 11,
    `consent_events.last_subscriber_id`), each read by its own index."""
    e = consent_events.c
    columns = (e.at, e.action, e.source, e.list_name, e.detail, e.id)
    own = select(*columns).where(e.subscriber_id == subscriber_id, e.last_subscriber_id.is_(None))
    ranges = select(*columns).where(
        e.last_subscriber_id.is_not(None),
        e.last_subscriber_id >= subscriber_id,
        e.subscriber_id <= subscriber_id,
    )
    both = union_all(own, ranges).subquery()
    query = select(*list(both.c)[:5]).order_by(both.c.at, both.c.id)
    try:
        with reading(engine) as conn:
            return [ConsentEvent(*row) for row in conn.execute(query)]
    except SQLAlchemyError as exc:
        raise StoreError(f"database read failed: {database_reason(exc)}") from exc
