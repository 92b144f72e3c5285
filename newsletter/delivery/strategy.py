"""The seam between a mailing pass and the way it drives connections.

`MailingPass` (mailing_pass.py) owns the claim/record loop's shared parts:
leases, the ledger, rate limits, outcomes, caps.  A `Strategy` decides how
claimed rows reach connections: one event loop with each SMTP connection on
its own (streams.py, the default), lockstep rounds on one thread when the
server offers PIPELINING (rounds.py), or a thread per connection
(threaded.py).  Each sees the pass only through `PassCore`, so none imports
another or the pass.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from newsletter.config import Settings
from newsletter.delivery.ratelimit import Throttle, TokenBucket
from newsletter.delivery.recorder import Pending, Recorder
from newsletter.delivery.report import Progress
from newsletter.delivery.transports import ConnectError, SendResult, Transport
from newsletter.errors import NewsletterError
from newsletter.store import mailings as q

__all__ = ["THROTTLE_RETRIES", "PassCore", "Strategy", "Tally", "connect_failure"]

THROTTLE_RETRIES = 5  # re-sends of one message after "slow down" before deferring it


def connect_failure(recipient: str, exc: ConnectError) -> SendResult:
    """A connection that never opened, as one recipient's (temporary) result.

    A 421 greeting ("too many connections", RFC 5321 §3.8) or 454 is the
    server saying "slow down", as the same codes later in a session are:
    throttled, so every connection pauses and no attempt is spent.
    """
    throttled = exc.code in (421, 454)
    return SendResult(recipient, False, exc.code, exc.message, throttled=throttled, stage="connect")


class Tally:
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

    def advance(self, count: int) -> None:
        """Progress made by a worker process (its counts come with `merge`)."""
        with self.lock:
            self.done += count
            done = self.done
        if self.progress is not None:
            self.progress(done, self.total)

    def merge(self, counts: dict[str, int], errors: list[str], last_error: str | None) -> None:
        """A worker process's counts and errors, its progress already `advance`d."""
        with self.lock:
            for status, count in counts.items():
                self.by_status[status] = self.by_status.get(status, 0) + count
            self.errors.extend(errors[: max(0, 1000 - len(self.errors))])
            self.last_error = last_error or self.last_error


class PassCore(Protocol):
    """What a strategy may use of the pass that runs it."""

    settings: Settings
    workers: int
    batch: int
    chunk: int
    shared: Transport | None
    owns_shared: bool
    owner: str
    stop: threading.Event
    abort: threading.Event
    fatal: NewsletterError | None
    recorder: Recorder
    throttle: Throttle
    bucket: TokenBucket
    sender: Callable[[int], str]  # the envelope sender of a delivery (VERP)

    def claim(
        self, limit: int, tally: Tally, *, due_by: datetime | None = None
    ) -> tuple[list[q.Claimed], int]:
        """Claim up to `limit` rows under our lease; skipped rows are tallied here."""
        ...

    def release(self) -> None: ...

    def message(self, row: q.Claimed) -> bytes:
        """The personalised (and signed) bytes for `row`."""
        ...

    def data(self, row: q.Claimed) -> bytes:
        """`message` as SMTP DATA content: dot-stuffed, without the final dot line."""
        ...

    def send(
        self,
        transport: Transport,
        row: q.Claimed,
        message: bytes,
        ready: Callable[[], None],
        *,
        tries: int = ...,
        stuffed: bool = ...,
        spare: Callable[[], None] | None = ...,
        late: bool = ...,
    ) -> SendResult | None: ...

    def wait_out_throttle(self) -> None:
        """Until a throttle's pause is over, or the pass is stopped."""
        ...

    def settle(self, row: q.Claimed, result: SendResult, tally: Tally) -> Pending: ...

    def fail(self, exc: Exception, recipient: str | None) -> None: ...

    def wait_for_due(self, deadline: float) -> bool: ...


class Strategy(Protocol):
    """Drive claimed rows through connections until nothing is due.

    Returns True when an hourly/daily cap (the `allowance`) paused the mailing.
    """

    def run(self, tally: Tally, allowance: int | None, wait: float) -> bool: ...
