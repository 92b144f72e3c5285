"""Shared by the bounce tests: a sent mailing and DSN/ARF fixtures filled in for it."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from sqlalchemy import Engine

from newsletter.audience import members as subs
from newsletter.config import Settings, load_settings
from newsletter.delivery.mailings import deliver_mailing, plan_mailing
from newsletter.delivery.transports.memory import MemoryTransport
from newsletter.posts.collection import load_posts
from newsletter.store import open_store

FIXTURES = Path(__file__).parent / "fixtures" / "bounces"
POST = "how-sleep-consolidates-memory"
BOUNCE_ADDRESS = "bounces@example.com"

# The Exchange-style report carries its delivery-status part in base64, with
# lower-case field names and no Status: field (the code is only in the
# Diagnostic-Code), as Exchange servers send it.
EXCHANGE_STATUS = (
    "reporting-mta: dns;outlook.example.net\r\n\r\n"
    "final-recipient: rfc822;{rcpt}\r\n"
    "action: failed\r\n"
    "diagnostic-code: smtp;550 5.5.0 Requested action not taken: mailbox unavailable\r\n"
)


@dataclass(frozen=True)
class SentMail:
    verp: str
    message_id: str
    unsub: str


@dataclass(frozen=True)
class Sent:
    settings: Settings
    engine: Engine
    mailing_id: int
    by_email: dict[str, SentMail]

    def fill(self, fixture: str, email: str, n: int = 0) -> bytes:
        mail = self.by_email[email]
        status = EXCHANGE_STATUS.format(rcpt=email).encode()
        text = Template((FIXTURES / fixture).read_text()).substitute(
            verp=mail.verp,
            rcpt=email,
            message_id=mail.message_id,
            unsub=mail.unsub,
            n=n,
            dsn_base64=base64.encodebytes(status).decode(),
        )
        return text.encode()


def send_mailing(site: Path, count: int, **overrides: Any) -> Sent:
    settings = load_settings(
        site / "newsletter.toml",
        {
            "database.url": f"sqlite:///{site}/db.sqlite",
            "bounces.address": BOUNCE_ADDRESS,
            **overrides,
        },
    )
    engine = open_store(settings)
    subs.ensure_lists(engine, settings)
    for i in range(count):
        subs.add_subscriber(engine, f"r{i}@example.org", "sample")
    mailing_id = plan_mailing(engine, settings, POST, "sample")
    transport = MemoryTransport()
    deliver_mailing(engine, settings, mailing_id, load_posts(settings), transport=transport)
    by_email = {}
    for sent in transport.outbox:
        head = sent.message.split(b"\r\n\r\n", 1)[0].decode()
        mid = re.search(r"^Message-ID:\s*(\S+)", head, re.M | re.I)
        unsub = re.search(r"/unsubscribe/([A-Za-z0-9_-]+)", head)
        assert mid and unsub
        by_email[sent.recipient] = SentMail(sent.sender, mid.group(1), unsub.group(1))
    return Sent(settings, engine, mailing_id, by_email)


def status_of(sent: Sent, email: str) -> str:
    row = subs.get_by_email(sent.engine, email)
    assert row is not None
    return row.status


def maildir(root: Path) -> Path:
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def drop(box: Path, name: str, data: bytes) -> Path:
    path = box / "new" / name
    path.write_bytes(data)
    return path
