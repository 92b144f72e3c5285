"""Mailings and deliveries: plan, claim, send, retry, rate limit, record.

CONTRACT STUB (being implemented): the names and signatures below are what the
CLI, the scheduler and the web app call.  Keep them; add freely.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine

from newsletter.config import Settings
from newsletter.posts import Post, PostCollection
from newsletter.transports import Transport


@dataclass(frozen=True)
class DeliveryReport:
    """What one delivery pass did, per status."""

    sent: int = 0
    deferred: int = 0
    failed: int = 0
    skipped: int = 0
    paused: bool = False  # an hourly/daily cap stopped the pass
    errors: tuple[str, ...] = ()  # one line per failed recipient


@dataclass(frozen=True)
class MailingSummary:
    mailing_id: int
    post_id: str
    list_name: str
    kind: str  # post | digest | resend
    state: str  # planned | sending | paused | done
    counts: Mapping[str, int] = field(default_factory=dict)  # by delivery status
    last_error: str | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None


Progress = Callable[[int, int], None]  # (done, total)


def plan_mailing(
    engine: Engine,
    settings: Settings,
    post_id: str,
    list_name: str,
    *,
    kind: str = "post",
    post_ids: tuple[str, ...] = (),
    subject: str = "",
    resend: bool = False,
) -> int:
    """Create the mailing (post × list) and snapshot its recipients; idempotent.

    Returns the mailing id.  An existing mailing for (post, list) is returned
    as it is unless `resend` (a new generation, every mailable member again).
    """
    raise NotImplementedError


def deliver_mailing(
    engine: Engine,
    settings: Settings,
    mailing_id: int,
    posts: PostCollection,
    *,
    transport: Transport | None = None,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
) -> DeliveryReport:
    """Send every claimable delivery of one mailing; return what happened."""
    raise NotImplementedError


def deliver_due(
    engine: Engine,
    settings: Settings,
    posts: PostCollection,
    *,
    transport: Transport | None = None,
    stop: threading.Event | None = None,
) -> DeliveryReport:
    """One pass over every mailing with work due now (queued, deferred, resumed)."""
    raise NotImplementedError


def send_test(
    settings: Settings,
    post: Post,
    list_name: str,
    addresses: tuple[str, ...],
    *,
    transport: Transport | None = None,
) -> DeliveryReport:
    """`send --test`: any address, "[TEST] " subject, no delivery records."""
    raise NotImplementedError


def mailing_summaries(engine: Engine) -> list[MailingSummary]:
    raise NotImplementedError


def mailed_pairs(engine: Engine) -> set[tuple[str, str]]:
    """(post_id, list_name) for every mailing that exists (invariant 1)."""
    raise NotImplementedError
