"""The transport contract: what every transport takes and gives back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from newsletter.errors import TransportError

__all__ = ["ConnectError", "SendResult", "Transport", "TransportError", "is_thread_safe"]


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


def is_thread_safe(transport: object) -> bool:
    """Whether several worker threads may share one instance (SMTP may not)."""
    return bool(getattr(transport, "thread_safe", False))
