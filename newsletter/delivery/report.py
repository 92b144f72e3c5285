"""What delivery reports back: a pass's counts, a mailing's summary, the envelope sender.

Plain data shared by the pass, the test sends and the public API, so that none
of them has to import another to name its results.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parseaddr

from newsletter.config import Settings

__all__ = ["DeliveryReport", "MailingSummary", "Progress", "envelope_sender"]


@dataclass(frozen=True)
class DeliveryReport:
    """What one delivery pass did, per status."""

    sent: int = 0
    deferred: int = 0
    failed: int = 0
    skipped: int = 0
    paused: bool = False  # an hourly/daily cap stopped the pass
    errors: tuple[str, ...] = ()  # one line per failed recipient
    # Why the last recipient deferred or failed was (an SMTP reply, "cannot
    # connect to …"): what a summary of deferrals alone can say of them.
    last_error: str | None = None

    @property
    def deferral_reason(self) -> str | None:
        """`last_error` when some were deferred: why, which a summary says once
        (a deferral exits 0 and is retried; failures have a line each already)."""
        return self.last_error if self.deferred else None

    def __add__(self, other: DeliveryReport) -> DeliveryReport:
        return DeliveryReport(
            self.sent + other.sent,
            self.deferred + other.deferred,
            self.failed + other.failed,
            self.skipped + other.skipped,
            self.paused or other.paused,
            self.errors + other.errors,
            _last_error(self, other),
        )


def _last_error(first: DeliveryReport, then: DeliveryReport) -> str | None:
    """The later report's reason, but a deferral's over a failure's: while some
    are deferred, why is what a summary says of them (`deferral_reason`)."""
    if first.deferred or then.deferred:
        return then.deferral_reason or first.deferral_reason
    return then.last_error or first.last_error


@dataclass(frozen=True)
class MailingSummary:
    mailing_id: int
    post_id: str
    list_name: str
    kind: str  # post | digest | resend
    # planned | waiting | held | sending | paused | withdrawn | postponed | done
    state: str
    counts: Mapping[str, int] = field(default_factory=dict)  # by delivery status
    last_error: str | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None
    paused_until: datetime | None = None
    subject: str = ""
    origin: str = "daemon"  # who planned it: "daemon" or "send" (store.halts)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


Progress = Callable[[int, int], None]  # (done, total)


def envelope_sender(settings: Settings) -> str:
    """The envelope sender with no delivery to name (test sends): `[bounces]
    address`, else the bare address of `[email] from`."""
    return settings.bounces.address or parseaddr(settings.email.from_)[1] or settings.email.from_
