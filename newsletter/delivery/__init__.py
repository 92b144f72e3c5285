"""Delivery: mailings and the per-recipient ledger — plan, claim, send, retry, record.

It may import `newsletter.audience`, `newsletter.email`, `newsletter.posts`,
`newsletter.store`, `newsletter.config` and `newsletter.errors`.

- `mailings`: the API — plan a mailing, deliver it, send tests, summaries
- `report`: what delivery reports back (`DeliveryReport`, `MailingSummary`)
- `mailing_pass`: one pass over a mailing — the claim/record loop
- `strategy`: the interface between the pass and how it drives connections
- `streams`: one event loop, each SMTP connection on its own (the default)
- `rounds`: lockstep rounds on one thread (servers with PIPELINING; `strategy = "rounds"`)
- `threaded`: a thread per connection (maildir, memory, a given transport)
- `outgoing`: the bytes per recipient, and test sends
- `recorder`: group commit of outcomes; `ratelimit`: token bucket, throttle, backoff
- `transports`: smtp, maildir outbox, memory — one contract
- `bounces`: VERP envelope senders out; DSN (RFC 3464) and ARF (RFC 5965) reports parsed
- `bouncebox`: the bounce mailbox (Maildir or IMAP) read once, reports recorded and acted on
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from newsletter.lazy import lazy_exports

if TYPE_CHECKING:
    from newsletter.delivery.mailings import (
        deliver_due,
        deliver_mailing,
        mailed_pairs,
        mailing_summaries,
        plan_mailing,
        send_test,
    )
    from newsletter.delivery.report import (
        DeliveryReport,
        MailingSummary,
        Progress,
        envelope_sender,
    )

_EXPORTS = {
    "deliver_due": "mailings",
    "deliver_mailing": "mailings",
    "mailed_pairs": "mailings",
    "mailing_summaries": "mailings",
    "plan_mailing": "mailings",
    "send_test": "mailings",
    "DeliveryReport": "report",
    "MailingSummary": "report",
    "Progress": "report",
    "envelope_sender": "report",
}
__all__ = [
    "DeliveryReport",
    "MailingSummary",
    "Progress",
    "deliver_due",
    "deliver_mailing",
    "envelope_sender",
    "mailed_pairs",
    "mailing_summaries",
    "plan_mailing",
    "send_test",
]

__getattr__ = lazy_exports(__name__, _EXPORTS)
