"""The daemon: APScheduler wiring that decides *when* to plan and deliver.

What is due is decided in `planning` (pure, clock injected); what one pass does
(plan, deliver, log) is in `passes`; how a mailing is sent is `delivery`'s
business.  This module arranges for passes to happen at the right moments:

* every ``[schedule] scan_interval`` (and at once when watchfiles sees a post
  change), so new and edited files are noticed;
* a one-off `DateTrigger` job at each future post's exact date (punctuality);
* a `CronTrigger` job per digest list;
* a one-off job when the earliest deferred retry or paused mailing comes due.

All passes run on one worker thread, so two passes never overlap in a process.
On SQLite a second process is refused by the lock row (`DaemonLock`); on
PostgreSQL any number of daemons run side by side (`SharedLock`): planning is
idempotent, claims share the rows, and the few steps that must happen once
per pass take `store.one_at_a_time`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from newsletter import shutdown
from newsletter.config import Settings, utcnow
from newsletter.daemon import planning
from newsletter.daemon.lock import (  # noqa: F401 - the lock's names, as before
    LOCK_KEY,
    LOCK_TTL,
    DaemonBusyError,
    DaemonLock,
    SharedLock,
    daemon_lock,
)
from newsletter.daemon.passes import (
    Clock,
    FaultLog,
    MailingProgress,
    OutageLog,
    PassReport,
    log_skipped,
    next_work_time,
    run_pass,
)
from newsletter.daemon.passlog import DatabaseOutage
from newsletter.delivery.transports import Transport
from newsletter.email.tokens import checked_secret
from newsletter.errors import NewsletterError, database_reason
from newsletter.posts.collection import POST_SUFFIXES
from newsletter.store import failure_reason, newer_schema, outgrown_message, safe_url

log = logging.getLogger("newsletter.daemon")

TransportFactory = Callable[[Settings], Transport]

HEARTBEAT = 5.0  # seconds between lock heartbeats
# SIGTERM → exit within 10 s (`shutdown.STOP_BUDGET`): the stop's waits (the
# pass's messages in flight, then the watcher threads) share this deadline,
# which leaves the rest for releasing the lock; a pass stuck on a silent
# server past it is left behind (the CLI exits without it).
STOP_TIMEOUT = 8.0
CLOCK_STEP = 2.0  # seconds the wall clock may fall back (against the monotonic one) unnoticed


def run_once(
    settings: Settings,
    engine: Engine,
    *,
    transport: Transport | None = None,
    progress: MailingProgress | None = None,
    stop: threading.Event | None = None,
) -> PassReport:
    """`run --once`: take the lock (SQLite; see `daemon_lock`), one full pass, release.

    `stop` set (a SIGTERM) ends the pass after the messages in flight."""
    lock = daemon_lock(engine, db=safe_url(settings.database.url))
    lock.acquire()
    try:
        checked_secret(settings, engine)  # a changed secret: refuse before sending anything
        return run_pass(settings, engine, transport=transport, progress=progress, stop=stop)
    finally:
        lock.release()


# --------------------------------------------------------------------------- the daemon


class Daemon:
    """`newsletter run`: a BackgroundScheduler whose jobs all run passes.

    Passes share one worker thread (never two at once); the heartbeat has its
    own so that a long mailing cannot let the lock expire.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        transport_factory: TransportFactory | None = None,
        watch: bool = True,
        punctual: bool = True,
        clock: Clock = utcnow,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.transport_factory = transport_factory
        self.watch = watch
        self.punctual = punctual  # False: scan interval only (the latency baseline)
        self.clock = clock
        # The CLI passes the event a SIGTERM sets from process start-up on.
        self.stop_event = stop_event if stop_event is not None else threading.Event()
        self.lock = daemon_lock(engine, clock=clock, db=safe_url(settings.database.url))
        self.scheduler: Any = None
        self.passes = 0
        self.lost_lock = False  # set when another process took the lock: exit non-zero
        self.outgrown: int | None = None  # a newer newsletter's schema version: exit non-zero
        self._signals = 0  # SIGTERM and Ctrl-C received while serving: a second one ends it at once
        self.outage = OutageLog()
        self.faults = FaultLog()  # a traceback once per daemon, not once per scan
        self.db_outage = DatabaseOutage()
        self._running = threading.Lock()  # held by the pass in progress
        self._seen_problems: set[str] = set()
        self._watcher: threading.Thread | None = None
        self._clock_watch: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Take the lock, schedule the jobs and run the first pass right away."""
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        self.lock.acquire()
        try:
            checked_secret(self.settings, self.engine)  # refuse to start with a changed secret
        except NewsletterError:
            self.lock.release()
            raise
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(1), "lock": ThreadPoolExecutor(1)},
            # A pass that missed its moment (the worker was busy) still runs, once.
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        interval = self.settings.schedule.scan_interval
        self.scheduler.add_job(
            self._pass,
            "interval",
            seconds=interval,
            id="scan",
            args=["scan"],
            next_run_time=datetime.now(UTC),
        )
        self.scheduler.add_job(
            self._heartbeat, "interval", seconds=HEARTBEAT, id="heartbeat", executor="lock"
        )
        self._add_digest_jobs()
        self.scheduler.start()
        self._clock_watch = threading.Thread(
            target=self._watch_clock, name="watch-clock", daemon=True
        )
        self._clock_watch.start()
        if self.watch:
            self._watcher = threading.Thread(target=self._watch, name="watch-posts", daemon=True)
            self._watcher.start()
        log.info(
            "daemon started: scanning %s every %g s%s; lists: %s",
            self.settings.site.posts_dir,
            interval,
            " and watching it" if self.watch else "",
            ", ".join(f"{n} ({lst.mode})" for n, lst in self.settings.lists.items()) or "none",
            extra={"event": "started", "owner": self.lock.owner},
        )

    def stop(self) -> None:
        """Stop claiming, let the running pass finish what is in flight, unlock."""
        self.stop_event.set()
        if self.scheduler is None:  # never started (refused by the lock)
            return
        if self.scheduler is not None and self.scheduler.running:
            # Not wait=True: APScheduler would hold its job-store lock while
            # joining the worker, and a finishing pass that (re)schedules jobs
            # needs that lock.  `_running` is the wait instead.
            self.scheduler.shutdown(wait=False)
        deadline = time.monotonic() + STOP_TIMEOUT
        if self._running.acquire(timeout=STOP_TIMEOUT):
            self._running.release()
        else:
            log.warning("a pass is still running after %g s; exiting anyway", STOP_TIMEOUT)
        for thread in (self._watcher, self._clock_watch):
            if thread is not None:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.lock.release()
        log.info(
            "daemon stopped after %d pass%s",
            self.passes,
            "" if self.passes == 1 else "es",
            extra={"event": "stopped"},
        )

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly (exit status 0)."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            if self.stop_event.is_set():  # a SIGTERM during start-up: never start
                log.info("stopped before starting", extra={"event": "stopped"})
                return
            self.start()
            while not self.stop_event.wait(0.5):
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:  # the owner insists: no more waiting for in-flight messages
            log.warning(
                "received %s again: exiting now",
                signal.Signals(signum).name,
                extra={"event": "signal"},
            )
            shutdown.insist(signum)
            return
        log.info(
            "received %s: finishing in-flight messages",
            signal.Signals(signum).name,
            extra={"event": "signal"},
        )
        self.stop_event.set()
        shutdown.stopping()  # the command is gone within its budget, whatever is stuck

    def _watch_clock(self) -> None:
        """Run the scan and the heartbeat at once when the wall clock steps back.

        APScheduler times interval jobs on the wall clock: after a step back
        (NTP, a restored VM) their next runs lie that far ahead, so the daemon
        would neither scan nor refresh its lock until the clock caught up.
        """
        wall, mono = _wall(), time.monotonic()
        while not self.stop_event.wait(0.5):
            now_wall, now_mono = _wall(), time.monotonic()
            step = (now_wall - wall) - (now_mono - mono)
            wall, mono = now_wall, now_mono
            if step >= -CLOCK_STEP or self.scheduler is None or not self.scheduler.running:
                continue
            log.warning(
                "the system clock went back %.0f s; scanning now", -step, extra={"event": "clock"}
            )
            from apscheduler.jobstores.base import JobLookupError

            for job_id in ("scan", "heartbeat"):
                with contextlib.suppress(JobLookupError):
                    self.scheduler.modify_job(
                        job_id, next_run_time=datetime.fromtimestamp(now_wall, UTC)
                    )

    # ----------------------------------------------------------------- jobs

    def _add_digest_jobs(self) -> None:
        for lst in self.settings.lists.values():
            if lst.mode != "digest":
                continue
            try:
                trigger = planning.cron_trigger(lst, planning.cron_zone(lst, self.settings))
            except NewsletterError as exc:
                log.error("%s; digest %s disabled", exc, lst.name, extra={"event": "problem"})
                continue
            self.scheduler.add_job(
                self._pass, trigger, id=f"digest:{lst.name}", args=[f"digest {lst.name}"]
            )
            zone = planning.cron_zone(lst, self.settings)
            upcoming = planning.next_digest_time(lst, zone, self.clock())
            log.info(
                "digest %s on cron %r (%s): next at %s",
                lst.name,
                lst.cron,
                zone.key,
                upcoming.astimezone(zone).isoformat() if upcoming else "never",
                extra={"event": "scheduled", "list": lst.name},
            )

    def wake(self, reason: str, at: datetime | None = None) -> None:
        """Run a pass at `at` (now when None); safe from any thread."""
        if self.scheduler is None or self.stop_event.is_set():
            return
        when = at or datetime.now(UTC)
        self.scheduler.add_job(
            self._pass,
            "date",
            run_date=when,
            args=[reason],
            id=f"wake:{when.isoformat()}",
            replace_existing=True,
        )

    def _heartbeat(self) -> None:
        try:
            if self._outgrown():
                return
            if not self.lock.heartbeat():
                log.error(
                    "the daemon lock was taken by another process; stopping",
                    extra={"event": "lock-lost"},
                )
                self.lost_lock = True
                self.stop_event.set()
        except SQLAlchemyError as exc:
            log.warning("heartbeat failed: %s", database_reason(exc))

    def _outgrown(self) -> bool:
        """Stop when a newer newsletter has upgraded the schema under this daemon
        (asked at each heartbeat and before each pass): it would go on writing
        the old way.  Non-zero exit; restarted, this binary then refuses the
        store until it is upgraded too."""
        version = newer_schema(self.engine)
        if version is None:
            return False
        if self.outgrown is None:
            log.error(
                "%s",
                outgrown_message(version),
                extra={"event": "schema-outgrown", "version": version},
            )
        self.outgrown = version
        self.stop_event.set()
        return True

    def _pass(self, reason: str) -> None:
        with self._running:
            if self.stop_event.is_set() or self._outgrown():
                return
            try:
                self.db_outage.probe(self.engine)
                report = self.run_one(reason)
                if not self.stop_event.is_set():
                    self._after(report)
            except Exception as exc:  # nothing may kill the worker: log it and try next time
                self._failed(reason, exc)
            else:
                self.db_outage.recovered()

    def _failed(self, reason: str, exc: Exception) -> None:
        """A pass that raised: the database failing is one line per outage (the
        next scan retries); anything else is a bug, logged with its traceback."""
        why = failure_reason(exc)
        if why is not None:
            self.db_outage.failed(why)
            return
        log.error(
            "pass (%s) failed; retrying at the next scan",
            reason,
            exc_info=exc,
            extra={"event": "pass-failed"},
        )

    def run_one(self, reason: str = "once") -> PassReport:
        transport = self.transport_factory(self.settings) if self.transport_factory else None
        report = run_pass(
            self.settings,
            self.engine,
            now=self.clock(),
            transport=transport,
            stop=self.stop_event,
            outage=self.outage,
            faults=self.faults,
        )
        self.passes += 1
        log.debug("pass %d (%s) done", self.passes, reason)
        return report

    def _after(self, report: PassReport) -> None:
        for problem in report.problems:
            if problem not in self._seen_problems:  # once per daemon, not once per scan
                self._seen_problems.add(problem)
                log.warning("%s", problem, extra={"event": "problem"})
        if self.passes == 1:
            log_skipped(report)
        if self.punctual:
            self._schedule_posts(report)
        self._report_fatal(report)
        nxt = next_work_time(self.engine, self.clock())
        if nxt is not None:
            self.wake("retry", nxt)

    def _schedule_posts(self, report: PassReport) -> None:
        """One DateTrigger job per future post, at its exact date."""
        wanted = {f"post:{p.post_id}": p for p in report.future}
        for job in self.scheduler.get_jobs():
            if job.id.startswith("post:") and job.id not in wanted:
                job.remove()
        for job_id, post in wanted.items():
            existing = self.scheduler.get_job(job_id)
            if existing is not None and existing.next_run_time == post.date:
                continue
            self.scheduler.add_job(
                self._pass,
                "date",
                run_date=post.date,
                id=job_id,
                args=[f"post {post.post_id}"],
                replace_existing=True,
            )
            log.info(
                "%s is due at %s: scheduled",
                post.post_id,
                post.date.isoformat(),
                extra={"event": "scheduled", "post_id": post.post_id, "at": post.date.isoformat()},
            )

    def _report_fatal(self, report: PassReport) -> None:
        """A transport that fails as a whole (TLS refused, bad login): one line per pass."""
        if report.transport_error is not None:
            log.error(
                "transport failed: %s; retrying in %g s",
                report.transport_error,
                self.settings.schedule.scan_interval,
                extra={"event": "transport-failed", "text": report.transport_error},
            )

    def _watch(self) -> None:
        """Wake a pass when a post file changes (watchfiles); the scan covers the rest."""
        import watchfiles

        posts_dir = self.settings.site.posts_dir
        try:
            for changes in watchfiles.watch(
                posts_dir,
                stop_event=self.stop_event,
                debounce=200,
                step=50,
                raise_interrupt=False,
            ):
                if any(path.endswith(POST_SUFFIXES) for _change, path in changes):
                    self.wake("files changed")
        except Exception as exc:  # a missing folder must not stop the daemon
            log.warning("cannot watch %s (%s); relying on the scan", posts_dir, exc)


def _wall() -> float:
    """The wall clock (a seam for tests that step it)."""
    return time.time()
