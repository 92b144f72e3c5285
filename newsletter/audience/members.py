"""Queries on subscribers, lists and memberships.

Every function takes an ``Engine`` or a ``Connection``:

* given an ``Engine``, a write opens and commits its own transaction and a read
  opens its own connection;
* given a ``Connection``, the function runs inside the caller's transaction and
  commits nothing, so several calls can be made atomic together.

Mailable means: the subscriber's status is ``active`` and the membership of
that list has no ``unsubscribed_at``.  Statuses ``unsubscribed``, ``bounced``
and ``complained`` are suppressions: nothing here but `resubscribe` turns one
back into ``active`` (invariant 3).  All times are timezone-aware UTC.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from newsletter.audience import consent
from newsletter.audience.addresses import Address, email_key, normalise_email
from newsletter.audience.lists import ensure_lists  # noqa: F401 - the module's API, as before
from newsletter.errors import StoreError, SubscriberError, database_reason
from newsletter.store import insert_or_ignore, now
from newsletter.store import reading as read_only
from newsletter.store.schema import lists, memberships, new_uid, subscribers

ACTIVE = "active"
PENDING = "pending"
UNSUBSCRIBED = "unsubscribed"
BOUNCED = "bounced"
COMPLAINED = "complained"
STATUSES = (ACTIVE, PENDING, UNSUBSCRIBED, BOUNCED, COMPLAINED)
SUPPRESSED = frozenset({UNSUBSCRIBED, BOUNCED, COMPLAINED})
# How strong each status is: a weaker one never overwrites a stronger one
# (a complaint outranks a bounce, which outranks an unsubscribe).
_RANK = {ACTIVE: 0, PENDING: 0, UNSUBSCRIBED: 1, BOUNCED: 2, COMPLAINED: 3}

Bind = Engine | Connection

# A membership that only keeps a per-list unsubscribe of someone who was not
# on the list (`_unsubscribe` creates it and stamps both with one instant):
# a global `resubscribe` leaves it, since they never asked for that list.
_NEVER_JOINED = memberships.c.created_at == memberships.c.unsubscribed_at


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


def _row(row: Any) -> SubscriberRow:
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


_SUBSCRIBER_COLUMNS = (
    subscribers.c.id,
    subscribers.c.uid,
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
            select(subscribers.c.id, subscribers.c.uid, subscribers.c.email, subscribers.c.name)
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
        row = conn.execute(select(*_SUBSCRIBER_COLUMNS).where(subscribers.c.uid == uid)).first()
    return _row(row) if row is not None else None


def get_by_email(bind: Bind, email: str) -> SubscriberRow | None:
    """Look up an address case-insensitively (as given or normalised)."""
    try:
        key = normalise_email(email).key
    except SubscriberError:
        key = email_key(email)
    with reading(bind) as conn:
        row = conn.execute(
            select(*_SUBSCRIBER_COLUMNS).where(subscribers.c.email_key == key)
        ).first()
    return _row(row) if row is not None else None


def get_by_id(bind: Bind, subscriber_id: int) -> SubscriberRow | None:
    with reading(bind) as conn:
        row = conn.execute(
            select(*_SUBSCRIBER_COLUMNS).where(subscribers.c.id == subscriber_id)
        ).first()
    return _row(row) if row is not None else None


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
        .where(memberships.c.subscriber_id == subscriber_id, _NEVER_JOINED)
        .order_by(lists.c.name)
    )
    with reading(bind) as conn:
        return list(conn.scalars(query))


# --------------------------------------------------------------------------- writes


def add_subscriber(
    bind: Bind, email: str, list_name: str, *, name: str = "", source: str | None = None
) -> SubscriberRow:
    """Add an address to a list (creating the subscriber when new).

    An existing subscriber keeps its status and an existing membership keeps
    its unsubscribe: adding never makes a suppressed address mailable
    (invariant 3).  A non-empty `name` replaces the stored one.  With a
    `source`, a new membership is recorded in the consent history.
    """
    address = normalise_email(email)
    stamp = now()
    with writing(bind) as conn:
        lid = list_id(conn, list_name)
        sid = conn.scalar(select(subscribers.c.id).where(subscribers.c.email_key == address.key))
        if sid is None:
            sid, _ = _insert_subscriber(conn, address, name, stamp)
        elif name.strip():
            conn.execute(
                update(subscribers)
                .where(subscribers.c.id == sid)
                .values(name=name.strip(), updated_at=stamp)
            )
        joined = _ensure_membership(conn, lid, int(sid), stamp)
        if joined and source is not None:
            consent.record(conn, int(sid), "subscribe", source, list_name, at=stamp)
        row = conn.execute(select(*_SUBSCRIBER_COLUMNS).where(subscribers.c.id == sid)).one()
    return _row(row)


def _insert_subscriber(
    conn: Connection, address: Address, name: str, stamp: datetime
) -> tuple[int, bool]:
    """An active subscriber for `address`: (its id, whether this call created it)."""
    values = {
        "email": address.email,
        "email_key": address.key,
        "uid": new_uid(),
        "name": name.strip(),
        "attributes": {},
        "status": ACTIVE,
        "status_changed_at": stamp,
        "created_at": stamp,
        "updated_at": stamp,
    }
    # Idempotent: a concurrent add of the same address (another host) wins
    # or loses.  Any unique index: the same email has the same key, and a
    # SQLite file made before schema 6 still has one on email too.
    created = insert_or_ignore(conn, subscribers, values, ("email_key",), any_unique=True)
    sid = conn.execute(
        select(subscribers.c.id).where(subscribers.c.email_key == address.key)
    ).scalar_one()
    return int(sid), created


def _ensure_membership(conn: Connection, lid: int, sid: int, stamp: datetime) -> bool:
    values = {"list_id": lid, "subscriber_id": sid, "created_at": stamp}
    return insert_or_ignore(conn, memberships, values, ("list_id", "subscriber_id"))


def remove_member(bind: Bind, subscriber_id: int, list_name: str) -> bool:
    """Delete a membership outright (the owner's `subscribers remove`).

    A per-list unsubscribe is kept instead of deleted, so that a later import
    or sync cannot quietly re-add someone who asked to leave (invariant 3).
    """
    with writing(bind) as conn:
        lid = list_id(conn, list_name)
        result = conn.execute(
            memberships.delete().where(
                memberships.c.list_id == lid,
                memberships.c.subscriber_id == subscriber_id,
                memberships.c.unsubscribed_at.is_(None),
            )
        )
        return bool(result.rowcount)


def unsubscribe(
    bind: Bind,
    subscriber_id: int,
    list_name: str | None,
    *,
    reason: str,
    source: str | None = None,
) -> bool:
    """Stop mail to a subscriber: from one list, or (None) from every list.

    Returns whether anything changed; unsubscribing twice is harmless.  A
    per-list unsubscribe of someone not on the list records the membership as
    unsubscribed, so an import cannot add them later.  With a `source`, a
    change is recorded in the consent history.
    """
    with writing(bind) as conn:
        changed = _unsubscribe(conn, subscriber_id, list_name, reason)
        if changed and source is not None:
            consent.record(conn, subscriber_id, "unsubscribe", source, list_name, reason)
        return changed


def unsubscribe_address(
    bind: Bind, email: str, list_name: str | None, *, reason: str, source: str
) -> tuple[SubscriberRow, bool, bool]:
    """`unsubscribe` by address, keeping the request of one not known yet.

    Someone may ask to be removed before their address was ever imported.
    The request becomes a subscriber on no list with status unsubscribed
    (None), or an active subscriber whose only membership is an unsubscribed
    one of `list_name`, as `unsubscribe` records for a non-member: so no
    import or sync adds them later (invariant 3).  Returns the row,
    whether this call created it, and whether anything changed.
    """
    found = get_by_email(bind, email)
    if found is not None:
        return found, False, unsubscribe(bind, found.id, list_name, reason=reason, source=source)
    address = normalise_email(email)
    with writing(bind) as conn:
        if list_name is not None:
            list_id(conn, list_name)  # an unknown list: an error before anything is written
        sid, created = _insert_subscriber(conn, address, "", now())
        changed = _unsubscribe(conn, sid, list_name, reason)
        if changed:
            detail = f"{reason}; not a subscriber yet" if created else reason
            consent.record(conn, sid, "unsubscribe", source, list_name, detail)
        row = conn.execute(select(*_SUBSCRIBER_COLUMNS).where(subscribers.c.id == sid)).one()
    return _row(row), created, changed


def _unsubscribe(conn: Connection, subscriber_id: int, list_name: str | None, reason: str) -> bool:
    stamp = now()
    if list_name is None:
        return _set_status(conn, subscriber_id, UNSUBSCRIBED, reason, stamp)
    lid = list_id(conn, list_name)
    _require_subscriber(conn, subscriber_id)
    if _ensure_membership(conn, lid, subscriber_id, stamp):
        conn.execute(
            update(memberships)
            .where(memberships.c.list_id == lid, memberships.c.subscriber_id == subscriber_id)
            .values(unsubscribed_at=stamp)
        )
        return True
    result = conn.execute(
        update(memberships)
        .where(
            memberships.c.list_id == lid,
            memberships.c.subscriber_id == subscriber_id,
            memberships.c.unsubscribed_at.is_(None),
        )
        .values(unsubscribed_at=stamp)
    )
    return bool(result.rowcount)


def resubscribe(
    bind: Bind, subscriber_id: int, list_name: str | None, *, source: str | None = None
) -> bool:
    """The explicit undo of a suppression: the only way back to mailable.

    With a list name, that list's unsubscribe is cleared (the membership is
    created if missing) and the subscriber becomes active again.  With None,
    the subscriber becomes active and every per-list unsubscribe is cleared,
    except those of lists they never joined (`never_joined`): those stay.
    Returns whether anything changed; only a change is recorded in the
    consent history (with a `source`).
    """
    stamp = now()
    with writing(bind) as conn:
        _require_subscriber(conn, subscriber_id)
        changed = conn.execute(
            update(subscribers)
            .where(subscribers.c.id == subscriber_id, subscribers.c.status != ACTIVE)
            .values(
                status=ACTIVE,
                status_reason="resubscribed",
                status_changed_at=stamp,
                updated_at=stamp,
            )
        ).rowcount
        where = [memberships.c.subscriber_id == subscriber_id]
        if list_name is not None:
            lid = list_id(conn, list_name)
            changed += _ensure_membership(conn, lid, subscriber_id, stamp)
            where.append(memberships.c.list_id == lid)
        else:
            where.append(~_NEVER_JOINED)
        changed += conn.execute(
            update(memberships)
            .where(*where, memberships.c.unsubscribed_at.is_not(None))
            .values(unsubscribed_at=None)
        ).rowcount
        if changed and source is not None:
            consent.record(conn, subscriber_id, "resubscribe", source, list_name, at=stamp)
        return bool(changed)


def mark_bounced(bind: Bind, subscriber_id: int, *, reason: str) -> None:
    """A hard bounce: no more mail to this address on any list."""
    with writing(bind) as conn:
        _require_subscriber(conn, subscriber_id)
        _set_status(conn, subscriber_id, BOUNCED, reason, now())


def mark_complained(bind: Bind, subscriber_id: int, *, reason: str) -> None:
    """A spam complaint (feedback loop): no more mail to this address."""
    with writing(bind) as conn:
        _require_subscriber(conn, subscriber_id)
        _set_status(conn, subscriber_id, COMPLAINED, reason, now())


def _set_status(
    conn: Connection, subscriber_id: int, status: str, reason: str, stamp: datetime
) -> bool:
    """Move to a suppression unless an equal or stronger one is already there."""
    current = _require_subscriber(conn, subscriber_id)
    if _RANK.get(current, 0) >= _RANK[status]:
        return False
    conn.execute(
        update(subscribers)
        .where(subscribers.c.id == subscriber_id)
        .values(status=status, status_reason=reason, status_changed_at=stamp, updated_at=stamp)
    )
    return True


def _require_subscriber(conn: Connection, subscriber_id: int) -> str:
    status = conn.scalar(select(subscribers.c.status).where(subscribers.c.id == subscriber_id))
    if status is None:
        raise SubscriberError(f"no subscriber with id {subscriber_id}")
    return str(status)
