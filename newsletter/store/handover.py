"""Members of a cancelled deduplicated mailing handed over to another list's.

With `[email] dedupe_across_lists` a post planned for several lists queues a
member of more than one once, on the list they joined first, under the
post's one ledger key (`store.snapshots`).  When the owner cancels that
list's mailing, its other lists' mailings of the post have no row for them:
left there, they would lose a post they are due on a list nobody cancelled.
So `store.halts.cancel` hands the rows still queued or deferred of every
such member over to the mailing of another list they are still on (the one
they joined first among those), in its own transaction: the row keeps its id
(the post's ledger key and the subscriber), so the primary key still allows
one delivery of the post per person, and it goes out with that list's
footer and unsubscribe link.  Rows a sending process holds (`sending`) are
left alone: their messages may still go.

The same holds for a member who leaves the list that held their copy but
stays on another: the claim that would skip them hands them over instead
(`hand_over_leavers`, in the claim's transaction).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, case, or_, select, update

from newsletter.store import now
from newsletter.store.schema import deliveries, lists, mailings, memberships, subscribers

__all__ = ["HandedOver", "hand_over", "hand_over_leavers", "move_waiting"]

_WAITING = ("queued", "deferred")  # not yet sent, and held by no process


@dataclass(frozen=True)
class HandedOver:
    """Rows of a cancelled mailing now another list's mailing's."""

    mailing_id: int
    list_name: str
    recipients: int


def _others(conn: Connection, mailing_id: int, cancelled: str) -> list[Any]:
    """The other lists' deduplicated mailings of this mailing's post that go
    on (id, list_id, name); none for a mailing of its own ledger key."""
    found = conn.execute(
        select(mailings.c.ledger_key, mailings.c.kind).where(mailings.c.id == mailing_id)
    ).first()
    if found is None or found.ledger_key is None or found.kind != "post":
        return []
    return list(
        conn.execute(
            select(mailings.c.id, mailings.c.list_id, lists.c.name)
            .join(lists, lists.c.id == mailings.c.list_id)
            .where(
                mailings.c.ledger_key == found.ledger_key,
                mailings.c.id != mailing_id,
                mailings.c.kind == "post",
                mailings.c.state != cancelled,
            )
            .order_by(mailings.c.id)
        ).all()
    )


def hand_over_leavers(
    conn: Connection, mailing_id: int, ids: list[int], cancelled: str
) -> set[int]:
    """Of the rows a claim found no longer mailable on this mailing's list
    (`ids`, leased by that claim), those of members still on another list
    whose deduplicated mailing of the post goes on move to that mailing,
    unleased and waiting again, instead of being skipped: leaving the list
    that held their copy must not take the post from them on the list they
    stay on.  Returns the ids moved (the rest are skipped as before)."""
    others = _others(conn, mailing_id, cancelled)
    list_ids = [row.list_id for row in others]
    moved: set[int] = set()
    for other in others:
        left = [i for i in ids if i not in moved]
        if not left:
            break
        taken = deliveries.c.subscriber_id.in_(_takers(other.list_id, list_ids))
        found = conn.execute(
            select(deliveries.c.id).where(deliveries.c.id.in_(left), taken)
        ).scalars()
        chosen = [int(i) for i in found]
        if not chosen:
            continue
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id.in_(chosen))
            .values(
                mailing_id=other.id,
                # Leased by the claim that found them: back to where they were.
                status=case((deliveries.c.attempts > 0, "deferred"), else_="queued"),
                lease_owner=None,
                lease_expires_at=None,
                updated_at=now(),
            )
        )
        _reopen(conn, other.id)
        moved.update(chosen)
    return moved


def hand_over(conn: Connection, mailing_id: int, cancelled: str) -> list[HandedOver]:
    """Move the waiting rows of the cancelled mailing's members who are on
    another list with a deduplicated mailing of the same post that is not
    `cancelled`; one UPDATE per such mailing, in the caller's transaction.

    A receiving mailing that had finished goes back to ``sending`` so the
    next pass sends them.  Nothing moves for a mailing of its own ledger key
    (a digest, a resend, dedupe off): nobody else's mailing left them out.
    """
    others = _others(conn, mailing_id, cancelled)
    list_ids = [row.list_id for row in others]
    moved: list[HandedOver] = []
    for other in others:
        count = move_waiting(
            conn,
            mailing_id,
            other.id,
            deliveries.c.subscriber_id.in_(_takers(other.list_id, list_ids)),
        )
        if count:
            moved.append(HandedOver(int(other.id), str(other.name), count))
    return moved


def move_waiting(conn: Connection, source: int, target: int, *only: Any) -> int:
    """Move the source mailing's waiting rows (those matching `only`) to the
    target; a finished target goes back to ``sending`` to send them.  The
    rows keep their ids, so the primary key still refuses a second delivery
    under the same ledger key; how many moved."""
    count = int(
        conn.execute(
            update(deliveries)
            .where(deliveries.c.mailing_id == source, deliveries.c.status.in_(_WAITING), *only)
            .values(mailing_id=target, updated_at=now())
        ).rowcount
    )
    if count:
        _reopen(conn, target)
    return count


def _reopen(conn: Connection, mailing_id: int) -> None:
    """A finished mailing that was given rows goes back to ``sending`` to send them."""
    conn.execute(
        update(mailings)
        .where(mailings.c.id == mailing_id, mailings.c.state == "done")
        .values(state="sending", finished_at=None)
    )


def _takers(list_id: int, list_ids: list[int]) -> Any:
    """Subscribers the list's mailing takes: mailable members of the list who
    joined no other of `list_ids` earlier (ties: the older list), as planning
    chooses (`store.snapshots.first_joined_members`)."""
    mine = memberships.alias("mine")
    rival = memberships.alias("rival")
    earlier = (
        select(rival.c.list_id)
        .where(
            rival.c.subscriber_id == mine.c.subscriber_id,
            rival.c.list_id.in_([i for i in list_ids if i != list_id]),
            rival.c.unsubscribed_at.is_(None),
            or_(
                rival.c.created_at < mine.c.created_at,
                and_(rival.c.created_at == mine.c.created_at, rival.c.list_id < list_id),
            ),
        )
        .exists()
    )
    return (
        select(mine.c.subscriber_id)
        .join(subscribers, subscribers.c.id == mine.c.subscriber_id)
        .where(
            mine.c.list_id == list_id,
            mine.c.unsubscribed_at.is_(None),
            subscribers.c.status == "active",
            ~earlier,
        )
    )
