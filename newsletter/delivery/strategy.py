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


class Reach:
    """Whether the mail server can be reached: connections that never opened
    (refused, timed out at the greeting, cut before it) in a row with nothing
    accepted between them.  Thread-safe: every connection's results count."""

    LIMIT = 3  # in a row: the server is down, not one connection unlucky

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streak = 0
        self._last: SendResult | None = None

    def note(self, result: SendResult) -> None:
        with self._lock:
            if result.ok:
                self._streak, self._last = 0, None
            elif result.stage == "connect" and not result.throttled:
                self._streak += 1
                self._last = result

    def down(self) -> SendResult | None:
        """The last connect failure once `LIMIT` came in a row, else None."""
        with self._lock:
            return self._last if self._streak >= self.LIMIT else None


class Tally:
    """Thread-safe counters for one pass: each recipient once, by its last outcome.

    A pass that waits (`send --wait`) may claim a row it deferred again and
    send it: `again` keeps the ids of the rows it deferred (a set of ints,
    only then), so such a recipient counts once, as what became of it, as
    `status` counts it, not once per deferral.
    """

    def __init__(
        self, done: int, total: int, progress: Progress | None, *, again: bool = False
    ) -> None:
        self.lock = threading.Lock()
        self.by_status = {"sent": 0, "deferred": 0, "failed": 0, "skipped": 0}
        self.errors: list[str] = []
        self.done, self.total = done, total
        self.progress = progress
        self._deferred: set[int] | None = set() if again else None
        self._deferral: str | None = None  # why the last deferral was
        self._failure: str | None = None  # why the last failure was
        self._merged: str | None = None  # a worker process's last error

    @property
    def last_error(self) -> str | None:
        """Why the last deferral was, while some remain deferred (they are
        retried: the reason is what a summary can say of them), else why the
        last failure was (docs/delivery.md, `last_error`)."""
        with self.lock:
            if self.by_status["deferred"]:
                return self._deferral or self._merged or self._failure
            return self._failure or self._merged

    def add(self, status: str, error: str | None = None, *, row: int | None = None) -> None:
        with self.lock:
            again = self._settled_again(row)
            self.by_status[status] = self.by_status.get(status, 0) + 1
            if status == "deferred":
                if self._deferred is not None and row is not None:
                    self._deferred.add(row)
                self._deferral = error or self._deferral
            elif error is not None:
                self._failure = error
                if status == "failed" and len(self.errors) < 1000:
                    self.errors.append(error)
            if not again:
                self.done += 1
            done = self.done
        if self.progress is not None and not again:
            self.progress(done, self.total)

    def _settled_again(self, row: int | None) -> bool:
        """Whether `row` was deferred earlier in this pass (its deferral is
        taken back: the recipient counts by this outcome).  Under the lock."""
        if self._deferred is None or row is None or row not in self._deferred:
            return False
        self._deferred.discard(row)
        self.by_status["deferred"] -= 1
        return True

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
            self._merged = last_error or self._merged


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

    def admit(self, row: q.Claimed) -> bool:
        """Whether `row`'s message may begin now: its lease known to be ours and
        its recipient not known to have left (`delivery.hand`); False: skip it."""
        ...

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

    def throttled(self, result: SendResult, row: q.Claimed) -> None:
        """A "slow down" reply to `row`: every connection pauses (doubling), and
        `row` waits for its retry as one not yet begun."""
        ...

    def given_up(self, recipient: str) -> SendResult | None:
        """Once the server has throttled for longer than the pass bears with
        (`Throttle.exhausted`): the deferral of `recipient`, sent nothing."""
        ...

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
