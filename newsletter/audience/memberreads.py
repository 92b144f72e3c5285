"""The read side of `members`: the statuses, the rows, and the queries.

Statuses, `SubscriberRow`, `Member` and `ListCounts`; `reading` and `writing`
(a connection of the caller's, or one of our own); the lists and the reads
of subscribers and memberships.  Every change is in `members`, which
re-exports all of this: import from there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, func, select
from sqlalchemy.exc import SQLAlchemyError

from newsletter.audience.addresses import email_key, normalise_email
from newsletter.errors import StoreError, SubscriberError, database_reason
from newsletter.store import reading as read_only
from newsletter.store.schema import lists, memberships, subscribers
from newsletter.store.uids import UID, by_uid

ACTIVE = "active"
PENDING = "pending"
UNSUBSCRIBED = "unsubscribed"
BOUNCED = "bounced"
COMPLAINED = "complained"
STATUSES = (ACTIVE, PENDING, UNSUBSCRIBED, BOUNCED, COMPLAINED)
SUPPRESSED = frozenset({UNSUBSCRIBED, BOUNCED, COMPLAINED})

Bind = Engine | Connection

# A membership that only keeps a per-list unsubscribe of someone who was not
# on the list (`members._unsubscribe` creates it and stamps both with one instant):
# a global `resubscribe` leaves it, since they never asked for that list.
NEVER_JOINED = memberships.c.created_at == memberships.c.unsubscribed_at


@dataclass(frozen=True)
class Member:
    """One mailable member of a list, as delivery needs it."""

    subscriber_id: int
    uid: str
    email: str
    name: str


@dataclass(frozen=True)
class SubscriberRow:
    id: int
    uid: str
    email: str
    name: str
    status: str
    status_reason: str | None
    status_changed_at: datetime | None
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def suppressed(self) -> bool:
        return self.status in SUPPRESSED


@dataclass(frozen=True)
class ListCounts:
    """One list for `newsletter lists`: declared title and members by status."""

    name: str
    title: str
    counts: dict[str, int]

    @property
    def mailable(self) -> int:
        return self.counts.get(ACTIVE, 0)


# --------------------------------------------------------------------------- plumbing


@contextmanager
def writing(bind: Bind) -> Iterator[Connection]:
    """A connection in a transaction: ours (committed here) or the caller's."""
    try:
        if isinstance(bind, Engine):
            with bind.begin() as conn:
                yield conn
        else:
            yield bind
    except SQLAlchemyError as exc:
        raise StoreError(f"database write failed: {database_reason(exc)}") from exc


@contextmanager
def reading(bind: Bind) -> Iterator[Connection]:
    try:
        if isinstance(bind, Engine):
            with read_only(bind) as conn:
                yield conn
        else:
            yield bind
    except SQLAlchemyError as exc:
        raise StoreError(f"database read failed: {database_reason(exc)}") from exc


def row_of(row: Any) -> SubscriberRow:
    return SubscriberRow(
        id=row.id,
        uid=row.uid,
        email=row.email,
        name=row.name,
        status=row.status,
        status_reason=row.status_reason,
        status_changed_at=row.status_changed_at,
        attributes=dict(row.attributes or {}),
    )


SUBSCRIBER_COLUMNS = (
    subscribers.c.id,
    UID,
    subscribers.c.email,
    subscribers.c.name,
    subscribers.c.status,
    subscribers.c.status_reason,
    subscribers.c.status_changed_at,
    subscribers.c.attributes,
)


# --------------------------------------------------------------------------- lists


def list_id(conn: Connection, list_name: str) -> int:
    """The id of a list; `SubscriberError` naming the known lists when absent."""
    found = conn.scalar(select(lists.c.id).where(lists.c.name == list_name))
    if found is None:
        known = ", ".join(conn.scalars(select(lists.c.name).order_by(lists.c.name))) or "none"
        raise SubscriberError(
            f"unknown list {list_name!r} (known lists: {known}); declare it as "
            f"[lists.{list_name}] in newsletter.toml",
            key=f"lists.{list_name}",
        )
    return int(found)


def list_counts(bind: Bind) -> list[ListCounts]:
    """Each list with its members counted by effective status on that list.

    A member unsubscribed from just this list counts as ``unsubscribed``.
    """
    effective = _effective_status()
    query = (
        select(lists.c.name, lists.c.title, effective, func.count())
        .select_from(lists)
        .outerjoin(memberships, memberships.c.list_id == lists.c.id)
        .outerjoin(subscribers, subscribers.c.id == memberships.c.subscriber_id)
        .group_by(lists.c.name, lists.c.title, effective)
        .order_by(lists.c.name)
    )
    result: dict[str, ListCounts] = {}
    with reading(bind) as conn:
        for name, title, status, count in conn.execute(query):
            entry = result.setdefault(name, ListCounts(name, title, {}))
            if status is not None:
                entry.counts[status] = int(count)
    return list(result.values())


