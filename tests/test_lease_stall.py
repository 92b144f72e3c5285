"""A sender stopped longer than its lease (SIGSTOP, a suspended host) loses its
rows to the other senders, and once it resumes it sends none of them.

Before, it sent the rest of its claim from memory and learnt only when
recording the outcomes that its leases had lapsed ("dropped 404 of 404
delivery outcomes"): two `send` on one store, one frozen past its lease,
sent 418-422 of 20,000 twice.  Driven here from the test: the server holds
the first message's reply while the test expires the sender's other leases
in the database, lets another owner claim them, and moves the sender's lease
clock (`delivery.hand.lease_clock`) past the lease, as a stop does.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from lease_support import READERS, Sending, wait_until
from smtpserver import SmtpTestServer
from sqlalchemy import update
from test_delivery_smtp import POST, ledger, populate, site_settings

from newsletter.delivery import hand
from newsletter.delivery.mailings import deliver_mailing, plan_mailing
from newsletter.posts.collection import load_posts
from newsletter.store import mailings as q
from newsletter.store.schema import deliveries

LEASE = 60.0
OTHER = "elsewhere:1:resumed"


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "lease-stall-secret")


class StoppedClock:
    """The lease clock of a process that was stopped for `stopped` seconds."""

    def __init__(self, real: Callable[[], float]) -> None:
        self.real = real
        self.stopped = 0.0

    def __call__(self) -> float:
        return self.real() + self.stopped


@pytest.mark.parametrize("strategy", ["streams", "threaded", "rounds"])
def test_a_sender_stopped_past_its_lease_sends_none_of_the_rows_taken_over(
    sample_site: Path,
    smtp_server: SmtpTestServer,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    strategy: str,
) -> None:
    clock = StoppedClock(hand.lease_clock)
    monkeypatch.setattr(hand, "lease_clock", clock)
    smtp_server.pipelining = strategy != "threaded"
    smtp_server.hold(after=1)  # r000 is on the wire, its reply held
    settings = site_settings(
        sample_site,
        smtp_server,
        **{
            "database.url": database_url,
            "delivery.strategy": strategy,
            "delivery.concurrency": 1,
            "delivery.lease_seconds": LEASE,
        },
    )
    engine = populate(settings, len(READERS))
    mid = plan_mailing(engine, settings, POST, "sample")
    sending = Sending(engine, settings, mid)
    wait_until(lambda: len(smtp_server.received) >= 1, "the first message")
    # The sender is stopped past its lease: its leases lapse in the database,
    # and another sender (alive: its advisory lock is held) claims them.
    with engine.begin() as conn:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.email != READERS[0])
            .values(lease_expires_at=datetime.now(UTC) - timedelta(hours=1))
        )
    with q.OwnerLock(engine, OTHER):
        taken, _ = q.claim(engine, mid, OTHER, 100, 600)
        assert [row.email for row in taken] == READERS[1:]
        clock.stopped = LEASE + 1  # and now it resumes
        smtp_server.release()
        report = sending.finish()
        assert smtp_server.recipients() == [READERS[0]]
        assert report.sent == 1, report
        rows = ledger(engine)
        assert {rows[e].lease_owner for e in READERS[1:]} == {OTHER}
    # The other sender's rows, given back, reach their readers: each once.
    q.release(engine, OTHER)
    deliver_mailing(engine, settings, mid, load_posts(settings))
    assert sorted(smtp_server.recipients()) == READERS
    assert {row.status for row in ledger(engine).values()} == {"sent"}


@pytest.mark.parametrize("strategy", ["streams", "threaded", "rounds"])
def test_rows_deferred_untried_while_the_server_is_down_are_not_called_taken_over(
    sample_site: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    strategy: str,
) -> None:
    """A pass that gives up on an unreachable server defers the rest of its
    claim untried; those rows stayed in its hand as not yet begun, and the
    re-check, finding them no longer leased once their outcomes were in,
    warned that another sender had taken them over."""
    import logging

    from newsletter.delivery import keeper

    monkeypatch.setattr(keeper, "RECHECK_EVERY", 0.05)
    closed = SmtpTestServer()  # its port bound, never listening: every connect refused
    settings = site_settings(
        sample_site,
        closed,
        **{
            "database.url": database_url,
            "delivery.strategy": strategy,
            "delivery.rate_per_second": 400,
        },
    )
    engine = populate(settings, 600)
    mid = plan_mailing(engine, settings, POST, "sample")
    caplog.set_level(logging.INFO)
    try:
        report = deliver_mailing(engine, settings, mid, load_posts(settings))
    finally:
        closed.stop()
    assert report.sent == 0 and report.deferred == 600, report
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in said if "leased to this sender" in m or "taken by" in m], said
    assert {row.status for row in ledger(engine).values()} == {"deferred"}
