"""Mailings and the ledger, through the memory transport (no SMTP needed)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from newsletter.audience import members as subs
from newsletter.config import Settings, load_settings
from newsletter.delivery.mailings import (
    deliver_due,
    deliver_mailing,
    mailed_pairs,
    mailing_summaries,
    plan_mailing,
    send_test,
)
from newsletter.delivery.messageids import delivery_of
from newsletter.delivery.transports import SendResult
from newsletter.delivery.transports.memory import MemoryTransport
from newsletter.errors import ConfigError, DeliveryError, TransportError
from newsletter.posts.collection import PostCollection, load_posts
from newsletter.store import open_store
from newsletter.store.leases import OwnerLock
from newsletter.store.schema import deliveries, mailings

# On SQLite and on PostgreSQL (see conftest.database_url).
pytestmark = pytest.mark.usefixtures("database_env")

POST = "how-sleep-consolidates-memory"


def make_settings(site: Path, **overrides: Any) -> Settings:
    values = {
        "database.url": f"sqlite:///{site}/ledger.db",
        "delivery.transport": "memory",
        "delivery.backoff_base": 0.01,
        "delivery.backoff_cap": 0.05,
        "delivery.max_attempts": 3,
        **overrides,
    }
    return load_settings(site / "newsletter.toml", values)


@pytest.fixture
def setup(
    sample_site: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Settings, Engine, PostCollection]:
    monkeypatch.setenv("NEWSLETTER_SECRET", "test-secret")
    settings = make_settings(sample_site)
    engine = open_store(settings)
    subs.ensure_lists(engine, settings)
    for i in range(10):
        subs.add_subscriber(engine, f"reader{i}@example.com", "sample", name=f"Reader {i}")
    return settings, engine, load_posts(settings)


def rows(engine: Engine, mailing_id: int) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(deliveries).where(deliveries.c.mailing_id == mailing_id).order_by("id")
            )
        )


def test_plan_snapshots_members_and_is_idempotent(setup: Any) -> None:
    settings, engine, _ = setup
    first = plan_mailing(engine, settings, POST, "sample")
    assert plan_mailing(engine, settings, POST, "sample") == first
    assert len(rows(engine, first)) == 10
    assert {r.status for r in rows(engine, first)} == {"queued"}
    assert (POST, "sample") in mailed_pairs(engine)


def test_a_pass_counts_its_mailing_only_for_a_progress_total(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting every row by status costs a scan of the mailing (2-9 ms at
    20k rows): a pass without a progress bar (the daemon's) skips it; with one,
    the bar still starts from what earlier passes finished."""
    from newsletter.store import mailings as q

    settings, engine, posts = setup
    counted: list[int | None] = []
    counts = q.counts
    monkeypatch.setattr(
        q, "counts", lambda conn, mid=None: counted.append(mid) or counts(conn, mid)
    )
    mid = plan_mailing(engine, settings, POST, "sample")
    with engine.begin() as conn:  # an earlier pass sent four
        first = conn.scalar(select(deliveries.c.id).order_by(deliveries.c.id))
        conn.execute(update(deliveries).where(deliveries.c.id < first + 4).values(status="sent"))
        conn.execute(update(deliveries).where(deliveries.c.id == first + 4).values(status="failed"))
    with engine.begin() as conn:  # and one more is left for the pass with a bar
        conn.execute(update(deliveries).where(deliveries.c.id > first + 5).values(status="skipped"))
    report = deliver_mailing(engine, settings, mid, posts, transport=MemoryTransport())
    assert report.sent == 1 and counted == []
    with engine.begin() as conn:
        conn.execute(update(deliveries).where(deliveries.c.id > first + 5).values(status="queued"))
    seen: list[tuple[int, int]] = []
    report = deliver_mailing(
        engine,
        settings,
        mid,
        posts,
        transport=MemoryTransport(),
        progress=lambda d, t: seen.append((d, t)),
    )
    assert report.sent == 4 and counted == [mid]
    assert seen == [(7, 10), (8, 10), (9, 10), (10, 10)]


def test_plan_unknown_list_is_a_config_error(setup: Any) -> None:
    settings, engine, _ = setup
    with pytest.raises(ConfigError, match="unknown list 'nope'"):
        plan_mailing(engine, settings, POST, "nope")