def _effective_status() -> Any:
    return case(
        (
            and_(
                memberships.c.unsubscribed_at.is_not(None),
                subscribers.c.status.in_((ACTIVE, PENDING)),
            ),
            UNSUBSCRIBED,
        ),
        else_=subscribers.c.status,
    ).label("status")


# --------------------------------------------------------------------------- reads


def mailable_members(bind: Bind, list_name: str) -> Iterator[Member]:
    """Every mailable member of a list, in subscriber-id order, streamed.

    Rows are fetched in batches (``yield_per``), so a million members never sit
    in memory at once.  Pass the ``Connection`` you snapshot with: given an
    ``Engine``, a connection is held open until the iterator is exhausted or
    closed.
    """
    with reading(bind) as conn:
        lid = list_id(conn, list_name)
        query = (
            select(subscribers.c.id, UID, subscribers.c.email, subscribers.c.name)
            .join(memberships, memberships.c.subscriber_id == subscribers.c.id)
            .where(
                memberships.c.list_id == lid,
                memberships.c.unsubscribed_at.is_(None),
                subscribers.c.status == ACTIVE,
            )
            .order_by(subscribers.c.id)
            .execution_options(yield_per=1000)
        )
        for row in conn.execute(query):
            yield Member(row.id, row.uid, row.email, row.name)


def is_mailable(bind: Bind, subscriber_id: int, list_name: str) -> bool:
    query = (
        select(subscribers.c.id)
        .join(memberships, memberships.c.subscriber_id == subscribers.c.id)
        .join(lists, lists.c.id == memberships.c.list_id)
        .where(
            subscribers.c.id == subscriber_id,
            lists.c.name == list_name,
            memberships.c.unsubscribed_at.is_(None),
            subscribers.c.status == ACTIVE,
        )
    )
    with reading(bind) as conn:
        return conn.scalar(query) is not None


def get_by_uid(bind: Bind, uid: str) -> SubscriberRow | None:
    with reading(bind) as conn:
        row = conn.execute(select(*SUBSCRIBER_COLUMNS).where(by_uid(uid))).first()
    return row_of(row) if row is not None else None


def get_by_email(bind: Bind, email: str) -> SubscriberRow | None:
    """Look up an address case-insensitively (as given or normalised)."""
    try:
        key = normalise_email(email).key
    except SubscriberError:
        key = email_key(email)
        if not key.isascii():
            try:
                key.encode()
            except UnicodeEncodeError:  # a lone surrogate (a non-UTF-8 argument)
                return None  # no stored address has one, and the driver cannot send it
    with reading(bind) as conn:
        row = conn.execute(
            select(*SUBSCRIBER_COLUMNS).where(subscribers.c.email_key == key)
        ).first()
    return row_of(row) if row is not None else None


def get_by_id(bind: Bind, subscriber_id: int) -> SubscriberRow | None:
    with reading(bind) as conn:
        row = conn.execute(
            select(*SUBSCRIBER_COLUMNS).where(subscribers.c.id == subscriber_id)
        ).first()
    return row_of(row) if row is not None else None


def membership_lists(bind: Bind, subscriber_id: int) -> dict[str, datetime | None]:
    """List name → that membership's unsubscribed_at (None while subscribed)."""
    query = (
        select(lists.c.name, memberships.c.unsubscribed_at)
        .join(memberships, memberships.c.list_id == lists.c.id)
        .where(memberships.c.subscriber_id == subscriber_id)
        .order_by(lists.c.name)
    )
    with reading(bind) as conn:
        return {name: at for name, at in conn.execute(query)}


def never_joined(bind: Bind, subscriber_id: int) -> list[str]:
    """The lists this subscriber is recorded as unsubscribed from without
    ever having joined them (a per-list unsubscribe of a non-member)."""
    query = (
        select(lists.c.name)
        .join(memberships, memberships.c.list_id == lists.c.id)
        .where(memberships.c.subscriber_id == subscriber_id, NEVER_JOINED)
        .order_by(lists.c.name)
    )
    with reading(bind) as conn:
        return list(conn.scalars(query))
