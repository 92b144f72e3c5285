"""Transports: one small contract, three implementations (smtp, maildir, memory).

CONTRACT STUB (being implemented).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SendResult:
    """The outcome for one recipient; a refusal is data, not an exception."""

    recipient: str
    ok: bool
    code: int | None = None  # SMTP reply code (250, 451, 550, ...)
    text: str = ""
    permanent: bool = False  # 5xx: do not retry
    throttled: bool = False  # 421 / 451 4.7.x / 454: slow down, keep the attempt


class Transport(Protocol):
    def open(self) -> None: ...

    def close(self) -> None: ...

    def send(self, sender: str, recipient: str, message: bytes) -> SendResult: ...

    def __enter__(self) -> Transport: ...

    def __exit__(self, *exc: object) -> None: ...
