"""Claiming deliveries under a lease; renewing, releasing and reclaiming leases.

The lease lives in the database (``lease_owner``, ``lease_expires_at``), never
in process memory, and its times come from the database's clock, so several
processes on several hosts can share one database (invariant 7).  A claim
takes ``queued``/``deferred`` rows that are due, plus ``sending`` rows whose
lease is free or expired (a crashed sender's).  It selects the ids first, by
an index and in order, ``LIMIT n`` (``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
so concurrent claimers share the rows instead of colliding on them), then
updates those rows by primary key: O(batch), whatever is left to send.

Owners: each sending process is one owner (`owner_identity`).  On PostgreSQL
it holds a session advisory lock for as long as it lives (`OwnerLock`): a
row leased to an owner whose lock is free belongs to a dead process, on any
host, and is reclaimed at once.  On SQLite (one host) a dead pid says the same.
Leases are short and renewed while rows are in flight (`renew`), so a
stalled process loses them within one lease period, to other owners only: a
live owner never claims its own rows again, lapsed or not (they are in its
hands until their outcome is recorded or it releases them).
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    and_,
    bindparam,
    case,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from newsletter.errors import StoreError, database_reason
from newsletter.store import journal
from newsletter.store.halts import halted_now
from newsletter.store.held import (
    CLAIMED,
    IDS,
    db_now,
    renew_held,
    skip_leavers,
    split_mailable,
)
from newsletter.store.schema import deliveries

CLAIMABLE = ("queued", "deferred")
# `status = 'deferred'` written into the SQL, not bound: only then can SQLite
# and PostgreSQL (whose prepared statements plan for any value) prove that a
# query stays within the partial index ix_deliveries_deferred.
DEFERRED = deliveries.c.status == literal_column("'deferred'")
OWNER_ENV = "NEWSLETTER_OWNER"


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


# --------------------------------------------------------------------------- owners


def owner_identity() -> str:
    """This process as a lease owner: $NEWSLETTER_OWNER or host:pid, plus a random part.

    The random part keeps two processes that share a name (containers with
    one host name, a reused pid, one environment value) from sharing leases.
    """
    base = os.environ.get(OWNER_ENV, "").strip() or f"{socket.gethostname()}:{os.getpid()}"
    return f"{base}:{uuid.uuid4().hex[:8]}"


def lease_owner() -> str:
    """The old name of `owner_identity`."""
    return owner_identity()


def _owner_key(owner: str) -> int:
    """The owner's advisory-lock key: 64 bits of its hash, signed as PostgreSQL wants."""
    return int.from_bytes(hashlib.sha256(owner.encode()).digest()[:8], "big", signed=True)


class OwnerLock:
    """An owner's liveness: a PostgreSQL session advisory lock held on a connection of its own.

    While this process lives the lock is held; when it dies (kill -9, a lost
    host) PostgreSQL ends its session and frees the lock, and any other
    process reclaims its rows (`free_dead_leases`).  A no-op on SQLite.
    """

    def __init__(self, engine: Engine, owner: str) -> None:
        self.owner = owner
        self._conn: Connection | None = None
        if engine.dialect.name != "postgresql":
            return
        try:
            conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(select(func.pg_advisory_lock(_owner_key(owner))))
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot register lease owner {owner}: {database_reason(exc)}"
            ) from exc
        self._conn = conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.execute(select(func.pg_advisory_unlock(_owner_key(self.owner))))
            except SQLAlchemyError:
                pass  # the session's end frees it anyway
            finally:
                conn.close()

    def __enter__(self) -> OwnerLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(owner: str) -> int:
    try:
        return int(owner.split(":")[1])
    except (IndexError, ValueError):
        return -1


def free_dead_leases(engine: Engine) -> int:
    """Release the leases of owners that are no longer alive; returns how many owners.

    PostgreSQL: an owner whose advisory lock nobody holds is dead, whatever
    host it ran on.  SQLite: an owner that ran on this host under a pid that
    no longer exists.  After ``kill -9`` the lease would otherwise block the
    re-run until it expires.
    """
    recovered = journal.Recovered()
    try:
        with engine.begin() as conn:
            # SQLite: a dead owner's journaled outcomes first (store.journal), or
            # freeing its leases would send those rows again.
            journal.recover(conn, journal.folder_of(engine), recovered)
            owners = conn.execute(
                select(deliveries.c.lease_owner)
                .where(deliveries.c.lease_owner.is_not(None))
                .distinct()
            ).scalars()
            dead = [o for o in owners if _is_dead(conn, o)]
            for owner in dead:
                conn.execute(
                    update(deliveries)
                    .where(deliveries.c.lease_owner == owner)
                    .values(lease_owner=None, lease_expires_at=None)
                )
        recovered.committed()  # their journals go only now
    finally:
        recovered.close()
    return len(dead)


