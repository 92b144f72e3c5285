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
from newsletter.email.headers import fold_address, fold_header, format_address, parse_from
from newsletter.email.rendered import one_line
from newsletter.email.theme import render_template, template_environment

KINDS = ("confirm", "welcome")
_POLICY = SMTP.clone(cte_type="7bit")


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
    subject = one_line(render_template(env, f"{kind}.subject.j2", full))
    text = render_template(env, f"{kind}.txt.j2", full)
    html = render_template(env, f"{kind}.html.j2", full)
    sender = parse_from(settings.email.from_)
    # From, To, Reply-To and Subject are written by the helpers posts use:
    # EmailMessage would write a non-ASCII From domain raw (UnicodeEncodeError),
    # refuse a long name's folded encoded words (CR/LF), and read a name or a
    # subject that looks like an encoded word ("=?utf-8?q?x?=") as one.
    head = [
        fold_address("From", settings.email.from_, "email.from"),
        # UTF-8 only for a non-ASCII local part (sent with SMTPUTF8, RFC 6531).
        f"To: {format_address(one_line(name), to)}\r\n".encode(),
        fold_header("Subject", subject),
    ]
    if settings.email.reply_to:
        head.append(fold_address("Reply-To", settings.email.reply_to, "email.reply_to"))
    # 7-bit clean, as posts are (quoted-printable or base64 for non-ASCII):
    # SMTP's default `8bit` needs a server with 8BITMIME (RFC 6152).
    msg = EmailMessage(policy=_POLICY)
    msg["Date"] = email.utils.format_datetime(date or utcnow())
    domain = sender.domain or "localhost"
    digest = hashlib.sha256(f"{kind}\0{to}\0{context.get('key', '')}".encode()).hexdigest()[:32]
    msg["Message-ID"] = f"<{digest}@{domain}>"
    # RFC 3834: an automatic message; vacation responders must not answer it.
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    data = b"".join(head) + msg.as_bytes()
    if settings.dkim.enabled:
        data = Signer.from_settings(settings.dkim).sign(data)
    return Notice(sender.addr_spec, to, data)
