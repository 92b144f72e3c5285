"""Mailings and deliveries: plan, claim, send, retry, rate limit, record.

A mailing is (post, list).  Planning snapshots the list's mailable members as
one `deliveries` row each; delivering claims those rows under a lease in the
database, sends each through a transport, and commits every outcome on its
own, so that after ``kill -9`` a re-run finishes the mailing with nobody
skipped and at most the in-flight messages (≤ concurrency) sent twice
(DESIGN.md, invariant 2).  The worker pool lives in `newsletter.sending`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parseaddr

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from newsletter.bounces import verp_address
from newsletter.config import Settings
from newsletter.errors import (
    ConfigError,
    DeliveryError,
    PostError,
    RenderError,
    StoreError,
    TemplateError,
)
from newsletter.posts import Post, PostCollection
from newsletter.store import mailings as q
from newsletter.store import reading
from newsletter.tokens import load_secret
from newsletter.transports import Transport

__all__ = [
    "DeliveryReport",
    "MailingSummary",
    "Progress",
    "deliver_due",
    "deliver_mailing",
    "envelope_sender",
    "mailed_pairs",
    "mailing_summaries",
    "plan_mailing",
    "send_test",
    "sender_for",
]


@dataclass(frozen=True)
class DeliveryReport:
    """What one delivery pass did, per status."""

    sent: int = 0
    deferred: int = 0
    failed: int = 0
    skipped: int = 0
    paused: bool = False  # an hourly/daily cap stopped the pass
    errors: tuple[str, ...] = ()  # one line per failed recipient

    def __add__(self, other: DeliveryReport) -> DeliveryReport:
        return DeliveryReport(
            self.sent + other.sent,
            self.deferred + other.deferred,
            self.failed + other.failed,
            self.skipped + other.skipped,
            self.paused or other.paused,
            self.errors + other.errors,
        )


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
    paused_until: datetime | None = None
    subject: str = ""

    @property
    def total(self) -> int:
        return sum(self.counts.values())


Progress = Callable[[int, int], None]  # (done, total)


def envelope_sender(settings: Settings) -> str:
    """The envelope sender with no delivery to name: `[bounces] address`, else
    the bare address of `[email] from`."""
    return settings.bounces.address or parseaddr(settings.email.from_)[1] or settings.email.from_


def sender_for(settings: Settings) -> Callable[[int], str]:
    """The envelope sender of each delivery (by ledger id): with `[bounces]
    address`, a VERP address whose signed token names the delivery, so a
    bounce finds its way back to it (see newsletter.bounces)."""
    plain = envelope_sender(settings)
    address = settings.bounces.address
    if not address:
        return lambda _delivery_id: plain
    secret = load_secret(settings)
    return lambda delivery_id: verp_address(address, secret, delivery_id)


# --------------------------------------------------------------------------- planning


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
    The snapshot is one transaction: a crash while planning leaves no mailing.
    """
    from newsletter.store import subscribers as subs

    settings.get_list(list_name)  # an undeclared list is a configuration error
    subs.ensure_lists(engine, settings)
    try:
        with engine.begin() as conn:
            existing = q.latest_mailing(conn, post_id, list_name)
            if existing is not None and not resend:
                return existing.id
            lid = q.list_id(conn, list_name)
            if lid is None:  # pragma: no cover - ensure_lists just made it
                raise DeliveryError(f"unknown list {list_name!r}", key=f"lists.{list_name}")
            mailing_id = q.insert_mailing(
                conn,
                post_id=post_id,
                list_id=lid,
                kind="resend" if resend and existing is not None else kind,
                generation=existing.generation + 1 if existing is not None else 0,
                subject=subject,
                post_ids=post_ids,
            )
            members = ((m.subscriber_id, m.email) for m in subs.mailable_members(conn, list_name))
            q.snapshot(conn, mailing_id, members)
            return mailing_id
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot plan {post_id} for list {list_name}: {exc}") from exc


# --------------------------------------------------------------------------- delivering


def deliver_mailing(
    engine: Engine,
    settings: Settings,
    mailing_id: int,
    posts: PostCollection,
    *,
    transport: Transport | None = None,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
    wait: float = 0.0,
) -> DeliveryReport:
    """Send every claimable delivery of one mailing; return what happened.

    `transport`: one to use (shared by the workers when it is thread-safe,
    otherwise a single worker); by default each of `[delivery] concurrency`
    workers makes its own from the settings.  `wait`: how many seconds to keep
    going for deferred recipients whose retry comes due meanwhile (0: one pass
    over what is due now; the daemon or a re-run does the rest).
    """
    from newsletter.sending import MailingPass

    with reading(engine) as conn:
        mailing = q.get_mailing(conn, mailing_id)
    if mailing is None:
        raise DeliveryError(f"no mailing with id {mailing_id}")
    return MailingPass(
        engine, settings, mailing, posts, transport=transport, stop=stop, progress=progress
    ).run(wait=wait)


def deliver_due(
    engine: Engine,
    settings: Settings,
    posts: PostCollection,
    *,
    transport: Transport | None = None,
    stop: threading.Event | None = None,
) -> DeliveryReport:
    """One pass over every mailing with work due now (queued, deferred, resumed)."""
    from newsletter.store.mailings import free_dead_leases

    free_dead_leases(engine)
    report = DeliveryReport()
    with reading(engine) as conn:
        ids = list(q.mailings_with_work(conn))
    for mailing_id in ids:
        if stop is not None and stop.is_set():
            break
        try:
            report += deliver_mailing(
                engine, settings, mailing_id, posts, transport=transport, stop=stop
            )
        except (PostError, RenderError, TemplateError, ConfigError) as exc:
            # One mailing whose post vanished or no longer renders must not
            # hold up the others (invariant 5); it says why in `status`.
            q.set_state(engine, mailing_id, "sending", last_error=str(exc))
            report += DeliveryReport(errors=(f"mailing {mailing_id}: {exc}",))
    return report


def send_test(
    settings: Settings,
    post: Post,
    list_name: str,
    addresses: tuple[str, ...],
    *,
    transport: Transport | None = None,
) -> DeliveryReport:
    """`send --test`: any address, "[TEST] " subject, no delivery records."""
    from newsletter.outgoing import send_test_messages

    return send_test_messages(settings, post, list_name, addresses, transport=transport)


# --------------------------------------------------------------------------- reporting


def mailing_summaries(engine: Engine) -> list[MailingSummary]:
    """Every mailing, oldest first, with its delivery counts by status."""
    try:
        with reading(engine) as conn:
            rows = q.all_mailings(conn)
            counts = q.counts(conn)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read mailings: {exc}") from exc
    return [
        MailingSummary(
            mailing_id=m.id,
            post_id=m.post_id,
            list_name=m.list_name,
            kind=m.kind,
            state=m.state,
            counts=counts.get(m.id, {}),
            last_error=m.last_error,
            created_at=m.created_at,
            finished_at=m.finished_at,
            paused_until=m.paused_until,
            subject=m.subject,
        )
        for m in rows
    ]


def mailed_pairs(engine: Engine) -> set[tuple[str, str]]:
    """(post_id, list_name) for every mailing that exists (invariant 1).

    One query over the (small) mailings table; a digest counts for each post
    it carried.
    """
    try:
        with reading(engine) as conn:
            return q.mailed_pairs(conn)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read mailings: {exc}") from exc
