"""One delivery pass over a mailing: claim in batches, send, record.

The main thread claims small batches under a lease.  When the SMTP server
offers PIPELINING it drives all `[delivery] concurrency` connections itself in
lockstep rounds (envelope and body on each, commit the previous round, then
the final dots), so no thread waits on another for the GIL; otherwise a worker
thread per connection personalises, sends and commits before its next final
dot.  Either way each connection has at most one message whose outcome is not
yet committed (invariant 2).  Memory stays flat whatever the list size: only a
batch or two is ever held.  Building the bytes lives in `outgoing`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from newsletter.config import Settings
from newsletter.delivery import DeliveryReport, Progress, envelope_sender
from newsletter.errors import DeliveryError, NewsletterError
from newsletter.outgoing import (
    _Context,
    _describe,
    build_template,
    make_signer,
    message_id_of,
)
from newsletter.posts import PostCollection
from newsletter.ratelimit import Throttle, TokenBucket, next_attempt
from newsletter.recorder import Pending, Recorder
from newsletter.store import mailings as q
from newsletter.store import now, reading
from newsletter.transports import (
    ConnectError,
    SendResult,
    Transport,
    is_thread_safe,
    make_transport,
)

log = logging.getLogger(__name__)

THROTTLE_RETRIES = 5  # re-sends of one message after "slow down" before deferring it


class _Tally:
    """Thread-safe counters for one pass."""

    def __init__(self, done: int, total: int, progress: Progress | None) -> None:
        self.lock = threading.Lock()
        self.by_status = {"sent": 0, "deferred": 0, "failed": 0, "skipped": 0}
        self.errors: list[str] = []
        self.last_error: str | None = None
        self.done, self.total = done, total
        self.progress = progress

    def add(self, status: str, error: str | None = None) -> None:
        with self.lock:
            self.by_status[status] = self.by_status.get(status, 0) + 1
            if error is not None:
                self.last_error = error
                if status == "failed" and len(self.errors) < 1000:
                    self.errors.append(error)
            self.done += 1
            done = self.done
        if self.progress is not None:
            self.progress(done, self.total)


@dataclass(frozen=True)
class _Job:
    """A few claimed rows for one worker: one queue hand-off per chunk, not per message."""

    rows: tuple[q.Claimed, ...]


class MailingPass:
    """Deliver what is claimable of one mailing, now."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        mailing: q.MailingRow,
        posts: PostCollection,
        *,
        transport: Transport | None = None,
        stop: threading.Event | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.engine, self.settings, self.mailing = engine, settings, mailing
        self.posts = posts
        # A transport made here is closed here; one given by the caller is theirs.
        self.owns_shared = False
        if transport is None:
            # One instance for every worker when the kind allows it (maildir).
            candidate = make_transport(settings)
            if is_thread_safe(candidate):
                transport, self.owns_shared = candidate, True
        self.shared = transport
        self.stop = stop or threading.Event()
        self.abort = threading.Event()
        self.fatal: NewsletterError | None = None
        self.progress = progress
        d = settings.delivery
        self.workers = d.concurrency if transport is None or is_thread_safe(transport) else 1
        self.bucket = TokenBucket(d.rate_per_second)
        self.throttle = Throttle(min(d.backoff_base, 5.0), d.backoff_cap)
        self.owner = q.lease_owner()
        self.batch = self._batch_size()
        # queue.Queue costs a Python-level Condition round (and a thread wake-up)
        # per put and per get, so rows travel to the workers in small chunks.
        self.chunk = max(1, min(16, self.batch // (self.workers * 4)))
        self.sender = envelope_sender(settings)
        self.write_lock = threading.Lock()

    def _batch_size(self) -> int:
        d = self.settings.delivery
        size = max(200, self.workers * 8)
        if d.rate_per_second > 0:
            # Never claim more than can go out well within the lease.
            size = min(size, max(1, int(d.rate_per_second * d.lease_seconds / 4)))
        return size

    # ------------------------------------------------------------------ the pass

    def run(self, *, wait: float = 0.0) -> DeliveryReport:
        mailing = self.mailing
        q.free_dead_leases(self.engine)
        at = now()
        if mailing.state == "paused" and mailing.paused_until and mailing.paused_until > at:
            return DeliveryReport(paused=True)
        with reading(self.engine) as conn:
            if not q.has_open(conn, mailing.id):
                if mailing.state != "done":
                    q.set_state(self.engine, mailing.id, "done")
                return DeliveryReport()
            counts = q.counts(conn, mailing.id).get(mailing.id, {})
        allowance = self._allowance()
        if allowance == 0:
            return self._pause()
        template = build_template(self.settings, mailing, self.posts)
        self.context = _Context(
            self.settings, mailing, template, make_signer(self.settings), self.engine
        )
        q.set_state(self.engine, mailing.id, "sending")
        finished = sum(counts.get(s, 0) for s in ("sent", "failed", "skipped"))
        tally = _Tally(finished, sum(counts.values()), self.progress)
        paused = self._run_workers(tally, allowance, wait)
        return self._finish(tally, paused)

    def _run_workers(self, tally: _Tally, allowance: int | None, wait: float) -> bool:
        if self.shared is None and self._server_pipelines():
            return self._run_rounds(tally, allowance, wait)
        return self._run_threads(tally, allowance, wait)

    def _server_pipelines(self) -> bool:
        """Whether the SMTP server offers PIPELINING (one-thread rounds need it).

        Without it each message costs three more round trips, which a thread
        per connection overlaps.  Any trouble connecting is left to the
        threaded path, which reports it as it always has.
        """
        if self.settings.delivery.transport != "smtp":
            return False
        from newsletter.transports.smtp import SmtpTransport

        probe = make_transport(self.settings)
        try:
            return isinstance(probe, SmtpTransport) and probe.pipelines("probe@example.org")
        except NewsletterError:
            return False
        finally:
            probe.close()

    def _run_threads(self, tally: _Tally, allowance: int | None, wait: float) -> bool:
        jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=max(2, self.batch * 2 // self.chunk))
        threads = [
            threading.Thread(target=self._worker, args=(jobs, tally), daemon=True)
            for _ in range(self.workers)
        ]
        self.recorder = Recorder(self.engine, self.write_lock)
        for thread in threads:
            thread.start()
        paused = False
        try:
            paused = self._feed(jobs, tally, allowance, wait)
        except BaseException:
            self.abort.set()  # Ctrl-C or an error: workers finish the message in hand only
            raise
        finally:
            for _ in threads:
                jobs.put(None)
            for thread in threads:
                thread.join()
            self.recorder.close()
            if self.owns_shared and self.shared is not None:
                self.shared.close()
            q.release(self.engine, self.owner)
        if self.fatal is not None:
            raise self.fatal
        return paused

    def _feed(
        self, jobs: queue.Queue[_Job | None], tally: _Tally, allowance: int | None, wait: float
    ) -> bool:
        """Claim batches until nothing is due; True when a cap paused the mailing."""
        deadline = time.monotonic() + wait
        while not (self.stop.is_set() or self.abort.is_set()):
            limit = self.batch if allowance is None else min(self.batch, allowance)
            if limit <= 0:
                return True
            with self.write_lock:  # never fight the recorder for SQLite's write lock
                rows, skipped = q.claim(
                    self.engine,
                    self.mailing.id,
                    self.owner,
                    limit,
                    self.settings.delivery.lease_seconds,
                )
            for _ in range(skipped):
                tally.add("skipped")
            if rows or skipped:
                if allowance is not None:
                    allowance -= len(rows)
                size = self.chunk
                for start in range(0, len(rows), size):
                    jobs.put(_Job(tuple(rows[start : start + size])))
                continue
            if not self._wait_for_due(deadline):
                break
        return False

    # ------------------------------------------------------------------ one thread, SMTP

    def _run_rounds(self, tally: _Tally, allowance: int | None, wait: float) -> bool:
        """SMTP: this thread drives every connection itself, in rounds.

        Profiled: with a thread per connection, a recorder and a feeder, a
        third of each worker's time went to winning the GIL back.  Here one
        thread claims, personalises, writes MAIL/RCPT/DATA and the content on
        each of `concurrency` connections, commits the previous round's
        outcomes, then sends each final dot and reads the replies.  Each
        connection still has at most one message whose fate the ledger does
        not know (invariant 2).
        """
        from newsletter.transports.smtp import SmtpTransport

        self.recorder = Recorder(self.engine, self.write_lock)
        transports: list[SmtpTransport] = []
        try:
            for _ in range(self.workers):
                transport = make_transport(self.settings)
                assert isinstance(transport, SmtpTransport)
                transports.append(transport)
            paused = self._rounds(transports, tally, allowance, wait)
            self.recorder.flush()  # raises if the last outcomes cannot be recorded
        except BaseException:
            self.abort.set()
            for transport in transports:
                transport.abandon()  # never QUIT in the middle of DATA
            raise
        finally:
            try:
                self.recorder.close()
            finally:
                for transport in transports:
                    transport.close()
                q.release(self.engine, self.owner)
        if self.fatal is not None:
            raise self.fatal
        return paused

    def _rounds(
        self, transports: list[Any], tally: _Tally, allowance: int | None, wait: float
    ) -> bool:
        deadline = time.monotonic() + wait
        # Without a wait, a row deferred in this pass waits for the next pass,
        # however short its backoff (as the threaded feeder, which claims ahead).
        due_by = now() if wait <= 0 else None
        width = len(transports)
        while not (self.stop.is_set() or self.abort.is_set()):
            limit = self.batch if allowance is None else min(self.batch, allowance)
            if limit <= 0:
                return True
            with self.write_lock:
                rows, skipped = q.claim(
                    self.engine,
                    self.mailing.id,
                    self.owner,
                    limit,
                    self.settings.delivery.lease_seconds,
                    due_by=due_by,
                )
            for _ in range(skipped):
                tally.add("skipped")
            if rows or skipped:
                if allowance is not None:
                    allowance -= len(rows)
                for start in range(0, len(rows), width):
                    if self.stop.is_set() or self.abort.is_set():
                        break
                    try:
                        self._round(transports, rows[start : start + width], tally)
                    except Exception as exc:
                        for transport in transports:
                            transport.abandon()  # no final dot after a failed commit
                        self._fail(exc, None)
                continue
            self.recorder.flush()  # deferred rows back in the ledger before looking
            if not self._wait_for_due(deadline):
                break
        return False

    def _round(self, transports: list[Any], rows: list[q.Claimed], tally: _Tally) -> None:
        flights: list[tuple[Any, q.Claimed, bytes, str | None, Any]] = []
        slow: list[tuple[Any, q.Claimed, bytes, str | None, int]] = []
        for transport, row in zip(transports, rows, strict=False):
            message = self.context.message(row)
            mid = message_id_of(message)
            self.throttle.wait()
            if self.stop.is_set():
                break
            connects = transport.connects
            try:
                fast = transport.pipelines(row.email)
            except ConnectError as exc:
                result = SendResult(row.email, False, exc.code, exc.message, stage="connect")
                self._settle(row, result, mid, tally)
                continue
            if not fast:
                slow.append((transport, row, message, mid, THROTTLE_RETRIES))
                continue
            self.bucket.acquire()
            reused = transport.connects == connects
            flights.append(
                (
                    transport,
                    row,
                    message,
                    mid,
                    transport.begin(self.sender, row.email, message, reused=reused),
                )
            )
        for transport, _, _, _, flight in flights:
            transport.body(flight)
        self.recorder.flush()  # the previous round's outcomes, before any final dot
        for transport, _, _, _, flight in flights:
            transport.end(flight)
        for transport, _, _, _, flight in flights:
            transport.reply(flight)
        for transport, row, message, mid, flight in flights:
            result = flight.result
            if flight.retry or result.throttled:
                if result.throttled:
                    log.info(
                        "throttled by the server (%s %s); slowing down", result.code, result.text
                    )
                    self.throttle.hit()
                tries = THROTTLE_RETRIES - 1 if result.throttled else THROTTLE_RETRIES
                slow.append((transport, row, message, mid, tries))
                continue
            self.throttle.ok()
            self._settle(row, result, mid, tally)
        for transport, row, message, mid, tries in slow:
            again = self._send(transport, row, message, self.recorder.flush, tries=tries)
            if again is not None:  # None: stopped while waiting out a throttle
                self._settle(row, again, mid, tally)

    def _wait_for_due(self, deadline: float) -> bool:
        """Sleep until the next deferred recipient is due, if that is before the deadline."""
        jobs_left = deadline - time.monotonic()
        if jobs_left <= 0:
            return False
        with reading(self.engine) as conn:
            due = q.next_due(conn, self.mailing.id)
        if due is None:
            return False
        delay = max(0.01, (due - now()).total_seconds())
        if delay > jobs_left:
            return False
        self.stop.wait(min(delay, 0.5))
        return True

    def _worker(self, jobs: queue.Queue[_Job | None], tally: _Tally) -> None:
        transport = self.shared if self.shared is not None else make_transport(self.settings)
        previous: Pending | None = None
        try:
            while (job := self._next_job(jobs, previous)) is not None:
                for row in job.rows:
                    if self.stop.is_set() or self.abort.is_set():
                        break  # drain; the leases are released at the end
                    try:
                        previous = self._deliver(transport, row, tally, previous)
                    except Exception as exc:
                        self._fail(exc, row.email)
            if previous is not None:
                previous.wait()
        except Exception as exc:
            self._fail(exc, None)
        finally:
            if self.shared is None:
                transport.close()

    def _next_job(self, jobs: queue.Queue[_Job | None], previous: Pending | None) -> _Job | None:
        """The next chunk; with nothing queued, commit the last outcome before waiting.

        Nobody else commits it (there is no recorder thread): a deferred row
        must be back in the ledger before the feeder looks for due work again.
        """
        try:
            return jobs.get_nowait()
        except queue.Empty:
            if previous is not None:
                try:
                    previous.wait()
                except Exception as exc:  # keep draining the queue (see _fail)
                    self._fail(exc, None)
            return jobs.get()

    def _fail(self, exc: Exception, recipient: str | None) -> None:
        """Stop the pass on an error, keeping the worker alive to drain its queue.

        A worker that died here would leave the feeding thread blocked on a
        full queue for ever; an unexpected exception (a bug) is wrapped so the
        caller still gets one NewsletterError with context, never a hang.
        """
        if not isinstance(exc, NewsletterError):
            wrapped = DeliveryError(
                f"internal error while sending: {type(exc).__name__}: {exc}", recipient=recipient
            )
            wrapped.__cause__ = exc
            exc = wrapped
        self.fatal = self.fatal or exc
        self.abort.set()

    # ------------------------------------------------------------------ one message

    def _deliver(
        self, transport: Transport, row: q.Claimed, tally: _Tally, previous: Pending | None
    ) -> Pending | None:
        """Send one message; hand its outcome to the recorder without waiting.

        The wait for the *previous* outcome's commit happens inside the SMTP
        transaction of this one, just before the final dot (when the transport
        supports it): until that dot the server keeps nothing, so a crash then
        cannot send this message, and each connection still has at most one
        message whose fate the ledger does not know.
        """
        message = self.context.message(row)
        mid = message_id_of(message)

        def ready() -> None:
            if previous is not None:
                previous.wait()

        result = self._send(transport, row, message, ready)
        ready()
        if result is None:  # stopped while waiting out a throttle
            return None
        return self._settle(row, result, mid, tally)

    def _settle(
        self, row: q.Claimed, result: SendResult, mid: str | None, tally: _Tally
    ) -> Pending:
        """Hand the outcome to the recorder, count it, mark a bounce."""
        outcome = self._outcome(row, result, mid)
        pending = self.recorder.submit(row.id, outcome)
        if result.bounced:
            self._bounce(row, result)
        error = None if result.ok else f"{row.email}: {_describe(result)}"
        tally.add(outcome.status, error)
        return pending

    def _send(
        self,
        transport: Transport,
        row: q.Claimed,
        message: bytes,
        ready: Callable[[], None],
        *,
        tries: int = THROTTLE_RETRIES,
    ) -> SendResult | None:
        result: SendResult | None = None
        early = not getattr(transport, "accepts_ready", False)
        for _ in range(tries):
            self.throttle.wait()
            if self.stop.is_set():
                return None
            self.bucket.acquire()
            try:
                if early:
                    ready()
                    result = transport.send(self.sender, row.email, message)
                else:
                    result = transport.send(  # type: ignore[call-arg]
                        self.sender, row.email, message, ready=ready
                    )
            except ConnectError as exc:
                return SendResult(row.email, False, exc.code, exc.message, stage="connect")
            if not result.throttled:
                self.throttle.ok()
                return result
            log.info("throttled by the server (%s %s); slowing down", result.code, result.text)
            self.throttle.hit()
        return result

    def _outcome(self, row: q.Claimed, result: SendResult, mid: str | None) -> q.Outcome:
        d = self.settings.delivery
        if result.ok:
            return q.Outcome("sent", row.attempts + 1, result.code, result.text, mid)
        if result.throttled:
            # Still throttled after retries: defer without spending an attempt.
            at = now() + timedelta(seconds=self.throttle.hit())
            return q.Outcome("deferred", row.attempts, result.code, result.text, mid, at)
        attempts = row.attempts + 1
        if result.permanent or attempts >= d.max_attempts:
            return q.Outcome("failed", attempts, result.code, _describe(result), mid)
        at = next_attempt(now(), attempts, d.backoff_base, d.backoff_cap)
        return q.Outcome("deferred", attempts, result.code, _describe(result), mid, at)

    def _bounce(self, row: q.Claimed, result: SendResult) -> None:
        from newsletter.store import subscribers as subs

        with self.write_lock:
            subs.mark_bounced(self.engine, row.subscriber_id, reason=_describe(result))

    # ------------------------------------------------------------------ caps

    def _allowance(self) -> int | None:
        """Messages still allowed by max_per_hour / max_per_day (None: no cap)."""
        d = self.settings.delivery
        left: int | None = None
        for cap, window in ((d.max_per_hour, 3600), (d.max_per_day, 86400)):
            if cap is None:
                continue
            with reading(self.engine) as conn:
                sent, _ = q.sent_since(conn, now() - timedelta(seconds=window))
            room = max(0, cap - sent)
            left = room if left is None else min(left, room)
        return left

    def _resume_at(self) -> datetime:
        d = self.settings.delivery
        at = now()
        resume = at
        for cap, window in ((d.max_per_hour, 3600), (d.max_per_day, 86400)):
            if cap is None:
                continue
            with reading(self.engine) as conn:
                sent, oldest = q.sent_since(conn, at - timedelta(seconds=window))
            if sent >= cap and oldest is not None:
                resume = max(resume, oldest + timedelta(seconds=window))
        return resume

    def _pause(self) -> DeliveryReport:
        until = self._resume_at()
        q.set_state(self.engine, self.mailing.id, "paused", paused_until=until)
        log.info("mailing %s paused until %s (sending cap reached)", self.mailing.id, until)
        return DeliveryReport(paused=True)

    def _finish(self, tally: _Tally, paused: bool) -> DeliveryReport:
        with reading(self.engine) as conn:
            still_open = q.has_open(conn, self.mailing.id)
        paused = paused and still_open
        state = "paused" if paused else ("sending" if still_open else "done")
        until = self._resume_at() if paused else None
        q.set_state(
            self.engine, self.mailing.id, state, paused_until=until, last_error=tally.last_error
        )
        s = tally.by_status
        return DeliveryReport(
            s["sent"], s["deferred"], s["failed"], s["skipped"], paused, tuple(tally.errors)
        )
