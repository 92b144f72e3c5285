"""Every connection on its own: the default strategy for SMTP.

One event loop drives `concurrency` non-blocking connections
(transports/smtp_stream.py); each takes the next claimed row as soon as it is
free, so a slow or stalled connection holds up only itself (the lockstep
rounds waited for the slowest connection twice per round).  Claims run on a
helper thread (a claim is long and mostly SQLite's own work, without the
GIL); the ledger's group commits run once the ready connections have
written their next commands (see `Commits`: on the loop's thread for SQLite,
on a helper thread for PostgreSQL), so a commit overlaps the server's work
on them.  With or without PIPELINING the design
is the same; only the number of round trips per message differs.

Invariant 2: a connection writes a message's final dot only after the
outcome of its previous message is committed (the `ready` hook of
`StreamSmtp.send`), so each connection has at most one message whose fate
the ledger does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from newsletter.delivery.recorder import Pending, Recorder
from newsletter.delivery.strategy import THROTTLE_RETRIES, PassCore, Tally, connect_failure
from newsletter.delivery.transports import ConnectError, SendResult
from newsletter.delivery.transports.smtp_stream import Next, Ready, StreamSmtp
from newsletter.errors import DeliveryError
from newsletter.store import mailings as q
from newsletter.store import now

__all__ = ["StreamsStrategy"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Seconds between tries while a claim holds the write lock.  Not below 1 ms:
# asyncio's selector rounds a 0.5 ms wait up to 1 ms when idle anyway, and
# libuv's timers (uvloop, bench/send.py's ours-uvloop) fire a 0.5 ms delay at
# once: 300,000-370,000 tries for 20,000 messages instead of 500-800.
RETRY_COMMIT = 0.001


def run_loop(main: Callable[[], Coroutine[Any, Any, T]], event_loop: str = "asyncio") -> T:
    """Run `main()` on a fresh event loop, on a helper thread if this one has a loop."""
    factory = loop_factory(event_loop)

    def run() -> T:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main())

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    with ThreadPoolExecutor(1, thread_name_prefix="streams") as pool:
        return pool.submit(run).result()


def loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop for "auto" when it is installed; None: asyncio's own (its policy's).

    Imported here, not at the top: only a pass that sends over SMTP pays for it.
    """
    if event_loop != "auto":
        return None
    try:
        import uvloop
    except ImportError:  # Windows, or an install without it
        return None
    return uvloop.new_event_loop


@dataclass(frozen=True)
class Job:
    """A claimed row with its DATA content (dot-stuffed), built once even when sent again."""

    row: q.Claimed
    message: bytes


