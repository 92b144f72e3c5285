"""Lockstep rounds on one thread: the strategy for servers that offer PIPELINING.

Profiled: with a thread per connection, a recorder and a feeder, a third of
each worker's time went to winning the GIL back.  Here one thread claims,
personalises, writes MAIL/RCPT/DATA and the content on each of
`concurrency` connections, commits the previous round's outcomes, then sends
each final dot and reads the replies.  Each connection still has at most one
message whose fate the ledger does not know (invariant 2).  Trade-off: a
stalled connection holds the round up to `[smtp] timeout`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from newsletter.delivery.strategy import THROTTLE_RETRIES, PassCore, Tally, connect_failure
from newsletter.delivery.transports import ConnectError, make_transport
from newsletter.delivery.transports.smtp import SmtpTransport
from newsletter.store import mailings as q
from newsletter.store import now

__all__ = ["RoundsStrategy"]

log = logging.getLogger(__name__)


class RoundsStrategy:
    def __init__(self, core: PassCore) -> None:
        self.core = core

    def run(self, tally: Tally, allowance: int | None, wait: float) -> bool:
        core = self.core
        transports: list[SmtpTransport] = []
        try:
            for _ in range(core.workers):
                transport = make_transport(core.settings)
                assert isinstance(transport, SmtpTransport)
                transports.append(transport)
            paused = self._rounds(transports, tally, allowance, wait)
            core.recorder.flush()  # raises if the last outcomes cannot be recorded
        except BaseException:
            core.abort.set()
            for transport in transports:
                transport.abandon()  # never QUIT in the middle of DATA
            raise
        finally:
            try:
                core.recorder.close()
            finally:
                for transport in transports:
                    transport.close()
                core.release()
        if core.fatal is not None:
            raise core.fatal
        return paused

    def _rounds(
        self, transports: list[SmtpTransport], tally: Tally, allowance: int | None, wait: float
    ) -> bool:
        core = self.core
        deadline = time.monotonic() + wait
        # Without a wait, a row deferred in this pass waits for the next pass,
        # however short its backoff (as the threaded feeder, which claims ahead).
        due_by = now() if wait <= 0 else None
        width = len(transports)
        while not (core.stop.is_set() or core.abort.is_set()):
            limit = core.batch if allowance is None else min(core.batch, allowance)
            if limit <= 0:
                return True
            rows, skipped = core.claim(limit, tally, due_by=due_by)
            if rows or skipped:
                if allowance is not None:
                    allowance -= len(rows)
                for start in range(0, len(rows), width):
                    if core.stop.is_set() or core.abort.is_set():
                        break
                    try:
                        self._round(transports, rows[start : start + width], tally)
                    except Exception as exc:
                        for transport in transports:
                            transport.abandon()  # no final dot after a failed commit
                        core.fail(exc, None)
                continue
            core.recorder.flush()  # deferred rows back in the ledger before looking
            if not core.wait_for_due(deadline):
                break
        return False

    def _round(self, transports: list[SmtpTransport], rows: list[q.Claimed], tally: Tally) -> None:
        core = self.core
        flights: list[tuple[SmtpTransport, q.Claimed, bytes, Any]] = []
        slow: list[tuple[SmtpTransport, q.Claimed, bytes, int]] = []
        for transport, row in zip(transports, rows, strict=False):
            if (held := core.given_up(row.email)) is not None:
                core.settle(row, held, tally)
                continue
            message = core.message(row)
            core.wait_out_throttle()
            if core.stop.is_set():
                break
            connects = transport.connects
            try:
                fast = transport.pipelines(row.email)
            except ConnectError as exc:
                result = connect_failure(row.email, exc)
                core.settle(row, result, tally)
                continue
            if not fast:
                slow.append((transport, row, message, THROTTLE_RETRIES))
                continue
            core.bucket.acquire()
            if not core.admit(row):
                continue  # taken over, left the list, or the lease in doubt: unsent
            reused = transport.connects == connects
            flight = transport.begin(core.sender(row.id), row.email, message, reused=reused)
            flights.append((transport, row, message, flight))
        for transport, _, _, flight in flights:
            transport.body(flight)
        core.recorder.secure()  # the previous round's outcomes, before any final dot
        for transport, _, _, flight in flights:
            transport.end(flight)
        for transport, _, _, flight in flights:
            transport.reply(flight)
        for transport, row, message, flight in flights:
            result = flight.result
            if flight.retry or result.throttled:
                if result.throttled:
                    core.throttled(result, row)
                tries = THROTTLE_RETRIES - 1 if result.throttled else THROTTLE_RETRIES
                slow.append((transport, row, message, tries))
                continue
            core.throttle.ok()
            core.settle(row, result, tally)
        for transport, row, message, tries in slow:
            again = core.send(transport, row, message, core.recorder.secure, tries=tries)
            if again is not None:  # None: stopped while waiting out a throttle
                core.settle(row, again, tally)
