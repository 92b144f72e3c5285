"""A refused envelope sender with VERP (delivery/senders.py): one recipient's
own sender refused is that recipient's failure after the usual retries; a
server refusing our senders in general still fails nobody and stops the pass."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from smtpserver import RawAction, RawSmtpServer
from sqlalchemy import Engine
from test_delivery_robust import SENDER_REFUSED, STRATEGIES, RefusedSender, ledger
from test_delivery_smtp import POST, populate, site_settings

from newsletter.config import Settings
from newsletter.delivery.bounces import sender_for
from newsletter.delivery.mailings import deliver_mailing, plan_mailing
from newsletter.delivery.senders import STOP_AFTER
from newsletter.errors import TransportError
from newsletter.posts.collection import load_posts

BOUNCES = "bounces@example.org"
VICTIM = "r000@example.org"  # first in line: refused before anything is accepted


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "smtp-test-secret")


class RefusedOneSender:
    """A raw-server rule: MAIL FROM refused for one envelope sender only, and
    that envelope's RCPT and DATA answered as Postfix does then (`RefusedSender`)."""

    def __init__(self) -> None:
        self.sender = b""
        self.refused = 0
        self.session = threading.local()  # the raw server runs a thread per session

    def __call__(self, line: bytes) -> RawAction | list[RawAction]:
        if line.startswith(b"MAIL FROM:"):
            self.session.refused = line.startswith(b"MAIL FROM:<" + self.sender + b">")
            if self.session.refused:
                self.refused += 1
                return SENDER_REFUSED + b"\r\n"
            return None
        if not getattr(self.session, "refused", False):
            return None
        if line.startswith(b"RCPT TO:"):
            return b"503 5.5.1 Error: need MAIL command\r\n"
        if line.startswith(b"DATA"):
            self.session.refused = False
            return b"554 5.5.1 Error: no valid recipients\r\n"
        return None


def planned(
    site: Path, server: RawSmtpServer, strategy: str, url: str
) -> tuple[Settings, Engine, int]:
    settings = site_settings(
        site,
        server,
        **{"delivery.strategy": strategy, "bounces.address": BOUNCES, "database.url": url},
    )
    engine = populate(settings, 6)
    return settings, engine, plan_mailing(engine, settings, POST, "sample")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_refused_verp_sender_fails_its_recipient_after_the_usual_retries(
    sample_site: Path, strategy: str, database_url: str
) -> None:
    """The server refuses the VERP sender of r000 only and takes the others'.
    Before, r000 was deferred without an attempt on every pass, for ever; now
    each refusal spends one (even on the last passes, when r000 is alone and
    nothing is accepted: the ledger's sent rows say the server takes ours),
    and after `max_attempts` it is failed.  No pass is stopped."""
    rule = RefusedOneSender()
    server = RawSmtpServer(rule, pipelining=strategy != "threaded")
    try:
        settings, engine, mid = planned(sample_site, server, strategy, database_url)
        rule.sender = sender_for(settings)(ledger(engine)[VICTIM].id).encode()
        passes = 0
        while (
            ledger(engine)[VICTIM].status != "failed"
            and passes < 3 * settings.delivery.max_attempts
        ):
            deliver_mailing(engine, settings, mid, load_posts(settings))  # never raises
            passes += 1
            time.sleep(0.1)  # past the deferred row's backoff (capped at 0.05 s here)
    finally:
        server.close()
    victim = ledger(engine)[VICTIM]
    assert (victim.status, victim.attempts, victim.last_code) == (
        "failed",
        settings.delivery.max_attempts,
        553,
    ), (victim, passes)
    assert victim.last_text == SENDER_REFUSED.decode()
    # Its first refusal spends nothing when it comes before any message was
    # accepted (r000 is first in line; the other connection may be quicker).
    assert rule.refused in (settings.delivery.max_attempts, settings.delivery.max_attempts + 1)
    assert server.messages == 5
    assert {r.email for r in ledger(engine).values() if r.status == "sent"} == {
        f"r{i:03d}@example.org" for i in range(1, 6)
    }


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_server_refusing_every_verp_sender_still_fails_nobody(
    sample_site: Path, strategy: str, database_url: str
) -> None:
    """VERP on, the [bounces] address refused in general (nothing ever
    accepted): as without VERP, refusals defer without spending an attempt and
    `STOP_AFTER` in a row stop the pass, on every pass before the fix."""
    rule = RefusedSender()
    server = RawSmtpServer(rule, pipelining=strategy != "threaded")
    try:
        settings, engine, mid = planned(sample_site, server, strategy, database_url)
        for _ in range(settings.delivery.max_attempts + 1):
            with pytest.raises(TransportError, match="refuses the envelope sender <bounces\\+"):
                deliver_mailing(engine, settings, mid, load_posts(settings))
            time.sleep(0.1)  # past the deferred rows' backoff (capped at 0.05 s here)
        rows = list(ledger(engine).values())
        deferred = [r for r in rows if r.status == "deferred"]
        assert {r.status for r in rows} <= {"queued", "deferred"}, rows
        assert len(deferred) >= STOP_AFTER
        assert {(r.attempts, r.last_code) for r in deferred} == {(0, 553)}
        rule.on = False  # the owner fixed it
        time.sleep(0.1)
        report = deliver_mailing(engine, settings, mid, load_posts(settings))
    finally:
        server.close()
    assert (report.sent, report.failed) == (6, 0), report
    assert server.messages == 6
