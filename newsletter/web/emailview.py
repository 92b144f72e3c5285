"""Raw message bytes → the parts a browser shows (headers, HTML, text).

Both the preview (a message built exactly as `send` builds it) and the outbox
browser (a message the maildir transport wrote) go through `view_of`, so the
page always shows the bytes that were (or would be) sent, decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage


@dataclass(frozen=True)
class EmailView:
    subject: str
    headers: tuple[tuple[str, str], ...]
    html: str | None
    text: str | None
    raw: bytes

    @property
    def size(self) -> int:
        return len(self.raw)


def view_of(raw: bytes) -> EmailView:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)  # policy.default always builds EmailMessage
    headers = tuple((name, str(value)) for name, value in msg.items())
    return EmailView(
        subject=str(msg.get("Subject", "")),
        headers=headers,
        html=_part(msg, "html"),
        text=_part(msg, "plain"),
        raw=raw,
    )


def _part(msg: EmailMessage, subtype: str) -> str | None:
    part = msg.get_body(preferencelist=(subtype,))
    if part is None or part.get_content_subtype() != subtype:
        return None
    try:
        content = part.get_content()
    except (LookupError, ValueError):  # unknown charset or broken encoding
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else None
    return content if isinstance(content, str) else None