def test_deliver_sends_each_once_with_stable_message_ids(setup: Any) -> None:
    settings, engine, posts = setup
    mid = plan_mailing(engine, settings, POST, "sample")
    transport = MemoryTransport()
    seen: list[tuple[int, int]] = []
    report = deliver_mailing(
        engine, settings, mid, posts, transport=transport, progress=lambda d, t: seen.append((d, t))
    )
    assert (report.sent, report.failed, report.deferred, report.skipped) == (10, 0, 0, 0)
    assert sorted(s.recipient for s in transport.outbox) == sorted(
        f"reader{i}@example.com" for i in range(10)
    )
    ledger = rows(engine, mid)
    assert all(r.status == "sent" and r.sent_at and r.attempts == 1 for r in ledger)
    # Each message's Message-ID names its delivery (signed); none is stored.
    assert all(r.message_id is None for r in ledger)
    named = set()
    for sent in transport.outbox:
        row = next(r for r in ledger if r.email == sent.recipient)
        header = message_from_bytes(sent.message)["Message-ID"]
        assert header is not None and delivery_of(b"test-secret", header) == (mid, row.id)
        named.add(header)
    assert len(named) == 10
    assert seen[-1] == (10, 10)
    # A second pass finds nothing to do.
    again = deliver_mailing(engine, settings, mid, posts, transport=transport)
    assert again.sent == 0 and len(transport.outbox) == 10
    assert mailing_summaries(engine)[0].state == "done"


def test_unsubscribe_between_planning_and_delivery_is_skipped(setup: Any) -> None:
    settings, engine, posts = setup
    mid = plan_mailing(engine, settings, POST, "sample")
    gone = subs.get_by_email(engine, "reader3@example.com")
    assert gone is not None
    subs.unsubscribe(engine, gone.id, "sample", reason="test")
    subs.add_subscriber(engine, "latecomer@example.com", "sample")
    transport = MemoryTransport()
    report = deliver_mailing(engine, settings, mid, posts, transport=transport)
    recipients = {s.recipient for s in transport.outbox}
    assert report.skipped == 1 and report.sent == 9
    assert "reader3@example.com" not in recipients
    assert "latecomer@example.com" not in recipients
    assert {r.status for r in rows(engine, mid) if r.email == "reader3@example.com"} == {"skipped"}


def _scripted(replies: dict[str, SendResult]) -> MemoryTransport:
    return MemoryTransport(lambda rcpt: replies.get(rcpt))


def test_temporary_failure_retries_then_fails_after_max_attempts(setup: Any) -> None:
    settings, engine, posts = setup
    mid = plan_mailing(engine, settings, POST, "sample")
    bad = "reader1@example.com"
    transport = _scripted({bad: SendResult(bad, False, 451, "4.3.0 try later")})
    first = deliver_mailing(engine, settings, mid, posts, transport=transport)
    assert (first.sent, first.deferred) == (9, 1)
    row = next(r for r in rows(engine, mid) if r.email == bad)
    assert (row.status, row.attempts, row.last_code) == ("deferred", 1, 451)
    assert row.next_attempt_at is not None
    # Waiting lets the tiny backoff run out: two more attempts, then failed.
    final = deliver_mailing(engine, settings, mid, posts, transport=transport, wait=5)
    row = next(r for r in rows(engine, mid) if r.email == bad)
    assert (row.status, row.attempts) == ("failed", 3)
    assert final.failed == 1 and "451 4.3.0 try later" in final.errors[0]
    summary = mailing_summaries(engine)[0]
    assert summary.state == "done" and summary.last_error is not None
    assert summary.counts == {"sent": 9, "failed": 1}


def test_permanent_5_1_1_fails_and_marks_subscriber_bounced(setup: Any) -> None:
    settings, engine, posts = setup
    mid = plan_mailing(engine, settings, POST, "sample")
    bad = "reader2@example.com"
    refusal = SendResult(bad, False, 550, "5.1.1 no such user", permanent=True, bounced=True)
    report = deliver_mailing(engine, settings, mid, posts, transport=_scripted({bad: refusal}))
    assert (report.sent, report.failed) == (9, 1)
    who = subs.get_by_email(engine, bad)
    assert who is not None and who.status == "bounced"


def test_throttling_does_not_spend_attempts(setup: Any) -> None:
    settings, engine, posts = setup
    mid = plan_mailing(engine, settings, POST, "sample")
    calls = {"n": 0}

    def responder(rcpt: str) -> SendResult | None:
        calls["n"] += 1
        if calls["n"] <= 3:
            return SendResult(rcpt, False, 454, "4.7.0 Throttling", throttled=True)
        return None

    report = deliver_mailing(engine, settings, mid, posts, transport=MemoryTransport(responder))
    assert report.sent == 10 and report.deferred == 0
    assert all(r.attempts == 1 for r in rows(engine, mid))


