"""Queries on mailings and deliveries: planning, claiming under a lease, recording.

Work is claimed with a lease held in the database (``lease_owner``,
``lease_expires_at``), never in process memory, so that several processes can
share one database.  Every state transition is its own committed transaction:
after ``kill -9`` the ledger says exactly which messages may have been in flight.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    String,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from newsletter.errors import StoreError
from newsletter.store import now
from newsletter.store.schema import (
    UtcDateTime,
    deliveries,
    lists,
    mailings,
    memberships,
    subscribers,
)

CLAIMABLE = ("queued", "deferred")
OPEN_STATUSES = ("queued", "deferred", "sending")
STATUSES = ("queued", "sending", "sent", "deferred", "failed", "skipped")
INSERT_BATCH = 1000


@dataclass(frozen=True)
class MailingRow:
    id: int
    post_id: str
    list_name: str
    kind: str
    generation: int
    subject: str
    state: str
    post_ids: tuple[str, ...]
    paused_until: datetime | None
    last_error: str | None
    created_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class Claimed:
    """One claimed delivery with what personalisation needs."""

    id: int
    subscriber_id: int
    uid: str
    email: str
    name: str
    attempts: int
    message_id: str | None


@dataclass(frozen=True)
class Outcome:
    """The new state of one delivery after an attempt."""

    status: str  # sent | deferred | failed | skipped | queued
    attempts: int
    code: int | None = None
    text: str | None = None
    message_id: str | None = None
    next_attempt_at: datetime | None = None


def lease_owner() -> str:
    """host:pid:random; the pid lets a restart on this host free a dead owner's lease."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mailing_columns() -> list[Any]:
    return [
        mailings.c.id,
        mailings.c.post_id,
        lists.c.name,
        mailings.c.kind,
        mailings.c.generation,
        mailings.c.subject,
        mailings.c.state,
        mailings.c.post_ids,
        mailings.c.paused_until,
        mailings.c.last_error,
        mailings.c.created_at,
        mailings.c.finished_at,
    ]


def _mailing_row(row: Any) -> MailingRow:
    return MailingRow(
        id=row[0],
        post_id=row[1],
        list_name=row[2],
        kind=row[3],
        generation=row[4],
        subject=row[5],
        state=row[6],
        post_ids=tuple(row[7] or ()),
        paused_until=row[8],
        last_error=row[9],
        created_at=row[10],
        finished_at=row[11],
    )


def list_id(conn: Connection, list_name: str) -> int | None:
    return conn.scalar(select(lists.c.id).where(lists.c.name == list_name))


def latest_mailing(conn: Connection, post_id: str, list_name: str) -> MailingRow | None:
    query = (
        select(*_mailing_columns())
        .join(lists, lists.c.id == mailings.c.list_id)
        .where(mailings.c.post_id == post_id, lists.c.name == list_name)
        .order_by(mailings.c.generation.desc())
        .limit(1)
    )
    row = conn.execute(query).first()
    return _mailing_row(row) if row is not None else None


def get_mailing(conn: Connection, mailing_id: int) -> MailingRow | None:
    query = (
        select(*_mailing_columns())
        .join(lists, lists.c.id == mailings.c.list_id)
        .where(mailings.c.id == mailing_id)
    )
    row = conn.execute(query).first()
    return _mailing_row(row) if row is not None else None


def all_mailings(conn: Connection) -> list[MailingRow]:
    query = (
        select(*_mailing_columns())
        .join(lists, lists.c.id == mailings.c.list_id)
        .order_by(mailings.c.id)
    )
    return [_mailing_row(r) for r in conn.execute(query)]


