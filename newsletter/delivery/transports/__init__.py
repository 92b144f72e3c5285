"""Transports: one small contract, three implementations (smtp, maildir, memory).

The contract (after Django's mail backends): `open`, `send` bytes to one
recipient, `close`, and use as a context manager.  A refusal is data (a
`SendResult`); only a failure of the transport as a whole raises
`TransportError` — `ConnectError` when it is worth retrying later (server down,
connection refused), plain `TransportError` when the user must fix something
(TLS refused, a self-signed certificate, bad login).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from newsletter.errors import TransportError

if TYPE_CHECKING:
    from newsletter.config import Settings

__all__ = ["ConnectError", "SendResult", "Transport", "TransportError", "make_transport"]


@dataclass(frozen=True)
class SendResult:
    """The outcome for one recipient; a refusal is data, not an exception."""

    recipient: str
    ok: bool
    code: int | None = None  # SMTP reply code (250, 451, 550, ...)
    text: str = ""
    permanent: bool = False  # 5xx: do not retry
    throttled: bool = False  # 421 / 451 4.7.x / 454: slow down, keep the attempt
    stage: str = ""  # where it was decided: connect | mail | rcpt | data
    bounced: bool = False  # 5.1.x at RCPT: the address does not exist


class ConnectError(TransportError):
    """The server could not be reached; worth trying again later."""


class Transport(Protocol):
    def open(self) -> None: ...

    def close(self) -> None: ...

    def send(self, sender: str, recipient: str, message: bytes) -> SendResult: ...

    def __enter__(self) -> Transport: ...

    def __exit__(self, *exc: object) -> None: ...


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


def is_thread_safe(transport: object) -> bool:
    """Whether several worker threads may share one instance (SMTP may not)."""
    return bool(getattr(transport, "thread_safe", False))