def _is_dead(conn: Connection, owner: str) -> bool:
    if conn.dialect.name == "postgresql":
        # Taken (for this transaction only) means nobody holds it: its owner is gone.
        return bool(conn.scalar(select(func.pg_try_advisory_xact_lock(_owner_key(owner)))))
    host = socket.gethostname()
    return owner.startswith(f"{host}:") and not _pid_alive(_owner_pid(owner))


# --------------------------------------------------------------------------- claiming


def _candidate_queries() -> list[Any]:
    """The claimable rows as three queries, each served in order by an index.

    Crashed senders' rows first (few: at most the concurrency of the dead),
    then queued rows by id (ix_deliveries_queue), then deferred rows that are
    due, oldest due first (ix_deliveries_deferred).  No query ever has to look
    past `limit` rows it can take, so a claim costs the same at the start and
    at the end of a million-row mailing.

    Built once, with bound parameters (see `_candidate_parameters`): building
    and keying the three statements anew cost ~2 ms of Python per claim,
    all of it inside the claim's write transaction.
    """
    mine = deliveries.c.mailing_id == bindparam("mailing_id")
    # An expired lease is free for anyone but its own owner: that owner is
    # alive (it is claiming) and holds the row in memory, in flight or about
    # to be; taking it again would send it twice from one live process
    # (invariant 2 allows that only after a crash).  Its outcome, or the
    # owner's `release` at the end of the pass, gives the row back.
    free = or_(
        deliveries.c.lease_owner.is_(None),
        and_(
            deliveries.c.lease_expires_at < bindparam("at"),
            deliveries.c.lease_owner != bindparam("owner", type_=deliveries.c.lease_owner.type),
        ),
    )
    due = or_(
        deliveries.c.next_attempt_at.is_(None),
        deliveries.c.next_attempt_at <= bindparam("due_at"),
    )
    limit = bindparam("limit", type_=Integer)
    return [
        select(deliveries.c.id)
        .where(mine, deliveries.c.status == "sending", free)
        .order_by(deliveries.c.id)
        .limit(limit),
        select(deliveries.c.id)
        .where(mine, deliveries.c.status == "queued", due, free)
        .order_by(deliveries.c.id)
        .limit(limit),
        select(deliveries.c.id)
        .where(mine, DEFERRED, due, free)
        .order_by(deliveries.c.next_attempt_at)
        .limit(limit),
    ]


_CANDIDATES = _candidate_queries()
# PostgreSQL: rows another claimer is taking right now are skipped, not waited
# for; the row lock re-checks the conditions on the latest committed version.
_CANDIDATES_LOCKING = [query.with_for_update(skip_locked=True) for query in _CANDIDATES]


def _candidate_parameters(
    mailing_id: int, at: datetime, due_at: datetime, owner: str
) -> dict[str, Any]:
    return {"mailing_id": mailing_id, "at": at, "due_at": due_at, "owner": owner}


def _claimable_ids(
    conn: Connection, parameters: dict[str, Any], limit: int
) -> tuple[list[int], int]:
    """The ids to claim, and how many of them (the first ones) were lapsed leases."""
    ids: list[int] = []
    lapsed = 0
    locking = conn.dialect.name == "postgresql"
    for number, query in enumerate(_CANDIDATES_LOCKING if locking else _CANDIDATES):
        if len(ids) >= limit:
            break
        ids.extend(conn.execute(query, {**parameters, "limit": limit - len(ids)}).scalars())
        if number == 0:
            lapsed = len(ids)
    return ids, lapsed


def _fold_lapsed(conn: Connection, engine: Engine, ids: list[int]) -> int:
    """SQLite: the journaled outcomes of the live owners whose lapsed rows a claim found."""
    folder = journal.folder_of(engine)
    if folder is None:
        return 0
    owners = conn.execute(
        select(deliveries.c.lease_owner).where(deliveries.c.id.in_(ids)).distinct()
    ).scalars()
    return journal.fold_lapsed(conn, folder, [o for o in owners if o is not None])


