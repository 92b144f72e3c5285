"""`RenderedEmail` × recipient → the exact bytes to send.

FOUNDATION STUB: `Recipient`, `MessageTemplate.build` and
`MessageTemplate.personalise` are the contract.  The fast path serialises once
per mailing and substitutes per recipient into bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP

from newsletter.config import Settings
from newsletter.render import PLACEHOLDERS, RenderedEmail


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str
    unsubscribe_url: str


def message_id(mailing_key: str, email: str, domain: str) -> str:
    """Stable per (mailing, recipient): a resend after a crash reuses it."""
    digest = hashlib.sha256(f"{mailing_key}\0{email.lower()}".encode()).hexdigest()[:32]
    return f"<{digest}@{domain}>"


@dataclass(frozen=True)
class MessageTemplate:
    rendered: RenderedEmail
    settings: Settings
    subject_prefix: str = ""

    @classmethod
    def build(
        cls, rendered: RenderedEmail, settings: Settings, *, subject_prefix: str = ""
    ) -> MessageTemplate:
        return cls(rendered, settings, subject_prefix)

    def personalise(self, recipient: Recipient, *, mailing_key: str = "") -> bytes:
        values = {
            PLACEHOLDERS["email"]: recipient.email,
            PLACEHOLDERS["name"]: recipient.name,
            PLACEHOLDERS["unsubscribe_url"]: recipient.unsubscribe_url,
        }
        html, text = self.rendered.html, self.rendered.text
        for key, value in values.items():
            html, text = html.replace(key, value), text.replace(key, value)
        msg = EmailMessage(policy=SMTP)
        msg["From"] = self.settings.email.from_
        msg["To"] = recipient.email
        msg["Subject"] = self.subject_prefix + self.rendered.subject
        msg["Message-ID"] = message_id(mailing_key, recipient.email, "example.com")
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
        return msg.as_bytes()
