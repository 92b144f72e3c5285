"""A withdrawn or postponed automatic mailing, decided in the database.

The daemon plans a post's mailing when the post is published and dated (invariant
4); when the writer pulls it mid-mailing (unpublished, a draft, deleted) the rest
of the mailing is ``withdrawn``, and when they re-date it into the future it is
``postponed`` until that date (`paused_until`).  Either way nobody who got it gets
it again (invariant 1), and the rest get it when the post may go again: published
once more, or its date come (`newsletter.daemon.withdrawal` decides when).  Only
a mailing the daemon planned (`AUTOMATIC`) is halted this way: one the owner
started with `newsletter send` (`EXPLICIT`) is their choice.

The owner's `newsletter cancel` stops any unfinished mailing for good
(``cancelled``): the daemon never resumes it; only the owner's `send` of the
same post and list sends the rest (`take_over`).  Its members who are also
on another list with a deduplicated mailing of the post get it from that
mailing instead (`store.handover`).

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

from newsletter.store.handover import HandedOver, hand_over
from newsletter.store.schema import AUTOMATIC, EXPLICIT, deliveries, lists, mailings
from newsletter.store.tallies import OPEN_STATUSES, open_rows, shown_counts

WITHDRAWN = "withdrawn"
POSTPONED = "postponed"
HALTED = (WITHDRAWN, POSTPONED)  # by the daemon, as the post allows: it may resume them
CANCELLED = "cancelled"  # by the owner: only their `send` resumes it
STOPPED = (*HALTED, CANCELLED)  # no pass works on these
# States a halt may move a mailing out of: anything unfinished the daemon
# would send.  `held` (its page never went live) waits for the owner already.
ACTIVE = ("planned", "waiting", "sending", "paused")

__all__ = [
    "ACTIVE",
    "AUTOMATIC",
    "CANCELLED",
    "EXPLICIT",
    "HALTED",
    "HANDED_OVER",
    "POSTPONED",
    "STOPPED",
    "WITHDRAWN",
    "Watched",
    "cancel",
    "halt",
    "halted_now",
    "handed_over_note",
    "is_halt_note",
    "later_generation",
    "not_halted",
    "resume",
    "supersede",
    "take_over",
    "watched",
]


# How the notes written here and by `daemon.withdrawal` begin: a finished
# mailing whose rest went to a later one keeps its note (`mailings.set_state`),
# and `status` labels it "why", not "last error".
NOTE_STARTS = (
    f"{WITHDRAWN}: ",
    f"{POSTPONED}: ",
    "cancelled by the owner",
    "superseded by mailing ",
)


def is_halt_note(note: str | None) -> bool:
    """Whether a mailing's note says why it was halted (not a delivery error)."""
    return note is not None and note.startswith(NOTE_STARTS)


def later_generation() -> Any:
    """EXISTS: a later mailing of the same post (or digest id) and list: a
    re-planned digest, a `send --resend`, where a halt sent the rest."""
    later = mailings.alias("later")
    return (
        select(later.c.id)
        .where(
            later.c.post_id == mailings.c.post_id,
            later.c.list_id == mailings.c.list_id,
            later.c.generation > mailings.c.generation,
        )
        .exists()
    )


def not_halted() -> Any:
    """The WHERE clause of a mailing that is not withdrawn, postponed or cancelled."""
    return mailings.c.state.not_in(STOPPED)


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
                open_rows(mailing_id),
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
            .where(deliveries.c.mailing_id == mailing_id, deliveries.c.status.not_in(OPEN_STATUSES))
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
    """`newsletter send` on a mailing the daemon planned, or one the owner
    cancelled: it is the owner's now.

    The owner chose to send it (`send` refuses a draft), so the daemon no
    longer withdraws or postpones it; a halted or cancelled one goes on.
    """
    conn.execute(
        update(mailings)
        .where(mailings.c.id == mailing_id, mailings.c.origin == AUTOMATIC)
        .values(origin=EXPLICIT)
    )
    conn.execute(
        update(mailings)
        .where(mailings.c.id == mailing_id, mailings.c.state.in_(STOPPED))
        .values(state="sending", paused_until=None, last_error=None)
    )


