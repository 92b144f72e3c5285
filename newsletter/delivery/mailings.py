"""Mailings and deliveries: plan, claim, send, retry, rate limit, record.

A mailing is (post, list).  Planning snapshots the list's mailable members as
one `deliveries` row each; delivering claims those rows under a lease in the
database, sends each through a transport, and commits every outcome on its
own, so that after ``kill -9`` a re-run finishes the mailing with nobody
skipped and at most the in-flight messages (≤ concurrency) sent twice
(DESIGN.md, invariant 2).  A pass lives in `mailing_pass`, its two strategies in `rounds` and `threaded`.
"""

from __future__ import annotations

import threading

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from newsletter.config import Settings
from newsletter.delivery.report import DeliveryReport, MailingSummary, Progress, envelope_sender
from newsletter.delivery.transports import Transport
from newsletter.errors import (
    ConfigError,
    DeliveryError,
    PostError,
    RenderError,
    StoreError,
    TemplateError,
)
from newsletter.posts.collection import Post, PostCollection
from newsletter.store import mailings as q
from newsletter.store import reading

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
]


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
    from newsletter.audience import members as subs

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
            if mailing_id is None:  # another process planned it meanwhile: theirs stands
                again = q.latest_mailing(conn, post_id, list_name)
                assert again is not None
                return again.id
            q.snapshot(conn, mailing_id, lid)
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
    from newsletter.delivery.mailing_pass import MailingPass

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
    from newsletter.delivery.outgoing import send_test_messages

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
