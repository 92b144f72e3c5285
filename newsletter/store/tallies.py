"""A mailing's deliveries counted by status.

One GROUP BY, shared by `store.mailings` (status, reports, the daemon's log
lines) and `store.halts` (`cancel` counts inside its own transaction, so the
numbers it prints are the ones its UPDATE saw).  It lives below both because
`store.mailings` imports `store.halts`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, Exists, func, select

from newsletter.store.schema import deliveries

__all__ = [
    "OPEN_STATUSES",
    "STATUSES",
    "changed_since",
    "counts",
    "has_open",
    "has_sent",
    "open_count",
    "open_rows",
    "shown_counts",
    "with_journaled",
]

OPEN_STATUSES = ("queued", "deferred", "sending")  # not yet sent, failed or skipped
STATUSES = ("queued", "sending", "sent", "deferred", "failed", "skipped")


def counts(conn: Connection, mailing_id: int | None = None) -> dict[int, dict[str, int]]:
    """{mailing_id: {status: n}} for one or every mailing, read on `conn`
    (inside the caller's transaction when it has one)."""
    query = select(deliveries.c.mailing_id, deliveries.c.status, func.count()).group_by(
        deliveries.c.mailing_id, deliveries.c.status
    )
    if mailing_id is not None:
        query = query.where(deliveries.c.mailing_id == mailing_id)
    result: dict[int, dict[str, int]] = {}
    for mid, status, n in conn.execute(query):
        result.setdefault(int(mid), {})[str(status)] = int(n)
    return result


def shown_counts(conn: Connection, mailing_id: int | None = None) -> dict[int, dict[str, int]]:
    """`counts` as `status` and `cancel` show them: a row left "sending" by a
    sender that is gone (its lease freed: no owner) is queued again, or
    deferred once tried, as a clean stop would have left it (`leases.release`);
    only a row some live process holds is in flight."""
    result = counts(conn, mailing_id)
    busy = [mid for mid, by in result.items() if by.get("sending")]
    if not busy:
        return result
    tried = deliveries.c.attempts > 0
    unowned = (
        select(deliveries.c.mailing_id, tried, func.count())
        .where(
            deliveries.c.mailing_id.in_(busy),
            deliveries.c.status == "sending",
            deliveries.c.lease_owner.is_(None),
        )
        .group_by(deliveries.c.mailing_id, tried)
    )
    for mid, was_tried, n in conn.execute(unowned):
        by = result[int(mid)]
        by["sending"] -= int(n)
        key = "deferred" if was_tried else "queued"
        by[key] = by.get(key, 0) + int(n)
        if not by["sending"]:
            del by["sending"]
    return result


def changed_since(
    conn: Connection, since: datetime, mailing_id: int | None = None
) -> dict[str, int]:
    """{status: n} of the deliveries (of one mailing, or of all) claimed or
    recorded from `since` on: what a command did until it was cut short, when
    it cannot say so itself (`shutdown`'s forced exit).  Reads every row of
    the mailing (or the table): only for that last summary (with
    `with_journaled` on SQLite)."""
    query = (
        select(deliveries.c.status, func.count())
        .where(deliveries.c.updated_at >= since)
        .group_by(deliveries.c.status)
    )
    if mailing_id is not None:
        query = query.where(deliveries.c.mailing_id == mailing_id)
    return {str(status): int(n) for status, n in conn.execute(query)}


def with_journaled(
    conn: Connection,
    done: dict[str, int],
    journaled: dict[int, str],
    mailing_id: int | None = None,
) -> tuple[dict[str, int], int]:
    """`changed_since`'s counts with the outcomes only journaled yet (rows still
    "sending", store.journal) counted as what they are; and how many of those
    finished a delivery (sent, failed, skipped), which an open count includes.
    `journaled`: `journal.unfolded_lines`, read before this transaction began."""
    from newsletter.store.journal import still_sending

    counts = dict(done)
    finished = 0
    for status, n in still_sending(conn, journaled, mailing_id).items():
        counts[status] = counts.get(status, 0) + n
        counts["sending"] = counts.get("sending", 0) - n
        finished += 0 if status in OPEN_STATUSES else n
    return counts, finished


def open_rows(mailing_id: int) -> Exists:
    """EXISTS: the mailing has a delivery not yet sent, failed or skipped
    (a condition for the UPDATEs that may only touch an unfinished mailing)."""
    return (
        select(deliveries.c.id)
        .where(deliveries.c.mailing_id == mailing_id, deliveries.c.status.in_(OPEN_STATUSES))
        .exists()
    )


def has_open(conn: Connection, mailing_id: int) -> bool:
    """Whether the mailing has a delivery not yet sent, failed or skipped."""
    return bool(conn.scalar(select(open_rows(mailing_id))))


def has_sent(conn: Connection, mailing_id: int) -> bool:
    """Whether a message of the mailing went out (one look into ix_deliveries_queue)."""
    query = select(deliveries.c.id).where(
        deliveries.c.mailing_id == mailing_id, deliveries.c.status == "sent"
    )
    return bool(conn.scalar(select(query.exists())))


def open_count(conn: Connection, mailing_id: int, *, up_to: int) -> int:
    """How many deliveries of the mailing are not yet sent, failed or skipped,
    counted no further than `up_to` (as many looks into ix_deliveries_queue)."""
    query = (
        select(deliveries.c.id)
        .where(deliveries.c.mailing_id == mailing_id, deliveries.c.status.in_(OPEN_STATUSES))
        .limit(up_to)
    )
    return int(conn.scalar(select(func.count()).select_from(query.subquery())) or 0)