class Commits:
    """The ledger's group commit, at the end of a loop iteration.

    A connection that reaches a final dot with its previous outcome still
    uncommitted asks for a commit; it runs once every connection that was
    ready in this iteration has written its next commands, so the server
    works on them meanwhile, and it takes every outcome settled so far (one
    commit per round of connections, without waiting for the slowest).

    Where the commit runs depends on the database.  SQLite commits in
    microseconds of its own CPU: on the loop's thread (profiled: a helper
    thread cost more in GIL hand-offs, each socket call having to win the
    GIL back, than the commit itself).  A networked database (PostgreSQL)
    spends a commit waiting for its server: on the loop's thread that wait
    stalled every connection (profiled: 54 % of a sender's wall time, one
    process using a third of a core), so there it runs on one helper thread
    while the loop goes on; commits still happen one at a time, in order,
    and an outcome submitted during a commit goes in the next one.
    """

    def __init__(self, recorder: Recorder, *, off_loop: bool = False) -> None:
        self.recorder = recorder
        self._scheduled: asyncio.Future[None] | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="commits") if off_loop else None
        self._in_flight: asyncio.Future[None] | None = None  # off the loop, running
        # A commit blocked by a claim, to be tried again (see `claimed`).
        self._retry: tuple[asyncio.TimerHandle, asyncio.Future[None]] | None = None

    async def wait(self, pending: Pending) -> None:
        """Until `pending` is committed; raises the commit's error."""
        while not pending.done:
            if self._scheduled is None:
                loop = asyncio.get_running_loop()
                self._scheduled = loop.create_future()
                if self._in_flight is None:
                    loop.call_soon(self._start, self._scheduled)
            # Shared by every waiter, without asyncio.shield (an extra loop
            # iteration per wait): a cancelled waiter only ever means the
            # whole pass is being cancelled.
            await self._scheduled
        if pending.error is not None:
            raise pending.error

    def claimed(self) -> None:
        """A claim just gave the write lock back: a commit it blocked goes now.

        Otherwise it waited for its retry timer (1 ms at least, libuv's clock),
        every connection that asked for it idle meanwhile: ~240 retries for
        20,000 messages at C = 4 (cProfile), a few ms of stall per claim.
        """
        retry, self._retry = self._retry, None
        if retry is not None:
            timer, done = retry
            timer.cancel()
            self._commit(done)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _start(self, done: asyncio.Future[None]) -> None:
        if self._pool is None:
            self._commit(done)
            return
        # Outcomes submitted from now on wait for the next commit.
        self._scheduled, self._in_flight = None, done
        running = asyncio.get_running_loop().run_in_executor(self._pool, self._flush)
        running.add_done_callback(lambda _: self._finished(done))

    def _finished(self, done: asyncio.Future[None]) -> None:
        self._in_flight = None
        _resolve(done)
        if self._scheduled is not None:  # waiters that came during that commit
            self._start(self._scheduled)

    def _flush(self) -> None:
        """On the helper thread: waiting for the write lock blocks only this thread."""
        try:
            self.recorder.flush()
        except Exception:  # kept on each Pending of the group; its waiters raise it
            log.debug("a group commit failed", exc_info=True)

    def _commit(self, done: asyncio.Future[None]) -> None:
        """On the loop's thread (SQLite)."""
        self._retry = None
        try:
            if not self.recorder.try_flush():
                # A claim (on the ledger thread) holds the write lock for a few
                # ms: rather than block the loop, keep serving the other
                # connections, whose outcomes join this group, and try again
                # (sooner when the claim ends first: `claimed`).
                loop = asyncio.get_running_loop()
                self._retry = (loop.call_later(RETRY_COMMIT, self._commit, done), done)
                return
        except Exception:  # kept on each Pending of the group; its waiters raise it
            log.debug("a group commit failed", exc_info=True)
        self._scheduled = None
        _resolve(done)


def _taken(ahead: list[Job | Exception]) -> Job | None:
    """The job built ahead, if any; a failure to build it is raised here, where it is taken."""
    if not ahead:
        return None
    item = ahead.pop()
    if isinstance(item, Exception):
        raise item
    return item


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


