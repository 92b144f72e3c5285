"""Transports: one small contract, three implementations (smtp, maildir, memory).

`smtp_stream` is the same SMTP session on an event loop, for the streams
strategy (it is driven by delivery, not used through the contract).

The contract (after Django's mail backends): `open`, `send` bytes to one
recipient, `close`, and use as a context manager.  A refusal is data (a
`SendResult`); only a failure of the transport as a whole raises
`TransportError` — `ConnectError` when it is worth retrying later (server down,
connection refused), plain `TransportError` when the user must fix something
(TLS refused, a self-signed certificate, bad login).
`logins` keeps a refused SMTP password from being tried twice by one process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from newsletter.delivery.transports.base import (
    ConnectError,
    SendResult,
    Transport,
    TransportError,
    is_thread_safe,
)

if TYPE_CHECKING:
    from newsletter.config import Settings

__all__ = [
    "ConnectError",
    "SendResult",
    "Transport",
    "TransportError",
    "is_thread_safe",
    "make_transport",
]


def make_transport(settings: Settings) -> Transport:
    """A new, unopened transport as `[delivery] transport` says."""
    kind = settings.delivery.transport
    if kind == "smtp":
        from newsletter.delivery.transports.smtp import SmtpTransport

        return SmtpTransport(settings.smtp)
    if kind == "memory":
        from newsletter.delivery.transports.memory import MemoryTransport

        return MemoryTransport()
    from newsletter.delivery.transports.maildir import MaildirTransport

    return MaildirTransport(settings.delivery.outbox_dir)