def insert_mailing(
    conn: Connection,
    *,
    post_id: str,
    list_id: int,
    kind: str,
    generation: int,
    subject: str,
    post_ids: tuple[str, ...],
) -> int:
    result = conn.execute(
        mailings.insert().values(
            post_id=post_id,
            list_id=list_id,
            kind=kind,
            generation=generation,
            subject=subject,
            state="planned",
            post_ids=list(post_ids),
            created_at=now(),
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def snapshot(conn: Connection, mailing_id: int, members: Iterable[tuple[int, str]]) -> int:
    """Insert one queued delivery per (subscriber_id, email), streamed in batches."""
    stamp = now()
    total = 0
    batch: list[dict[str, Any]] = []
    for subscriber_id, email in members:
        batch.append(
            {
                "mailing_id": mailing_id,
                "subscriber_id": subscriber_id,
                "email": email,
                "status": "queued",
                "attempts": 0,
                "updated_at": stamp,
            }
        )
        if len(batch) >= INSERT_BATCH:
            conn.execute(deliveries.insert(), batch)
            total += len(batch)
            batch = []
    if batch:
        conn.execute(deliveries.insert(), batch)
        total += len(batch)
    return total


def free_dead_leases(engine: Engine) -> int:
    """Release leases whose owner ran on this host and is no longer alive.

    After ``kill -9`` the lease would otherwise block the re-run until it
    expires; a dead pid on the same host cannot be sending anything.
    """
    host = socket.gethostname()
    with engine.begin() as conn:
        owners = conn.execute(
            select(deliveries.c.lease_owner)
            .where(deliveries.c.lease_owner.like(f"{host}:%"))
            .distinct()
        ).scalars()
        dead = [o for o in owners if not _pid_alive(_owner_pid(o))]
        for owner in dead:
            conn.execute(
                update(deliveries)
                .where(deliveries.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None)
            )
    return len(dead)


def _owner_pid(owner: str) -> int:
    try:
        return int(owner.split(":")[1])
    except (IndexError, ValueError):
        return -1


def _claimable(mailing_id: int, at: datetime) -> Any:
    lease_free = or_(deliveries.c.lease_owner.is_(None), deliveries.c.lease_expires_at < at)
    due = or_(deliveries.c.next_attempt_at.is_(None), deliveries.c.next_attempt_at <= at)
    # A row left in 'sending' by a crashed process is claimable once its lease is free:
    # it may have gone out already (≤ concurrency duplicates), but nobody is skipped.
    return and_(
        deliveries.c.mailing_id == mailing_id,
        deliveries.c.status.in_((*CLAIMABLE, "sending")),
        due,
        lease_free,
    )


def claim(
    engine: Engine, mailing_id: int, owner: str, limit: int, lease_seconds: float
) -> tuple[list[Claimed], int]:
    """Lease up to `limit` due deliveries; skip those no longer mailable.

    Returns the claimed rows and how many were marked skipped.

    Joined with the subscriber and membership so that someone who unsubscribed
    (or bounced) after planning is marked skipped here, in the same transaction.
    """
    at = now()
    # Each batch gets its own tag under the owner, so a later claim never returns
    # rows of an earlier batch that workers still hold in memory.
    tag = f"{owner}:{uuid.uuid4().hex[:8]}"
    try:
        with engine.begin() as conn:
            ids = select(deliveries.c.id).where(_claimable(mailing_id, at)).limit(limit)
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id.in_(ids.scalar_subquery()))
                .values(
                    status="sending",
                    lease_owner=tag,
                    lease_expires_at=at + timedelta(seconds=lease_seconds),
                    updated_at=at,
                ),
            )
            rows = conn.execute(_claimed_query(mailing_id, tag)).all()
            claimed, skipped = _split_mailable(rows)
            if skipped:
                conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id.in_(skipped))
                    .values(
                        status="skipped",
                        lease_owner=None,
                        lease_expires_at=None,
                        last_text="no longer subscribed",
                        updated_at=at,
                    )
                )
            return claimed, len(skipped)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot claim deliveries of mailing {mailing_id}: {exc}") from exc


