"""Queries on mailings and deliveries: states, counts, who planned what.

Claiming under a database lease and recording outcomes live in
`store.leases`, planning snapshots in `store.snapshots`, counts by status in
`store.tallies`, a withdrawn automatic mailing's states in `store.halts`
(all re-exported here).  Every
state transition is its own committed transaction: after ``kill -9`` the
ledger says exactly which messages may have been in flight.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, func, or_, select, update

from newsletter.store import insert_or_ignore, now
from newsletter.store.halts import (
    ACTIVE,
    AUTOMATIC,
    EXPLICIT,
    HALTED,
    HANDED_OVER,
    STOPPED,
    halted_now,
    later_generation,
    not_halted,
)

# Claiming and recording live in `store.leases`, planning in
# `store.snapshots`; re-exported for callers that know them from here.
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
from newsletter.store.schema import deliveries, lists, mailings, memberships, subscribers
from newsletter.store.snapshots import (
    INSERT_BATCH,
    Earlier,
    delivered_before,
    first_joined_members,
    ledger_key,
    lock_post,
    mailing_ledger_key,
    snapshot,
    snapshot_list,
)
from newsletter.store.tallies import (
    OPEN_STATUSES,
    STATUSES,
    counts,
    has_open,
    has_sent,
    open_count,
    shown_counts,
)


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
    origin: str = AUTOMATIC  # who planned it: AUTOMATIC (the daemon) or EXPLICIT (`send`)


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
        mailings.c.origin,
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
        origin=row[12],
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
    origin: str = EXPLICIT,
) -> int | None:
    """The new mailing's id; None when another process planned it first.

    `ledger_key`: the number in its deliveries' ids (`ledger_key`); planning
    always gives one.  `origin`: who plans it (`store.halts`).

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
        "origin": origin,
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


def next_due(conn: Connection, mailing_id: int) -> datetime | None:
    """When the earliest open delivery of a mailing becomes claimable."""
    query = select(func.min(func.coalesce(deliveries.c.next_attempt_at, deliveries.c.updated_at)))
    return conn.scalar(
        query.where(deliveries.c.mailing_id == mailing_id, deliveries.c.status.in_(OPEN_STATUSES))
    )


def set_state(
    engine: Engine,
    mailing_id: int,
    state: str,
    *,
    paused_until: datetime | None = None,
    last_error: str | None = None,
    over_halt: bool = False,
) -> None:
    """Move a mailing on.  A withdrawn, postponed or cancelled one
    (`store.halts`) stays so unless `over_halt`: a pass that ends after its
    mailing was halted must not undo that, except to say it finished.  Then
    the halt's note goes with the halt ("the rest get it when ..." is no
    longer true: nobody is left), unless the rest went elsewhere: to a later
    mailing of the same post and list (a re-planned digest, `send
    --resend`), or, for a cancel, to another list's mailing of the post
    (`HANDED_OVER`).  Then the note says so and `status` keeps showing it,
    or a finished mailing of two readers out of a list of thousands would
    say nothing of why.  An earlier pass's last error stays."""
    values: dict[str, Any] = {"state": state, "paused_until": paused_until}
    if state == "done":
        values["finished_at"] = now()
    if over_halt:
        error = mailings.c.last_error if last_error is None else last_error
        values["last_error"] = case(
            (and_(mailings.c.state.in_(STOPPED), _rest_went_elsewhere()), mailings.c.last_error),
            (mailings.c.state.in_(STOPPED), last_error),
            else_=error,
        )
    elif last_error is not None:
        values["last_error"] = last_error
    query = update(mailings).where(mailings.c.id == mailing_id)
    if not over_halt:
        query = query.where(not_halted())
    with engine.begin() as conn:
        conn.execute(query.values(values))


def _rest_went_elsewhere() -> Any:
    """A later mailing of the same post and list exists (where a halt sent the
    rest), or the note names another list's mailing that took some readers."""
    return or_(later_generation(), mailings.c.last_error.contains(HANDED_OVER, autoescape=True))


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