class StreamsStrategy:
    def __init__(self, core: PassCore) -> None:
        self.core = core
        self.rows: deque[q.Claimed] = deque()
        self.busy = 0  # connections with a row in hand
        self.ended = False

    @property
    def low(self) -> int:
        """Claim ahead below this many rows in hand (the claims grow: `MailingPass._grow`)."""
        return max(self.core.workers * 2, self.core.batch // 2)

    def run(self, tally: Tally, allowance: int | None, wait: float) -> bool:
        core = self.core
        try:
            paused = run_loop(
                lambda: self._main(tally, allowance, wait), core.settings.delivery.event_loop
            )
            core.recorder.flush()  # raises if the last outcomes cannot be recorded
        except BaseException:
            core.abort.set()
            raise
        finally:
            try:
                core.recorder.close()
            finally:
                core.release()
        if core.fatal is not None:
            raise core.fatal
        return paused

    async def _main(self, tally: Tally, allowance: int | None, wait: float) -> bool:
        core = self.core
        self.changed = asyncio.Event()  # rows queued, a connection idle, the end
        self.halt = asyncio.Event()  # stop or abort (see `_watch`): ends every pause
        self.db = ThreadPoolExecutor(1, thread_name_prefix="ledger")
        networked = core.recorder.engine.dialect.name != "sqlite"
        self.commits = Commits(core.recorder, off_loop=networked)
        conns = [StreamSmtp(core.settings.smtp) for _ in range(core.workers)]
        tasks = [asyncio.create_task(self._connection(c, tally)) for c in conns]
        watcher = asyncio.create_task(self._watch())
        try:
            return await self._feed(tally, allowance, wait)
        except BaseException:
            core.abort.set()
            raise
        finally:
            self.ended = True
            self.changed.set()
            try:
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                watcher.cancel()
                for conn in conns:
                    if core.abort.is_set():
                        conn.abandon()  # never QUIT in the middle of DATA
                    else:
                        await conn.close()
                self.db.shutdown(wait=True)
                self.commits.close()

    async def _db(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.db, lambda: call(*args, **kwargs))

    async def _watch(self) -> None:
        """Wake everyone when a signal handler (another thread's) sets stop or abort."""
        core = self.core
        while not (core.stop.is_set() or core.abort.is_set()):
            await asyncio.sleep(0.05)
        self.halt.set()
        self.changed.set()

    def _halted(self) -> bool:
        return self.core.stop.is_set() or self.core.abort.is_set()

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less: a stop ends a throttle's pause at once, since
        nothing is on the wire then (sleeping it out held the exit up to the
        stop budget, which then blamed the server)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.halt.wait(), seconds)

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not (condition() or self._halted()):
            self.changed.clear()
            await self.changed.wait()

    # ------------------------------------------------------------------ claiming

    async def _feed(self, tally: Tally, allowance: int | None, wait: float) -> bool:
        """Keep rows queued ahead of the connections; True when a cap paused the mailing."""
        core = self.core
        deadline = time.monotonic() + wait
        # Without a wait, a row deferred in this pass waits for the next pass.
        due_by = now() if wait <= 0 else None
        while not self._halted():
            await self._until(lambda: len(self.rows) < self.low)
            if self._halted():
                break
            limit = core.batch if allowance is None else min(core.batch, allowance)
            if limit <= 0:
                return True
            rows, skipped = await self._db(core.claim, limit, tally, due_by=due_by)
            self.commits.claimed()
            if rows or skipped:
                if allowance is not None:
                    allowance -= len(rows)
                self.rows.extend(rows)
                self.changed.set()
            # On the ledger thread, beside the loop (see Recorder.checkpoint),
            # once the connections have the rows: not in the way of the first
            # message (measured: 3-5 ms of it).
            await self._db(core.recorder.checkpoint)
            if rows or skipped:
                continue
            # Nothing claimable: once every outcome is in the ledger, look for
            # deferred rows coming due before the deadline.
            await self._until(lambda: not self.rows and self.busy == 0)
            core.recorder.flush()
            if self._halted() or not await self._db(core.wait_for_due, deadline):
                break
        return False

    # ------------------------------------------------------------------ one connection

    async def _connection(self, conn: StreamSmtp, tally: Tally) -> None:
        core = self.core
        previous: Pending | None = None
        job: Job | None = None
        # The job after `upcoming`, built while the server works on this
        # connection's message (`prepare`, called once its dot is written):
        # with one connection nothing else overlaps the wait for a reply.
        ahead: list[Job | Exception] = []

        def prepare() -> None:
            if ahead:
                return
            try:
                built = self._job_now()
            except Exception as exc:  # raised where that job is taken, as before
                ahead.append(exc)
                return
            if built is not None:
                ahead.append(built)

        try:
            # Connect while the first claim runs; a server that cannot be
            # reached is reported per message by the sends that follow.
            with contextlib.suppress(ConnectError):
                await conn.open()
            while (job := job or _taken(ahead) or await self._next_job(previous)) is not None:
                if self._halted():
                    break
                self.busy += 1
                # The next message, when one is queued: its MAIL/RCPT/DATA go
                # out right behind this one's final dot.
                upcoming = _taken(ahead) or self._job_now()
                try:
                    previous = await self._deliver(conn, job, upcoming, tally, previous, prepare)
                except Exception as exc:
                    conn.abandon()
                    core.fail(exc, job.row.email)
                finally:
                    self.busy -= 1
                    if not self.busy:
                        self.changed.set()  # the feeder may be waiting for all to be idle
                job = upcoming
            if previous is not None:
                await self.commits.wait(previous)
        except Exception as exc:
            core.fail(exc, None)
        finally:
            self.changed.set()

    def _job_now(self) -> Job | None:
        if not self.rows or self._halted():
            return None
        if len(self.rows) <= self.low:
            self.changed.set()  # the feeder claims ahead
        row = self.rows.popleft()
        return Job(row, self.core.data(row))

    async def _next_job(self, previous: Pending | None) -> Job | None:
        """The next claimed row; with none queued, our last outcome is committed first.

        A deferred row must be back in the ledger before the feeder looks for
        due work again.
        """
        if not self.rows and previous is not None and not previous.done:
            await self.commits.wait(previous)
        await self._until(lambda: bool(self.rows) or self.ended)
        return self._job_now()

    async def _deliver(
        self,
        conn: StreamSmtp,
        job: Job,
        upcoming: Job | None,
        tally: Tally,
        previous: Pending | None,
        prepare: Callable[[], None] | None = None,
    ) -> Pending | None:
        """Send one message; its outcome goes to the recorder, committed by a later `ready`."""
        core = self.core

        def check() -> None:
            if previous is not None and previous.error is not None:
                raise previous.error
            if core.abort.is_set():  # a failed commit elsewhere: no further final dot
                raise core.fatal or DeliveryError("delivery stopped", recipient=job.row.email)

        async def committed() -> None:
            assert previous is not None
            await self.commits.wait(previous)
            check()

        def ready() -> Awaitable[None] | None:
            if previous is not None and not previous.done:
                if core.workers > 1:
                    return committed()
                previous.wait()  # one connection: no other outcome to wait for
            check()
            return None

        then = None
        if upcoming is not None:
            then = (core.sender(upcoming.row.id), upcoming.row.email, upcoming.message)
        result = await self._send(conn, job, ready, then, prepare)
        if (wait := ready()) is not None:
            await wait
        if result is None:  # stopped while waiting out a throttle
            return None
        return core.settle(job.row, result, tally)

    async def _send(
        self,
        conn: StreamSmtp,
        job: Job,
        ready: Ready,
        then: Next | None,
        prepare: Callable[[], None] | None = None,
    ) -> SendResult | None:
        """As `PassCore.send`, without blocking the loop: throttle, rate, retries."""
        core = self.core
        email = job.row.email
        result: SendResult | None = None
        for _ in range(THROTTLE_RETRIES):
            if (held := core.given_up(email)) is not None:
                return held
            if (pause := core.throttle.remaining()) > 0:
                await self._pause(pause)
            if self._halted():
                return None
            if (delay := core.bucket.reserve()) > 0:
                await self._pause(delay)
            if not core.admit(job.row):
                # Taken over, left the list, or the lease in doubt: unsent.  An
                # envelope announced for it behind the last dot is dropped
                # with the connection (`StreamSmtp._attempt`, `close`).
                return None
            try:
                result = await conn.send(
                    core.sender(job.row.id),
                    email,
                    job.message,
                    ready,
                    then,
                    stuffed=True,
                    prepare=prepare,
                )
            except ConnectError as exc:
                result = connect_failure(email, exc)
            if not result.throttled:
                core.throttle.ok()
                return result
            core.throttled(result, job.row)
        return result
