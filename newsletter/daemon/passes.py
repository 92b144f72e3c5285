"""One daemon pass: plan what is due, plan digests, deliver, log what happened.

`scheduler` decides *when* a pass runs; this module is what a pass *does*, so
`run --once`, the daemon and the tests share it.  A pass never raises for one
bad post, list or template: those become `PassReport.problems` (invariant 5).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine, func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from newsletter.config import ListSettings, Settings, utcnow
from newsletter.daemon import pagewait, planning
from newsletter.daemon.passlog import (
    FaultLog,
    OutageLog,
    describe_mailing,
    log_finish,
    log_skipped,
    log_start,
)
from newsletter.daemon.withdrawal import Change
from newsletter.delivery.report import DeliveryReport
from newsletter.delivery.transports import Transport
from newsletter.errors import NewsletterError, TransportError, database_reason
from newsletter.posts.collection import Post, PostCollection
from newsletter.store import one_at_a_time, reading
from newsletter.store.halts import AUTOMATIC, POSTPONED
from newsletter.store.leases import DEFERRED
from newsletter.store.mailings import note_error
from newsletter.store.schema import deliveries, mailings

log = logging.getLogger("newsletter.daemon")

__all__ = [
    "Clock",
    "FaultLog",
    "MailingProgress",
    "OutageLog",
    "PassReport",
    "log_skipped",
    "next_work_time",
    "run_pass",
]

Clock = Callable[[], datetime]
MailingProgress = Callable[[int, int, int], None]  # (mailing id, done, total)


# --------------------------------------------------------------------------- one pass


@dataclass(frozen=True)
class PassReport:
    """What one pass did; `run --once` prints it, the daemon logs it."""

    at: datetime
    since: datetime | None
    planned: tuple[int, ...] = ()  # mailing ids created or found this pass
    digests: tuple[int, ...] = ()
    future: tuple[Post, ...] = ()
    before_since: tuple[Post, ...] = ()
    problems: tuple[str, ...] = ()
    delivery: DeliveryReport = field(default_factory=DeliveryReport)
    transport_error: str | None = None
    # Mailings this pass withdrew, postponed or resumed (its post pulled or back).
    halts: tuple[Change, ...] = ()


def run_pass(
    settings: Settings,
    engine: Engine,
    *,
    now: datetime | None = None,
    transport: Transport | None = None,
    stop: threading.Event | None = None,
    outage: OutageLog | None = None,
    progress: MailingProgress | None = None,
    faults: FaultLog | None = None,
) -> PassReport:
    """Plan what is due and deliver what has work; never raises a NewsletterError
    for one bad post, list or template — those become `problems`, as does an
    unexpected failure of one mailing (`faults` logs its traceback once)."""
    from newsletter.audience.lists import ensure_lists
    from newsletter.delivery.mailings import mailed_pairs
    from newsletter.posts.collection import load_posts

    at = now or utcnow()
    # One clock for the pass's decisions of what is due (planning, a pause's
    # or a page wait's end, a pulled post): `now` moves all of them, tests too.
    # Leases, claims and retry times stay on the database's clock (`store.leases`).
    pass_clock = _pass_clock(at)
    problems: list[str] = []
    try:
        # Planning reads front matter; HTML is built for the posts a mailing sends.
        collection = load_posts(settings, bodies="lazy")
        # No post at all is no verdict on any (a share not mounted yet on
        # this host, a checkout being replaced), as an unreadable folder.
        clock: Clock | None = pass_clock if collection.posts else None
    except NewsletterError as exc:
        problems.append(f"error: {exc}")
        collection = PostCollection((), ())
        clock = None  # no posts read: no verdict on any mailing's post
    problems.extend(str(p) for p in collection.problems)
    ensure_lists(engine, settings)
    _read_bounces(engine, settings, problems)  # before delivering: bounced addresses skip
    since = planning.effective_since(engine, settings, at)
    mailed = mailed_pairs(engine)
    plan = planning.plan_due(collection.posts, settings.lists, since, at, mailed)
    problems.extend(str(p) for p in plan.problems)
    planned = _plan_posts(engine, settings, plan.due, problems)
    digests = _plan_digests(engine, settings, collection.posts, since, at, mailed, problems)
    changes: list[Change] = []  # the sending passes' watchers add theirs
    if clock is not None:
        changes += _review(engine, collection, at, problems)
    report, transport_error = _deliver(
        engine,
        settings,
        collection,
        transport,
        stop,
        problems,
        outage or OutageLog(),
        faults or FaultLog(),
        progress,
        clock,
        changes,
        pass_clock,
    )
    return PassReport(
        at=at,
        since=since,
        planned=tuple(planned),
        digests=tuple(digests),
        future=plan.future,
        before_since=plan.before_since,
        problems=tuple(problems),
        delivery=report,
        transport_error=transport_error,
        halts=tuple(changes),
    )


def _read_bounces(engine: Engine, settings: Settings, problems: list[str]) -> None:
    """Each pass reads the bounce mailbox when one is configured; trouble
    reaching it is a problem of this pass, never the end of the daemon."""
    if not settings.bounces.reads_mailbox:
        return
    from newsletter.delivery.bouncebox import process_bounces

    try:
        # Several daemons on one PostgreSQL: one reads the mailbox per pass.
        with one_at_a_time(engine, "bounces") as mine:
            if not mine:
                return
            run = process_bounces(engine, settings)
    except NewsletterError as exc:
        problems.append(f"error: bounces: {exc}")
        return
    except Exception as exc:  # reading bounces must never stop the mail
        # A fault of the bounce reader itself (a mailbox's odd reply, a bug)
        # failed the whole pass: nothing was planned or sent while it lasted.
        log.debug("bounces: unexpected failure", exc_info=True)
        problems.append(f"error: bounces: unexpected {type(exc).__name__}: {exc}")
        return
    problems.extend(f"warning: bounces: {p.key}: {p.message}" for p in run.unparsed)
    problems.extend(f"warning: bounces: unverified: {line}" for line in run.unverified)
    if run.read:
        log.info(
            "bounces: %d read, %d hard, %d soft, %d complaint(s), %d suppressed",
            run.read, run.hard, run.soft, run.complaints, len(run.suppressed),
            extra={"event": "bounces"},
        )  # fmt: skip


def _pass_clock(at: datetime) -> Clock:
    """This pass's time as it goes on (`at` may be injected, in tests)."""
    started = utcnow()
    return lambda: at + (utcnow() - started)


