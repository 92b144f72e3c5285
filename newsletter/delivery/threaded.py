"""A thread per connection: the strategy for servers without PIPELINING.

Without PIPELINING each message costs three more round trips, which a thread
per connection overlaps.  The main thread claims batches and hands them to
the workers in small chunks; each worker personalises, sends, and waits for
its previous outcome's commit just before this message's final dot, so each
connection has at most one message whose fate the ledger does not know
(invariant 2).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

from newsletter.delivery.recorder import Pending
from newsletter.delivery.strategy import PassCore, Tally
from newsletter.delivery.transports import Transport, make_transport
from newsletter.store import mailings as q
from newsletter.store import now

__all__ = ["ThreadedStrategy"]


@dataclass(frozen=True)
class _Job:
    """A few claimed rows for one worker: one queue hand-off per chunk, not per message."""

    rows: tuple[q.Claimed, ...]


class Ahead:
    """One worker's next message, built while the server answers the current one.

    A failure to build it is kept and raised where that message is taken, so
    it is reported against its own recipient, as without the look-ahead.
    """

    def __init__(self, transport: Transport) -> None:
        # SMTP takes DATA content built by the template (far cheaper than
        # stuffing the whole message); the other transports take the message.
        self.stuffed = bool(getattr(transport, "accepts_stuffed", False))
        self._built: tuple[int, bytes | Exception] | None = None

    def build(self, row: q.Claimed, core: PassCore) -> None:
        if self._built is not None and self._built[0] == row.id:
            return  # `ready` runs again when a send is retried
        try:
            self._built = (row.id, self._make(row, core))
        except Exception as exc:
            self._built = (row.id, exc)

    def take(self, row: q.Claimed, core: PassCore) -> bytes:
        built, self._built = self._built, None
        if built is None or built[0] != row.id:
            return self._make(row, core)
        if isinstance(built[1], Exception):
            raise built[1]
        return built[1]

    def _make(self, row: q.Claimed, core: PassCore) -> bytes:
        return core.data(row) if self.stuffed else core.message(row)


class ThreadedStrategy:
    def __init__(self, core: PassCore) -> None:
        self.core = core

    def run(self, tally: Tally, allowance: int | None, wait: float) -> bool:
        core = self.core
        jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=max(2, core.batch * 2 // core.chunk))
        threads = [
            threading.Thread(target=self._worker, args=(jobs, tally), daemon=True)
            for _ in range(core.workers)
        ]
        for thread in threads:
            thread.start()
        paused = False
        try:
            paused = self._feed(jobs, tally, allowance, wait)
        except BaseException:
            core.abort.set()  # Ctrl-C or an error: workers finish the message in hand only
            raise
        finally:
            for _ in threads:
                jobs.put(None)
            for thread in threads:
                thread.join()
            core.recorder.close()
            if core.owns_shared and core.shared is not None:
                core.shared.close()
            core.release()
        if core.fatal is not None:
            raise core.fatal
        return paused

    def _feed(
        self, jobs: queue.Queue[_Job | None], tally: Tally, allowance: int | None, wait: float
    ) -> bool:
        """Claim batches until nothing is due; True when a cap paused the mailing."""
        core = self.core
        deadline = time.monotonic() + wait
        # Without a wait, a row deferred in this pass waits for the next pass,
        # however short its backoff, as in the other strategies: a pass that
        # does not wait never claims a row twice (`Tally`).
        due_by = now() if wait <= 0 else None
        while not (core.stop.is_set() or core.abort.is_set()):
            limit = core.batch if allowance is None else min(core.batch, allowance)
            if limit <= 0:
                return True
            rows, skipped = core.claim(limit, tally, due_by=due_by)
            core.recorder.checkpoint()  # here, not in a worker's commit (see Recorder)
            if rows or skipped:
                if allowance is not None:
                    allowance -= len(rows)
                size = core.chunk
                for start in range(0, len(rows), size):
                    jobs.put(_Job(tuple(rows[start : start + size])))
                continue
            if not core.wait_for_due(deadline):
                break
        return False

    def _worker(self, jobs: queue.Queue[_Job | None], tally: Tally) -> None:
        core = self.core
        transport = core.shared if core.shared is not None else make_transport(core.settings)
        previous: Pending | None = None
        try:
            while (job := self._next_job(jobs, previous)) is not None:
                ahead = Ahead(transport)
                rows = job.rows
                for i, row in enumerate(rows):
                    if core.stop.is_set() or core.abort.is_set():
                        break  # drain; the leases are released at the end
                    upcoming = rows[i + 1] if i + 1 < len(rows) else None
                    try:
                        previous = self._deliver(transport, row, tally, previous, ahead, upcoming)
                    except Exception as exc:
                        core.fail(exc, row.email)
            if previous is not None:
                previous.wait()
        except Exception as exc:
            core.fail(exc, None)
        finally:
            if core.shared is None:
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
                except Exception as exc:  # keep draining the queue (see PassCore.fail)
                    self.core.fail(exc, None)
            return jobs.get()

    def _deliver(
        self,
        transport: Transport,
        row: q.Claimed,
        tally: Tally,
        previous: Pending | None,
        ahead: Ahead,
        upcoming: q.Claimed | None,
    ) -> Pending | None:
        """Send one message; hand its outcome to the recorder without waiting.

        The wait for the *previous* outcome's commit happens inside the SMTP
        transaction of this one, before the final dot (while the server
        answers MAIL, when the transport supports it): until that dot the
        server keeps nothing, so a crash then cannot send this message, and
        each connection still has at most one message whose fate the ledger
        does not know.  The upcoming message is built then too, so neither
        piece of work adds to the round trips of a message.

        With several connections the commit waits until the server has
        answered DATA (`late`): by then the other workers have handed over
        their outcomes, and one transaction takes them all (3.6 outcomes a
        commit at 4 connections, 6.3 at 8, against 1.2 and 1.3 when each
        committed in its MAIL wait); the other threads use the core while
        this one commits.
        """
        message = ahead.take(row, self.core)

        def ready() -> None:
            if previous is not None:
                previous.wait()

        def spare() -> None:
            if upcoming is not None:
                ahead.build(upcoming, self.core)

        late = self.core.workers > 1
        result = self.core.send(
            transport, row, message, ready, stuffed=ahead.stuffed, spare=spare, late=late
        )
        ready()
        spare()
        if result is None:  # stopped while waiting out a throttle
            return None
        return self.core.settle(row, result, tally)
