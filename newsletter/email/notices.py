"""Readers' own emails: the signup confirmation and the welcome.

Rendered from the theme's `confirm.*.j2` and `welcome.*.j2` (a user's
`[email] templates_dir` overrides each file, as for posts), built as one
small multipart message per reader and DKIM-signed when `[dkim]` is set.
Sending is the web layer's job, through the configured transport.
"""

from __future__ import annotations

import email.utils
import hashlib
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

from newsletter.config import Settings, utcnow
from newsletter.email.dkim import Signer
from newsletter.email.headers import format_address
from newsletter.email.render import _render, template_environment
from newsletter.email.rendered import one_line

KINDS = ("confirm", "welcome")


@dataclass(frozen=True)
class Notice:
    """A message ready for a transport: envelope sender, recipient, bytes."""

    sender: str
    recipient: str
    data: bytes


def build_notice(
    settings: Settings,
    kind: str,
    to: str,
    name: str,
    context: dict[str, Any],
    *,
    date: datetime | None = None,
) -> Notice:
    """Render `<kind>.subject.j2`, `.txt.j2` and `.html.j2` into one message."""
    env = template_environment(settings.email.templates_dir)
    full = {"site": settings.site, "settings": settings, "name": name, "email": to, **context}
    subject = one_line(_render(env, f"{kind}.subject.j2", full))
    text = _render(env, f"{kind}.txt.j2", full)
    html = _render(env, f"{kind}.html.j2", full)
    msg = EmailMessage(policy=SMTP)
    msg["From"] = settings.email.from_
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(date or utcnow())
    sender = email.utils.parseaddr(settings.email.from_)[1]
    domain = sender.rpartition("@")[2] or "localhost"
    digest = hashlib.sha256(f"{kind}\0{to}\0{context.get('key', '')}".encode()).hexdigest()[:32]
    msg["Message-ID"] = f"<{digest}@{domain}>"
    if settings.email.reply_to:
        msg["Reply-To"] = settings.email.reply_to
    # RFC 3834: an automatic message; vacation responders must not answer it.
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    # `To` is written by format_address itself, as for posts: EmailMessage
    # refuses its folded encoded words (CR/LF), and would re-read a name that
    # looks like an encoded word ("=?utf-8?q?x?=") as one.
    to_line = f"To: {format_address(one_line(name), to)}\r\n".encode()
    data = to_line + msg.as_bytes()
    if settings.dkim.enabled:
        data = Signer.from_settings(settings.dkim).sign(data)
    return Notice(sender, to, data)
