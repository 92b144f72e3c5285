"""The embedded default transport: each message into a Maildir folder.

Uses the stdlib `mailbox.Maildir`, so the outbox is readable by mutt
(``mutt -f .newsletter/outbox``), Thunderbird and the preview.  The envelope
is kept the way a local delivery agent records it: ``Return-Path`` and
``Delivered-To`` prepended above the message (unsigned headers on top do not
break a DKIM signature).
"""

from __future__ import annotations

import mailbox
import os
import threading
from pathlib import Path

from newsletter.delivery.transports.base import SendResult, TransportError
from newsletter.files import PRIVATE_FILE, private_dirs


class MaildirTransport:
    thread_safe = True

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._box: mailbox.Maildir | None = None
        # mailbox.Maildir names files with a class-wide counter; serialise adds.
        self._lock = threading.Lock()

    def open(self) -> None:
        if self._box is not None:
            return
        try:
            # Made here with exist_ok: Maildir(create=True) fails when another
            # process or thread creates the folder at the same moment.
            for sub in ("tmp", "new", "cur"):
                private_dirs(self.path / sub)  # 0700: messages carry live tokens
            self._box = mailbox.Maildir(self.path, create=False)
        except OSError as exc:
            raise TransportError(f"cannot open the outbox: {exc}", path=self.path) from exc

    def close(self) -> None:
        self._box = None

    def send(self, sender: str, recipient: str, message: bytes) -> SendResult:
        self.open()
        assert self._box is not None
        envelope = f"Return-Path: <{sender}>\r\nDelivered-To: {recipient}\r\n".encode()
        try:
            with self._lock:
                key = self._box.add(envelope + message)  # bytes: no parsing
            # mailbox writes 0666 & ~umask; the folder is 0700 already, this
            # keeps the file private if it is ever moved or the folder opened up.
            os.chmod(self.path / "new" / key, PRIVATE_FILE)
        except OSError as exc:
            raise TransportError(f"cannot write to the outbox: {exc}", path=self.path) from exc
        return SendResult(recipient, True, 250, f"stored as {key}")

    def __enter__(self) -> MaildirTransport:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
