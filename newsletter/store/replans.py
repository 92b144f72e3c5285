"""The daemon's digest re-planned without a post pulled mid-mailing.

A digest lists several posts; when the writer pulls one of them while the
digest is going out (`newsletter.daemon.withdrawal` decides that), its rest
must not get the pulled post, nor lose the others.  So, in one transaction:
the digest is ``withdrawn`` (every process sending it stops at its next
claim, as for a post's mailing, `store.halts`), a new digest of the same id
and list (the next generation, the daemon's) is made with the posts that
may still go, and the old one's rows not yet sent move to it (they keep
their ids: one delivery per person, whichever mailing holds it).  Rows a
sending process held then come back to the old one as it stops; each later
review moves them on (`sweep`).

Every post the old digest listed stays counted as mailed to the list
(`mailed_pairs` reads its `post_ids`): a pulled post that comes back is in
no later digest of the list, since those who had the first part have it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, select, update

from newsletter.store import insert_or_ignore, now
from newsletter.store.halts import ACTIVE, HALTED, WITHDRAWN, later_generation
from newsletter.store.handover import move_waiting
from newsletter.store.schema import AUTOMATIC, deliveries, lists, mailings
from newsletter.store.snapshots import ledger_key
from newsletter.store.tallies import has_open

__all__ = ["WatchedDigest", "replan", "sweep", "watched_digests"]


@dataclass(frozen=True)
class WatchedDigest:
    """An unfinished digest of the daemon's, the latest of its id and list."""

    id: int
    post_id: str  # digest:<list>:<slot>
    list_name: str
    list_title: str
    state: str
    post_ids: tuple[str, ...]


def _latest() -> Any:
    """No later generation of the same digest id and list exists."""
    return ~later_generation()


def watched_digests(conn: Connection, mailing_id: int | None = None) -> list[WatchedDigest]:
    """The daemon's digests that a pulled post may change (one, or all)."""
    query = (
        select(
            mailings.c.id,
            mailings.c.post_id,
            lists.c.name,
            lists.c.title,
            mailings.c.state,
            mailings.c.post_ids,
        )
        .join(lists, lists.c.id == mailings.c.list_id)
        .where(
            mailings.c.origin == AUTOMATIC,
            mailings.c.kind == "digest",
            mailings.c.state.in_((*ACTIVE, *HALTED)),
            _latest(),
        )
        .order_by(mailings.c.id)
    )
    if mailing_id is not None:
        query = query.where(mailings.c.id == mailing_id)
    return [
        WatchedDigest(r.id, r.post_id, r.name, r.title, r.state, tuple(r.post_ids or ()))
        for r in conn.execute(query)
    ]


def replan(
    engine: Engine, digest: WatchedDigest, keep: tuple[str, ...], subject: str, note: str
) -> int | None:
    """Withdraw the digest and move its rest to a new one of the posts in `keep`.

    `note` is the old one's `why`, with `{new}` for the new mailing's id.
    Returns the new mailing's id, or None when there was nothing to do: it
    finished, the owner took it over, its posts changed meanwhile, or
    another process re-planned it first (the next generation's unique key).
    """
    try:
        with engine.begin() as conn:
            return _replan(conn, digest, keep, subject, note)
    except _Lost:
        return None  # rolled back: another daemon made the same change first


class _Lost(Exception):
    """Another process planned the next generation first: undo this transaction."""


def _replan(
    conn: Connection, digest: WatchedDigest, keep: tuple[str, ...], subject: str, note: str
) -> int | None:
    old = conn.execute(
        select(mailings.c.list_id, mailings.c.generation).where(
            mailings.c.id == digest.id,
            mailings.c.origin == AUTOMATIC,
            mailings.c.state.in_((*ACTIVE, *HALTED)),
        )
    ).first()
    if old is None or not has_open(conn, digest.id):
        return None
    values = {
        "post_id": digest.post_id,
        "list_id": old.list_id,
        "kind": "digest",
        "generation": old.generation + 1,
        "subject": subject,
        "state": "planned",
        "post_ids": list(keep),
        "created_at": now(),
        "ledger_key": ledger_key(conn, None),
        "origin": AUTOMATIC,
    }
    if not insert_or_ignore(conn, mailings, values, ("post_id", "list_id", "generation")):
        raise _Lost  # its fresh ledger key goes with the rollback
    new = conn.scalar(
        select(mailings.c.id).where(
            mailings.c.post_id == digest.post_id,
            mailings.c.list_id == old.list_id,
            mailings.c.generation == old.generation + 1,
        )
    )
    assert new is not None
    conn.execute(
        update(mailings)
        .where(mailings.c.id == digest.id)
        .values(state=WITHDRAWN, paused_until=None, last_error=note.format(new=new))
    )
    move_waiting(conn, digest.id, int(new))
    return int(new)


def sweep(engine: Engine) -> int:
    """Rows that came back to a re-planned digest (a sending process held
    them when it was withdrawn) move on to its successor; how many."""
    old, nxt = mailings.alias("old"), mailings.alias("nxt")
    pairs = select(old.c.id, nxt.c.id).join(
        nxt,
        and_(
            nxt.c.post_id == old.c.post_id,
            nxt.c.list_id == old.c.list_id,
            nxt.c.generation == old.c.generation + 1,
            nxt.c.origin == AUTOMATIC,
            nxt.c.kind == "digest",
            nxt.c.state.in_((*ACTIVE, *HALTED, "done")),
        ),
    )
    pairs = pairs.where(
        old.c.kind == "digest",
        old.c.origin == AUTOMATIC,
        old.c.state == WITHDRAWN,
        select(deliveries.c.id)
        .where(deliveries.c.mailing_id == old.c.id, deliveries.c.status.in_(("queued", "deferred")))
        .exists(),
    )
    moved = 0
    with engine.begin() as conn:
        for source, target in conn.execute(pairs).all():
            mine = deliveries.alias("mine")
            already = (
                select(mine.c.id)
                .where(
                    mine.c.mailing_id == target,
                    mine.c.subscriber_id == deliveries.c.subscriber_id,
                )
                .exists()
            )
            moved += move_waiting(conn, int(source), int(target), ~already)
    return moved
