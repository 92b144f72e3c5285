"""The thread beside a sending pass (`delivery.keeper`): its warnings are one
line each, in the database's words, never a traceback in the daemon's log."""

from __future__ import annotations

import logging
import time

import pytest

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