def _claimed_query(mailing_id: int, owner: str) -> Any:
    membership = and_(
        memberships.c.subscriber_id == deliveries.c.subscriber_id,
        memberships.c.list_id == mailings.c.list_id,
    )
    return (
        select(
            deliveries.c.id,
            deliveries.c.subscriber_id,
            subscribers.c.uid,
            deliveries.c.email,
            subscribers.c.name,
            deliveries.c.attempts,
            deliveries.c.message_id,
            subscribers.c.status,
            memberships.c.subscriber_id.is_not(None),
            memberships.c.unsubscribed_at,
        )
        .select_from(deliveries)
        .join(mailings, mailings.c.id == deliveries.c.mailing_id)
        .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
        .outerjoin(memberships, membership)
        .where(
            deliveries.c.mailing_id == mailing_id,
            deliveries.c.lease_owner == owner,
            deliveries.c.status == "sending",
        )
        .order_by(deliveries.c.id)
    )


def _split_mailable(rows: Iterable[Any]) -> tuple[list[Claimed], list[int]]:
    claimed: list[Claimed] = []
    skipped: list[int] = []
    for row in rows:
        is_member, unsubscribed_at = row[8], row[9]
        if row[7] != "active" or not is_member or unsubscribed_at is not None:
            skipped.append(row[0])
            continue
        claimed.append(Claimed(row[0], row[1], row[2], row[3], row[4] or "", row[5], row[6]))
    return claimed, skipped


def record(engine: Engine, delivery_id: int, outcome: Outcome) -> None:
    """Commit one delivery's new state and release its lease."""
    at = now()
    values: dict[str, Any] = {
        "status": outcome.status,
        "attempts": outcome.attempts,
        "last_code": outcome.code,
        "last_text": outcome.text,
        "next_attempt_at": outcome.next_attempt_at,
        "lease_owner": None,
        "lease_expires_at": None,
        "updated_at": at,
    }
    if outcome.message_id is not None:
        values["message_id"] = outcome.message_id
    if outcome.status == "sent":
        values["sent_at"] = at
    try:
        with engine.begin() as conn:
            conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(values))
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot record delivery {delivery_id}: {exc}") from exc


_RECORD_MANY = (
    update(deliveries)
    .where(deliveries.c.id == bindparam("_id"))
    .values(
        status=bindparam("_status"),
        attempts=bindparam("_attempts"),
        last_code=bindparam("_code"),
        last_text=bindparam("_text"),
        next_attempt_at=bindparam("_next", type_=UtcDateTime),
        message_id=func.coalesce(bindparam("_mid", type_=String), deliveries.c.message_id),
        sent_at=func.coalesce(bindparam("_sent", type_=UtcDateTime), deliveries.c.sent_at),
        lease_owner=None,
        lease_expires_at=None,
        updated_at=bindparam("_at", type_=UtcDateTime),
    )
)


def record_many(bind: Engine | Connection, outcomes: list[tuple[int, Outcome]]) -> None:
    """Commit several deliveries' new states in one transaction (group commit).

    Given a `Connection` (the recorder keeps one open), the transaction is
    begun and committed on it, sparing a pool checkout and reset per commit.
    """
    at = now()
    params = [
        {
            "_id": delivery_id,
            "_status": o.status,
            "_attempts": o.attempts,
            "_code": o.code,
            "_text": o.text,
            "_next": o.next_attempt_at,
            "_mid": o.message_id,
            "_sent": at if o.status == "sent" else None,
            "_at": at,
        }
        for delivery_id, o in outcomes
    ]
    try:
        if isinstance(bind, Connection):
            with bind.begin():
                bind.execute(_RECORD_MANY, params)
        else:
            with bind.begin() as conn:
                conn.execute(_RECORD_MANY, params)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot record {len(outcomes)} deliveries: {exc}") from exc


def release(engine: Engine, owner: str) -> None:
    """Give back every lease this owner holds (a clean stop), leaving rows claimable."""
    with engine.begin() as conn:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.lease_owner.like(f"{owner}:%"))
            .values(
                # Claimed but never attempted in this pass: back to where it was.
                status=case(
                    (deliveries.c.status != "sending", deliveries.c.status),
                    (deliveries.c.attempts > 0, "deferred"),
                    else_="queued",
                ),
                lease_owner=None,
                lease_expires_at=None,
            )
        )


