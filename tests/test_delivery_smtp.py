"""Whole mailings over real SMTP (aiosmtpd on 127.0.0.1): faults, pacing, parse-back."""

from __future__ import annotations

import time
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from smtpserver import DROP, RawSmtpServer, SmtpTestServer
from sqlalchemy import Engine, select

from newsletter.audience import members as subs
from newsletter.config import Settings, load_settings
from newsletter.delivery.mailings import deliver_mailing, mailing_summaries, plan_mailing
from newsletter.delivery.messageids import delivery_of
from newsletter.delivery.ratelimit import Throttle, TokenBucket
from newsletter.posts.collection import load_posts
from newsletter.store import open_store
from newsletter.store.schema import deliveries

# On SQLite and on PostgreSQL (see conftest.database_url).
pytestmark = pytest.mark.usefixtures("database_env")

POST = "how-sleep-consolidates-memory"


def site_settings(site: Path, server: SmtpTestServer | RawSmtpServer, **extra: Any) -> Settings:
    values = {
        "database.url": f"sqlite:///{site}/ledger.db",
        "delivery.backoff_base": 0.01,
        "delivery.backoff_cap": 0.05,
        "delivery.max_attempts": 3,
        "delivery.concurrency": 2,
        **server.settings_overrides(),
        **extra,
    }
    return load_settings(site / "newsletter.toml", values)


def populate(settings: Settings, n: int) -> Engine:
    engine = open_store(settings)
    subs.ensure_lists(engine, settings)
    for i in range(n):
        subs.add_subscriber(engine, f"r{i:03d}@example.org", "sample", name=f"Reader {i}")
    return engine


def ledger(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {r.email: r for r in conn.execute(select(deliveries))}


def recorded(engine: Engine) -> dict[str, str]:
    """Each delivery's status as a crash would leave it: the ledger's, or the
    outcome a live SQLite pass journaled and has not folded yet (store.journal).
    The journal is read first: a fold between the two reads is then seen in the ledger."""
    from newsletter.store import journal

    folder = journal.folder_of(engine)
    lines = []
    if folder is not None and folder.is_dir():
        for lock in folder.glob("*.lock"):
            lines.extend(journal.read_lines(folder, lock.name.removesuffix(".lock")))
    rows = ledger(engine)
    status = {email: row.status for email, row in rows.items()}
    email_of = {row.id: email for email, row in rows.items()}
    for line in lines:
        status[email_of[line.delivery_id]] = line.outcome.status
    return status


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "smtp-test-secret")


@pytest.mark.parametrize("strategy", ["streams", "rounds"])
@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
def test_mixed_replies_in_one_mailing(
    sample_site: Path, smtp_server: SmtpTestServer, pipelining: bool, strategy: str
) -> None:
    # "rounds": lockstep rounds with PIPELINING, a thread per connection without.
    smtp_server.pipelining = pipelining
    settings = site_settings(sample_site, smtp_server, **{"delivery.strategy": strategy})
    engine = populate(settings, 12)
    smtp_server.script("r001@example.org", "451 4.3.0 Try again later")
    smtp_server.script("r002@example.org", "550 5.1.1 No such user here")
    mid = plan_mailing(engine, settings, POST, "sample")
    report = deliver_mailing(engine, settings, mid, load_posts(settings))
    assert (report.sent, report.deferred, report.failed) == (10, 1, 1)
    rows = ledger(engine)
    assert rows["r001@example.org"].status == "deferred"
    assert rows["r001@example.org"].last_code == 451
    assert rows["r002@example.org"].status == "failed"
    assert "5.1.1" in rows["r002@example.org"].last_text
    bounced = subs.get_by_email(engine, "r002@example.org")
    assert bounced is not None and bounced.status == "bounced"
    assert sorted(smtp_server.recipients()) == sorted(
        f"r{i:03d}@example.org" for i in range(12) if i not in (1, 2)
    )
    summary = mailing_summaries(engine)[0]
    assert summary.state == "sending" and summary.counts["deferred"] == 1


