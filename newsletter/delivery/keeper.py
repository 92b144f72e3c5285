"""What runs beside a mailing pass: the threads that keep its leases and watch for its stop.

Split from `mailing_pass` (which re-exports `LeaseKeeper`).  The keeper also
asks, on a thread of its own, whether the mailing was withdrawn, postponed or
cancelled meanwhile (`store.halts`), by this process's daemon or by another on
the same database, and if so stops the pass the way a shutdown does: the
messages in hand are finished, the rest are given back.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from newsletter.delivery.hand import RECHECK_EVERY
from newsletter.errors import NewsletterError

__all__ = ["LeaseKeeper", "PassStop"]

log = logging.getLogger("newsletter.delivery.mailing_pass")

# How often a waiting `PassStop` looks at the caller's event.
POLL = 0.05
# How often a pass asks whether its mailing was halted: a pulled post stops
# every process sending it within about this long (a primary-key read, and
# re-reading the posts costs ~10 ms for 500 unchanged ones: measured).
HALT_EVERY = 2.0


class Kept(Protocol):
    """What the keeper needs of a pass (`MailingPass`)."""

    @property
    def lease_seconds(self) -> float: ...

    def keep_leases(self) -> None: ...

    def check_halt(self) -> None: ...

    def recheck_claims(self) -> None: ...


class PassStop(threading.Event):
    """A pass's own stop: set when its mailing is halted, and set too whenever
    the caller's stop (a shutdown, Ctrl-C) is.

    The strategies, the worker processes and the claim loop only ever ask
    `is_set()` or `wait(short)`; halting one pass must not stop the caller's
    other work (the daemon's next mailing), so the caller's event is only read.
    """

    def __init__(self, outer: threading.Event | None) -> None:
        super().__init__()
        self.outer = outer

    def is_set(self) -> bool:
        return super().is_set() or (self.outer is not None and self.outer.is_set())

    def wait(self, timeout: float | None = None) -> bool:
        if self.outer is None:
            return super().wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = POLL if deadline is None else min(POLL, deadline - time.monotonic())
            if left <= 0:
                return False
            super().wait(left)
        return True


class LeaseKeeper:
    """Threads that keep a pass's leases alive, watch for its halt, and re-check
    its claimed recipients (every `RECHECK_EVERY`, `delivery.hand`).

    Leases are short (`[delivery] lease_seconds`, default 60 s) so that rows
    of a process that stalls or loses its host go to others within one lease
    period; one thread renews ours every third of it (at most 10 s apart) and
    meanwhile frees the rows of dead owners (PostgreSQL: whose advisory lock
    is gone) for everyone.  The other, every `HALT_EVERY` seconds (sooner
    with short leases), stops the pass if its mailing was halted.  They
    shared one thread before: a halt check held up for longer than a lease
    (the daemon's `watch` re-reading posts on a stalled disk, a read waiting
    on a stalled database) let our leases lapse, and another sender could
    claim rows this pass was still sending.
    """

    def __init__(self, core: Kept) -> None:
        self.core = core
        self.renew_every = max(0.05, min(core.lease_seconds / 3, 10.0))
        self.period = min(self.renew_every, HALT_EVERY)
        self.done = threading.Event()
        self.threads = [
            threading.Thread(target=self._keep, name="lease-keeper", daemon=True),
            threading.Thread(target=self._watch, name="halt-check", daemon=True),
            threading.Thread(target=self._recheck, name="claims-check", daemon=True),
        ]

    def __enter__(self) -> LeaseKeeper:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join()

    def _keep(self) -> None:
        while not self.done.wait(self.renew_every):
            self._renew()

    def _watch(self) -> None:
        while not self.done.wait(self.period):
            try:
                self.core.check_halt()
            except NewsletterError as exc:
                # The next tick tries again, and the claims refuse a halted
                # mailing's rows anyway: one line, no traceback.
                log.warning(
                    "checking whether the mailing was halted failed: %s; the next tick asks again",
                    exc,
                )

    def _recheck(self) -> None:
        # Its own thread: a slow read here must hold up neither the renewals
        # nor the halt checks, nor they it (an unsubscribe's window).
        while not self.done.wait(RECHECK_EVERY):
            try:
                self.core.recheck_claims()
            except NewsletterError as exc:
                log.warning(
                    "re-checking the claimed recipients failed: %s; the next tick asks again", exc
                )

    def _renew(self) -> None:
        try:
            self.core.keep_leases()
        except NewsletterError as exc:
            # The next tick tries again; a lease that lapses meanwhile only
            # lets another process take the row (fenced outcomes stay right).
            # One line in the database's words (`errors.database_reason`).
            log.warning("renewing leases failed: %s; the next tick tries again", exc)
