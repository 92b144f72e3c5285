"""A server that says "slow down" (421, 454), against raw servers on 127.0.0.1:
a stop ends a throttle's pause at once, and a pass does not wait on a server
that keeps throttling for longer than its bound (`send --wait`)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from smtpserver import DROP, RawAction, RawSmtpServer
from sqlalchemy import Engine
from test_delivery_greeting import CASES, IDS
from test_delivery_robust import ledger
from test_delivery_smtp import POST, populate, site_settings

from newsletter.config import Settings
from newsletter.delivery.mailings import deliver_mailing, plan_mailing
from newsletter.delivery.report import DeliveryReport
from newsletter.posts.collection import load_posts

THROTTLED = b"454 4.7.0 Too many messages, slow down\r\n"


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "smtp-test-secret")


class Throttling:
    """A raw-server rule: every RCPT answered "slow down" (so DATA finds no
    recipient); counts them."""

    def __init__(self) -> None:
        self.rcpts = 0
        self.seen = threading.Event()

    def __call__(self, line: bytes) -> RawAction | list[RawAction]:
        if line[:4].upper() == b"RCPT":
            self.rcpts += 1
            self.seen.set()
            return THROTTLED
        if line[:4].upper() == b"DATA":  # as Postfix answers a pipelined DATA then
            return b"554 5.5.1 Error: no valid recipients\r\n"
        return None


def mailing(
    site: Path, server: RawSmtpServer, case: tuple[str, int, bool], n: int, **extra: Any
) -> tuple[Settings, Engine, int]:
    strategy, concurrency, _ = case
    values = {"delivery.strategy": strategy, "delivery.concurrency": concurrency, **extra}
    settings = site_settings(site, server, **values)
    engine = populate(settings, n)
    return settings, engine, plan_mailing(engine, settings, POST, "sample")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_stop_ends_a_throttle_pause_at_once(
    sample_site: Path, case: tuple[str, int, bool]
) -> None:
    """SIGTERM (the stop) while every connection waits out a 4 s pause: the
    pass ends within moments, not when the pause does (before, the streams
    slept it out and the CLI's 10 s stop budget blamed the server for a
    message that was never on the wire); nothing is spent."""
    rule = Throttling()
    server = RawSmtpServer(rule, pipelining=case[2])
    stop = threading.Event()
    reports: list[DeliveryReport] = []
    try:
        settings, engine, mid = mailing(
            sample_site,
            server,
            case,
            4,
            **{"delivery.backoff_base": 4.0, "delivery.backoff_cap": 60.0},
        )
        posts = load_posts(settings)

        def send() -> None:
            reports.append(deliver_mailing(engine, settings, mid, posts, stop=stop))

        sender = threading.Thread(target=send)
        sender.start()
        assert rule.seen.wait(60)
        time.sleep(0.3)  # well inside the first pause (4 s at least)
        stopped = time.monotonic()
        stop.set()
        sender.join(60)
        took = time.monotonic() - stopped
    finally:
        server.close()
    assert not sender.is_alive()
    assert took < 2.0, took
    assert reports and reports[0].sent == 0
    assert {r.attempts for r in ledger(engine).values()} == {0}
    assert server.messages == 0


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_server_that_keeps_throttling_defers_the_rest_within_the_wait(
    sample_site: Path, case: tuple[str, int, bool]
) -> None:
    """Every connection refused with a 421 greeting, for ever: once the
    pauses would outlast `send --wait`, the pass defers everyone left, no
    attempt spent, and returns (before, each recipient had five tries with
    the pause doubling: a 421 greeting with --wait 20 returned after 73 s,
    without a wait it ran for hours)."""
    closing: list[RawAction] = [b"421 4.7.0 Too many connections, try later\r\n", DROP]
    server = RawSmtpServer(lambda line: closing if line == b"GREETING" else None)
    try:
        settings, engine, mid = mailing(
            sample_site,
            server,
            case,
            6,
            **{"delivery.backoff_base": 1.0, "delivery.backoff_cap": 60.0},
        )
        started = time.monotonic()
        report = deliver_mailing(engine, settings, mid, load_posts(settings), wait=3)
        took = time.monotonic() - started
    finally:
        server.close()
    assert took < 8, took  # pauses of 1 and 2 s, then the next (4 s) is past the wait
    assert (report.sent, report.deferred, report.failed) == (0, 6, 0), report
    assert report.last_error is not None and "421 4.7.0 Too many connections" in report.last_error
    rows = ledger(engine).values()
    assert {(r.status, r.attempts, r.last_code) for r in rows} == {("deferred", 0, 421)}