def test_resend_makes_a_new_generation(setup: Any) -> None:
    settings, engine, posts = setup
    first = plan_mailing(engine, settings, POST, "sample")
    deliver_mailing(engine, settings, first, posts, transport=MemoryTransport())
    second = plan_mailing(engine, settings, POST, "sample", resend=True)
    assert second != first
    with engine.connect() as conn:
        kinds = dict(conn.execute(select(mailings.c.id, mailings.c.kind)).all())
    assert kinds[second] == "resend"
    transport = MemoryTransport()
    assert deliver_mailing(engine, settings, second, posts, transport=transport).sent == 10


def test_deliver_due_picks_up_every_open_mailing(setup: Any) -> None:
    settings, engine, posts = setup
    plan_mailing(engine, settings, POST, "sample")
    plan_mailing(engine, settings, "measuring-reaction-times-in-python", "sample")
    transport = MemoryTransport()
    report = deliver_due(engine, settings, posts, transport=transport)
    assert report.sent == 20
    assert {s.state for s in mailing_summaries(engine)} == {"done"}


def test_hourly_cap_pauses_and_status_says_so(setup: Any) -> None:
    settings, engine, posts = setup
    settings = make_settings(settings.base_dir, **{"delivery.max_per_hour": 4})
    mid = plan_mailing(engine, settings, POST, "sample")
    report = deliver_mailing(engine, settings, mid, posts, transport=MemoryTransport())
    assert report.sent == 4 and report.paused
    summary = mailing_summaries(engine)[0]
    assert summary.state == "paused" and summary.paused_until is not None
    # Still paused: a second pass sends nothing.
    assert deliver_mailing(engine, settings, mid, posts, transport=MemoryTransport()).sent == 0


def test_expired_or_dead_lease_is_reclaimed(setup: Any) -> None:
    settings, engine, posts = setup
    mid = plan_mailing(engine, settings, POST, "sample")
    # A crashed process on this host (pid 999999 does not exist) left rows mid-send.
    with engine.begin() as conn:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.mailing_id == mid)
            .values(status="sending", lease_owner="ghost:999999:x:y")
        )
    import socket

    with engine.begin() as conn:
        conn.execute(update(deliveries).values(lease_owner=f"{socket.gethostname()}:999999:x:y"))
    report = deliver_mailing(engine, settings, mid, posts, transport=MemoryTransport())
    assert report.sent == 10


def test_fatal_transport_error_stops_and_releases(setup: Any) -> None:
    settings, engine, posts = setup
    mid = plan_mailing(engine, settings, POST, "sample")

    class Broken(MemoryTransport):
        def send(self, sender: str, recipient: str, message: bytes) -> SendResult:
            raise TransportError("TLS refused")

    with pytest.raises(TransportError, match="TLS refused"):
        deliver_mailing(engine, settings, mid, posts, transport=Broken())
    ledger = rows(engine, mid)
    assert {r.status for r in ledger} == {"queued"}
    assert all(r.lease_owner is None for r in ledger)


def test_stop_event_leaves_the_rest_queued(setup: Any) -> None:
    settings, engine, posts = setup
    mid = plan_mailing(engine, settings, POST, "sample")
    stop = threading.Event()

    def responder(rcpt: str) -> SendResult | None:
        stop.set()
        return None

    report = deliver_mailing(
        engine, settings, mid, posts, transport=MemoryTransport(responder), stop=stop
    )
    assert 1 <= report.sent < 10
    statuses = [r.status for r in rows(engine, mid)]
    assert statuses.count("sent") == report.sent
    assert set(statuses) == {"sent", "queued"}


def test_send_test_records_nothing_and_prefixes_subject(setup: Any) -> None:
    settings, engine, posts = setup
    transport = MemoryTransport()
    report = send_test(
        settings, posts.find(POST), "sample", ("me@example.org",), transport=transport
    )
    assert report.sent == 1
    assert b"Subject: [TEST] " in transport.outbox[0].message
    assert mailing_summaries(engine) == []


