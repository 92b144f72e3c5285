"""Mailings and deliveries: plan, claim, send, retry, rate limit, record.

A mailing is (post, list).  Planning snapshots the list's mailable members as
one `deliveries` row each; delivering claims those rows under a lease in the
database, sends each through a transport, and commits every outcome on its
own, so that after ``kill -9`` a re-run finishes the mailing with nobody
skipped and at most the in-flight messages (≤ concurrency) sent twice
(DESIGN.md, invariant 2).  A pass lives in `mailing_pass`, its two strategies in `rounds` and `threaded`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from newsletter.config import Settings
from newsletter.delivery.report import DeliveryReport, MailingSummary, Progress
from newsletter.delivery.transports import Transport
from newsletter.errors import (
    ConfigError,
    DeliveryError,
    PostError,
    RenderError,
    StoreError,
    TemplateError,
    database_reason,
)
from newsletter.posts.collection import Post, PostCollection
from newsletter.store import mailings as q
from newsletter.store import reading, snapshot_transaction
from newsletter.store.halts import (
    CANCELLED,
    EXPLICIT,
    Cancelled,
    cancel,
    supersede,
    take_over,
)

__all__ = [
    "PostMailing",
    "deliver_due",
    "deliver_mailing",
    "mailed_pairs",
    "mailing_summaries",
    "plan_mailing",
    "plan_post",
    "post_mailings",
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
    origin: str = EXPLICIT,
) -> int:
    """Create the mailing (post × list) and snapshot its recipients; idempotent.

    Returns the mailing id.  An existing mailing for (post, list) is returned
    as it is unless `resend` (a new generation, every mailable member again).
    The snapshot is one transaction: a crash while planning leaves no mailing.
    A post mailing leaves out whoever already has this post from another
    list (`[email] dedupe_across_lists`).  `origin`: who plans it, EXPLICIT
    (the owner, `newsletter send`: an existing mailing becomes theirs) or
    AUTOMATIC (the daemon: withdrawn if its post is pulled, `store.halts`).
    """
    if kind == "post" and not resend:
        return plan_post(engine, settings, post_id, (list_name,), origin=origin)[list_name]
    plan = _Plan(kind, post_ids, subject, resend, origin)
    return _plan(engine, settings, post_id, (list_name,), plan)[list_name]


def plan_post(
    engine: Engine,
    settings: Settings,
    post_id: str,
    list_names: tuple[str, ...],
    *,
    origin: str = EXPLICIT,
) -> dict[str, int]:
    """Plan one post for several lists at once: list name → mailing id.

    With `[email] dedupe_across_lists` (the default) a member of several of
    these lists is queued once, on the list they joined first, and nobody is
    queued who already has this post from an earlier mailing.  The choice is
    made in one transaction and kept by the ledger's primary key (a delivery's
    id is made of the post's key and the subscriber: `store.schema.ledger_keys`),
    so it survives kill -9 and holds across hosts.
    """
    return _plan(engine, settings, post_id, list_names, _Plan(origin=origin))


@dataclass(frozen=True)
class _Plan:
    """What kind of mailing `_plan` makes (see `plan_mailing`)."""

    kind: str = "post"
    post_ids: tuple[str, ...] = ()
    subject: str = ""
    resend: bool = False
    origin: str = EXPLICIT


def _plan(
    engine: Engine,
    settings: Settings,
    post_id: str,
    list_names: tuple[str, ...],
    plan: _Plan,
) -> dict[str, int]:
    from newsletter.audience import members as subs

    kind, resend = plan.kind, plan.resend

    for name in list_names:
        settings.get_list(name)  # an undeclared list is a configuration error
    subs.ensure_lists(engine, settings)
    dedupe = kind == "post" and not resend and settings.email.dedupe_across_lists
    try:
        with snapshot_transaction(engine) as conn:
            if dedupe:
                q.lock_post(conn, post_id)  # one planner of this post at a time
            result: dict[str, int] = {}
            fresh: list[tuple[int, int, int]] = []  # (list id, mailing id, ledger key)
            for name in list_names:
                existing = q.latest_mailing(conn, post_id, name)
                if existing is not None and not resend:
                    mine = existing.origin == EXPLICIT and existing.state != CANCELLED
                    if plan.origin == EXPLICIT and not mine:
                        take_over(conn, existing.id)
                    if plan.origin == EXPLICIT:
                        q.open_gate(conn, existing.id)  # the owner sends it: no page wait
                    result[name] = existing.id
                    continue
                lid = q.list_id(conn, name)
                if lid is None:  # pragma: no cover - ensure_lists just made it
                    raise DeliveryError(f"unknown list {name!r}", key=f"lists.{name}")
                # Deduplicated: the post's key, shared with its other
                # mailings; otherwise a key of its own (schema.ledger_keys).
                key = q.ledger_key(conn, post_id if dedupe else None)
                mailing_id = q.insert_mailing(
                    conn,
                    post_id=post_id,
                    list_id=lid,
                    kind="resend" if resend and existing is not None else kind,
                    generation=existing.generation + 1 if existing is not None else 0,
                    subject=plan.subject,
                    post_ids=plan.post_ids,
                    ledger_key=key,
                    origin=plan.origin,
                )
                if mailing_id is None:  # another process planned it meanwhile: theirs stands
                    again = q.latest_mailing(conn, post_id, name)
                    assert again is not None
                    result[name] = again.id
                    continue
                result[name] = mailing_id
                fresh.append((lid, mailing_id, key))
                if existing is not None:
                    supersede(conn, existing.id, mailing_id)
            rivals = [lid for lid, _, _ in fresh]
            # Looked at before this plan inserts anything: its own rows are
            # kept apart by the rival lists' rule, not by this look-up.
            earlier = q.Earlier()
            if dedupe and fresh:
                earlier = q.delivered_before(conn, fresh[0][2], post_id)
            for lid, mailing_id, key in fresh:
                # INSERT … SELECT: the recipients never pass through Python.
                q.snapshot_list(
                    conn,
                    mailing_id,
                    lid,
                    key,
                    rival_list_ids=rivals,
                    dedupe=dedupe,
                    earlier=earlier,
                )
            return result
    except SQLAlchemyError as exc:
        names = ", ".join(list_names)
        raise StoreError(f"cannot plan {post_id} for list {names}: {database_reason(exc)}") from exc


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
    watch: Callable[[], None] | None = None,
    clock: Callable[[], datetime] | None = None,
) -> DeliveryReport:
    """Send every claimable delivery of one mailing; return what happened.

    `transport`: one to use (shared by the workers when it is thread-safe,
    otherwise a single worker); by default each of `[delivery] concurrency`
    workers makes its own from the settings.  `wait`: how many seconds to keep
    going for deferred recipients whose retry comes due meanwhile (0: one pass
    over what is due now; the daemon or a re-run does the rest).  `watch`:
    called now and then while sending (the daemon's check that the post was
    not pulled meanwhile); a withdrawn, postponed or cancelled mailing stops the pass.
    `clock`: the time that says whether a pause is over (the daemon's pass
    time, which tests move); the wall clock by default.
    """
    from newsletter.delivery.mailing_pass import MailingPass

    with reading(engine) as conn:
        mailing = q.get_mailing(conn, mailing_id)
    if mailing is None:
        raise DeliveryError(f"no mailing with id {mailing_id}")
    return MailingPass(
        engine,
        settings,
        mailing,
        posts,
        transport=transport,
        stop=stop,
        progress=progress,
        watch=watch,
        clock=clock,
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


def cancel_mailing(engine: Engine, mailing_id: int) -> Cancelled:
    """The owner's `newsletter cancel`: the rest of an unfinished mailing never goes.

    Every process sending it stops at its next claim or within ~2 s
    (`delivery.keeper`); the daemon never resumes it; `send` of the same post
    and list sends the rest after all.  Already cancelled: said, not an error.
    """
    _free_dead_leases(engine)
    try:
        found = cancel(engine, mailing_id)
    except SQLAlchemyError as exc:
        reason = database_reason(exc)
        raise StoreError(f"cannot cancel mailing {mailing_id}: {reason}") from exc
    if found is None:
        raise DeliveryError(f"no mailing {mailing_id} (see `newsletter status`)")
    if found.was == "done":
        raise DeliveryError(
            f"mailing {mailing_id} is done: everyone on it got it; nothing to cancel"
        )
    if not found.changed and found.was != CANCELLED and not found.left:
        # Its pass is about to say `done` (`MailingPass._finish`).
        raise DeliveryError(
            f"mailing {mailing_id} has nothing left to send (sent {found.sent}, "
            "not sent 0); nothing to cancel"
        )
    return found


def _free_dead_leases(engine: Engine) -> None:
    """A `send` killed with -9 left its rows leased: fold its journal and free
    them (a sending process does the same before it claims), so that `status`
    and `cancel` count them as waiting, not in flight.  Best effort: a
    database that refuses the write still shows its counts."""
    from newsletter.store.mailings import free_dead_leases

    with contextlib.suppress(SQLAlchemyError, StoreError):
        free_dead_leases(engine)


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
    """Every mailing, oldest first, with its delivery counts by status (a
    sender that is gone holds nothing in flight: `q.shown_counts`)."""
    _free_dead_leases(engine)
    try:
        with reading(engine) as conn:
            rows = q.all_mailings(conn)
            counts = q.shown_counts(conn)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read mailings: {database_reason(exc)}") from exc
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
            origin=m.origin,
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
        raise StoreError(f"cannot read mailings: {database_reason(exc)}") from exc


@dataclass(frozen=True)
class PostMailing:
    """The latest mailing of a post to a list, as `newsletter posts` shows it."""

    mailing_id: int
    list_name: str
    state: str


def post_mailings(engine: Engine) -> dict[str, list[PostMailing]]:
    """Post id → its latest mailing to each list (a digest counts for its posts)."""
    try:
        with reading(engine) as conn:
            rows = q.post_mailings(conn)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read mailings: {database_reason(exc)}") from exc
    latest: dict[tuple[str, str], PostMailing] = {}
    for mailing_id, post_id, list_name, state in rows:  # oldest first: the last one stands
        latest[(post_id, list_name)] = PostMailing(mailing_id, list_name, state)
    found: dict[str, list[PostMailing]] = {}
    for (post_id, _name), mailing in sorted(latest.items()):
        found.setdefault(post_id, []).append(mailing)
    return found