def _review(
    engine: Engine, posts: PostCollection, at: datetime, problems: list[str]
) -> list[Change]:
    """Withdraw, postpone or resume the daemon's mailings of pulled posts (`withdrawal`)."""
    from newsletter.daemon import withdrawal

    try:
        return withdrawal.review(engine, posts, at)
    except NewsletterError as exc:
        problems.append(f"error: {exc}")
        return []


def _watcher(
    settings: Settings, engine: Engine, mailing_id: int, clock: Clock, changes: list[Change]
) -> Callable[[], None]:
    """What a sending pass calls every few seconds: the post, read again, may
    have been pulled meanwhile (`MailingPass.check_halt`)."""
    from newsletter.daemon import withdrawal
    from newsletter.posts.collection import load_posts

    def watch() -> None:
        try:
            posts = load_posts(settings, bodies="lazy")
        except NewsletterError:
            return  # no posts read, no verdict; the next pass reports it
        if not posts.posts:
            return  # an empty folder: no verdict either (`run_pass`)
        changes.extend(withdrawal.review(engine, posts, clock(), mailing_id))

    return watch


def _plan_posts(
    engine: Engine, settings: Settings, due: tuple[planning.DueSend, ...], problems: list[str]
) -> list[int]:
    """Each due post for all its lists at once, so that a member of several
    lists is queued once (`[email] dedupe_across_lists`)."""
    from newsletter.delivery.mailings import plan_post

    by_post: dict[str, list[planning.DueSend]] = {}
    for item in due:
        by_post.setdefault(item.post.post_id, []).append(item)
    ids: list[int] = []
    for post_id, items in by_post.items():
        names = tuple(item.list_name for item in items)
        try:
            planned = plan_post(engine, settings, post_id, names, origin=AUTOMATIC)
        except NewsletterError as exc:
            problems.append(f"error: {items[0].post.path}: {', '.join(names)}: {exc}")
            continue
        for list_name, mailing_id in planned.items():
            ids.append(mailing_id)
            log.info(
                "planned mailing %d: %s -> %s",
                mailing_id,
                post_id,
                list_name,
                extra={
                    "event": "planned",
                    "mailing_id": mailing_id,
                    "post_id": post_id,
                    "list": list_name,
                },
            )
    return ids


