"""One delivery pass over a mailing: claim in batches, send, record.

The pass claims small batches under a lease, personalises each message,
turns each SMTP answer into an outcome for the ledger, and applies rate
limits and hourly/daily caps.  How claimed rows reach connections is a
`Strategy` (strategy.py): for SMTP with PIPELINING one event loop with each
connection on its own (streams.py), without it a thread per connection
(threaded.py, also used for the other transports); `[delivery] strategy` may
pick any of them, or the older lockstep rounds (rounds.py).
Either way each connection has at most one message whose outcome is not yet
committed (invariant 2), and memory stays flat whatever the list size: only a
batch or two is ever held.  Building the bytes lives in `outgoing`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from newsletter.config import Settings
from newsletter.delivery.bounces import sender_for
from newsletter.delivery.caps import cap_allowance, cap_resume_at
from newsletter.delivery.choosing import choose_strategy
from newsletter.delivery.hand import Hand
from newsletter.delivery.keeper import LeaseKeeper, PassStop
from newsletter.delivery.outgoing import (
    MessageContext,
    build_template,
    describe_result,
    make_signer,
)
from newsletter.delivery.ratelimit import Throttle, TokenBucket, next_attempt, throttle_patience
from newsletter.delivery.recorder import Pending, Recorder
from newsletter.delivery.report import DeliveryReport, Progress
from newsletter.delivery.senders import STOP_AFTER, SenderRefusals, refuses_sender
from newsletter.delivery.strategy import (
    THROTTLE_RETRIES,
    Reach,
    Strategy,
    Tally,
    connect_failure,
)
from newsletter.delivery.transports import (
    ConnectError,
    SendResult,
    Transport,
    is_thread_safe,
    make_transport,
)
from newsletter.email.message import MessageTemplate
from newsletter.errors import DeliveryError, NewsletterError, StoreError, database_reason
from newsletter.posts.collection import PostCollection
from newsletter.store import held, now, reading
from newsletter.store import mailings as q

# SMTP's strategies (the event loop, the lockstep rounds) and the worker
# processes are imported where an SMTP pass chooses them: a maildir or memory
# pass (`send` to an outbox, the tests) needs neither, nor multiprocessing.
if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from newsletter.delivery.processes import Job

__all__ = ["LeaseKeeper", "MailingPass", "run_worker"]

log = logging.getLogger(__name__)

# How often a claim that lost every row to a concurrent claimer tries again
# (20 ms apart) before the pass believes there is nothing left for it.
CLAIM_RETRIES = 250
# Rows in a pass's first claim, and the most a claim grows to (`_batch_sizes`).
FIRST_CLAIM = 200
CLAIM_CAP = 1600


class MailingPass:
    """Deliver what is claimable of one mailing, now."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        mailing: q.MailingRow,
        posts: PostCollection | None,
        *,
        transport: Transport | None = None,
        stop: threading.Event | None = None,
        progress: Progress | None = None,
        template: MessageTemplate | None = None,
        watch: Callable[[], None] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """`stop`: the caller's (a shutdown); `watch`: called now and then
        while sending (the daemon re-reads the post there and withdraws the
        mailing if it was pulled, `daemon.withdrawal`); `clock`: the time that
        ends a pause (a daemon pass's, `run_pass(now=...)`), the wall clock by
        default; claims and retry times keep the database's (`store.leases`)."""
        self.engine, self.settings, self.mailing = engine, settings, mailing
        self.clock = clock or now
        self.posts = posts
        self.template = template  # a worker process is given its parent's
        self.tally: Tally | None = None
        # A transport made here is closed here; one given by the caller is theirs.
        self.owns_shared = False
        if transport is None:
            # One instance for every worker when the kind allows it (maildir).
            candidate = make_transport(settings)
            if is_thread_safe(candidate):
                transport, self.owns_shared = candidate, True
        self.shared = transport
        # The pass's own stop: the caller's, or its mailing halted (`check_halt`).
        self.stop: threading.Event = PassStop(stop)
        self.watch = watch
        self.halted = False
        self.abort = threading.Event()
        self.fatal: NewsletterError | None = None
        self.progress = progress
        d = settings.delivery
        self.workers = d.concurrency if transport is None or is_thread_safe(transport) else 1
        self.bucket = TokenBucket(d.rate_per_second)
        self.throttle = Throttle(min(d.backoff_base, 5.0), d.backoff_cap)
        self.throttled_by: SendResult | None = None  # the last "slow down" reply
        self.gave_up = False
        self.reach = Reach()  # connections that never opened, in a row
        self.owner = q.owner_identity()
        # Caps hold for the whole deployment: every claim checks them in the database.
        self.caps = [
            (cap, window)
            for cap, window in ((d.max_per_hour, 3600.0), (d.max_per_day, 86400.0))
            if cap is not None
        ]
        # The first claim is small, so that the first message leaves soon; each
        # full claim after it doubles, up to `batch_cap` (`_grow`).
        self.batch, self.batch_cap = self._batch_sizes()
        self.chunk = self._chunk()
        self.sender = sender_for(settings)  # VERP: one envelope sender per delivery
        # MAIL FROM refused again and again: stop; one VERP sender refused: its own (senders.py)
        self.refusals = SenderRefusals(
            per_recipient=bool(settings.bounces.address), ledger=self._refusal_ledger
        )
        self.refused: NewsletterError | None = None  # sender refusals stopped the pass
        self.write_lock = threading.Lock()
        # The claimed rows in memory: whether each may still go (hand.py).
        self.hand = Hand(d.lease_seconds, self._renew_held, self._check_held, self._skip_left)

    def limit_batch(self, rows: int) -> None:
        """Claim at most `rows` at a time (processes sharing a mailing share it evenly)."""
        self.batch_cap = max(1, min(self.batch_cap, rows))
        self.batch = min(self.batch, self.batch_cap)
        self.chunk = self._chunk()

    def _chunk(self) -> int:
        # queue.Queue costs a Python-level Condition round (and a thread wake-up)
        # per put and per get, so rows travel to the workers in small chunks.
        return max(1, min(16, self.batch // (self.workers * 4)))

    def _batch_sizes(self) -> tuple[int, int]:
        """The first claim's size and the most a claim grows to.

        A claim has a large fixed cost (with a 20,000-row mailing on SQLite
        2.2-3.1 ms for 50 rows, 3.9-5.8 ms for 200, 8.2-9.2 ms for 800) and
        holds the write lock meanwhile, stalling the outcomes' commits; claims
        of 800-2,000 rows lowered the CPU per message in 14 of 18 paired runs
        (docs/delivery.md, "Claim size").  Leases are renewed for every row
        held, so a big claim does not lapse while it waits its turn.
        """
        d = self.settings.delivery
        first = max(FIRST_CLAIM, self.workers * 8)
        cap = max(CLAIM_CAP, first)
        if d.rate_per_second > 0:
            # Never claim more than can go out well within the lease.
            cap = min(cap, max(1, int(d.rate_per_second * d.lease_seconds / 4)))
        return min(first, cap), cap

    def _grow(self, limit: int, taken: int) -> None:
        """After a claim that took all it asked for, the next asks for twice as many."""
        if taken >= limit and self.batch < self.batch_cap:
            self.batch = min(self.batch * 2, self.batch_cap)
            self.chunk = self._chunk()

    # ------------------------------------------------------------------ the pass

    def run(self, *, wait: float = 0.0) -> DeliveryReport:
        mailing = self.mailing
        q.free_dead_leases(self.engine)
        at = self.clock()
        if mailing.state == "paused" and mailing.paused_until and mailing.paused_until > at:
            return DeliveryReport(paused=True)
        with reading(self.engine) as conn:
            if not q.has_open(conn, mailing.id):
                if mailing.state != "done":
                    q.set_state(self.engine, mailing.id, "done")
                return DeliveryReport()
            # Every row of the mailing counted by status (a scan of its part of
            # ix_deliveries_queue: 2-9 ms at 20k rows, growing with it), only
            # for a progress bar's total or to split a big mailing between
            # processes (an SMTP pass with `processes` other than 1); a
            # daemon's pass, the workers and a maildir pass need neither.
            counts = q.counts(conn, mailing.id).get(mailing.id, {}) if self._counted() else {}
        allowance = self._allowance()
        if allowance == 0:
            return self._pause()
        if self.template is None:
            assert self.posts is not None
            self.template = build_template(self.settings, mailing, self.posts)
        self.context = MessageContext(
            self.settings, mailing, self.template, make_signer(self.settings), self.engine
        )
        q.set_state(self.engine, mailing.id, "sending")
        finished = sum(counts.get(s, 0) for s in ("sent", "failed", "skipped"))
        # A server that keeps throttling is borne with for `--wait`, or
        # without one for what one message's tries used to take; then the
        # rest is deferred (`given_up`): --wait bounds the command's wait.
        t = self.throttle
        t.patience = wait if wait > 0 else throttle_patience(t.base, t.cap, THROTTLE_RETRIES)
        # A pass that waits may claim again a row it deferred (`Tally`).
        tally = Tally(finished, sum(counts.values()), self.progress, again=wait > 0)
        self.tally = tally
        self.recorder = Recorder(self.engine, self.write_lock, self.owner)
        try:
            with q.OwnerLock(self.engine, self.owner), LeaseKeeper(self):
                open_rows = sum(counts.values()) - finished
                processes = self._processes(open_rows)
                if processes == 1:
                    paused = self._strategy().run(tally, allowance, wait)
                else:
                    paused = self._run_with_workers(processes, open_rows, tally, allowance, wait)
        except NewsletterError as exc:
            if exc is not self.refused:
                raise
            paused = False
        finally:
            # The strategy closed it; not when the pass failed before one ran
            # (its journal's lock and files go with it).
            self.recorder.close()
        # Refused senders stop the pass with their words, which `status` keeps.
        refused = self.refused or self.refusals.unanswered()
        report = self._finish(tally, paused, refused)
        if refused is not None:
            raise refused
        return report

    def _refusal_ledger(self) -> tuple[bool, int]:
        """A message sent, open deliveries up to `STOP_AFTER` (`SenderRefusals`)."""
        self.recorder.fold()
        with reading(self.engine) as conn:
            sent = q.has_sent(conn, self.mailing.id)
            return sent, q.open_count(conn, self.mailing.id, up_to=STOP_AFTER)

    def _counted(self) -> bool:
        """Whether this pass needs its mailing's rows counted (see `run`)."""
        wants_total = self.progress is not None and getattr(self.progress, "wants_total", True)
        return wants_total or self._may_split()

    def _may_split(self) -> bool:
        """`[delivery] processes` may split this pass: SMTP, not one given transport."""
        d = self.settings.delivery
        return self.shared is None and d.transport == "smtp" and d.processes != 1

    def _processes(self, open_rows: int) -> int:
        """Worker processes (this one included) for this pass: SMTP, big mailings only."""
        if not self._may_split():
            # One process (`processes = 1`, or not SMTP): no import of the
            # worker machinery (~5 ms before the first message, measured);
            # processes.py imports multiprocessing only once a pass splits.
            return 1
        from newsletter.delivery.processes import process_count

        return process_count(self.settings, open_rows)

    def _run_with_workers(
        self, processes: int, open_rows: int, tally: Tally, allowance: int | None, wait: float
    ) -> bool:
        """This process sends a share, `processes - 1` workers the rest (processes.py)."""
        from newsletter.delivery.processes import Workers, shares

        assert self.template is not None
        mine, *theirs = shares(self.settings.delivery.concurrency, processes)
        self.workers = mine
        # A claim takes a few connections' worth, never the others' share.
        batch = max(mine * 8, open_rows // (processes * 4))
        self.limit_batch(batch)
        url = self.engine.url.render_as_string(hide_password=False)
        workers = Workers(
            run_worker, url, self.settings, self.mailing.id, self.template, wait, batch
        )
        with workers:
            workers.start(theirs, tally, self.stop)
            paused = self._strategy().run(tally, allowance, wait)
        paused = paused or workers.paused
        if workers.fatal is not None:
            raise workers.fatal
        if workers.lost and not self.stop.is_set():
            # A worker died (kill -9, OOM): its rows are leased to a dead owner.
            log.warning("%d worker process(es) died; sending their rows here", workers.lost)
            q.free_dead_leases(self.engine)
            if not self.recorder.owes:  # the strategy closed it: a journal of its own again
                self.recorder = Recorder(self.engine, self.write_lock, self.owner)
            self.workers = self.settings.delivery.concurrency
            allowance = self._allowance()
            paused = self._strategy().run(tally, allowance, wait) or paused
        return paused

    def _strategy(self) -> Strategy:
        """How connections are driven (`delivery.choosing`)."""
        return choose_strategy(self, self.settings, shared=self.shared is not None)

    # ------------------------------------------------------------------ for the strategies

    def claim(
        self, limit: int, tally: Tally, *, due_by: datetime | None = None
    ) -> tuple[list[q.Claimed], int]:
        # Retries look only at rows due when this claim began: a row deferred
        # meanwhile waits for wait_for_due, as before.
        due_by = min(due_by, now()) if due_by is not None else now()
        # The journaled outcomes first: deferred rows become claimable again.
        self.recorder.fold()
        for _ in range(CLAIM_RETRIES):
            # Before the claim's transaction: the leases it sets end no sooner
            # than this plus lease_seconds, whatever the claim waited for.
            since = self.hand.now()
            with self.write_lock:  # never fight the recorder for SQLite's write lock
                rows, skipped = q.claim(
                    self.engine,
                    self.mailing.id,
                    self.owner,
                    limit,
                    self.settings.delivery.lease_seconds,
                    due_by=due_by,
                    caps=self.caps,
                )
            # Nothing, yet rows are claimable: another process was claiming them at
            # that instant (SKIP LOCKED skipped them).  That must not end the pass.
            if rows or skipped or self.stop.is_set():
                self.hand.took((row.id for row in rows), since)
                break
            if not q.claimable_left(self.engine, self.mailing.id, due_by=due_by, owner=self.owner):
                break
            self.stop.wait(0.02)
        for _ in range(skipped):
            tally.add("skipped")
        self._grow(limit, len(rows) + skipped)
        self._share_rate()
        return rows, skipped

    def _share_rate(self) -> None:
        """`rate_per_second` is the deployment's: split it between the senders leasing now."""
        rate = self.settings.delivery.rate_per_second
        if rate > 0:
            self.bucket.set_rate(rate / max(1, q.active_senders(self.engine)))

    def release(self) -> None:
        self.hand.forget()  # the keeper's last tick must not call these rows taken over
        if self.recorder.owes:
            # The last fold failed: releasing would send the journaled rows
            # again.  Their leases stay until `free_dead_leases` folds the
            # journal (its lock is free now) and frees them.
            log.warning("leases of %s kept: outcomes still in its journal", self.owner)
            return
        q.release(self.engine, self.owner)

    def message(self, row: q.Claimed) -> bytes:
        return self.context.message(row)

    def data(self, row: q.Claimed) -> bytes:
        return self.context.data(row)

    def wait_for_due(self, deadline: float) -> bool:
        """Sleep until the next deferred recipient is due, if that is before the deadline."""
        jobs_left = deadline - time.monotonic()
        if jobs_left <= 0:
            return False
        self.recorder.fold()  # this pass's deferred rows, with their times
        with reading(self.engine) as conn:
            due = q.next_due(conn, self.mailing.id)
        if due is None:
            return False
        delay = max(0.01, (due - now()).total_seconds())
        if delay > jobs_left:
            return False
        self.stop.wait(min(delay, 0.5))
        return True

    def fail(self, exc: Exception, recipient: str | None) -> None:
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

    @property
    def lease_seconds(self) -> float:
        return self.settings.delivery.lease_seconds

    def check_halt(self) -> None:
        """Stop the pass, as a shutdown would, once its mailing is withdrawn,
        postponed or cancelled (the keeper's tick); the claims already refuse its rows."""
        if self.watch is not None:
            self.watch()
        try:
            with reading(self.engine) as conn:
                halted = q.halted_now(conn, self.mailing.id, now())
        except SQLAlchemyError as exc:
            reason = database_reason(exc)
            raise StoreError(f"cannot read mailing {self.mailing.id}: {reason}") from exc
        if halted and not self.halted:
            self.halted = True
            log.info("mailing %s halted: this pass stops", self.mailing.id)
            self.stop.set()

    def keep_leases(self) -> None:
        """Renew this pass's leases and free dead owners' rows (the LeaseKeeper's tick)."""
        self.hand.renew()
        with self.write_lock:
            try:
                freed = q.free_dead_leases(self.engine)
            except SQLAlchemyError as exc:  # translated: the keeper logs one line
                reason = database_reason(exc)
                raise StoreError(f"cannot free the leases of dead senders: {reason}") from exc
        if freed:
            log.info("freed the leases of %d dead sender(s) of other processes", freed)

    def recheck_claims(self) -> None:
        """Skip claimed rows whose recipients left since (the keeper's tick, `Hand.recheck`)."""
        self.hand.recheck()

    def admit(self, row: q.Claimed) -> bool:
        """Whether `row`'s message may begin: still ours and still wanted (`Hand.admit`)."""
        return self.hand.admit(row.id)

    def _renew_held(self) -> set[int]:
        with self.write_lock:  # never fight the recorder for SQLite's write lock
            return held.renew_held(self.engine, self.owner, self.lease_seconds)

    def _check_held(self, ids: list[int]) -> held.Held:
        return held.check_held(self.engine, self.owner, ids)

    def _skip_left(self, ids: list[int]) -> None:
        """Rows the hand dropped because their recipients left: skipped, as a claim does."""
        with self.write_lock:
            skipped = held.skip_unmailable(self.engine, self.mailing.id, self.owner, ids)
        if self.tally is not None:
            for _ in range(skipped):
                self.tally.add("skipped")

    # ------------------------------------------------------------------ one message

    def settle(self, row: q.Claimed, result: SendResult, tally: Tally) -> Pending:
        """Hand the outcome to the recorder, count it, mark a bounce."""
        self.reach.note(result)
        outcome = self._outcome(row, result)
        pending = self.recorder.submit(row.id, outcome)
        self.hand.settled(row.id)
        if result.bounced:
            self._bounce(row, result)
        error = None if result.ok else f"{row.email}: {describe_result(result)}"
        tally.add(outcome.status, error, row=row.id)
        if self.refusals.note(result, self.sender(row.id) if refuses_sender(result) else ""):
            self.refused = self.refusals.error()
            self.fail(self.refused, row.email)
        return pending

    def send(
        self,
        transport: Transport,
        row: q.Claimed,
        message: bytes,
        ready: Callable[[], None],
        *,
        tries: int = THROTTLE_RETRIES,
        stuffed: bool = False,
        spare: Callable[[], None] | None = None,
        late: bool = False,
    ) -> SendResult | None:
        """`stuffed`: `message` is `data`'s (only for a transport that `accepts_stuffed`);
        `spare`: work to overlap a reply wait that need not precede the final
        dot; `late`: `ready` once the server has answered DATA (both: `SmtpTransport.send`)."""
        result: SendResult | None = None
        early = not getattr(transport, "accepts_ready", False)
        extra: dict[str, object] = {"stuffed": True} if stuffed else {}
        if spare is not None:
            extra["spare"] = spare
        if late:
            extra["late"] = True
        for _ in range(tries):
            if (held := self.given_up(row.email)) is not None:
                return held
            self.wait_out_throttle()
            if self.stop.is_set():
                return None
            self.bucket.acquire()
            if not self.admit(row):
                return None  # taken over, left the list, or the lease is in doubt: unsent
            try:
                if early:
                    ready()
                    if spare is not None:
                        spare()
                    result = transport.send(self.sender(row.id), row.email, message)
                else:
                    result = transport.send(  # type: ignore[call-arg]
                        self.sender(row.id), row.email, message, ready=ready, **extra
                    )
            except ConnectError as exc:
                result = connect_failure(row.email, exc)
            if not result.throttled:
                self.throttle.ok()
                return result
            self.throttled(result, row)
        return result

    def throttled(self, result: SendResult, row: q.Claimed) -> None:
        """A "slow down" reply to `row`'s message: pause, and try it again later."""
        self.hand.again(row.id)
        log.info("throttled by the server (%s %s); slowing down", result.code, result.text)
        self.throttled_by = result
        self.throttle.hit()

    def given_up(self, recipient: str) -> SendResult | None:
        """Defer `recipient` untried, as the server's last word (no attempt
        spent, retried later), once this pass has borne with it long enough:
        it said "slow down" for longer than `Throttle.patience`, or
        `Reach.LIMIT` connections in a row never opened with nothing accepted
        between them (instead of a connect timeout per recipient)."""
        if self.throttled_by is not None and self.throttle.exhausted():
            reason = self.throttled_by
            why = f"keeps throttling ({reason.code} {reason.text})"
            when = "once its pause is over"
        elif (failure := self.reach.down()) is not None:
            reason, why, when = failure, f"cannot be reached ({failure.text})", "later"
        else:
            return None
        if not self.gave_up:
            self.gave_up = True
            log.warning(
                "the mail server %s: the rest of mailing %s is deferred, to be retried %s",
                why,
                self.mailing.id,
                when,
            )
        return dataclasses.replace(reason, recipient=recipient)

    def wait_out_throttle(self) -> None:
        """Until the server's "slow down" pause is over, or a stop: nothing is
        on the wire meanwhile, so a stop need not wait for it."""
        if (pause := self.throttle.remaining()) > 0:
            self.stop.wait(pause)

    def _outcome(self, row: q.Claimed, result: SendResult) -> q.Outcome:
        d = self.settings.delivery
        if result.ok:
            return q.Outcome("sent", row.attempts + 1, result.code, result.text)
        if result.throttled:
            # Still throttled after retries: defer without spending an attempt,
            # until the pause reached is over (its last reply doubled it already).
            at = now() + timedelta(seconds=self.throttle.pause())
            return q.Outcome("deferred", row.attempts, result.code, result.text, at)
        refused_sender = refuses_sender(result)
        if result.stage == "connect" or (
            refused_sender and not self.refusals.spends_attempt(result)
        ):
            # Neither a connection that never opened nor a refused sender says
            # anything of the recipient: no attempt spent, or a 15-minute outage
            # of the mail server (60 s doubling, 5 attempts), or a few passes
            # before the owner fixes [email] from, failed them all for good.
            at = next_attempt(now(), max(1, row.attempts), d.backoff_base, d.backoff_cap)
            return q.Outcome("deferred", row.attempts, result.code, describe_result(result), at)
        attempts = row.attempts + 1
        # One VERP sender refused while the server takes our others is this
        # recipient's own, and with so few left nobody's attempt is spared
        # (senders.py): retried as usual despite its 5xx, then failed.
        if (result.permanent and not refused_sender) or attempts >= d.max_attempts:
            return q.Outcome("failed", attempts, result.code, describe_result(result))
        at = next_attempt(now(), attempts, d.backoff_base, d.backoff_cap)
        return q.Outcome("deferred", attempts, result.code, describe_result(result), at)

    def _bounce(self, row: q.Claimed, result: SendResult) -> None:
        from newsletter.audience import members as subs

        with self.write_lock:
            subs.mark_bounced(self.engine, row.subscriber_id, reason=describe_result(result))

    # ------------------------------------------------------------------ caps

    def _allowance(self) -> int | None:
        """Messages still allowed by max_per_hour / max_per_day (None: no cap)."""
        return cap_allowance(self.engine, self.settings.delivery)

    def _resume_at(self) -> datetime:
        return cap_resume_at(self.engine, self.settings.delivery)

    def _pause(self) -> DeliveryReport:
        until = self._resume_at()
        q.set_state(self.engine, self.mailing.id, "paused", paused_until=until)
        log.info("mailing %s paused until %s (sending cap reached)", self.mailing.id, until)
        return DeliveryReport(paused=True)

    def _finish(
        self, tally: Tally, paused: bool, refused: NewsletterError | None = None
    ) -> DeliveryReport:
        with reading(self.engine) as conn:
            still_open = q.has_open(conn, self.mailing.id)
        paused = paused and still_open
        state = "paused" if paused else ("sending" if still_open else "done")
        until = self._resume_at() if paused else None
        # Nothing open is final (no row ever opens again): everyone got it, so
        # it is done even when it was halted or cancelled while the last ones
        # were in flight; `status` must not say a finished mailing was stopped.
        last_error = tally.last_error if refused is None else str(refused)
        q.set_state(
            self.engine,
            self.mailing.id,
            state,
            paused_until=until,
            last_error=last_error,
            over_halt=not still_open,
        )
        s = tally.by_status
        return DeliveryReport(
            s["sent"], s["deferred"], s["failed"], s["skipped"], paused, tuple(tally.errors),
            last_error,
        )  # fmt: skip


def run_worker(job: Job, pipe: Connection) -> None:
    """A worker process's main (`[delivery] processes`, see processes.py): its share."""
    from newsletter.delivery.processes import worker_end, worker_start
    from newsletter.store import open_url

    stop, reporter = worker_start(pipe, job.log)
    report: DeliveryReport | None = None
    error: BaseException | None = None
    log.info(
        "sending process %d takes its share of mailing %s (%d connections)",
        os.getpid(),
        job.mailing_id,
        job.settings.delivery.concurrency,
    )
    try:
        engine = open_url(job.url)
        with reading(engine) as conn:
            mailing = q.get_mailing(conn, job.mailing_id)
        if mailing is None:
            raise DeliveryError(f"no mailing with id {job.mailing_id}")
        run = MailingPass(
            engine, job.settings, mailing, None, stop=stop, progress=reporter, template=job.template
        )
        reporter.source = run
        run.limit_batch(job.batch)
        report = run.run(wait=job.wait)
    except Exception as exc:  # reported to the parent, which raises it
        log.debug("worker failed", exc_info=True)
        error = exc
    worker_end(pipe, reporter, report, error)
