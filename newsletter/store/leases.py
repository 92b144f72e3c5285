"""Claiming deliveries under a lease, and recording what became of them.

The lease lives in the database (``lease_owner``, ``lease_expires_at``), never
in process memory, so several processes can share one database.  Claims take
``queued``/``deferred`` rows that are due, plus ``sending`` rows whose lease
is free or expired (a crashed sender's); every state change is committed.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable
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
    null,
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
    mailings,
    memberships,
    subscribers,
)

CLAIMABLE = ("queued", "deferred")


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


def _claimable(mailing_id: int, at: datetime, due_by: datetime | None = None) -> Any:
    lease_free = or_(deliveries.c.lease_owner.is_(None), deliveries.c.lease_expires_at < at)
    due_at = at if due_by is None else min(at, due_by)
    due = or_(deliveries.c.next_attempt_at.is_(None), deliveries.c.next_attempt_at <= due_at)
    # A row left in 'sending' by a crashed process is claimable once its lease is free:
    # it may have gone out already (≤ concurrency duplicates), but nobody is skipped.
    return and_(
        deliveries.c.mailing_id == mailing_id,
        deliveries.c.status.in_((*CLAIMABLE, "sending")),
        due,
        lease_free,
    )


def claim(
    engine: Engine,
    mailing_id: int,
    owner: str,
    limit: int,
    lease_seconds: float,
    *,
    due_by: datetime | None = None,
) -> tuple[list[Claimed], int]:
    """Lease up to `limit` due deliveries; skip those no longer mailable.

    `due_by`: only deferred rows due by then (a pass that does not wait leaves
    those deferred during the pass for the next one).

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
            ids = select(deliveries.c.id).where(_claimable(mailing_id, at, due_by)).limit(limit)
            conn.execute(
                update(deliveries)
                # The condition again outside the subquery: on PostgreSQL a
                # concurrent claimer's rows fail this re-check after the row lock.
                .where(
                    deliveries.c.id.in_(ids.scalar_subquery()), _claimable(mailing_id, at, due_by)
                )
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
        lease_owner=null(),
        lease_expires_at=null(),
        updated_at=bindparam("_at", type_=UtcDateTime),
    )
)


def record_many(bind: Engine | Connection, outcomes: list[tuple[int, Outcome]]) -> None:
    """Commit several deliveries' new states in one transaction (group commit)."""
    try:
        if isinstance(bind, Connection):
            with bind.begin():
                bind.execute(_RECORD_MANY, _record_params(outcomes))
        else:
            with bind.begin() as conn:
                conn.execute(_RECORD_MANY, _record_params(outcomes))
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot record {len(outcomes)} deliveries: {exc}") from exc


def _record_params(outcomes: list[tuple[int, Outcome]]) -> list[dict[str, Any]]:
    at = now()
    return [
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


class LedgerWriter:
    """`record_many` for the recorder thread, on the driver's own connection.

    The ledger's hottest write: profiled, SQLAlchemy's transaction and per-row
    bind processing cost three times SQLite's own work (~73 µs of CPU per
    commit of two outcomes against ~24 µs here), all of it under the GIL that
    the sending threads need.  So the statement is compiled once for the
    dialect and run with driver-level parameters; datetimes are converted
    once per group.  The connection must be this writer's alone.
    """

    def __init__(self, conn: Connection) -> None:
        dialect = conn.dialect
        compiled = _RECORD_MANY.compile(dialect=dialect)
        self.sql = compiled.string
        self.names = list(compiled.positiontup or ()) if compiled.positional else None
        process = UtcDateTime().bind_processor(dialect)
        self.stamp: Any = process if process is not None else (lambda value: value)
        self.driver: Any = conn.connection.driver_connection
        self.errors: Any = dialect.loaded_dbapi.Error
        # SQLite runs with the driver's own transaction handling off (see
        # store._sqlite_pragmas), so the write lock is taken explicitly, as
        # every other writer does; other drivers begin implicitly.
        self.begin = "BEGIN IMMEDIATE" if dialect.name == "sqlite" else None

    def write(self, outcomes: list[tuple[int, Outcome]]) -> None:
        """Commit these outcomes in one transaction, or none of them."""
        cursor = self.driver.cursor()
        try:
            if self.begin is not None:
                cursor.execute(self.begin)
            try:
                cursor.executemany(self.sql, self._parameters(outcomes))
                if self.begin is not None:
                    cursor.execute("COMMIT")
                else:
                    self.driver.commit()
            except BaseException:
                self.driver.rollback() if self.begin is None else cursor.execute("ROLLBACK")
                raise
        except self.errors as exc:
            raise StoreError(f"cannot record {len(outcomes)} deliveries: {exc}") from exc
        finally:
            cursor.close()

    def _parameters(self, outcomes: list[tuple[int, Outcome]]) -> list[Any]:
        at = self.stamp(now())
        stamp = self.stamp
        rows = [
            {
                "_id": delivery_id,
                "_status": o.status,
                "_attempts": o.attempts,
                "_code": o.code,
                "_text": o.text,
                "_next": None if o.next_attempt_at is None else stamp(o.next_attempt_at),
                "_mid": o.message_id,
                "_sent": at if o.status == "sent" else None,
                "_at": at,
            }
            for delivery_id, o in outcomes
        ]
        if self.names is None:
            return rows
        names = self.names
        return [tuple(row[name] for name in names) for row in rows]


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