def _plan_digests(
    engine: Engine,
    settings: Settings,
    posts: tuple[Post, ...],
    since: datetime,
    at: datetime,
    mailed: set[tuple[str, str]],
    problems: list[str],
) -> list[int]:
    ids: list[int] = []
    for lst in settings.lists.values():
        if lst.mode != "digest":
            continue
        try:
            # The slot's state is read and moved on by one daemon at a time
            # (several on one PostgreSQL); the others leave this list to it.
            with one_at_a_time(engine, f"digest:{lst.name}") as mine:
                if not mine:
                    continue
                mailing_id = _plan_digest(engine, settings, lst, posts, since, at, mailed)
        except NewsletterError as exc:
            where = "" if exc.key else f"lists.{lst.name}: "
            problems.append(f"error: {where}{exc}")
            continue
        if mailing_id is not None:
            ids.append(mailing_id)
    return ids


def _plan_digest(
    engine: Engine,
    settings: Settings,
    lst: ListSettings,
    posts: tuple[Post, ...],
    since: datetime,
    at: datetime,
    mailed: set[tuple[str, str]],
) -> int | None:
    from newsletter.delivery.mailings import plan_mailing

    key = planning.digest_anchor_key(lst.name)
    # First sight of the list: its first digest is the first slot after now.
    anchor = planning.write_state_time(engine, key, at, only_if_missing=True)
    slot = planning.digest_slot(lst, planning.cron_zone(lst, settings), anchor, at)
    if slot is None:
        return None
    excluded = {pid for pid, name in mailed if name == lst.name}
    chosen = planning.digest_posts(posts, lst, since, slot, excluded)
    mailing_id = None
    if chosen:
        digest = planning.DigestPlan(lst.name, slot, chosen)
        mailing_id = plan_mailing(
            engine,
            settings,
            digest.mailing_post_id,
            lst.name,
            kind="digest",
            post_ids=digest.post_ids,
            subject=planning.digest_subject(lst.title, len(chosen)),
            origin=AUTOMATIC,
        )
        log.info(
            "planned digest %d for %s: %d posts",
            mailing_id,
            lst.name,
            len(chosen),
            extra={
                "event": "planned",
                "mailing_id": mailing_id,
                "list": lst.name,
                "kind": "digest",
                "post_ids": list(digest.post_ids),
            },
        )
    else:
        log.info(
            "digest slot %s for %s: nothing new, nothing sent",
            slot.isoformat(),
            lst.name,
            extra={"event": "digest-empty", "list": lst.name},
        )
    planning.write_state_time(engine, key, slot)
    return mailing_id


# --------------------------------------------------------------------------- delivering


def _deliver(
    engine: Engine,
    settings: Settings,
    collection: PostCollection,
    transport: Transport | None,
    stop: threading.Event | None,
    problems: list[str],
    outage: OutageLog,
    faults: FaultLog,
    progress: MailingProgress | None = None,
    clock: Clock | None = None,
    changes: list[Change] | None = None,
    pass_clock: Clock = utcnow,
) -> tuple[DeliveryReport, str | None]:
    """Every mailing with work, one at a time, so that one broken mailing (its
    template broken) is reported and the others still go.  `clock`: the
    pass's time when its posts were read (each sending pass then watches
    for its post being pulled); `pass_clock`: the pass's time, which says
    whether a pause or a page wait is over (`run_pass`)."""
    from newsletter.delivery.mailings import deliver_mailing
    from newsletter.store.mailings import free_dead_leases, mailings_with_work

    changes = [] if changes is None else changes
    free_dead_leases(engine)
    with reading(engine) as conn:
        ids = list(mailings_with_work(conn))
    total = DeliveryReport()
    for mailing_id in ids:
        if stop is not None and stop.is_set():
            break
        started = utcnow()  # how long it took (`log_finish`): the wall clock's
        if _close_if_empty(engine, mailing_id):
            continue
        at = pass_clock()
        if not pagewait.page_ready(engine, settings, mailing_id, collection, at):
            continue
        due = _due_count(engine, mailing_id, at)
        if due:
            log_start(engine, mailing_id, due)
        try:
            report = deliver_mailing(
                engine,
                settings,
                mailing_id,
                collection,
                transport=transport,
                stop=stop,
                progress=_bound(progress, mailing_id),
                clock=pass_clock,
                watch=None
                if clock is None
                else _watcher(settings, engine, mailing_id, clock, changes),
            )
        except TransportError as exc:
            # The transport as a whole (TLS refused, bad login): the other
            # mailings would fail the same way, so stop here.
            return total, str(exc)
        except NewsletterError as exc:
            _mailing_problem(engine, mailing_id, str(exc), problems)
            continue
        except SQLAlchemyError as exc:  # a busy or broken database: next pass retries
            problems.append(f"error: mailing {mailing_id}: database: {database_reason(exc)}")
            continue
        except Exception as exc:  # no error of ours: a library's own, or a bug
            # It costs this mailing only, as a broken template would (invariant
            # 5); it killed the pass, and every later mailing waited for a fix.
            _mailing_problem(engine, mailing_id, faults.failed(mailing_id, exc), problems)
            continue
        total += report
        counted = report.sent or report.deferred or report.failed or report.skipped
        # mailings_with_work only yields unfinished mailings: "done" now means
        # this pass finished it, even when the last send was an earlier pass.
        if due or counted or describe_mailing(engine, mailing_id)[3] == "done":
            log_finish(engine, mailing_id, report, started, outage)
    return total, None


