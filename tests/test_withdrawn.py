"""A post pulled while its automatic mailing is under way (invariant 4).

The daemon starts a mailing that cannot finish in one pass (the pass is
stopped after the first recipient, as a shutdown or a cap would leave it);
the writer then unpublishes, drafts, deletes or re-dates the post, and the
next pass must not send it to the rest.  On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select, text
from test_daemon_support import (
    MEMBERS,
    Site,
    add_members,
    engine_of,
    first_recipient_only,
    make_site,
)

from newsletter.cli import main
from newsletter.config import Settings
from newsletter.daemon import passes
from newsletter.delivery.transports.memory import MemoryTransport
from newsletter.store.schema import SCHEMA_VERSION, deliveries, mailings, schema_version

pytestmark = pytest.mark.usefixtures("database_env")

LAST_YEAR = datetime.now(UTC).replace(microsecond=0) - timedelta(days=300)
POST = "2025-01-02-pulled.md"


@pytest.fixture
def ready(tmp_path: Path) -> tuple[Site, Settings, Engine]:
    site = make_site(tmp_path)
    settings = site.settings()
    engine = engine_of(settings)
    add_members(engine, "news", settings=settings)
    site.write_post(POST, "Pulled", LAST_YEAR)
    # Another post (before `since`, never sent): deleting the pulled one
    # leaves a folder with posts, not an empty one (no verdict, see
    # test_mailing_lifecycle.test_an_empty_posts_folder_withdraws_nothing).
    site.write_post("2023-05-01-older.md", "Older", datetime(2023, 5, 1, tzinfo=UTC))
    return site, settings, engine


def later_pass(
    settings: Settings, engine: Engine, now: datetime | None = None
) -> tuple[passes.PassReport, MemoryTransport]:
    transport = MemoryTransport()
    return passes.run_pass(settings, engine, now=now, transport=transport), transport


def mailing_state(engine: Engine) -> tuple[str, str | None]:
    with engine.connect() as conn:
        row = conn.execute(select(mailings.c.state, mailings.c.last_error)).one()
    return row[0], row[1]


def unpublish(site: Site) -> None:
    site.write_post(POST, "Pulled", LAST_YEAR, extra="published: false\n")


def make_draft(site: Site) -> None:
    site.write_post(POST, "Pulled", LAST_YEAR, extra="draft: true\n")


def delete(site: Site) -> None:
    (site.posts / POST).unlink()


def opt_out(site: Site) -> None:
    site.write_post(POST, "Pulled", LAST_YEAR, extra="newsletter: false\n")


WITHDRAWALS: dict[str, Callable[[Site], None]] = {
    "unpublished": unpublish,
    "draft": make_draft,
    "deleted": delete,
    "opted-out": opt_out,
}


@pytest.mark.parametrize("how", sorted(WITHDRAWALS))
def test_a_pulled_post_is_not_sent_to_the_rest(
    ready: tuple[Site, Settings, Engine], how: str
) -> None:
    site, settings, engine = ready
    first_recipient_only(settings, engine)
    WITHDRAWALS[how](site)
    report, transport = later_pass(settings, engine)
    assert transport.outbox == []
    assert report.problems == ()
    state, note = mailing_state(engine)
    assert state == "withdrawn"
    assert note is not None and "withdrawn" in note


def test_a_post_redated_into_the_future_waits_for_its_new_date(
    ready: tuple[Site, Settings, Engine],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "withdrawn-test-secret")
    site, settings, engine = ready
    first = first_recipient_only(settings, engine).outbox[0].recipient
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    site.write_post(POST, "Pulled", later)
    with caplog.at_level(logging.INFO, logger="newsletter.daemon"):
        _report, transport = later_pass(settings, engine)
        later_pass(settings, engine)  # the same date: nothing new to say
    postponed = [r.getMessage() for r in caplog.records if "postponed" in r.getMessage()]
    assert postponed == [
        f"mailing 1 postponed: pulled -> news: its post is now dated {later.isoformat()}; "
        f"the rest get it at {later.isoformat()}; sent 1, not sent 2"
    ]
    assert transport.outbox == []
    with engine.connect() as conn:
        state, until = conn.execute(select(mailings.c.state, mailings.c.paused_until)).one()
    assert state == "postponed" and until == later
    code, out = run_cli(site, "status")
    assert code == 0
    assert f"upcoming:\n  {later.isoformat()}  pulled → news\n" in out
    assert passes.next_work_time(engine, datetime.now(UTC)) == later
    # Its date comes: the rest get it, the first recipient not again.
    _report, transport = later_pass(settings, engine, now=later + timedelta(seconds=1))
    assert sorted(s.recipient for s in transport.outbox) == sorted(set(MEMBERS) - {first})
    with engine.connect() as conn:
        assert conn.scalar(select(mailings.c.state)) == "done"
        sent = conn.execute(select(deliveries.c.email).where(deliveries.c.status == "sent"))
        assert sorted(sent.scalars()) == sorted(MEMBERS)


def test_a_withdrawn_mailing_goes_to_the_rest_once_the_post_is_published_again(
    ready: tuple[Site, Settings, Engine], caplog: pytest.LogCaptureFixture
) -> None:
    site, settings, engine = ready
    first = first_recipient_only(settings, engine).outbox[0].recipient
    unpublish(site)
    with caplog.at_level(logging.INFO, logger="newsletter.daemon"):
        later_pass(settings, engine)
        later_pass(settings, engine)  # still pulled: nothing new to say
    withdrawn = [r for r in caplog.records if getattr(r, "event", "") == "mailing-withdrawn"]
    assert len(withdrawn) == 1
    assert withdrawn[0].getMessage() == (
        "mailing 1 withdrawn: pulled -> news: its post is unpublished (published: false, "
        "draft: true or a _drafts folder); the rest get it if it is published again; "
        "sent 1, not sent 2"
    )
    caplog.clear()
    site.write_post(POST, "Pulled", LAST_YEAR)  # published again, same identity
    with caplog.at_level(logging.INFO, logger="newsletter.daemon"):
        _report, transport = later_pass(settings, engine)
    assert sorted(s.recipient for s in transport.outbox) == sorted(set(MEMBERS) - {first})
    assert "mailing 1 resumed: pulled -> news: its post may go again; sent 1, not sent 2" in (
        caplog.text
    )
    assert mailing_state(engine) == ("done", None)
    _report, transport = later_pass(settings, engine)
    assert transport.outbox == []


def test_a_broken_post_file_is_reported_not_withdrawn(
    ready: tuple[Site, Settings, Engine],
) -> None:
    """An editor's half-saved file must not stop a mailing for good: no verdict."""
    site, settings, engine = ready
    first_recipient_only(settings, engine)
    (site.posts / POST).write_text("---\ntitle: [unclosed\n---\nx\n")
    report, transport = later_pass(settings, engine)
    assert transport.outbox == []
    assert any(POST in p for p in report.problems)
    assert mailing_state(engine)[0] == "sending"