def open_gate(conn: Connection, mailing_id: int) -> None:
    """The mailing goes ahead without its page check (the owner's `send`, or
    `wait_for_page` turned off): a waiting or held one is sending, so no
    later check gates it again, and the check's note goes, or `status` would
    tell the owner of a finished mailing to act on it."""
    conn.execute(
        update(mailings)
        .where(mailings.c.id == mailing_id, mailings.c.state.in_(("waiting", "held")))
        .values(state="sending", paused_until=None, last_error=None)
    )


def note_error(engine: Engine, mailing_id: int, error: str) -> None:
    """Why a pass could not deliver this mailing at all (its post is gone, its
    template broke): `status` shows it as the mailing's last error."""
    with engine.begin() as conn:
        conn.execute(update(mailings).where(mailings.c.id == mailing_id).values(last_error=error))


def sent_since(conn: Connection, since: datetime) -> tuple[int, datetime | None]:
    """How many messages went out since `since`, and the oldest such send time."""
    row = conn.execute(
        select(func.count(), func.min(deliveries.c.sent_at)).where(
            deliveries.c.status == "sent", deliveries.c.sent_at >= since
        )
    ).one()
    return int(row[0]), row[1]


def mailings_with_work(conn: Connection) -> Iterator[int]:
    """Mailings that are not done (planned, sending, paused), oldest first.

    Withdrawn and postponed ones (`store.halts`) wait for the daemon to
    resume them, or for the owner's `send`; cancelled ones for the owner's `send`.
    """
    query = (
        select(mailings.c.id)
        .where(mailings.c.state != "done", mailings.c.state.not_in(STOPPED))
        .order_by(mailings.c.id)
    )
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


def post_mailings(conn: Connection) -> list[tuple[int, str, str, str]]:
    """(mailing id, post id, list, state) for every post a mailing carries
    (a digest: each of its posts), oldest mailing first."""
    query = (
        select(
            mailings.c.id, mailings.c.post_id, lists.c.name, mailings.c.state, mailings.c.post_ids
        )
        .join(lists, lists.c.id == mailings.c.list_id)
        .order_by(mailings.c.id)
    )
    found: list[tuple[int, str, str, str]] = []
    for mailing_id, post_id, list_name, state, post_ids in conn.execute(query):
        for pid in post_ids or (post_id,):
            found.append((int(mailing_id), str(pid), str(list_name), str(state)))
    return found


def open_recipients(conn: Connection, mailing_id: int) -> Iterator[str]:
    """Addresses of a mailing's deliveries not yet finished, streamed."""
    query = (
        select(deliveries.c.email)
        .where(deliveries.c.mailing_id == mailing_id, deliveries.c.status.in_(OPEN_STATUSES))
        .order_by(deliveries.c.id)
        .execution_options(yield_per=1000)
    )
    yield from conn.execute(query).scalars()


def open_in_active(conn: Connection) -> int:
    """Deliveries not yet sent, failed or skipped of every mailing still being
    sent (not halted, cancelled or done): what the next `run` goes on with."""
    query = (
        select(func.count())
        .select_from(deliveries)
        .join(mailings, mailings.c.id == deliveries.c.mailing_id)
        .where(deliveries.c.status.in_(OPEN_STATUSES), mailings.c.state.in_(ACTIVE))
    )
    return int(conn.scalar(query) or 0)


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
    "AUTOMATIC",
    "CLAIMABLE",
    "EXPLICIT",
    "HALTED",
    "INSERT_BATCH",
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
    "halted_now",
    "has_open",
    "has_sent",
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
    "open_count",
    "open_in_active",
    "open_recipients",
    "owner_identity",
    "post_mailings",
    "record",
    "record_many",
    "release",
    "renew",
    "sent_since",
    "set_gate",
    "set_state",
    "shown_counts",
    "snapshot",
    "snapshot_list",
]