def claim(
    engine: Engine,
    mailing_id: int,
    owner: str,
    limit: int,
    lease_seconds: float,
    *,
    due_by: datetime | None = None,
    caps: Sequence[tuple[int, float]] = (),
) -> tuple[list[Claimed], int]:
    """Lease up to `limit` due deliveries to `owner`; skip those no longer mailable.

    `due_by`: only deferred rows due by then (a pass that does not wait leaves
    those deferred during the pass for the next one).  `caps`: (messages,
    window seconds) for the whole deployment (`max_per_hour`, `max_per_day`):
    what was sent in the window plus what is in flight anywhere counts.

    Returns the claimed rows and how many were marked skipped.  Joined with
    the subscriber and membership so that someone who unsubscribed (or
    bounced) after planning is marked skipped here, in the same transaction.
    Nothing of a withdrawn, postponed or cancelled mailing (`store.halts`).
    """
    try:
        with engine.begin() as conn:
            at = db_now(conn)
            if halted_now(conn, mailing_id, at):
                return [], 0
            due_at = at if due_by is None else min(at, due_by)
            if caps:
                limit = min(limit, _room(conn, at, caps))
                if limit <= 0:
                    return [], 0
            parameters = _candidate_parameters(mailing_id, at, due_at, owner)
            ids, lapsed = _claimable_ids(conn, parameters, limit)
            if lapsed and _fold_lapsed(conn, engine, ids[:lapsed]):
                ids, _ = _claimable_ids(conn, parameters, limit)  # without the rows just folded
            if not ids:
                return [], 0
            conn.execute(
                _LEASE,
                {
                    "ids": ids,
                    "owner": owner,
                    "until": at + timedelta(seconds=lease_seconds),
                    "at": at,
                },
            )
            rows, skipped = split_mailable(conn.execute(CLAIMED, {"ids": ids}).all())
            # Still on another list with this post's deduplicated mailing:
            # that list's copy, not a skip (`skip_leavers`).
            count = skip_leavers(conn, mailing_id, skipped, at)[0] if skipped else 0
            return [_claimed(row) for row in rows], count
    except SQLAlchemyError as exc:
        raise StoreError(
            f"cannot claim deliveries of mailing {mailing_id}: {database_reason(exc)}"
        ) from exc


# Claims under a cap take turns (PostgreSQL), so that two processes never both
# see the same room left; without caps claims never wait for each other.
CAP_LOCK = 0x6E6C_6361_7073  # "nlcaps"


def _room(conn: Connection, at: datetime, caps: Sequence[tuple[int, float]]) -> int:
    """Messages the deployment may still start under every cap."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(CAP_LOCK)))
    in_flight = conn.scalar(
        select(func.count()).where(
            deliveries.c.status == "sending", deliveries.c.lease_owner.is_not(None)
        )
    )
    room: int | None = None
    for cap, window in caps:
        sent = conn.scalar(
            select(func.count()).where(
                deliveries.c.status == "sent",
                deliveries.c.sent_at >= at - timedelta(seconds=window),
            )
        )
        left = cap - int(sent or 0) - int(in_flight or 0)
        room = left if room is None else min(room, left)
    return max(0, room or 0)


def active_senders(engine: Engine) -> int:
    """How many owners hold unexpired leases now (every mailing): the deployment's senders."""
    with engine.connect() as conn:
        at = db_now(conn)
        count = conn.scalar(
            select(func.count(deliveries.c.lease_owner.distinct())).where(
                deliveries.c.lease_owner.is_not(None), deliveries.c.lease_expires_at > at
            )
        )
    return int(count or 0)


def claimable_left(
    engine: Engine, mailing_id: int, *, due_by: datetime | None = None, owner: str = ""
) -> bool:
    """Whether `owner`'s claim could still find something (rows merely locked
    by another claimer count; the owner's own lapsed leases do not, see
    `_candidate_queries`).

    A claim that returns nothing while this is true lost a race: try again.
    """
    with engine.connect() as conn:
        at = db_now(conn)
        if halted_now(conn, mailing_id, at):
            return False
        due_at = at if due_by is None else min(at, due_by)
        parameters = {**_candidate_parameters(mailing_id, at, due_at, owner), "limit": 1}
        return any(conn.execute(query, parameters).first() is not None for query in _CANDIDATES)


_IDS = IDS  # the ids as one expanding parameter (`store.held`)
_LEASE = (
    update(deliveries)
    .where(deliveries.c.id.in_(_IDS))
    .values(
        status="sending",
        lease_owner=bindparam("owner", type_=deliveries.c.lease_owner.type),
        lease_expires_at=bindparam("until", type_=deliveries.c.lease_expires_at.type),
        updated_at=bindparam("at", type_=deliveries.c.updated_at.type),
    )
)


def _claimed(row: Any) -> Claimed:
    return Claimed(row[0], row[1], row[2], row[3], row[4] or "", row[5], row[6])


# --------------------------------------------------------------------------- keeping, giving back


def renew(engine: Engine, owner: str, lease_seconds: float) -> int:
    """Extend every lease `owner` holds by `lease_seconds` from now (database
    clock); how many.  A sender renews with `held.renew_held`, which names them."""
    return len(renew_held(engine, owner, lease_seconds))


def release(engine: Engine, owner: str) -> None:
    """Give back every lease this owner holds (a clean stop), leaving rows claimable.

    Raises StoreError when the database cannot be reached; nothing is lost
    then: the leases lapse and their rows go to the next claim."""
    try:
        with engine.begin() as conn:
            conn.execute(
                update(deliveries)
                .where(deliveries.c.lease_owner == owner)
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
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot give back the leases of {owner}: {database_reason(exc)}") from exc
