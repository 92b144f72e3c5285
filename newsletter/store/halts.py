"""A withdrawn or postponed automatic mailing, decided in the database.

The daemon plans a post's mailing when the post is published and dated (invariant
4); when the writer pulls it mid-mailing (unpublished, a draft, deleted) the rest
of the mailing is ``withdrawn``, and when they re-date it into the future it is
``postponed`` until that date (`paused_until`).  Either way nobody who got it gets
it again (invariant 1), and the rest get it when the post may go again: published
once more, or its date come (`newsletter.daemon.withdrawal` decides when).  Only
a mailing the daemon planned (`AUTOMATIC`) is halted this way: one the owner
started with `newsletter send` (`EXPLICIT`) is their choice.

Every change is one conditional UPDATE, so with several daemons on one
PostgreSQL one of them makes it (and logs it) and the others see it; claims
refuse the rows of a halted mailing in their own transaction (`store.leases`),
so a process sending it stops at its next claim (invariant 7).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, or_, select, update

from newsletter.store.schema import AUTOMATIC, EXPLICIT, deliveries, lists, mailings

WITHDRAWN = "withdrawn"
POSTPONED = "postponed"
HALTED = (WITHDRAWN, POSTPONED)
# States a halt may move a mailing out of: anything unfinished the daemon
# would send.  `held` (its page never went live) waits for the owner already.
ACTIVE = ("planned", "waiting", "sending", "paused")
_OPEN = ("queued", "deferred", "sending")

__all__ = [
    "ACTIVE",
    "AUTOMATIC",
    "EXPLICIT",
    "HALTED",
    "POSTPONED",
    "WITHDRAWN",
    "Watched",
    "halt",
    "halted_now",
    "not_halted",
    "resume",
    "take_over",
    "watched",
]


def not_halted() -> Any:
    """The WHERE clause of a mailing that is neither withdrawn nor postponed."""
    return mailings.c.state.not_in(HALTED)


@dataclass(frozen=True)
class Watched:
    """An unfinished automatic post mailing, as the daemon's review sees it."""

    id: int
    post_id: str
    list_name: str
    state: str
    paused_until: datetime | None


def watched(conn: Connection, mailing_id: int | None = None) -> list[Watched]:
    """Automatic post mailings that may be halted or resumed (one, or all)."""
    query = (
        select(
            mailings.c.id,
            mailings.c.post_id,
            lists.c.name,
            mailings.c.state,
            mailings.c.paused_until,
        )
        .join(lists, lists.c.id == mailings.c.list_id)
        .where(
            mailings.c.origin == AUTOMATIC,
            mailings.c.kind == "post",
            mailings.c.state.in_((*ACTIVE, *HALTED)),
        )
        .order_by(mailings.c.id)
    )
    if mailing_id is not None:
        query = query.where(mailings.c.id == mailing_id)
    return [Watched(*row) for row in conn.execute(query)]


def halt(
    engine: Engine, mailing_id: int, state: str, until: datetime | None, note: str
) -> str | None:
    """Withdraw or postpone an automatic mailing with recipients left.

    Returns the state it was in when this call made the change (the caller
    logs it), None when there was nothing to change: another process did it
    first, it is already so, it finished, or the owner took it over.
    """
    with engine.begin() as conn:
        before = conn.scalar(select(mailings.c.state).where(mailings.c.id == mailing_id))
        left = (
            select(deliveries.c.id)
            .where(deliveries.c.mailing_id == mailing_id, deliveries.c.status.in_(_OPEN))
            .exists()
        )
        changed = conn.execute(
            update(mailings)
            .where(
                mailings.c.id == mailing_id,
                mailings.c.origin == AUTOMATIC,
                mailings.c.state.in_((*ACTIVE, *HALTED)),
                # Already so: no write, no second log line.
                or_(
                    mailings.c.state != state,
                    mailings.c.paused_until.is_distinct_from(until),
                ),
                left,
            )
            .values(state=state, paused_until=until, last_error=note)
        ).rowcount
    return str(before) if changed else None


def resume(engine: Engine, mailing_id: int, halted_as: str) -> bool:
    """Back to work once the post may go again; True when this call did it.

    One that sent nothing yet goes back to ``planned`` (its page is checked
    again before the first message, `daemon.pagewait`), any other to ``sending``.
    """
    with engine.begin() as conn:
        started = conn.execute(
            select(deliveries.c.id)
            .where(deliveries.c.mailing_id == mailing_id, deliveries.c.status.not_in(_OPEN))
            .limit(1)
        ).first()
        changed = conn.execute(
            update(mailings)
            .where(
                mailings.c.id == mailing_id,
                mailings.c.origin == AUTOMATIC,
                mailings.c.state == halted_as,
            )
            .values(
                state="sending" if started is not None else "planned",
                paused_until=None,
                last_error=None,
            )
        ).rowcount
    return bool(changed)


def take_over(conn: Connection, mailing_id: int) -> None:
    """`newsletter send` on a mailing the daemon planned: it is the owner's now.

    The owner chose to send it (`send` refuses a draft), so the daemon no
    longer withdraws or postpones it; a halted one goes on.
    """
    conn.execute(
        update(mailings)
        .where(mailings.c.id == mailing_id, mailings.c.origin == AUTOMATIC)
        .values(origin=EXPLICIT)
    )
    conn.execute(
        update(mailings)
        .where(mailings.c.id == mailing_id, mailings.c.state.in_(HALTED))
        .values(state="sending", paused_until=None, last_error=None)
    )


def halted_now(conn: Connection, mailing_id: int, at: datetime) -> bool:
    """Whether the mailing's rows may not be claimed now: it is withdrawn, or
    postponed to a time still to come (the database's clock, `at`)."""
    query = select(mailings.c.id).where(
        mailings.c.id == mailing_id,
        or_(
            mailings.c.state == WITHDRAWN,
            and_(mailings.c.state == POSTPONED, mailings.c.paused_until > at),
        ),
    )
    return conn.execute(query).first() is not None