def _mailing_problem(engine: Engine, mailing_id: int, reason: str, problems: list[str]) -> None:
    """A mailing that could not be delivered at all: a problem of the pass,
    and its last error, which `status` shows."""
    problems.append(f"error: mailing {mailing_id}: {reason}")
    with contextlib.suppress(SQLAlchemyError):  # said above; the store may be down
        note_error(engine, mailing_id, reason)


def _bound(progress: MailingProgress | None, mailing_id: int) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(mailing_id, done, total)


def _close_if_empty(engine: Engine, mailing_id: int) -> bool:
    """Mark a mailing with nothing left to send (e.g. an empty list) done.

    Done here, outside `deliver_mailing`, whose own path for this case
    (`MailingPass.run`) nests a write in an open read connection and waits
    out SQLite's busy timeout (reported to the delivery owner).
    """
    from newsletter.store import mailings as q

    with reading(engine) as conn:
        open_work = q.has_open(conn, mailing_id)
    if open_work:
        return False
    q.set_state(engine, mailing_id, "done")
    post_id, list_name, _kind, _state = describe_mailing(engine, mailing_id)
    log.info(
        "mailing %d finished: %s -> %s: nobody to send to",
        mailing_id,
        post_id,
        list_name,
        extra={"event": "mailing-finish", "mailing_id": mailing_id, "state": "done", "sent": 0},
    )
    return True


def _due_count(engine: Engine, mailing_id: int, at: datetime) -> int:
    """Deliveries that can go now (0 while the mailing is paused by a cap)."""
    query = (
        select(func.count())
        .select_from(deliveries.join(mailings, mailings.c.id == deliveries.c.mailing_id))
        .where(
            deliveries.c.mailing_id == mailing_id,
            deliveries.c.status.in_(("queued", "deferred", "sending")),
            or_(deliveries.c.next_attempt_at.is_(None), deliveries.c.next_attempt_at <= at),
            or_(mailings.c.paused_until.is_(None), mailings.c.paused_until <= at),
        )
    )
    with reading(engine) as conn:
        return int(conn.scalar(query) or 0)


def next_work_time(engine: Engine, now: datetime) -> datetime | None:
    """The earliest deferred retry or paused mailing still to come."""
    with reading(engine) as conn:
        # Only deferred rows wait for a time (queued ones never carry one), and
        # they alone are in ix_deliveries_deferred: the literal status lets the
        # database use it instead of reading every row ever sent, each pass.
        retry = conn.scalar(
            select(func.min(deliveries.c.next_attempt_at)).where(
                DEFERRED, deliveries.c.next_attempt_at > now
            )
        )
        paused = conn.scalar(
            select(func.min(mailings.c.paused_until)).where(
                mailings.c.state.in_(("paused", pagewait.WAITING, POSTPONED)),
                mailings.c.paused_until > now,
            )
        )
    times = [t if t.tzinfo else t.replace(tzinfo=UTC) for t in (retry, paused) if t is not None]
    return min(times) if times else None
