"""Unsubscribes made through a link, and the undo that reverses exactly one.

`POST /unsubscribe/<token>` records what it changed in `unsubscribe_events`:
the subscriber's status (a global token) or one membership (a per-list
token), and the stamp it wrote.  The page's *Subscribe again* button may then
reverse that change, and only that change, for `UNDO_WINDOW`:

* no event (the POST changed nothing: the address was already unsubscribed,
  removed or suppressed by the owner, an import, a bounce): nothing to undo;
* the row no longer carries the event's stamp (the owner resubscribed and
  unsubscribed it again since, or a bounce came in): nothing to undo;
* a per-list event while the subscriber is not active (a bounce, a
  complaint, an unsubscribe from every list since): putting the membership
  back would send nothing, so the page offers no undo and nothing is
  recorded;
* older than the window: refused, so an old forwarded email cannot put an
  address back on a list.

Everything else stays with the owner: `subscribers resubscribe`, `import
--resubscribe` (invariant 3).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, select, update

from newsletter.audience import consent
from newsletter.audience import members as subs
from newsletter.store import now
from newsletter.store.schema import memberships, subscribers, unsubscribe_events

UNDO_WINDOW = timedelta(minutes=15)

UndoOutcome = Literal["undone", "expired", "nothing"]

_STATUS = "status"
_MEMBERSHIP = "membership"
_NEW_MEMBERSHIP = "new_membership"


def unsubscribe_by_link(
    bind: subs.Bind, subscriber_id: int, list_name: str | None, *, reason: str
) -> bool:
    """`subs.unsubscribe`, recording what it changed; returns whether it changed anything."""
    with subs.writing(bind) as conn:
        lid = subs.list_id(conn, list_name) if list_name is not None else None
        status_before = conn.scalar(
            select(subscribers.c.status).where(subscribers.c.id == subscriber_id)
        )
        was_member = lid is not None and _membership_stamp(conn, subscriber_id, lid) != _ABSENT
        changed = subs.unsubscribe(
            conn, subscriber_id, list_name, reason=reason, source="one-click"
        )
        if changed:
            conn.execute(
                unsubscribe_events.insert().values(
                    subscriber_id=subscriber_id,
                    list_id=lid,
                    **_what_changed(conn, subscriber_id, lid, was_member, status_before),
                )
            )
        return changed


def _what_changed(
    conn: Connection, subscriber_id: int, lid: int | None, was_member: bool, status: str | None
) -> dict[str, Any]:
    if lid is None:
        stamp = conn.scalar(
            select(subscribers.c.status_changed_at).where(subscribers.c.id == subscriber_id)
        )
        return {"change": _STATUS, "previous_status": status, "changed_at": stamp}
    change = _MEMBERSHIP if was_member else _NEW_MEMBERSHIP
    return {"change": change, "changed_at": _membership_stamp(conn, subscriber_id, lid)}


def undoable(
    bind: subs.Bind, subscriber_id: int, list_name: str | None, *, at: datetime | None = None
) -> bool:
    """Whether the undo button would reverse something now (the page shows it only then)."""
    at = at or now()
    with subs.reading(bind) as conn:
        event = _latest(conn, subscriber_id, list_name)
        return (
            event is not None and event.changed_at >= at - UNDO_WINDOW and _still_ours(conn, event)
        )


def undo(
    bind: subs.Bind, subscriber_id: int, list_name: str | None, *, at: datetime | None = None
) -> UndoOutcome:
    """Reverse this link's own last unsubscribe, in one transaction."""
    at = at or now()
    with subs.writing(bind) as conn:
        event = _latest(conn, subscriber_id, list_name)
        if event is None:
            return "nothing"
        if event.changed_at < at - UNDO_WINDOW:
            return "expired"
        if not _still_ours(conn, event) or not _reverse(conn, event, at):
            return "nothing"
        conn.execute(
            update(unsubscribe_events)
            .where(unsubscribe_events.c.id == event.id)
            .values(undone_at=at)
        )
        consent.record(conn, subscriber_id, "resubscribe", "one-click", list_name, "undo", at)
        return "undone"


# --------------------------------------------------------------------------- helpers

_ABSENT = "absent"  # no membership row at all (distinct from a None stamp)


def _membership_stamp(conn: Connection, subscriber_id: int, lid: int) -> Any:
    row = conn.execute(
        select(memberships.c.unsubscribed_at).where(
            memberships.c.subscriber_id == subscriber_id, memberships.c.list_id == lid
        )
    ).first()
    return _ABSENT if row is None else row.unsubscribed_at


def _latest(conn: Connection, subscriber_id: int, list_name: str | None) -> Any:
    """The newest event of this token's scope that was not undone yet."""
    query = select(unsubscribe_events).where(
        unsubscribe_events.c.subscriber_id == subscriber_id,
        unsubscribe_events.c.undone_at.is_(None),
    )
    if list_name is None:
        query = query.where(unsubscribe_events.c.list_id.is_(None))
    else:
        query = query.where(unsubscribe_events.c.list_id == subs.list_id(conn, list_name))
    return conn.execute(query.order_by(unsubscribe_events.c.id.desc()).limit(1)).first()


def _status_is_ours(event: Any) -> Any:
    return (
        subscribers.c.id == event.subscriber_id,
        subscribers.c.status == subs.UNSUBSCRIBED,
        subscribers.c.status_changed_at == event.changed_at,
    )


def _membership_is_ours(event: Any) -> Any:
    return (
        memberships.c.subscriber_id == event.subscriber_id,
        memberships.c.list_id == event.list_id,
        memberships.c.unsubscribed_at == event.changed_at,
    )


def _still_ours(conn: Connection, event: Any) -> bool:
    """The row still carries the stamp this event wrote (nothing changed it
    since), and undoing it would make the address mailable again."""
    if event.change == _STATUS:
        query = select(subscribers.c.id).where(*_status_is_ours(event))
    else:
        query = (
            select(memberships.c.list_id)
            .join(subscribers, subscribers.c.id == memberships.c.subscriber_id)
            .where(*_membership_is_ours(event), subscribers.c.status == subs.ACTIVE)
        )
    return conn.execute(query).first() is not None


def _reverse(conn: Connection, event: Any, at: datetime) -> bool:
    if event.change == _STATUS:
        result = conn.execute(
            update(subscribers)
            .where(*_status_is_ours(event))
            .values(
                status=event.previous_status or subs.ACTIVE,
                status_reason="unsubscribe undone",
                status_changed_at=at,
                updated_at=at,
            )
        )
    elif event.change == _NEW_MEMBERSHIP:
        result = conn.execute(memberships.delete().where(*_membership_is_ours(event)))
    else:
        result = conn.execute(
            update(memberships).where(*_membership_is_ours(event)).values(unsubscribed_at=None)
        )
    return bool(result.rowcount)