def test_received_messages_parse_back(sample_site: Path, smtp_server: SmtpTestServer) -> None:
    settings = site_settings(sample_site, smtp_server)
    engine = populate(settings, 8)
    mid = plan_mailing(engine, settings, POST, "sample")
    deliver_mailing(engine, settings, mid, load_posts(settings))
    rows = ledger(engine)
    assert len(smtp_server.received) == 8
    ids = set()
    for item in smtp_server.received:
        raw = item.data
        # Every line ends in CRLF and none is longer than RFC 5322 §2.1.1 allows.
        assert b"\n" not in raw.replace(b"\r\n", b"")
        assert max(len(line) for line in raw.split(b"\r\n")) <= 998
        msg = message_from_bytes(raw, policy=policy.default)
        rcpt = item.rcpt_tos[0]
        assert rcpt in str(msg["To"])
        assert msg["From"] and msg["Subject"] and msg["Date"]
        assert delivery_of(b"smtp-test-secret", msg["Message-ID"]) == (mid, rows[rcpt].id)
        ids.add(msg["Message-ID"])
    assert len(ids) == 8


def test_drop_mid_data_then_retry_succeeds(sample_site: Path, smtp_server: SmtpTestServer) -> None:
    settings = site_settings(sample_site, smtp_server, **{"delivery.concurrency": 1})
    engine = populate(settings, 4)
    smtp_server.script("r002@example.org", DROP, stage="data", times=1)
    mid = plan_mailing(engine, settings, POST, "sample")
    report = deliver_mailing(engine, settings, mid, load_posts(settings), wait=5)
    assert report.sent == 4 and report.failed == 0
    row = ledger(engine)["r002@example.org"]
    assert (row.status, row.attempts) == ("sent", 2)
    assert sorted(smtp_server.recipients()) == [f"r{i:03d}@example.org" for i in range(4)]


def test_server_down_at_start_then_up(sample_site: Path) -> None:
    server = SmtpTestServer()  # not started yet
    settings = site_settings(sample_site, server)
    engine = populate(settings, 3)
    mid = plan_mailing(engine, settings, POST, "sample")
    posts = load_posts(settings)
    down = deliver_mailing(engine, settings, mid, posts)
    assert down.sent == 0 and down.deferred == 3
    assert all("cannot connect" in r.last_text for r in ledger(engine).values())
    with server:
        up = deliver_mailing(engine, settings, mid, posts, wait=5)
        assert up.sent == 3
        assert sorted(server.recipients()) == [f"r{i:03d}@example.org" for i in range(3)]
    assert mailing_summaries(engine)[0].state == "done"


def test_throttling_slows_down_without_spending_attempts(
    sample_site: Path, smtp_server: SmtpTestServer
) -> None:
    settings = site_settings(
        sample_site,
        smtp_server,
        **{"delivery.backoff_base": 0.2, "delivery.backoff_cap": 1.0, "delivery.concurrency": 1},
    )
    engine = populate(settings, 3)
    smtp_server.script("r000@example.org", "454 4.7.0 Throttling, slow down", times=2)
    mid = plan_mailing(engine, settings, POST, "sample")
    started = time.monotonic()
    report = deliver_mailing(engine, settings, mid, load_posts(settings))
    elapsed = time.monotonic() - started
    assert report.sent == 3 and report.deferred == 0
    assert all(r.attempts == 1 for r in ledger(engine).values())
    assert elapsed >= 0.2 + 0.4 - 0.05  # two pauses, doubling


def test_rate_limit_holds_over_a_real_mailing(
    sample_site: Path, smtp_server: SmtpTestServer
) -> None:
    settings = site_settings(sample_site, smtp_server, **{"delivery.rate_per_second": 40.0})
    engine = populate(settings, 30)
    mid = plan_mailing(engine, settings, POST, "sample")
    started = time.monotonic()
    assert deliver_mailing(engine, settings, mid, load_posts(settings)).sent == 30
    elapsed = time.monotonic() - started
    assert elapsed >= 29 / 40 * 0.95


