"""The EHLO/HELO exchange of a whole mailing, against raw servers on 127.0.0.1:
a 4xx to EHLO is the server's temporary refusal (a 421 slows down as a 421
greeting does), an old or strict server gets HELO, a 5xx to both stops the
command with the server's words."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from smtpserver import DROP, RawAction, RawSmtpServer
from sqlalchemy import Engine
from test_delivery_robust import ledger
from test_delivery_smtp import POST, populate, site_settings

from newsletter.delivery.mailings import deliver_mailing, plan_mailing
from newsletter.delivery.report import DeliveryReport
from newsletter.errors import TransportError
from newsletter.posts.collection import load_posts
from newsletter.store import open_store

# (strategy, concurrency, PIPELINING): the streams with several connections,
# with and without PIPELINING, and with one that pipelines; the threads with
# one connection to a server without it (`strategy = "auto"`'s choices).
CASES = [
    ("streams", 2, False),
    ("streams", 2, True),
    ("streams", 1, True),
    ("threaded", 1, False),
]
IDS = ["streams-2", "streams-2-pipelining", "streams-1-pipelining", "threaded-1"]


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "smtp-test-secret")


def run(
    site: Path, server: RawSmtpServer, case: tuple[str, int, bool], n: int, **extra: Any
) -> tuple[Engine, DeliveryReport]:
    strategy, concurrency, _ = case
    values = {"delivery.strategy": strategy, "delivery.concurrency": concurrency, **extra}
    settings = site_settings(site, server, **values)
    engine = populate(settings, n)
    mid = plan_mailing(engine, settings, POST, "sample")
    return engine, deliver_mailing(engine, settings, mid, load_posts(settings), wait=5)


class Greeting:
    """A raw-server rule for the greeting exchange, per session (one thread each).

    `ehlo`: the replies to the first EHLOs, one per connection (then the
    usual one); `helo`: the reply to HELO.  Strict, as Postfix is
    (`smtpd_helo_required`): MAIL before a greeting was accepted is refused.
    """

    def __init__(self, ehlo: list[RawAction | list[RawAction]], helo: bytes | None = None) -> None:
        self.ehlo = list(ehlo)
        self.helo = helo
        self.lock = threading.Lock()
        self.session = threading.local()
        self.lines: list[bytes] = []

    def __call__(self, line: bytes) -> RawAction | list[RawAction]:
        self.lines.append(line)
        verb = line[:4].upper()
        if line == b"GREETING":
            self.session.greeted = False
        elif verb == b"EHLO":
            with self.lock:
                answer = self.ehlo.pop(0) if self.ehlo else None
            self.session.greeted = answer is None
            return answer
        elif verb == b"HELO":
            self.session.greeted = self.helo is None or self.helo.startswith(b"250")
            return self.helo or b"250 raw\r\n"
        elif verb == b"MAIL" and not self.session.greeted:
            return b"503 5.5.1 Error: send HELO/EHLO first\r\n"
        return None


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_421_to_ehlo_slows_down_and_spends_no_attempt(
    sample_site: Path, case: tuple[str, int, bool]
) -> None:
    """docs/delivery.md: a 421 pauses every connection and spends no attempt.
    To EHLO (then the close, RFC 5321 §3.8) it is the same refusal as a 421
    greeting: before, it was ignored, MAIL met the closed connection, and
    every recipient failed after max_attempts ("connection lost during mail")."""
    closing: list[RawAction] = [b"421 4.7.0 Too many connections, try later\r\n", DROP]
    rule = Greeting([closing] * 4)
    server = RawSmtpServer(rule, pipelining=case[2])
    try:
        engine, report = run(sample_site, server, case, 3)
    finally:
        server.close()
    assert (report.sent, report.deferred, report.failed) == (3, 0, 0), report
    assert not rule.ehlo
    rows = ledger(engine)
    assert {(r.status, r.attempts) for r in rows.values()} == {("sent", 1)}
    assert server.messages == 3


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_refused_ehlo_is_followed_by_helo(sample_site: Path, case: tuple[str, int, bool]) -> None:
    """An old (or strict) server refuses EHLO with 502: HELO, then the mail
    (RFC 5321 §4.1.1.1), never MAIL without a greeting (before, the threads
    sent MAIL at once, the server answered 503 and the command stopped
    blaming [email] from)."""
    rule = Greeting([b"502 5.5.2 Error: command not recognized\r\n"] * 100)
    server = RawSmtpServer(rule, pipelining=case[2])
    try:
        engine, report = run(sample_site, server, case, 3)
    finally:
        server.close()
    assert (report.sent, report.deferred, report.failed) == (3, 0, 0), report
    assert {(r.status, r.attempts) for r in ledger(engine).values()} == {("sent", 1)}
    assert server.messages == 3
    assert any(line[:5].upper() == b"HELO " for line in rule.lines)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_5xx_to_ehlo_and_helo_stops_the_command_with_the_reply(
    sample_site: Path, case: tuple[str, int, bool]
) -> None:
    """Refused EHLO and HELO for good: a transport error naming the reply
    (exit status 1 from the command); nothing is sent, nothing spent."""
    rule = Greeting(
        [b"502 5.5.2 Error: command not recognized\r\n"] * 100,
        helo=b"550 5.7.1 Client host rejected: bad HELO name\r\n",
    )
    server = RawSmtpServer(rule, pipelining=case[2])
    try:
        with pytest.raises(
            TransportError, match=r"refused HELO: 550 5\.7\.1 Client host rejected: bad HELO name"
        ):
            run(sample_site, server, case, 3)
    finally:
        server.close()
    assert server.messages == 0
    assert not any(line.upper().startswith(b"MAIL") for line in rule.lines), rule.lines
    engine = open_store(site_settings(sample_site, server))
    assert {(r.status, r.attempts) for r in ledger(engine).values()} == {("queued", 0)}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_421_to_helo_slows_down_too(sample_site: Path, case: tuple[str, int, bool]) -> None:
    """The reply to HELO is read too: a 421 there is the server's throttle."""
    refusals = {"left": 2}

    def helo_rule(line: bytes) -> RawAction | list[RawAction]:
        if line[:4].upper() == b"EHLO":
            return b"500 5.5.1 Command unrecognized\r\n"
        if line[:4].upper() == b"HELO" and refusals["left"] > 0:
            refusals["left"] -= 1
            return [b"421 4.3.2 Service not available, closing\r\n", DROP]
        return None

    server = RawSmtpServer(helo_rule, pipelining=case[2])
    try:
        engine, report = run(sample_site, server, case, 3)
    finally:
        server.close()
    assert refusals["left"] == 0
    assert (report.sent, report.deferred, report.failed) == (3, 0, 0), report
    assert {(r.status, r.attempts) for r in ledger(engine).values()} == {("sent", 1)}
