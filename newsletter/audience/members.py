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

The changes are here; the statuses, rows and reads are in `memberreads`,
and every name of it is importable from here as before.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, select, update

from newsletter.audience import consent
from newsletter.audience.addresses import Address, normalise_email
from newsletter.audience.lists import ensure_lists
from newsletter.audience.memberreads import (
    ACTIVE,
    BOUNCED,
    COMPLAINED,
    NEVER_JOINED,
    PENDING,
    STATUSES,
    SUBSCRIBER_COLUMNS,
    SUPPRESSED,
    UNSUBSCRIBED,
    Bind,
    ListCounts,
    Member,
    SubscriberRow,
    get_by_email,
    get_by_id,
    get_by_uid,
    is_mailable,
    list_counts,
    list_id,
    mailable_members,
    membership_lists,
    never_joined,
    reading,
    row_of,
    writing,
)
from newsletter.audience.storable import MAX_NAME, clean_name, storable_name
from newsletter.errors import SubscriberError
from newsletter.store import insert_or_ignore, now
from newsletter.store.schema import memberships, new_uid, subscribers

__all__ = [
    "ACTIVE",
    "BOUNCED",
    "COMPLAINED",
    "MAX_NAME",
    "PENDING",
    "STATUSES",
    "SUPPRESSED",
    "UNSUBSCRIBED",
    "Bind",
    "ListCounts",
    "Member",
    "SubscriberRow",
    "add_subscriber",
    "clean_name",
    "ensure_lists",
    "get_by_email",
    "get_by_id",
    "get_by_uid",
    "is_mailable",
    "list_counts",
    "list_id",
    "mailable_members",
    "mark_bounced",
    "mark_complained",
    "membership_lists",
    "never_joined",
    "reading",
    "remove_member",
    "resubscribe",
    "storable_name",
    "unsubscribe",
    "unsubscribe_address",
    "writing",
]

# How strong each status is: a weaker one never overwrites a stronger one
# (a complaint outranks a bounce, which outranks an unsubscribe).
_RANK = {ACTIVE: 0, PENDING: 0, UNSUBSCRIBED: 1, BOUNCED: 2, COMPLAINED: 3}


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
    name = storable_name(name)
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
        row = conn.execute(select(*SUBSCRIBER_COLUMNS).where(subscribers.c.id == sid)).one()
    return row_of(row)


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
        row = conn.execute(select(*SUBSCRIBER_COLUMNS).where(subscribers.c.id == sid)).one()
    return row_of(row), created, changed


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
    created if missing) and the subscriber becomes active again, for that
    list only: the person re-consented to it, so a suppression lifted this
    way leaves every other list they were on unsubscribed.  With None, the
    subscriber becomes active and every per-list unsubscribe is cleared,
    except those of lists they never joined (`never_joined`): those stay.
    Never for a pending signup: only its own confirmation makes it active.
    Returns whether anything changed; only a change is recorded in the
    consent history (with a `source`).
    """
    stamp = now()
    with writing(bind) as conn:
        _require_subscriber(conn, subscriber_id)
        lifted = conn.execute(
            update(subscribers)
            .where(
                subscribers.c.id == subscriber_id, subscribers.c.status.not_in((ACTIVE, PENDING))
            )
            .values(
                status=ACTIVE,
                status_reason="resubscribed",
                status_changed_at=stamp,
                updated_at=stamp,
            )
        ).rowcount
        changed = lifted
        where = [memberships.c.subscriber_id == subscriber_id]
        if list_name is not None:
            lid = list_id(conn, list_name)
            changed += _ensure_membership(conn, lid, subscriber_id, stamp)
            where.append(memberships.c.list_id == lid)
            if lifted:
                _keep_the_others_left(conn, subscriber_id, lid, stamp)
        else:
            where.append(~NEVER_JOINED)
        changed += conn.execute(
            update(memberships)
            .where(*where, memberships.c.unsubscribed_at.is_not(None))
            .values(unsubscribed_at=None)
        ).rowcount
        if changed and source is not None:
            consent.record(conn, subscriber_id, "resubscribe", source, list_name, at=stamp)
        return bool(changed)


def _keep_the_others_left(conn: Connection, subscriber_id: int, kept: int, stamp: datetime) -> None:
    """A suppression lifted for one list: each other list the subscriber is
    still a member of gets a per-list unsubscribe, so only `kept` mails them."""
    conn.execute(
        update(memberships)
        .where(
            memberships.c.subscriber_id == subscriber_id,
            memberships.c.list_id != kept,
            memberships.c.unsubscribed_at.is_(None),
        )
        .values(unsubscribed_at=stamp)
    )


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
    # Checked again in the update: a concurrent one (two one-click POSTs at
    # once, on PostgreSQL) may have written it since the read above, and this
    # one must then say it changed nothing (one consent record, one undo).
    weaker = [name for name, rank in _RANK.items() if rank < _RANK[status]]
    changed = conn.execute(
        update(subscribers)
        .where(subscribers.c.id == subscriber_id, subscribers.c.status.in_(weaker))
        .values(status=status, status_reason=reason, status_changed_at=stamp, updated_at=stamp)
    )
    return bool(changed.rowcount)


def _require_subscriber(conn: Connection, subscriber_id: int) -> str:
    status = conn.scalar(select(subscribers.c.status).where(subscribers.c.id == subscriber_id))
    if status is None:
        raise SubscriberError(f"no subscriber with id {subscriber_id}")
    return str(status)