def test_token_bucket_over_ten_simulated_seconds() -> None:
    clock = {"t": 0.0}

    def sleep(seconds: float) -> None:
        clock["t"] += seconds

    bucket = TokenBucket(50.0, clock=lambda: clock["t"], sleep=sleep)
    clock["t"] = 100.0  # a long idle spell must not bank a big burst
    start = clock["t"]
    taken = 0
    while clock["t"] - start < 10.0:
        bucket.acquire()
        taken += 1
    assert taken <= 50 * 10 * 1.05
    assert taken >= 50 * 10 * 0.95


def test_throttle_pause_doubles_and_resets() -> None:
    clock = {"t": 0.0}
    throttle = Throttle(1.0, 3.0, clock=lambda: clock["t"], sleep=lambda s: None)
    assert [throttle.hit() for _ in range(4)] == [1.0, 2.0, 3.0, 3.0]
    throttle.ok()
    assert throttle.hit() == 1.0


@pytest.mark.parametrize("strategy", ["streams", "rounds", "threaded"])
def test_a_failed_commit_sends_no_further_final_dot(
    sample_site: Path,
    smtp_server: SmtpTestServer,
    monkeypatch: pytest.MonkeyPatch,
    strategy: str,
    database_url: str,
) -> None:
    # Invariant 2 on the one-thread SMTP path: the previous round's outcomes are
    # committed (journaled) before any final dot of the next; when that fails, the
    # pass stops and nothing more is accepted by the server.  On PostgreSQL
    # the streams commit on a helper thread: the same holds.  The threads,
    # without PIPELINING, commit after DATA's 354 when there are several
    # connections (threaded.py): the same holds there.
    from newsletter.errors import StoreError
    from newsletter.store.journal import Journal
    from newsletter.store.outcomes import LedgerWriter

    smtp_server.pipelining = strategy != "threaded"
    settings = site_settings(
        sample_site,
        smtp_server,
        **{"delivery.strategy": strategy, "database.url": database_url},
    )
    engine = populate(settings, 60 if strategy == "threaded" else 12)
    mid = plan_mailing(engine, settings, POST, "sample")

    def broken(self: LedgerWriter, outcomes: list[Any], *_: Any) -> None:
        raise StoreError("disk full")

    def full(self: Journal, line: Any) -> None:
        raise OSError(28, "disk full")

    # A SQLite file's pass journals each outcome (store.journal): its
    # append is that commit; PostgreSQL commits through the LedgerWriter.
    monkeypatch.setattr(LedgerWriter, "write", broken)
    monkeypatch.setattr(Journal, "append", full)
    with pytest.raises(StoreError, match="disk full"):
        deliver_mailing(engine, settings, mid, load_posts(settings))
    # At most the first message of each connection went out (the rounds send
    # exactly one per connection; the streams may stop the others sooner).
    assert 1 <= len(smtp_server.received) <= settings.delivery.concurrency
    assert "sent" not in {row.status for row in ledger(engine).values()}


@pytest.mark.parametrize("strategy", ["streams", "threaded", "rounds"])
def test_a_421_greeting_is_throttling_and_spends_no_attempt(
    sample_site: Path, strategy: str
) -> None:
    """Providers say "too many connections" in the greeting (421, RFC 5321
    §3.8): slow down as for any 421 (docs/delivery.md), without spending
    the recipients' attempts, which would fail them all after max_attempts."""
    refusals = {"left": 3}

    def rule(line: bytes) -> list[bytes | str | None] | None:
        if line == b"GREETING" and refusals["left"] > 0:
            refusals["left"] -= 1
            return [b"421 4.7.0 Too many connections, try again later\r\n", DROP]
        return None

    server = RawSmtpServer(rule, pipelining=True)
    try:
        settings = site_settings(
            sample_site, server, **{"delivery.strategy": strategy, "delivery.concurrency": 1}
        )
        engine = populate(settings, 3)
        mid = plan_mailing(engine, settings, POST, "sample")
        report = deliver_mailing(engine, settings, mid, load_posts(settings), wait=5)
    finally:
        server.close()
    assert refusals["left"] == 0
    assert report.sent == 3 and server.messages == 3
    rows = ledger(engine)
    assert {r.status for r in rows.values()} == {"sent"}
    assert [r.attempts for r in rows.values()] == [1, 1, 1]