def supersede(conn: Connection, mailing_id: int, by: int) -> None:
    """`send --resend` planned mailing `by` for everyone: the unfinished older
    one of the same post and list stops for good (cancelled), or the daemon
    would resume it and its rest would get the post twice."""
    conn.execute(
        update(mailings)
        .where(mailings.c.id == mailing_id, mailings.c.state != "done")
        .values(
            state=CANCELLED,
            paused_until=None,
            last_error=f"superseded by mailing {by} (send --resend)",
        )
    )


def halted_now(conn: Connection, mailing_id: int, at: datetime) -> bool:
    """Whether the mailing's rows may not be claimed now: it is withdrawn or
    cancelled, or postponed to a time still to come (the database's clock, `at`)."""
    query = select(mailings.c.id).where(
        mailings.c.id == mailing_id,
        or_(
            mailings.c.state.in_((WITHDRAWN, CANCELLED)),
            and_(mailings.c.state == POSTPONED, mailings.c.paused_until > at),
        ),
    )
    return conn.execute(query).first() is not None


@dataclass(frozen=True)
class Cancelled:
    """What `cancel` found: the state it was in, and who got it and who not."""

    post_id: str
    list_name: str
    was: str
    changed: bool  # False: it was cancelled already, or nothing was left to send
    sent: int
    not_sent: int  # queued or deferred: they do not get it
    in_flight: int = 0  # claimed by a sending process: the messages in hand may still go
    # Members also on another list whose mailing of the post goes on
    # (`store.handover`): they get it from that list; not in `not_sent`.
    handed_over: tuple[HandedOver, ...] = ()

    @property
    def left(self) -> bool:
        """Whether anything was unfinished: otherwise there is nothing to cancel."""
        return bool(self.not_sent or self.in_flight)


def cancel(engine: Engine, mailing_id: int) -> Cancelled | None:
    """The owner's stop: an unfinished mailing is cancelled; None: no such mailing.

    One conditional UPDATE: a finished mailing stays done, and so does one
    with nothing left to send whose pass has not yet said so.  The rows still
    queued or deferred stay so, as the record of who did not get it, and the
    claims of every process refuse them from this commit on (`halted_now`).
    """
    with engine.begin() as conn:
        found = conn.execute(
            select(mailings.c.state, mailings.c.post_id, lists.c.name)
            .join(lists, lists.c.id == mailings.c.list_id)
            .where(mailings.c.id == mailing_id)
        ).first()
        if found is None:
            return None
        changed = conn.execute(
            update(mailings)
            .where(
                mailings.c.id == mailing_id,
                mailings.c.state.not_in(("done", CANCELLED)),
                open_rows(mailing_id),
            )
            .values(state=CANCELLED, paused_until=None, last_error="cancelled by the owner")
        ).rowcount
        # Only the cancel that made the change hands over: a mailing cancelled
        # by `send --resend` (`supersede`) has its rest in the new mailing.
        moved = tuple(hand_over(conn, mailing_id, CANCELLED)) if changed else ()
        if moved:
            conn.execute(
                update(mailings)
                .where(mailings.c.id == mailing_id)
                .values(last_error=f"cancelled by the owner; {handed_over_note(moved)}")
            )
        tally = shown_counts(conn, mailing_id).get(mailing_id, {})  # in this transaction
    before, post_id, list_name = found
    return Cancelled(
        post_id,
        list_name,
        str(before),
        bool(changed),
        tally.get("sent", 0),
        tally.get("queued", 0) + tally.get("deferred", 0),
        tally.get("sending", 0),
        moved,
    )


HANDED_OVER = " handed over to its mailing "  # in a note: some readers went to another list's


def handed_over_note(moved: tuple[HandedOver, ...]) -> str:
    """'2 also on list essays handed over to its mailing 7', one clause per list."""
    return "; ".join(
        f"{h.recipients} also on list {h.list_name}{HANDED_OVER}{h.mailing_id}" for h in moved
    )
