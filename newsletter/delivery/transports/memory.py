"""The in-memory transport, for tests: keeps every message in a list.

Every instance appends to its own `outbox` and to the module-level `OUTBOX`
(so code that builds its own transport from settings can still be inspected).
`replies` scripts a `SendResult` per recipient for fault tests without SMTP.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from newsletter.delivery.transports.base import SendResult


@dataclass(frozen=True)
class Sent:
    sender: str
    recipient: str
    message: bytes


OUTBOX: list[Sent] = []
_LOCK = threading.Lock()

Responder = Callable[[str], SendResult | None]


class MemoryTransport:
    thread_safe = True

    def __init__(self, responder: Responder | None = None) -> None:
        self.outbox: list[Sent] = []
        self.responder = responder
        self.opened = 0
        self.closed = 0

    def open(self) -> None:
        self.opened += 1

    def close(self) -> None:
        self.closed += 1

    def send(self, sender: str, recipient: str, message: bytes) -> SendResult:
        if self.responder is not None:
            scripted = self.responder(recipient)
            if scripted is not None and not scripted.ok:
                return scripted
        item = Sent(sender, recipient, message)
        with _LOCK:
            self.outbox.append(item)
            OUTBOX.append(item)
        return SendResult(recipient, True, 250, "OK")

    def __enter__(self) -> MemoryTransport:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