def test_a_mailing_the_owner_sent_is_not_withdrawn(
    ready: tuple[Site, Settings, Engine],
) -> None:
    from newsletter.delivery.mailings import plan_mailing

    site, settings, engine = ready
    # `newsletter send` plans it (EXPLICIT); the daemon goes on with it.
    plan_mailing(engine, settings, "pulled", "news", subject="Pulled")
    stop = threading.Event()
    transport = MemoryTransport()

    def progress(_mailing: int, done: int, _total: int) -> None:
        stop.set()

    passes.run_pass(settings, engine, transport=transport, stop=stop, progress=progress)
    assert len(transport.outbox) == 1
    site.write_post(POST, "Pulled", datetime.now(UTC) + timedelta(days=3))
    _report, more = later_pass(settings, engine)
    assert len(more.outbox) == 2
    assert mailing_state(engine) == ("done", None)


def run_cli(site: Site, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", str(site.config), *args])
    return result.exit_code, result.stdout + result.stderr


def test_status_shows_a_withdrawn_mailing_and_why(
    ready: tuple[Site, Settings, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "withdrawn-test-secret")
    site, settings, engine = ready
    first_recipient_only(settings, engine)
    delete(site)
    later_pass(settings, engine)
    code, out = run_cli(site, "status")
    assert code == 0
    assert (
        "#1 pulled → news: withdrawn (its post was pulled); 3 recipient(s): sent 1, queued 2" in out
    )
    assert (
        "    why: withdrawn: its post is gone (deleted, or its id changed); "
        "the rest get it if it comes back" in out
    )
    code, out = run_cli(site, "status", "--json")
    mailing = json.loads(out)["mailings"][0]
    assert mailing["state"] == "withdrawn" and mailing["planned_by"] == "daemon"
    assert mailing["counts"] == {"sent": 1, "queued": 2}
    assert mailing["last_error"].startswith("withdrawn: its post is gone")


def test_send_takes_a_postponed_mailing_over_and_sends_the_rest_now(
    ready: tuple[Site, Settings, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "withdrawn-test-secret")
    site, settings, engine = ready
    first_recipient_only(settings, engine)
    site.write_post(POST, "Pulled", datetime.now(UTC).replace(microsecond=0) + timedelta(days=3))
    later_pass(settings, engine)
    assert mailing_state(engine)[0] == "postponed"
    code, out = run_cli(site, "send", "pulled", "--list", "news")
    assert code == 0, out
    assert out.startswith("sent 2, deferred 0, failed 0, skipped 0")
    code, out = run_cli(site, "status", "--json")
    mailing = json.loads(out)["mailings"][0]
    assert mailing["state"] == "done" and mailing["planned_by"] == "send"
    # The owner's now: the daemon leaves it alone whatever the post's date.
    later_pass(settings, engine)
    assert mailing_state(engine)[0] == "done"


# --------------------------------------------------------------------------- while sending

READERS = tuple(f"reader{i:02d}@example.org" for i in range(40))
# 10 messages a second: the 40 take 4 s; the keeper looks every 0.1 s.
PACED = {"delivery.rate_per_second": 10, "delivery.lease_seconds": 0.3}


@pytest.fixture
def paced(tmp_path: Path) -> tuple[Site, Settings, Engine]:
    site = make_site(tmp_path)
    settings = site.settings(PACED)
    engine = engine_of(settings)
    add_members(engine, "news", READERS, settings=settings)
    site.write_post(POST, "Pulled", LAST_YEAR)
    return site, settings, engine


def sent_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        rows = conn.execute(select(deliveries.c.id).where(deliveries.c.status == "sent"))
        return len(rows.all())


def test_a_post_pulled_during_a_paced_pass_stops_that_pass(
    paced: tuple[Site, Settings, Engine],
) -> None:
    site, settings, engine = paced

    def pull_after_three(recipient: str) -> None:
        if recipient == READERS[2]:
            unpublish(site)

    transport = MemoryTransport(pull_after_three)  # type: ignore[arg-type]
    report = passes.run_pass(settings, engine, transport=transport)
    assert 3 <= len(transport.outbox) <= 30  # stopped within a few messages, not 40
    assert report.delivery.sent == len(transport.outbox) == sent_rows(engine)
    assert mailing_state(engine)[0] == "withdrawn"
    _report, more = later_pass(settings, engine)
    assert more.outbox == []


def test_a_halt_made_by_another_process_stops_a_sender_that_did_not_see_it(
    paced: tuple[Site, Settings, Engine], database_url: str
) -> None:
    """Two daemons on one database: one still reads the post as published
    (its copy of the site lags), the other sees it pulled.  The halt is
    decided in the database, so the first stops too (invariant 7)."""
    from newsletter.delivery.mailings import deliver_mailing
    from newsletter.posts.collection import load_posts
    from newsletter.store import open_url

    site, settings, engine = paced
    stop = threading.Event()
    passes.run_pass(
        settings, engine, transport=MemoryTransport(), stop=stop, progress=lambda *_: stop.set()
    )
    stale_posts = load_posts(settings, bodies="lazy")
    lagging = open_url(database_url)
    # The lagging sender's 4th message waits until the other process has
    # recorded the halt: not a race between the rest of its mailing (36
    # messages, 3.6 s) and that process's pass, which a loaded machine lost.
    sending, halted = threading.Event(), threading.Event()

    def hold_the_fourth(_recipient: str) -> None:
        if len(behind.outbox) == 3:
            sending.set()
            halted.wait(60)  # bounds a hang

    behind = MemoryTransport(hold_the_fourth)
    sender = threading.Thread(
        target=deliver_mailing,
        args=(lagging, settings, 1, stale_posts),
        kwargs={"transport": behind},
    )
    sender.start()
    try:
        assert sending.wait(60)
        unpublish(site)
        _report, mine = later_pass(settings, engine)
    finally:
        halted.set()
        sender.join(timeout=60)
    assert not sender.is_alive()
    assert mine.outbox == []
    assert 3 <= len(behind.outbox) <= 30
    assert sent_rows(engine) == 1 + len(behind.outbox)
    assert mailing_state(engine)[0] == "withdrawn"
    lagging.dispose()


# --------------------------------------------------------------------------- schema 8


def test_a_version_7_database_learns_who_planned_its_mailings(
    ready: tuple[Site, Settings, Engine],
) -> None:
    """Schema 8 adds mailings.origin to a store made before it: a resend was
    the owner's; any other mailing is taken as the daemon's, so its post,
    pulled after the upgrade, stops it."""
    from newsletter.delivery.mailings import plan_mailing

    site, settings, engine = ready
    first_recipient_only(settings, engine)  # mailing 1, the daemon's
    plan_mailing(engine, settings, "pulled", "news", resend=True)  # mailing 2, the owner's
    with engine.begin() as conn:  # make it look like version 7
        # A resend now supersedes mailing 1 (cancelled); before, it went on.
        conn.execute(mailings.update().where(mailings.c.id == 1).values(state="sending"))
        conn.execute(text("ALTER TABLE mailings DROP COLUMN origin"))
        conn.execute(text("DELETE FROM schema_version WHERE version >= 8"))
    engine.dispose()
    upgraded = engine_of(settings)
    with upgraded.connect() as conn:
        origins = conn.execute(select(mailings.c.id, mailings.c.origin).order_by(mailings.c.id))
        assert origins.all() == [(1, "daemon"), (2, "send")]
        versions = conn.execute(select(schema_version.c.version)).scalars().all()
    assert max(versions) == SCHEMA_VERSION
    unpublish(site)
    _report, transport = later_pass(settings, upgraded)
    assert sorted(s.recipient for s in transport.outbox) == sorted(MEMBERS)  # the resend
    with upgraded.connect() as conn:
        states = conn.execute(select(mailings.c.id, mailings.c.state).order_by(mailings.c.id))
        assert states.all() == [(1, "withdrawn"), (2, "done")]