def counts(conn: Connection, mailing_id: int | None = None) -> dict[int, dict[str, int]]:
    """{mailing_id: {status: n}} for one or every mailing."""
    query = select(deliveries.c.mailing_id, deliveries.c.status, func.count()).group_by(
        deliveries.c.mailing_id, deliveries.c.status
    )
    if mailing_id is not None:
        query = query.where(deliveries.c.mailing_id == mailing_id)
    result: dict[int, dict[str, int]] = {}
    for mid, status, n in conn.execute(query):
        result.setdefault(mid, {})[status] = n
    return result


def next_due(conn: Connection, mailing_id: int) -> datetime | None:
    """When the earliest open delivery of a mailing becomes claimable."""
    query = select(func.min(func.coalesce(deliveries.c.next_attempt_at, deliveries.c.updated_at)))
    return conn.scalar(
        query.where(deliveries.c.mailing_id == mailing_id, deliveries.c.status.in_(OPEN_STATUSES))
    )


def has_open(conn: Connection, mailing_id: int) -> bool:
    query = (
        select(deliveries.c.id)
        .where(deliveries.c.mailing_id == mailing_id, deliveries.c.status.in_(OPEN_STATUSES))
        .limit(1)
    )
    return conn.execute(query).first() is not None


def set_state(
    engine: Engine,
    mailing_id: int,
    state: str,
    *,
    paused_until: datetime | None = None,
    last_error: str | None = None,
) -> None:
    values: dict[str, Any] = {"state": state, "paused_until": paused_until}
    if state == "done":
        values["finished_at"] = now()
    if last_error is not None:
        values["last_error"] = last_error
    with engine.begin() as conn:
        conn.execute(update(mailings).where(mailings.c.id == mailing_id).values(values))


def sent_since(conn: Connection, since: datetime) -> tuple[int, datetime | None]:
    """How many messages went out since `since`, and the oldest such send time."""
    row = conn.execute(
        select(func.count(), func.min(deliveries.c.sent_at)).where(
            deliveries.c.status == "sent", deliveries.c.sent_at >= since
        )
    ).one()
    return int(row[0]), row[1]


def mailings_with_work(conn: Connection) -> Iterator[int]:
    """Mailings that are not done (planned, sending, paused), oldest first."""
    query = select(mailings.c.id).where(mailings.c.state != "done").order_by(mailings.c.id)
    yield from conn.execute(query).scalars()


def mailed_pairs(conn: Connection) -> set[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    query = select(mailings.c.post_id, lists.c.name, mailings.c.post_ids).join(
        lists, lists.c.id == mailings.c.list_id
    )
    for post_id, list_name, post_ids in conn.execute(query):
        pairs.add((post_id, list_name))
        for pid in post_ids or ():
            pairs.add((pid, list_name))
    return pairs


def open_recipients(conn: Connection, mailing_id: int) -> Iterator[str]:
    """Addresses of a mailing's deliveries not yet finished, streamed."""
    query = (
        select(deliveries.c.email)
        .where(deliveries.c.mailing_id == mailing_id, deliveries.c.status.in_(OPEN_STATUSES))
        .order_by(deliveries.c.id)
        .execution_options(yield_per=1000)
    )
    yield from conn.execute(query).scalars()


def member_count(conn: Connection, list_name: str) -> int:
    """Convenience for callers that only need a count (``send --dry-run``)."""
    query = (
        select(func.count())
        .select_from(memberships)
        .join(lists, lists.c.id == memberships.c.list_id)
        .join(subscribers, subscribers.c.id == memberships.c.subscriber_id)
        .where(
            lists.c.name == list_name,
            subscribers.c.status == "active",
            memberships.c.unsubscribed_at.is_(None),
        )
    )
    return int(conn.scalar(query) or 0)
