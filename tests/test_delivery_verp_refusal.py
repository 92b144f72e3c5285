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
from newsletter.delivery.mailings import deliver_due, deliver_mailing, plan_mailing
from newsletter.delivery.senders import STOP_AFTER
from newsletter.errors import TransportError
from newsletter.posts.collection import load_posts
from newsletter.store import reading
from newsletter.store.mailings import get_mailing

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


class CountedRefusal(RefusedSender):
    """`RefusedSender` that counts the MAIL FROMs it refused."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0

    def __call__(self, line: bytes) -> RawAction | list[RawAction]:
        if self.on and line.startswith(b"MAIL FROM:"):
            self.refused += 1
        return super().__call__(line)


def planned(
    site: Path, server: RawSmtpServer, strategy: str, url: str, n: int = 6, *, verp: bool = True
) -> tuple[Settings, Engine, int]:
    extra = {"bounces.address": BOUNCES} if verp else {}
    settings = site_settings(
        site, server, **{"delivery.strategy": strategy, "database.url": url, **extra}
    )
    engine = populate(settings, n)
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


@pytest.mark.parametrize(
    ("strategy", "recipients", "verp"),
    [*((s, 1, True) for s in STRATEGIES), ("streams", 2, True), ("streams", 1, False)],
)
def test_a_small_mailing_whose_sender_is_never_accepted_ends_failed_naming_the_sender(
    sample_site: Path, strategy: str, recipients: int, verp: bool, database_url: str
) -> None:
    """A mailing of fewer recipients than `STOP_AFTER` whose envelope sender the
    server refuses, and has never accepted (likely our configuration: the
    `[bounces]` address, or `[email] from`, not one the account may use).
    Before, each pass deferred them without an attempt and without stopping
    (one or two refusals never make `STOP_AFTER` in a row): the mailing stayed
    deferred for ever, and the pass said nothing of the sender.  Now each pass
    stops with the sender and the server's reply, each refusal spends an
    attempt (the stop rule cannot spare anyone here: nobody else is left to
    protect), and after `max_attempts` passes the recipients are failed, the
    mailing is done and says why, and no later pass tries again."""
    rule = CountedRefusal()
    server = RawSmtpServer(rule, pipelining=strategy != "threaded")
    try:
        settings, engine, mid = planned(
            sample_site, server, strategy, database_url, recipients, verp=verp
        )
        sender = sender_for(settings)(ledger(engine)[VICTIM].id)  # [email] from without VERP
        attempts = settings.delivery.max_attempts
        for done in range(1, attempts + 1):
            with pytest.raises(TransportError) as caught:
                deliver_mailing(engine, settings, mid, load_posts(settings))
            assert f"<{sender}>" in str(caught.value) or recipients > 1, caught.value
            assert SENDER_REFUSED.decode() in str(caught.value)
            rows = ledger(engine).values()
            assert {r.attempts for r in rows} == {done}, list(rows)
            time.sleep(0.1)  # past the deferred rows' backoff (capped at 0.05 s here)
        report = deliver_due(engine, settings, load_posts(settings))  # nothing left to try
    finally:
        server.close()
    rows = ledger(engine).values()
    assert {(r.status, r.attempts, r.last_code, r.last_text) for r in rows} == {
        ("failed", attempts, 553, SENDER_REFUSED.decode())
    }
    assert rule.refused == attempts * recipients
    assert (report.sent, report.deferred, report.failed) == (0, 0, 0)
    with reading(engine) as conn:
        mailing = get_mailing(conn, mid)
    assert mailing is not None and mailing.state == "done"
    assert mailing.last_error is not None
    assert "refuses the envelope sender <" in mailing.last_error
    assert SENDER_REFUSED.decode() in mailing.last_error
    assert server.messages == 0
