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

import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import Connection, Engine, delete, select, update
from sqlalchemy.exc import SQLAlchemyError

from newsletter.config import Settings, utcnow
from newsletter.daemon import planning
from newsletter.daemon.passes import (
    Clock,
    MailingProgress,
    OutageLog,
    PassReport,
    log_skipped,
    next_work_time,
    run_pass,
)
from newsletter.delivery.transports import Transport
from newsletter.email.tokens import checked_secret
from newsletter.errors import DeliveryError, NewsletterError, StoreError
from newsletter.posts.collection import POST_SUFFIXES
from newsletter.store import insert_or_ignore, safe_url
from newsletter.store.leases import owner_identity
from newsletter.store.schema import state

log = logging.getLogger("newsletter.daemon")

TransportFactory = Callable[[Settings], Transport]

HEARTBEAT = 5.0  # seconds between lock heartbeats
STOP_TIMEOUT = 8.0  # SIGTERM → exit within 10 s: wait this long for in-flight sends
LOCK_KEY = "daemon.lock"
LOCK_TTL = 30.0  # seconds without a heartbeat before another daemon may take over


# --------------------------------------------------------------------------- the lock


class DaemonBusyError(DeliveryError):
    """Another daemon holds the lock on this database."""


class DaemonLock:
    """One row in ``state``: the owner (host:pid:random) and a heartbeat expiry.

    A second daemon is refused while the row is fresh.  A holder that stopped
    heartbeating (hung, or killed with -9) is taken over after `ttl`; on the
    same host a dead pid is taken over at once, so a restart after a crash
    does not have to wait.
    """

    def __init__(
        self, engine: Engine, *, ttl: float = LOCK_TTL, clock: Clock = utcnow, db: str = ""
    ) -> None:
        self.engine = engine
        self.ttl = ttl
        self.clock = clock
        self.db = db
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def acquire(self) -> None:
        """Insert the row if there is none, else take it over from a dead holder.

        Insert-or-ignore then re-read, and a takeover that names the holder it
        replaces: two daemons starting at the same instant get one lock and
        one "another daemon" refusal, never a unique violation.
        """
        at = self.clock()
        mine = {
            "value": self.owner,
            "updated_at": at,
            "expires_at": at + timedelta(seconds=self.ttl),
            "number": _started(os.getpid()),
        }
        try:
            with self.engine.begin() as conn:
                if insert_or_ignore(conn, state, {"key": LOCK_KEY, **mine}, ("key",)):
                    return
                holder = self._holder(conn)
                alive = holder is not None and holder[0] != self.owner
                if alive and _holder_alive(holder[0], holder[2], at, holder[3]):
                    raise self._busy(holder, at)
                taken = conn.execute(
                    update(state)
                    .where(state.c.key == LOCK_KEY, state.c.value == (holder or (None,))[0])
                    .values(**mine)
                ).rowcount
                if not taken:  # another daemon took it over (or released it) meanwhile
                    holder = self._holder(conn)
                    if holder is None:
                        raise StoreError("the daemon lock changed hands; try again")
                    raise self._busy(holder, at)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot take the daemon lock: {exc}") from exc

    def _holder(self, conn: Connection) -> Any:
        return conn.execute(
            select(state.c.value, state.c.updated_at, state.c.expires_at, state.c.number).where(
                state.c.key == LOCK_KEY
            )
        ).first()

    def _busy(self, holder: Any, at: datetime) -> DaemonBusyError:
        age = max(0, round((at - holder[1]).total_seconds()))
        return DaemonBusyError(
            f"another newsletter daemon ({holder[0]}, last heartbeat {age} s ago) "
            f"is running on {self.db or 'this database'}; stop it first "
            f"(a crashed one is taken over after {self.ttl:g} s)",
            key="database.url",
        )

    def heartbeat(self) -> bool:
        """Extend the lock; False when another process has taken it from us."""
        at = self.clock()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(state)
                .where(state.c.key == LOCK_KEY, state.c.value == self.owner)
                .values(updated_at=at, expires_at=at + timedelta(seconds=self.ttl))
            )
            return bool(result.rowcount)

    def release(self) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    delete(state).where(state.c.key == LOCK_KEY, state.c.value == self.owner)
                )
        except SQLAlchemyError as exc:  # the lock simply expires
            log.warning("could not release the daemon lock: %s", exc)


class SharedLock:
    """The daemon "lock" on PostgreSQL: nothing to hold, any number may run.

    Planning there is idempotent (a unique mailing per post and list, planned
    with INSERT … ON CONFLICT), claims share rows (FOR UPDATE SKIP LOCKED) and
    a dead owner's leases are freed by its advisory lock, so every daemon
    plans and delivers; the steps that must not run twice at once take
    `store.one_at_a_time`.  One daemon dying never stops the others.
    """

    def __init__(self, *, db: str = "") -> None:
        self.db = db
        self.owner = owner_identity()  # for the logs: $NEWSLETTER_OWNER names it

    def acquire(self) -> None:
        """Nothing to take."""

    def heartbeat(self) -> bool:
        return True  # never lost: there is no single holder to lose it to

    def release(self) -> None:
        """Nothing to give back."""


def daemon_lock(engine: Engine, *, clock: Clock = utcnow, db: str = "") -> DaemonLock | SharedLock:
    """One daemon per SQLite database (`DaemonLock`); any number on PostgreSQL."""
    if engine.dialect.name == "postgresql":
        return SharedLock(db=db)
    return DaemonLock(engine, clock=clock, db=db)


def _holder_alive(
    owner: str, expires_at: datetime | None, at: datetime, started: float | None = None
) -> bool:
    """On this host the pid decides, whatever the heartbeat says: a daemon whose
    heartbeat waited behind a long write (an import holding SQLite's lock) is
    still alive.  From another host only a fresh heartbeat says so."""
    host, _, rest = owner.partition(":")
    if host != socket.gethostname():
        return expires_at is not None and expires_at > at
    try:
        pid = int(rest.split(":")[0])
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    # The pid may have been reused since: compare when it started.
    now_started = _started(pid)
    return started is None or now_started is None or now_started == started


def _started(pid: int) -> float | None:
    """The process's start time (clock ticks after boot, /proc/<pid>/stat field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses
        return float(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


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
        self.outage = OutageLog()
        self._running = threading.Lock()  # held by the pass in progress
        self._seen_problems: set[str] = set()
        self._watcher: threading.Thread | None = None

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
        if self._running.acquire(timeout=STOP_TIMEOUT):
            self._running.release()
        else:
            log.warning("a pass is still running after %g s; exiting anyway", STOP_TIMEOUT)
        if self._watcher is not None:
            self._watcher.join(timeout=2)
        self.lock.release()
        log.info("daemon stopped after %d passes", self.passes, extra={"event": "stopped"})

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
        log.info(
            "received %s: finishing in-flight messages",
            signal.Signals(signum).name,
            extra={"event": "signal"},
        )
        self.stop_event.set()

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
            if not self.lock.heartbeat():
                log.error(
                    "the daemon lock was taken by another process; stopping",
                    extra={"event": "lock-lost"},
                )
                self.lost_lock = True
                self.stop_event.set()
        except SQLAlchemyError as exc:
            log.warning("heartbeat failed: %s", exc)

    def _pass(self, reason: str) -> None:
        with self._running:
            if self.stop_event.is_set():
                return
            try:
                report = self.run_one(reason)
                if not self.stop_event.is_set():
                    self._after(report)
            except Exception:  # nothing may kill the worker: log it and try next time
                log.exception(
                    "pass (%s) failed; retrying at the next scan",
                    reason,
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
