"""Queries on mailings and deliveries: planning snapshots, states, counts.

Claiming under a database lease and recording outcomes live in
`store.leases` (re-exported here).  Every state transition is its own
committed transaction: after ``kill -9`` the ledger says exactly which
messages may have been in flight.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    and_,
    func,
    literal,
    or_,
    select,
    update,
)

from newsletter.store import insert_or_ignore, now

# Claiming and recording live in `store.leases`; re-exported for callers
# that know them from here.
from newsletter.store.leases import (
    CLAIMABLE,
    Claimed,
    OwnerLock,
    active_senders,
    claim,
    claimable_left,
    free_dead_leases,
    lease_owner,
    owner_identity,
    release,
    renew,
)
from newsletter.store.outcomes import LedgerWriter, Outcome, record, record_many
from newsletter.store.schema import (
    KEY_SHIFT,
    UtcDateTime,
    deliveries,
    delivery_id,
    ledger_keys,
    lists,
    mailings,
    memberships,
    subscribers,
)

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
    ledger_key: int | None = None,
) -> int | None:
    """The new mailing's id; None when another process planned it first.

    `ledger_key`: the number in its deliveries' ids (`ledger_key`); planning
    always gives one.

    Idempotent on uq_mailing_post_list: two daemons planning the same post at
    once get one mailing (the loser waits for the winner's commit, then finds
    its row), never a unique violation.
    """
    values = {
        "post_id": post_id,
        "list_id": list_id,
        "kind": kind,
        "generation": generation,
        "subject": subject,
        "state": "planned",
        "post_ids": list(post_ids),
        "created_at": now(),
        "ledger_key": ledger_key,
    }
    if not insert_or_ignore(conn, mailings, values, ("post_id", "list_id", "generation")):
        return None
    return conn.scalar(
        select(mailings.c.id).where(
            mailings.c.post_id == post_id,
            mailings.c.list_id == list_id,
            mailings.c.generation == generation,
        )
    )


def ledger_key(conn: Connection, post_id: str | None) -> int:
    """The key for a new mailing's delivery ids (see `schema.ledger_keys`).

    A post id: that post's key, shared by all its deduplicated mailings, made
    by whoever comes first (the unique column settles a race between hosts).
    None: a fresh key of the mailing's own.
    """
    if post_id is None:
        made = conn.execute(ledger_keys.insert().values(post_id=None))
        key = made.inserted_primary_key[0] if made.inserted_primary_key else None
    else:
        insert_or_ignore(conn, ledger_keys, {"post_id": post_id}, ("post_id",))
        key = conn.scalar(select(ledger_keys.c.id).where(ledger_keys.c.post_id == post_id))
    if key is None:  # pragma: no cover - the insert above just made it
        raise ValueError(f"no ledger key for {post_id!r}")
    return int(key)


def mailing_ledger_key(conn: Connection, mailing_id: int) -> int:
    key = conn.scalar(select(mailings.c.ledger_key).where(mailings.c.id == mailing_id))
    if key is None:
        raise ValueError(f"mailing {mailing_id} has no ledger key (planned before schema 7)")
    return int(key)


def snapshot(conn: Connection, mailing_id: int, members: Iterable[tuple[int, str]]) -> int:
    """Insert one queued delivery per (subscriber_id, email), streamed in batches.

    The ids come from the mailing's ledger key (`schema.delivery_id`), so the
    primary key refuses a second delivery to one subscriber under that key:
    in this mailing, and for a deduplicated post in any mailing of the post.
    """
    key = mailing_ledger_key(conn, mailing_id)
    stamp = now()
    total = 0
    batch: list[dict[str, Any]] = []
    for subscriber_id, email in members:
        batch.append(
            {
                "id": delivery_id(key, subscriber_id),
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


def lock_post(conn: Connection, post_id: str) -> None:
    """Planners of one post take turns until the end of the transaction (PostgreSQL).

    Two hosts planning the same post for two lists at once would each queue
    a member of both lists, unseen by the other's NOT EXISTS; the dedupe
    index would then make one wait for the other's commit and fail with a
    unique violation, losing its whole plan.  Taking turns, the second sees
    the first's rows (each statement reads what is committed) and leaves
    those members out.  A lock per post, not ON CONFLICT DO NOTHING on every
    row: that checked each of a million rows against the index before
    inserting it (a fifth of the time of planning).  SQLite's planners
    already take turns (BEGIN IMMEDIATE).
    """
    if conn.dialect.name != "postgresql":
        return
    digest = hashlib.sha256(f"plan:{post_id}".encode()).digest()
    conn.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest[:8], "big", signed=True))))


@dataclass(frozen=True)
class Earlier:
    """Where a deduplicated plan looks for people who already have the post.

    `key`: the post's ledger key when rows under it exist (a primary-key
    probe per member); `post_id`: the post when rows planned before schema 7
    carry it as dedupe_key (uq_deliveries_dedupe).  Both None: nobody has it
    yet, and the per-member look-ups are left out (a million index probes
    that could find nothing: a fifth of planning on PostgreSQL).
    """

    key: int | None = None
    post_id: str | None = None


def delivered_before(conn: Connection, key: int, post_id: str) -> Earlier:
    """Whether any mailing already holds a delivery of this post (two index probes)."""
    low, high = key * KEY_SHIFT, (key + 1) * KEY_SHIFT - 1
    keyed = select(deliveries.c.id).where(deliveries.c.id.between(low, high)).limit(1)
    legacy = select(deliveries.c.id).where(deliveries.c.dedupe_key == post_id).limit(1)
    return Earlier(
        key if conn.execute(keyed).first() is not None else None,
        post_id if conn.execute(legacy).first() is not None else None,
    )


def snapshot_list(
    conn: Connection,
    mailing_id: int,
    list_id: int,
    key: int,
    *,
    rival_list_ids: Iterable[int] = (),
    dedupe: bool = False,
    earlier: Earlier = Earlier(),
) -> int:
    """One queued delivery per chosen member of the list, by INSERT … SELECT.

    A million recipients never pass through Python.  The members are those
    of `audience.members.mailable_members` (active, not unsubscribed from this
    list); with `dedupe`, those of `first_joined_members` (the `earlier`
    deliveries of the post left out).  Each row's id is `delivery_id(key,
    subscriber)`, computed here, not drawn from a sequence row by row.
    """
    chosen = _members_query(list_id, rival_list_ids, dedupe, earlier)
    rows = select(
        literal(key * KEY_SHIFT, BigInteger) + chosen.c.id,
        literal(mailing_id),
        chosen.c.id,
        chosen.c.email,
        literal("queued"),
        literal(0),
        literal(now(), UtcDateTime),
    )
    columns = ["id", "mailing_id", "subscriber_id", "email", "status", "attempts", "updated_at"]
    result = conn.execute(deliveries.insert().from_select(columns, rows))
    return int(result.rowcount)


def first_joined_members(
    conn: Connection, list_id: int, rival_list_ids: Iterable[int], earlier: Earlier
) -> Iterator[tuple[int, str]]:
    """Mailable members of a list who get the post through it, streamed.

    A member also on a rival list (one the same post is planned for now) is
    left to that list when they joined it first (ties: the older list); one
    who already has a delivery of this post (`earlier`) is left out.
    """
    query = select(_members_query(list_id, rival_list_ids, True, earlier)).execution_options(
        yield_per=1000
    )
    for row in conn.execute(query):
        yield int(row.id), str(row.email)


def _members_query(
    list_id: int,
    rival_list_ids: Iterable[int],
    dedupe: bool,
    earlier: Earlier = Earlier(),
) -> Any:
    """(id, email) of the list's mailable members in id order, as a subquery."""
    mine = memberships.alias("mine")
    query = (
        select(subscribers.c.id, subscribers.c.email)
        .join(mine, mine.c.subscriber_id == subscribers.c.id)
        .where(
            mine.c.list_id == list_id,
            mine.c.unsubscribed_at.is_(None),
            subscribers.c.status == "active",
        )
        .order_by(subscribers.c.id)
    )
    if not dedupe:
        return query.subquery()
    for already in _already_has(mine, earlier):
        query = query.where(~already)
    rivals = [r for r in rival_list_ids if r != list_id]
    if rivals:
        rival = memberships.alias("rival")
        first = (
            select(rival.c.list_id)
            .where(
                rival.c.subscriber_id == mine.c.subscriber_id,
                rival.c.list_id.in_(rivals),
                rival.c.unsubscribed_at.is_(None),
                or_(
                    rival.c.created_at < mine.c.created_at,
                    and_(rival.c.created_at == mine.c.created_at, rival.c.list_id < list_id),
                ),
            )
            .exists()
        )
        query = query.where(~first)
    return query.subquery()


def _already_has(mine: Any, earlier: Earlier) -> list[Any]:
    """EXISTS clauses: the member (of `mine`) has a delivery of this post in any mailing."""
    clauses = []
    if earlier.key is not None:  # one primary-key probe
        own_id = literal(earlier.key * KEY_SHIFT, BigInteger) + mine.c.subscriber_id
        clauses.append(select(deliveries.c.id).where(deliveries.c.id == own_id).exists())
    if earlier.post_id is not None:  # rows planned before schema 7
        clauses.append(
            select(deliveries.c.id)
            .where(
                deliveries.c.dedupe_key == earlier.post_id,
                deliveries.c.subscriber_id == mine.c.subscriber_id,
            )
            .exists()
        )
    return clauses


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


def set_gate(
    engine: Engine,
    mailing_id: int,
    state: str,
    paused_until: datetime | None,
    note: str | None,
) -> None:
    """The page check's verdict: state, next check and the note `status` shows.

    Only an unstarted mailing moves, so a check that races a sending
    process never drags its mailing back.
    """
    with engine.begin() as conn:
        conn.execute(
            update(mailings)
            .where(mailings.c.id == mailing_id, mailings.c.state.in_(("planned", "waiting")))
            .values(state=state, paused_until=paused_until, last_error=note)
        )


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


__all__ = [
    "CLAIMABLE",
    "OPEN_STATUSES",
    "STATUSES",
    "Claimed",
    "Earlier",
    "LedgerWriter",
    "MailingRow",
    "Outcome",
    "OwnerLock",
    "active_senders",
    "all_mailings",
    "claim",
    "claimable_left",
    "counts",
    "delivered_before",
    "first_joined_members",
    "free_dead_leases",
    "get_mailing",
    "has_open",
    "insert_mailing",
    "latest_mailing",
    "lease_owner",
    "ledger_key",
    "list_id",
    "lock_post",
    "mailed_pairs",
    "mailing_ledger_key",
    "mailings_with_work",
    "member_count",
    "next_due",
    "open_recipients",
    "owner_identity",
    "record",
    "record_many",
    "release",
    "renew",
    "sent_since",
    "set_gate",
    "set_state",
    "snapshot",
    "snapshot_list",
]
