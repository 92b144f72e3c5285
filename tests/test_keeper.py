"""The thread beside a sending pass (`delivery.keeper`): its warnings are one
line each, in the database's words, never a traceback in the daemon's log."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from smtpserver import SmtpTestServer

from newsletter.delivery.keeper import LeaseKeeper
from newsletter.errors import StoreError


class Failing:
    """A pass whose database is gone: renewing and asking both fail."""

    lease_seconds = 0.15

    def __init__(self) -> None:
        self.renewals = 0

    def keep_leases(self) -> None:
        self.renewals += 1
        raise StoreError("cannot renew the leases of host:1:ab: connection refused")

    def check_halt(self) -> None:
        raise StoreError("cannot read mailing 4: connection refused")

    def recheck_claims(self) -> None:
        raise StoreError("cannot re-check claimed deliveries: connection refused")


def test_a_failed_renewal_is_one_line_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    core = Failing()
    logger = "newsletter.delivery.mailing_pass"
    with caplog.at_level(logging.WARNING, logger=logger), LeaseKeeper(core):
        deadline = time.monotonic() + 5
        while core.renewals < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    renewals = [r for r in caplog.records if "renewing" in r.getMessage()]
    assert renewals, caplog.text
    for record in renewals:
        assert record.exc_info is None
        assert record.getMessage() == (
            "renewing leases failed: cannot renew the leases of host:1:ab: connection refused; "
            "the next tick tries again"
        )
    assert all(r.exc_info is None for r in caplog.records)
    assert "Traceback" not in caplog.text


def test_a_database_error_while_freeing_dead_leases_does_not_end_the_keeper(
    tmp_path: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    database_env: str,
) -> None:
    """`keep_leases` renews (translated errors) and then frees dead owners'
    rows, whose SQLAlchemy error escaped untranslated: the keeper thread died
    with a traceback and the pass's leases were never renewed again."""
    from sqlalchemy.exc import OperationalError
    from test_daemon_support import engine_of, make_site

    from newsletter.delivery.mailing_pass import MailingPass
    from newsletter.delivery.transports.memory import MemoryTransport
    from newsletter.store import mailings as q

    site = make_site(tmp_path)  # type: ignore[arg-type]
    settings = site.settings()
    engine = engine_of(settings)
    row = q.MailingRow(1, "p", "news", "post", 0, "", "sending", (), None, None, None, None)
    core = MailingPass(engine, settings, row, None, transport=MemoryTransport())
    calls: list[int] = []

    def broken(_engine: object) -> int:
        calls.append(1)
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(q, "free_dead_leases", broken)
    with pytest.raises(StoreError, match="database is locked"):
        core.keep_leases()
    assert calls == [1]


@pytest.mark.parametrize("strategy", ["streams", "threaded"])
def test_a_slow_halt_check_never_holds_up_the_lease_renewal(
    sample_site: Path,
    smtp_server: SmtpTestServer,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    strategy: str,
) -> None:
    """The halt check (here its `watch`, the daemon re-reading the posts, as
    slow as a stalled disk or database) takes five leases while r000's
    message is in flight.  Before, the renewal waited on the same thread: the
    lease lapsed and another sender claimed r000 while this pass still sent
    it.  Now the renewal has a thread of its own: nobody else can take r000."""
    from test_lease_lapse import SLOW_FOR, slow_first_mailing

    from newsletter.delivery.mailings import deliver_mailing
    from newsletter.posts.collection import load_posts
    from newsletter.store import mailings as q

    monkeypatch.setenv("NEWSLETTER_SECRET", "keeper-test-secret")
    engine, settings, mid = slow_first_mailing(
        sample_site, smtp_server, database_url, strategy, connections=1, members=1
    )
    slow = threading.Event()
    watched: list[float] = []

    def watch() -> None:
        watched.append(time.monotonic())
        if not slow.is_set():
            slow.set()
            time.sleep(SLOW_FOR)

    taken: list[str] = []
    done = threading.Event()

    def another_sender() -> None:
        slow.wait()  # r000 is ours by then: the keeper ticks only while the pass sends
        while not done.wait(0.02):
            rows, _skipped = q.claim(engine, mid, "elsewhere:1:keeper-test", 10, 60.0)
            taken.extend(row.email for row in rows)

    other = threading.Thread(target=another_sender)
    other.start()
    try:
        report = deliver_mailing(engine, settings, mid, load_posts(settings), watch=watch)
    finally:
        done.set()
        slow.set()
        other.join()
    assert watched, "the halt check never ran"
    assert len(smtp_server.recipients()) == 1
    assert taken == []
    assert (report.sent, report.deferred) == (1, 0), report
