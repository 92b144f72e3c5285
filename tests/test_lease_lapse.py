"""A lease that lapses while its message is in flight (invariant 2).

A live pass holds its claimed rows in memory until their outcomes are
committed.  When the lease of one of them lapses meanwhile (a server that
takes longer than the lease to answer the final dot while the keeper's
renewals fail, e.g. another process holding SQLite's write lock), the row may
go to another process, whose outcome then wins (fenced outcomes), but the
same pass must never claim it again: it would send it a second time while
the first copy is still in flight, and only a crash may send twice.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from smtpserver import SLOW, SmtpTestServer
from sqlalchemy import Engine
from test_delivery_smtp import POST, ledger, populate, site_settings

from newsletter.config import Settings
from newsletter.delivery.mailings import deliver_mailing, plan_mailing
from newsletter.errors import StoreError
from newsletter.posts.collection import load_posts
from newsletter.store import held

RENEW_HELD = held.renew_held
LEASE = 0.3  # seconds; the slow answer takes five times that
SLOW_FOR = 1.5


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "lease-test-secret")


def failing_renewals(monkeypatch: pytest.MonkeyPatch, *, after: float = 0.0) -> list[int]:
    """Every renewal fails as a locked database does (`after` seconds of its
    busy timeout); the keeper logs it and goes on."""
    calls: list[int] = []

    def locked(_engine: object, owner: str, _lease: float) -> set[int]:
        calls.append(1)
        time.sleep(after)
        raise StoreError(f"cannot renew the leases of {owner}: database is locked")

    monkeypatch.setattr(held, "renew_held", locked)
    return calls


def slow_first_mailing(
    site: Path,
    smtp_server: SmtpTestServer,
    database_url: str,
    strategy: str,
    *,
    connections: int,
    members: int,
) -> tuple[Engine, Settings, int]:
    """A planned mailing whose first recipient's final dot the server answers
    only after `SLOW_FOR` (five leases of `LEASE`): (engine, settings, mailing)."""
    smtp_server.pipelining = strategy != "threaded"
    smtp_server.stall_seconds = SLOW_FOR
    smtp_server.script("r000@example.org", SLOW, stage="data", times=1)
    settings = site_settings(
        site,
        smtp_server,
        **{
            "database.url": database_url,
            "delivery.strategy": strategy,
            "delivery.lease_seconds": LEASE,
            "delivery.concurrency": connections,
        },
    )
    engine = populate(settings, members)
    return engine, settings, plan_mailing(engine, settings, POST, "sample")


@pytest.mark.parametrize("renewals", ["kept", "failing", "failing-slowly"])
@pytest.mark.parametrize("strategy", ["streams", "threaded", "rounds"])
def test_a_row_whose_lease_lapses_in_flight_is_not_claimed_again_by_its_pass(
    sample_site: Path,
    smtp_server: SmtpTestServer,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    strategy: str,
    renewals: str,
) -> None:
    """r000's final dot is answered 250 only after 1.5 s (five leases); the
    other connection is free meanwhile and claims again and again.  Before,
    with the renewals failing, the lapsed row was claimed by the same pass and
    sent on the other connection: r000 received twice by one live process.
    Failing slowly, a message that had to renew first (its lease near its
    end) met the failure itself, and the pass ended with the store's error
    (streams) where the keeper's own failed renewal only drops the rows."""
    if renewals != "kept":
        calls = failing_renewals(monkeypatch, after=0.25 if renewals == "failing-slowly" else 0)
    members = 30 if renewals == "failing-slowly" else 6
    engine, settings, mid = slow_first_mailing(
        sample_site, smtp_server, database_url, strategy, connections=2, members=members
    )
    report = deliver_mailing(engine, settings, mid, load_posts(settings))
    everyone = [f"r{i:03d}@example.org" for i in range(members)]
    received = smtp_server.recipients()
    assert len(received) == len(set(received)), received  # nobody twice
    if renewals != "kept":
        assert calls, "the keeper never tried to renew"
        # What could not go for want of a sure lease was given back: the next
        # pass (renewals working again) sends exactly those.
        monkeypatch.setattr(held, "renew_held", RENEW_HELD)
        deliver_mailing(engine, settings, mid, load_posts(settings))
        received = smtp_server.recipients()
    else:
        assert report.sent == members, report
    assert sorted(received) == everyone, received
    assert {row.status for row in ledger(engine).values()} == {"sent"}
