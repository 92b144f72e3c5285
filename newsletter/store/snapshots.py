"""Planning a mailing's recipients: the ledger key, the snapshot of a list.

Split from `store.mailings` (which re-exports every name here): what one
planning transaction runs to queue a delivery per chosen member, by
INSERT … SELECT so a million recipients never pass through Python.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Connection, and_, func, literal, or_, select

from newsletter.store import insert_or_ignore, now
from newsletter.store.schema import (
    KEY_SHIFT,
    UtcDateTime,
    deliveries,
    delivery_id,
    ledger_keys,
    mailings,
    memberships,
    subscribers,
)

INSERT_BATCH = 1000


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
    carry it as dedupe_key (uq_deliveries_dedupe); `plain_post`: the post
    when rows planned before schema 7 without a dedupe_key (schema 1, which
    had none, or a list that did not deduplicate) are in a mailing of it.
    All None: nobody has it yet, and the per-member look-ups are left out (a
    million index probes that could find nothing: a fifth of planning on
    PostgreSQL).
    """

    key: int | None = None
    post_id: str | None = None
    plain_post: str | None = None


def delivered_before(conn: Connection, key: int | None, post_id: str) -> Earlier:
    """Whether any mailing already holds a delivery of this post (three index
    probes); `key`: the post's ledger key, None when it has none yet."""
    keyed = None
    if key is not None:
        low, high = key * KEY_SHIFT, (key + 1) * KEY_SHIFT - 1
        probe = select(deliveries.c.id).where(deliveries.c.id.between(low, high)).limit(1)
        keyed = key if conn.execute(probe).first() is not None else None
    legacy = select(deliveries.c.id).where(deliveries.c.dedupe_key == post_id).limit(1)
    plain = _plain_rows(post_id).with_only_columns(deliveries.c.id).limit(1)
    return Earlier(
        keyed,
        post_id if conn.execute(legacy).first() is not None else None,
        post_id if conn.execute(plain).first() is not None else None,
    )


def first_time_readers(conn: Connection, list_id: int, post_id: str) -> list[str]:
    """The addresses a deduplicated plan of this post for this list alone
    would queue now, read only (`send --dry-run`): its mailable members but
    those an earlier mailing of the post already holds."""
    key = conn.scalar(select(ledger_keys.c.id).where(ledger_keys.c.post_id == post_id))
    chosen = _members_query(list_id, (), True, delivered_before(conn, key, post_id))
    return [str(email) for email in conn.execute(select(chosen.c.email)).scalars()]


def _plain_rows(post_id: str) -> Any:
    """Rows of this post planned before schema 7 without a dedupe_key: found
    through their mailings (a post has few), then the partial unique index
    on (mailing, subscriber) that holds exactly such rows, whose conditions
    are repeated here so that the planner takes it."""
    return (
        select(deliveries.c.id)
        .join(mailings, mailings.c.id == deliveries.c.mailing_id)
        .where(
            mailings.c.post_id == post_id,
            mailings.c.kind == "post",
            deliveries.c.dedupe_key.is_(None),
            deliveries.c.id < KEY_SHIFT,
        )
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
        # The same order as subscribers.id, but the one the membership key
        # (list_id, subscriber_id) already gives: SQLite does not carry ORDER BY
        # across the join and sorted the rows in a temporary B-tree (1M rows:
        # ~0.3 s of CPU and a sorter as big as the page cache).
        .order_by(mine.c.subscriber_id)
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
    if earlier.plain_post is not None:  # and those without a dedupe_key
        plain = _plain_rows(earlier.plain_post)
        clauses.append(plain.where(deliveries.c.subscriber_id == mine.c.subscriber_id).exists())
    return clauses