def test_paused_mailing_resumes_when_the_window_has_passed(setup: Any) -> None:
    settings, engine, posts = setup
    settings = make_settings(settings.base_dir, **{"delivery.max_per_hour": 4})
    mid = plan_mailing(engine, settings, POST, "sample")
    deliver_mailing(engine, settings, mid, posts, transport=MemoryTransport())
    # An hour later: the four sends leave the window and the pause is over.
    earlier = datetime.now(UTC) - timedelta(hours=2)
    with engine.begin() as conn:
        conn.execute(
            update(deliveries).where(deliveries.c.sent_at.is_not(None)).values(sent_at=earlier)
        )
        conn.execute(update(mailings).values(paused_until=earlier))
    report = deliver_due(engine, settings, posts, transport=MemoryTransport())
    assert report.sent == 4 and report.paused
    with engine.begin() as conn:
        conn.execute(
            update(deliveries).where(deliveries.c.sent_at.is_not(None)).values(sent_at=earlier)
        )
        conn.execute(update(mailings).values(paused_until=earlier))
    final = deliver_due(engine, settings, posts, transport=MemoryTransport())
    assert final.sent == 2 and not final.paused
    assert mailing_summaries(engine)[0].state == "done"


def test_live_lease_of_another_process_is_respected_until_it_expires(setup: Any) -> None:
    settings, engine, posts = setup
    mid = plan_mailing(engine, settings, POST, "sample")
    soon = datetime.now(UTC) + timedelta(minutes=5)
    with engine.begin() as conn:
        first_three = select(deliveries.c.id).order_by(deliveries.c.id).limit(3).scalar_subquery()
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id.in_(first_three))
            .values(status="sending", lease_owner="other-host:1:a:b", lease_expires_at=soon)
        )
    # Alive: on PostgreSQL that is its advisory lock, held here (a no-op on SQLite).
    with OwnerLock(engine, "other-host:1:a:b"):
        report = deliver_mailing(engine, settings, mid, posts, transport=MemoryTransport())
    assert report.sent == 7
    assert mailing_summaries(engine)[0].state == "sending"
    past = datetime.now(UTC) - timedelta(seconds=1)
    with engine.begin() as conn:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.lease_owner.is_not(None))
            .values(lease_expires_at=past)
        )
    assert deliver_mailing(engine, settings, mid, posts, transport=MemoryTransport()).sent == 3


def test_a_mailing_whose_post_vanished_does_not_stop_the_others(setup: Any) -> None:
    settings, engine, posts = setup
    gone = plan_mailing(engine, settings, "a-post-that-was-deleted", "sample")
    plan_mailing(engine, settings, POST, "sample")
    report = deliver_due(engine, settings, posts, transport=MemoryTransport())
    assert report.sent == 10
    assert report.errors and report.errors[0].startswith(f"mailing {gone}: ")
    by_id = {s.mailing_id: s for s in mailing_summaries(engine)}
    assert by_id[gone].state == "sending"
    assert "a-post-that-was-deleted" in (by_id[gone].last_error or "")


def test_a_bug_in_one_send_stops_the_pass_cleanly_and_nobody_is_lost(setup: Any) -> None:
    # Regression: a non-NewsletterError in a worker used to kill the thread and
    # leave the feeder blocked for ever on a full queue.
    settings, engine, posts = setup
    for i in range(10, 600):
        subs.add_subscriber(engine, f"reader{i}@example.com", "sample")
    mid = plan_mailing(engine, settings, POST, "sample")

    def buggy(recipient: str) -> SendResult:
        raise KeyError("a bug")

    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            deliver_mailing(engine, settings, mid, posts, transport=MemoryTransport(buggy))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "the pass hung after a worker's unexpected error"
    assert len(outcome) == 1 and isinstance(outcome[0], DeliveryError)
    assert "internal error while sending: KeyError: 'a bug'" in str(outcome[0])
    # Nothing was recorded as sent, and a later pass reaches all 600.
    good = MemoryTransport()
    report = deliver_mailing(engine, settings, mid, posts, transport=good)
    assert report.sent == 600 and len({s.recipient for s in good.outbox}) == 600


def test_a_rendered_post_is_sent_without_rendering_it_again(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The render `newsletter render` or the preview made is what the mailing sends."""
    from newsletter.email import render, rendercache

    settings, engine, posts = setup
    previewed = rendercache.cached_render([posts.find(POST)], settings, settings.get_list("sample"))

    def no_render(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("rendered again")

    monkeypatch.setattr(render, "render_email", no_render)
    mid = plan_mailing(engine, settings, POST, "sample")
    transport = MemoryTransport()
    report = deliver_mailing(engine, settings, mid, posts, transport=transport)
    assert report.sent == 10 and len(transport.outbox) == 10
    assert all(previewed.subject in m.message.decode() for m in transport.outbox)
