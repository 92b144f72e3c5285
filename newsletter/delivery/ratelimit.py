"""Pacing for delivery: a token bucket, retry backoff, and a shared throttle.

Kept apart from `delivery` because each piece is pure timing logic, testable
with an injected clock and no database.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

Clock = Callable[[], float]
Sleep = Callable[[float], None]


class TokenBucket:
    """At most `rate` tokens a second, shared by every worker thread.

    The bucket holds at most a fifth of a second's worth of tokens (at least
    one), so a burst after an idle spell stays within a few percent of the
    rate over any ten-second window.  rate <= 0 means unlimited.
    """

    def __init__(
        self, rate: float, *, clock: Clock = time.monotonic, sleep: Sleep = time.sleep
    ) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate * 0.2)
        self._tokens = 1.0
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()

    def set_rate(self, rate: float) -> None:
        """A new rate from now on (the deployment's rate shared by its senders)."""
        with self._lock:
            self.rate = rate
            self.capacity = max(1.0, rate * 0.2)
            self._tokens = min(self._tokens, self.capacity)

    def acquire(self) -> float:
        """Take one token, sleeping as long as needed; returns the time slept."""
        wait = self.reserve()
        # Sleeping outside the lock: the debt is already booked, so the next
        # caller computes its own wait behind this one.
        if wait > 0:
            self._sleep(wait)
        return wait

    def reserve(self) -> float:
        """Take one token without sleeping; returns how long to wait before using it.

        For an event loop, which must sleep with `asyncio.sleep`, not block.
        """
        if self.rate <= 0:
            return 0.0
        with self._lock:
            current = self._clock()
            self._tokens = min(self.capacity, self._tokens + (current - self._last) * self.rate)
            self._last = current
            self._tokens -= 1.0
            return -self._tokens / self.rate if self._tokens < 0 else 0.0


def throttle_patience(base: float, cap: float, tries: int) -> float:
    """The pauses of `tries` throttles in a row (the first after none): how long
    a pass without a wait bears with a server that keeps saying "slow down"."""
    return sum(min(cap, base * 2**i) for i in range(max(0, tries - 1)))


def backoff_delay(
    attempts: int, base: float, cap: float, *, rng: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with jitter: base·2^(n-1), capped, then 50–100 % of it.

    The jitter spreads retries of many deferred recipients so that they do not
    hit the server again in one burst.
    """
    raw = min(cap, base * (2 ** max(0, attempts - 1)))
    return raw * (0.5 + 0.5 * rng())


def next_attempt(now: datetime, attempts: int, base: float, cap: float) -> datetime:
    return now + timedelta(seconds=backoff_delay(attempts, base, cap))


class Throttle:
    """A pause every worker honours after a server says "slow down".

    Throttling replies (421, 451 4.7.x, 454) are about the sender, not the
    recipient, so they slow the whole transport and never spend an attempt.
    Consecutive throttles double the pause up to `cap`; a success resets it.
    """

    def __init__(
        self, base: float, cap: float, *, clock: Clock = time.monotonic, sleep: Sleep = time.sleep
    ) -> None:
        self.base = max(base, 0.001)
        self.cap = max(cap, self.base)
        self._clock = clock
        self._sleep = sleep
        self._until = 0.0
        self._streak = 0
        self._since = 0.0  # when the streak began (its first hit)
        self._lock = threading.Lock()
        self.events = 0
        # How long a streak may hold the pauses up before `exhausted` (the pass sets it).
        self.patience = float("inf")

    def hit(self) -> float:
        """Record a throttling reply; returns the pause now in force."""
        with self._lock:
            self._streak += 1
            self.events += 1
            if self._streak == 1:
                self._since = self._clock()
            pause = min(self.cap, self.base * (2 ** (self._streak - 1)))
            self._until = max(self._until, self._clock() + pause)
            return pause

    def ok(self) -> None:
        with self._lock:
            self._streak = 0

    def pause(self) -> float:
        """The pause a streak of throttles has reached (the base when none)."""
        with self._lock:
            return min(self.cap, self.base * (2 ** max(0, self._streak - 1)))

    def exhausted(self) -> bool:
        """Whether the server has throttled, with nothing accepted, for longer
        than `patience`: its pauses since the streak began reach past it."""
        with self._lock:
            return self._streak > 0 and self._until - self._since > self.patience

    def remaining(self) -> float:
        """Seconds until the pause in force is over (<= 0: none)."""
        with self._lock:
            return self._until - self._clock()

    def wait(self) -> float:
        """Sleep until any pause in force is over; returns the time slept."""
        remaining = self.remaining()
        if remaining > 0:
            self._sleep(remaining)
            return remaining
        return 0.0
