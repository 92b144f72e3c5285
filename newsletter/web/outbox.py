"""The maildir outbox (what the maildir transport "sent"), read for the preview."""

from __future__ import annotations

import mailbox
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import default
from pathlib import Path

from newsletter.web.emailview import EmailView, view_of

MAX_LISTED = 500
# Maildir unique names: time.M<usec>P<pid>Q<n>.host (and other writers' forms);
# anything with a path separator or starting with a dot is not one of ours.
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,=-]{0,250}")


@dataclass(frozen=True)
class OutboxEntry:
    key: str
    received: datetime
    sender: str
    to: str
    subject: str
    size: int


def _open(outbox_dir: Path) -> mailbox.Maildir | None:
    if not (outbox_dir / "cur").is_dir() and not (outbox_dir / "new").is_dir():
        return None
    return mailbox.Maildir(str(outbox_dir), factory=None, create=False)


def _message_files(outbox_dir: Path) -> list[tuple[str, Path]]:
    """(key, file) for every message; a maildir file name is `<key>[:2,flags]`."""
    found: list[tuple[str, Path]] = []
    for sub in ("new", "cur"):
        folder = outbox_dir / sub
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if not path.name.startswith("."):
                found.append((path.name.split(mailbox.Maildir.colon)[0], path))
    return found


def list_outbox(outbox_dir: Path, limit: int = MAX_LISTED) -> list[OutboxEntry]:
    """Newest first; an empty list when the outbox does not exist yet."""
    parser = BytesHeaderParser(policy=default)
    entries: list[OutboxEntry] = []
    for key, path in _message_files(outbox_dir):
        try:
            with path.open("rb") as fh:
                headers = parser.parse(fh)
            size = path.stat().st_size
            mtime = path.stat().st_mtime
        except OSError:
            continue  # removed while we listed
        entries.append(
            OutboxEntry(
                key=key,
                received=datetime.fromtimestamp(mtime, UTC),
                sender=str(headers.get("From", "")),
                to=str(headers.get("To", "")),
                subject=str(headers.get("Subject", "")),
                size=size,
            )
        )
    entries.sort(key=lambda e: e.received, reverse=True)
    return entries[:limit]


def read_outbox_message(outbox_dir: Path, key: str) -> EmailView | None:
    if not _KEY.fullmatch(key):
        return None
    box = _open(outbox_dir)
    if box is None:
        return None
    try:
        return view_of(box.get_bytes(key))
    except (KeyError, OSError):
        return None
