"""The rows a pass holds in memory, and whether it may still send each one.

A claim leases rows for `lease_seconds` and the pass sends them from memory,
for seconds or (claims of up to `CLAIM_CAP` rows under a rate limit) minutes.
Two things may change meanwhile, and the database is the only judge of both
(invariant 7):

* **The lease.**  A process that is stopped (SIGSTOP, a suspended VM or
  laptop) longer than its lease loses its rows to the other senders; when
  it resumes it must not send them.  Asking the database before every
  message would cost a query each, so the pass keeps, on a local clock that
  runs on while the process is stopped or the host sleeps (`lease_clock`),
  how long its leases are known to be good: from the moment before the
  claim or renewal that set them.  A message begins only while that time
  less a margin (a third of the lease) has not passed; after it, the
  message first renews (`renew`), and what the renewal no longer finds
  leased to us was taken: dropped unsent.  A renewal that fails drops the
  whole hand: nothing of it goes until a claim leases rows again.  So a
  resumed process sends twice only what was already on the wire (at most
  one message per connection).
* **The recipient.**  An unsubscribe, a removal, an import saying so or a
  bounce committed after the claim: `recheck`, every `RECHECK_EVERY`
  seconds on the lease keeper's thread, reads the rows not yet begun in one
  statement and drops those no longer mailable, then marks them skipped as
  a claim would have.

The per-message cost is a lock, a clock read and two set operations.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable

from newsletter.errors import NewsletterError
from newsletter.store.held import Held

__all__ = ["RECHECK_EVERY", "Hand", "lease_clock"]

log = logging.getLogger("newsletter.delivery.mailing_pass")

# How often the rows not yet begun are checked against unsubscribes: an
# unsubscribe is honoured for every message that begins this long (plus one
# read) after it commits.  One indexed read of at most a claim's rows.
RECHECK_EVERY = 1.0

_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


def lease_clock() -> float:
    """Seconds on a clock that keeps counting while this process is stopped and
    while the host is suspended (Linux's CLOCK_BOOTTIME; elsewhere monotonic,
    which on macOS and Windows also counts a sleep)."""
    if _BOOTTIME is not None:
        return time.clock_gettime(_BOOTTIME)
    return time.monotonic()


class Hand:
    """Claimed rows not yet sent (`unsent`), begun (`begun`) or dropped, with how
    long their leases are known to be good; thread-safe."""

    def __init__(
        self,
        lease_seconds: float,
        renew: Callable[[], set[int]],
        check: Callable[[list[int]], Held],
        skip: Callable[[list[int]], None],
    ) -> None:
        self.lease = lease_seconds
        # The keeper renews every third of the lease: this is only reached
        # when its renewals fell behind, or the process was stopped.
        self.margin = lease_seconds / 3
        self._renew, self._check, self._skip = renew, check, skip
        self._lock = threading.Lock()
        self._renewing = threading.Lock()  # one renewal at a time
        self.unsent: set[int] = set()
        self.begun: set[int] = set()  # on its way; until its outcome is settled
        self.dropped: set[int] = set()  # never to be sent by this pass
        self.until = -math.inf  # lease_clock() after which the leases may have lapsed

    def now(self) -> float:
        return lease_clock()

    def took(self, ids: Iterable[int], since: float) -> None:
        """A claim that began at `since` (`now()`) leased `ids`."""
        with self._lock:
            if not (self.unsent or self.begun):
                # Nothing older held: these rows set the bound.  Otherwise the
                # older rows' leases end first and keep it.
                self.until = since + self.lease
            self.unsent.update(ids)

    def admit(self, row: int) -> bool:
        """Whether `row`'s message may begin now: not dropped, and its lease
        known to be good (renewed first when its end is near)."""
        verdict = self._admitted(row)
        if verdict is None:
            try:
                self.renew(urgent=True)
            except NewsletterError:
                # The hand is dropped (`renew`); the keeper's next tick says
                # why.  This row is turned away, the pass goes on (its rows
                # go back when it ends): a renewal the keeper failed does so.
                return False
            verdict = self._admitted(row)
        return bool(verdict)

    def _admitted(self, row: int) -> bool | None:
        """True or False; None: the lease must be renewed before anyone can tell."""
        with self._lock:
            if row in self.dropped:
                self.dropped.discard(row)
                return False
            if row not in self.unsent and row not in self.begun:
                return False  # dropped, and already turned away once
            if self._lapsing():
                return None
            self.unsent.discard(row)
            self.begun.add(row)
            return True

    def _lapsing(self) -> bool:
        """Whether the leases are within the margin of their end, or past it."""
        return lease_clock() >= self.until - self.margin

    def settled(self, row: int) -> None:
        """`row`'s outcome is in the recorder's hands (also one decided before it
        began: a pass that gave up on an unreachable server defers rows untried)."""
        with self._lock:
            self.begun.discard(row)
            self.unsent.discard(row)

    def again(self, row: int) -> None:
        """`row` was not sent (throttled) and waits to be tried again: not yet
        begun, so that a recipient who leaves during the pause is dropped by
        the next `recheck` instead of mailed by the retry."""
        with self._lock:
            if row in self.begun:
                self.begun.discard(row)
                self.unsent.add(row)

    def renew(self, *, urgent: bool = False) -> None:
        """Renew every lease we hold; drop what another sender took meanwhile.

        Raises the store's error; when the leases may have lapsed by then
        (or `urgent`: a message is waiting for this), the whole hand is
        dropped first, since nobody can say which rows are still ours.
        """
        with self._renewing:
            if urgent and not self._lapsing():
                return  # renewed by another thread while this one waited
            since = lease_clock()
            with self._lock:
                held = self.unsent | self.begun
            try:
                still = self._renew()
            except NewsletterError:
                if urgent or self._lapsing():
                    self._drop_all()
                raise
            with self._lock:
                lost = (held - still) & (self.unsent | self.begun)
                self._drop(lost)
                self.until = since + self.lease
        if lost:
            log.warning(
                "%d claimed delivery(ies) were taken by another sender after this "
                "one's lease lapsed (the process was stopped or stalled); not sent here",
                len(lost),
            )

    def recheck(self) -> None:
        """Drop (and skip) rows not yet begun whose recipient may no longer be
        mailed; drop those another sender took.  One read for all of them."""
        with self._lock:
            ids = sorted(self.unsent)
        if not ids:
            return
        held = self._check(ids)
        with self._lock:
            gone = [i for i in held.unmailable if i in self.unsent]
            lost = [i for i in held.lost if i in self.unsent]
            self._drop(gone)
            self._drop(lost)
        if lost:
            log.warning(
                "%d claimed delivery(ies) are no longer leased to this sender; not sent here",
                len(lost),
            )
        if gone:
            self._skip(gone)

    def forget(self) -> None:
        """The pass is over and gives its leases back: nothing left to renew or
        re-check (the keeper may tick once more before it stops), nothing to say."""
        with self._lock:
            self.unsent.clear()
            self.begun.clear()
            self.dropped.clear()

    def _drop_all(self) -> None:
        with self._lock:
            count = len(self.unsent)
            self._drop(self.unsent | self.begun)
        if count:
            log.warning(
                "cannot renew this sender's leases: the %d claimed delivery(ies) not begun "
                "are not sent by this pass (they go back when it ends, or to another sender)",
                count,
            )

    def _drop(self, ids: Iterable[int]) -> None:
        """Under the lock."""
        for row in ids:
            self.unsent.discard(row)
            self.begun.discard(row)
            self.dropped.add(row)
