"""A mailing's deliveries counted by status.

One GROUP BY, shared by `store.mailings` (status, reports, the daemon's log
lines) and `store.halts` (`cancel` counts inside its own transaction, so the
numbers it prints are the ones its UPDATE saw).  It lives below both because
`store.mailings` imports `store.halts`.
"""

from __future__ import annotations

from sqlalchemy import Connection, func, select

from newsletter.store.schema import deliveries

__all__ = ["OPEN_STATUSES", "STATUSES", "counts"]

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
