"""The deployment's sending caps (`[delivery] max_per_hour`, `max_per_day`),
counted in the database so that every process on it shares them.

Split from `mailing_pass`: how much room a pass has, and when a paused
mailing may go on.  Each claim checks the caps again (`store.leases`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine

from newsletter.config import DeliverySettings
from newsletter.store import mailings as q
from newsletter.store import now, reading

__all__ = ["cap_allowance", "cap_resume_at"]


# (messages, window seconds) of `[delivery] max_per_hour` and `max_per_day`.
_WINDOWS = (("max_per_hour", 3600), ("max_per_day", 86400))


def cap_allowance(engine: Engine, delivery: DeliverySettings) -> int | None:
    """Messages the deployment may still send under its caps (None: no cap)."""
    left: int | None = None
    for name, window in _WINDOWS:
        cap = getattr(delivery, name)
        if cap is None:
            continue
        with reading(engine) as conn:
            sent, _ = q.sent_since(conn, now() - timedelta(seconds=window))
        room = max(0, cap - sent)
        left = room if left is None else min(left, room)
    return left


def cap_resume_at(engine: Engine, delivery: DeliverySettings) -> datetime:
    """When the caps next leave room (now, when they already do)."""
    at = now()
    resume = at
    for name, window in _WINDOWS:
        cap = getattr(delivery, name)
        if cap is None:
            continue
        with reading(engine) as conn:
            sent, oldest = q.sent_since(conn, at - timedelta(seconds=window))
        if sent >= cap and oldest is not None:
            resume = max(resume, oldest + timedelta(seconds=window))
    return resume
