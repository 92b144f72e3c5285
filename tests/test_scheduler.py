"""One daemon pass (`passes.run_pass`) and the daemon lock, against real posts on
disk, a real SQLite store and the in-memory transport; the clock is injected."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
import time_machine
from bigpng import write_png
from sqlalchemy import Engine, delete, select, update
from test_daemon_support import MEMBERS, Site, add_members, engine_of, make_site

from newsletter.config import Settings
from newsletter.daemon import passes, planning, scheduler
from newsletter.delivery.transports import SendResult
from newsletter.delivery.transports.memory import MemoryTransport
from newsletter.store import one_at_a_time
from newsletter.store.schema import mailings, state

# On SQLite and on PostgreSQL (see conftest.database_url).
pytestmark = pytest.mark.usefixtures("database_env")

LAST_YEAR = datetime.now(UTC).replace(microsecond=0) - timedelta(days=300)


def text_of(raw: bytes) -> str:
    msg = message_from_bytes(raw, policy=policy.default)
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def subject_of(raw: bytes) -> str:
    return str(message_from_bytes(raw, policy=policy.default)["Subject"])


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path)


@pytest.fixture
def ready(site: Site) -> tuple[Site, Settings, Engine]:
    settings = site.settings()
    engine = engine_of(settings)
    add_members(engine, "news", settings=settings)
    return site, settings, engine


def one_pass(
    settings: Settings, engine: Engine, now: datetime | None = None
) -> tuple[passes.PassReport, MemoryTransport]:
    transport = MemoryTransport()
    report = passes.run_pass(settings, engine, now=now, transport=transport)
    return report, transport


# --------------------------------------------------------------------------- posts


def test_a_due_post_goes_to_every_member_once(ready: tuple[Site, Settings, Engine]) -> None:
    site, settings, engine = ready
    site.write_post("2025-01-02-due.md", "Due Post", LAST_YEAR)
    site.write_post("2099-01-01-later.md", "Later Post", "2099-01-01 09:00:00 +0000")
    report, transport = one_pass(settings, engine)
    assert sorted(s.recipient for s in transport.outbox) == sorted(MEMBERS)
    assert {subject_of(s.message) for s in transport.outbox} == {"Due Post"}
    assert report.delivery.sent == 3 and len(report.planned) == 1
    assert [p.post_id for p in report.future] == ["later"]
    again, transport = one_pass(settings, engine)
    assert transport.outbox == [] and again.planned == () and again.delivery.sent == 0


def test_editing_retitling_or_redating_a_sent_post_never_resends(
    ready: tuple[Site, Settings, Engine],
) -> None:
    site, settings, engine = ready
    path = site.write_post("2025-01-02-hello.md", "Hello", LAST_YEAR)
    one_pass(settings, engine)
    site.write_post(path.name, "Hello, Retitled", LAST_YEAR + timedelta(days=30), body="New.\n")
    report, transport = one_pass(settings, engine)
    assert transport.outbox == [] and report.planned == ()


def test_a_renamed_file_with_a_front_matter_id_is_the_same_post(
    ready: tuple[Site, Settings, Engine],
) -> None:
    site, settings, engine = ready
    first = site.write_post("2025-01-02-draft-name.md", "Named", LAST_YEAR, extra="id: named\n")
    one_pass(settings, engine)
    first.unlink()
    site.write_post("2025-01-03-final-name.md", "Named", LAST_YEAR, extra="id: named\n")
    _report, transport = one_pass(settings, engine)
    assert transport.outbox == []


def test_since_holds_old_posts_back_and_says_how_many(
    ready: tuple[Site, Settings, Engine], caplog: pytest.LogCaptureFixture
) -> None:
    site, settings, engine = ready
    for day in (1, 2, 3):
        site.write_post(f"2023-05-0{day}-old-{day}.md", f"Old {day}", f"2023-05-0{day} 10:00:00")
    site.write_post("2025-01-02-new.md", "New", LAST_YEAR)
    report, transport = one_pass(settings, engine)
    assert {subject_of(s.message) for s in transport.outbox} == {"New"}
    assert len(report.before_since) == 3
    with caplog.at_level(logging.INFO, logger="newsletter.daemon"):
        passes.log_skipped(report)
    assert "3 posts before since=2024-01-01T00:00:00+00:00 were skipped" in caplog.text


def test_tags_and_front_matter_lists_route_posts(tmp_path: Path) -> None:
    lists = '[lists.news]\ntitle = "News"\n[lists.python]\ntitle = "Python"\ntags = ["python"]\n'
    site = make_site(tmp_path, lists=lists)
    settings = site.settings()
    engine = engine_of(settings)
    add_members(engine, "news", ["all@example.com"], settings=settings)
    add_members(engine, "python", ["py@example.com"])
    site.write_post("2025-01-01-snakes.md", "Snakes", LAST_YEAR, tags=["Python"])
    site.write_post("2025-01-02-sleep.md", "Sleep", LAST_YEAR, tags=["Sleep"])
    site.write_post("2025-01-03-only-py.md", "Only Py", LAST_YEAR, extra="lists: [python]\n")
    site.write_post("2025-01-04-quiet.md", "Quiet", LAST_YEAR, extra="newsletter: false\n")
    _report, transport = one_pass(settings, engine)
    got = sorted((s.recipient, subject_of(s.message)) for s in transport.outbox)
    assert got == [
        ("all@example.com", "Sleep"),
        ("all@example.com", "Snakes"),
        ("py@example.com", "Only Py"),
        ("py@example.com", "Snakes"),
    ]


# --------------------------------------------------------------------------- digests

DIGEST_LISTS = '[lists.weekly]\ntitle = "Weekly"\nmode = "digest"\ncron = "0 8 * * MON"\n'
MONDAY_8 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def test_a_digest_carries_every_new_post_once(tmp_path: Path) -> None:
    site = make_site(tmp_path, lists=DIGEST_LISTS)
    settings = site.settings()
    engine = engine_of(settings)
    add_members(engine, "weekly", settings=settings)
    planning.write_state_time(
        engine, planning.digest_anchor_key("weekly"), MONDAY_8 - timedelta(days=7)
    )
    titles = ["First Light", "Second Wind", "Third Time"]
    for i, title in enumerate(titles):
        site.write_post(f"2026-02-2{i + 3}-p{i}.md", title, MONDAY_8 - timedelta(days=5 - i))
    site.write_post("2026-03-05-next-week.md", "Next Week", MONDAY_8 + timedelta(days=3))

    early, transport = one_pass(settings, engine, now=MONDAY_8 - timedelta(minutes=1))
    assert early.digests == () and transport.outbox == []

    report, transport = one_pass(settings, engine, now=MONDAY_8 + timedelta(seconds=2))
    assert len(report.digests) == 1
    assert sorted(s.recipient for s in transport.outbox) == sorted(MEMBERS)
    body = text_of(transport.outbox[0].message)
    positions = [body.index(t) for t in titles]
    assert positions == sorted(positions)  # oldest first
    assert "Next Week" not in body
    with engine.connect() as conn:
        row = conn.execute(select(mailings.c.post_id, mailings.c.kind, mailings.c.post_ids)).one()
    assert row.post_id == "digest:weekly:2026-03-02T08:00:00+00:00"
    assert row.kind == "digest" and tuple(row.post_ids) == ("p0", "p1", "p2")

    # The same slot again (a restart, a second timer): nothing more.
    again, transport = one_pass(settings, engine, now=MONDAY_8 + timedelta(minutes=5))
    assert again.digests == () and transport.outbox == []
    # Next Monday: only the post that became due since.
    week2, transport = one_pass(settings, engine, now=MONDAY_8 + timedelta(days=7, seconds=1))
    assert len(week2.digests) == 1 and len(transport.outbox) == 3
    body = text_of(transport.outbox[0].message)
    assert "Next Week" in body and "First Light" not in body


def test_a_digest_with_nothing_new_sends_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = make_site(tmp_path, lists=DIGEST_LISTS)
    settings = site.settings()
    engine = engine_of(settings)
    add_members(engine, "weekly", settings=settings)
    planning.write_state_time(
        engine, planning.digest_anchor_key("weekly"), MONDAY_8 - timedelta(days=1)
    )
    with caplog.at_level(logging.INFO, logger="newsletter.daemon"):
        report, transport = one_pass(settings, engine, now=MONDAY_8 + timedelta(seconds=1))
    assert report.digests == () and transport.outbox == []
    assert "nothing new, nothing sent" in caplog.text
    anchor = planning.read_state_time(engine, planning.digest_anchor_key("weekly"))
    assert anchor == MONDAY_8


def test_a_step_is_done_by_one_daemon_at_a_time_on_postgresql(site: Site) -> None:
    engine = engine_of(site.settings())
    shared = engine.dialect.name == "postgresql"
    with (
        one_at_a_time(engine, "bounces") as first,
        one_at_a_time(engine, "bounces") as second,
        one_at_a_time(engine, "other") as other,
    ):
        assert first and other
        assert second is not shared  # SQLite: one daemon, so always its turn
    with one_at_a_time(engine, "bounces") as again:  # released at the end of the block
        assert again


def test_a_digest_another_daemon_is_planning_is_left_to_it(tmp_path: Path) -> None:
    site = make_site(tmp_path, lists=DIGEST_LISTS)
    settings = site.settings()
    engine = engine_of(settings)
    add_members(engine, "weekly", settings=settings)
    key = planning.digest_anchor_key("weekly")
    planning.write_state_time(engine, key, MONDAY_8 - timedelta(days=7))
    site.write_post("2026-02-25-p.md", "Fresh", MONDAY_8 - timedelta(days=5))
    if engine.dialect.name != "postgresql":
        pytest.skip("one daemon per SQLite database: nobody else plans its digests")
    with one_at_a_time(engine, "digest:weekly") as theirs:  # another daemon, mid-step
        assert theirs
        report, transport = one_pass(settings, engine, now=MONDAY_8 + timedelta(seconds=2))
    assert report.digests == () and transport.outbox == []
    assert planning.read_state_time(engine, key) == MONDAY_8 - timedelta(days=7)  # untouched
    report, transport = one_pass(settings, engine, now=MONDAY_8 + timedelta(seconds=3))
    assert len(report.digests) == 1 and len(transport.outbox) == 3
    assert planning.read_state_time(engine, key) == MONDAY_8


def test_a_new_digest_list_starts_at_its_next_slot(tmp_path: Path) -> None:
    site = make_site(tmp_path, lists=DIGEST_LISTS)
    settings = site.settings()
    engine = engine_of(settings)
    add_members(engine, "weekly", settings=settings)
    site.write_post("2026-02-25-p.md", "Old News", MONDAY_8 - timedelta(days=5))
    report, transport = one_pass(settings, engine, now=MONDAY_8 + timedelta(hours=1))
    assert report.digests == () and transport.outbox == []  # first sight: anchor = now


DAILY_BERLIN = (
    '[lists.daily]\ntitle = "Daily"\nmode = "digest"\ncron = "30 2 * * *"\n'
    'timezone = "Europe/Berlin"\n'
)


@pytest.mark.parametrize(
    ("night", "slot"),
    [
        # Autumn: 02:00-03:00 happens twice (CEST, then CET); 02:30 is one slot.
        (datetime(2026, 10, 24, 22, 0, tzinfo=UTC), datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
        # Spring: 02:00-03:00 does not exist; the slot moves on, never skipped.
        (datetime(2026, 3, 28, 22, 0, tzinfo=UTC), datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),
    ],
    ids=["autumn", "spring"],
)
def test_a_daily_digest_goes_once_on_a_night_the_clocks_change(
    tmp_path: Path, night: datetime, slot: datetime
) -> None:
    """A fixed-hour cron fires once a day however the wall clock moves (as
    cron(8) does): the repeated hour of autumn is no second slot."""
    site = make_site(tmp_path, lists=DAILY_BERLIN)
    settings = site.settings()
    engine = engine_of(settings)
    add_members(engine, "daily", settings=settings)
    planning.write_state_time(engine, planning.digest_anchor_key("daily"), night)
    site.write_post("p-evening.md", "Evening Post", night - timedelta(hours=2))
    # Another post between the two 02:30s of autumn: a second slot would mail it.
    site.write_post("p-night.md", "Night Post", slot + timedelta(minutes=20))
    planned: list[int] = []
    for minutes in range(0, 10 * 60, 10):  # a pass every 10 minutes, 22:00-08:00 UTC
        report, _ = one_pass(settings, engine, now=night + timedelta(minutes=minutes))
        planned.extend(report.digests)
    with engine.connect() as conn:
        ids = conn.execute(select(mailings.c.post_id).order_by(mailings.c.id)).scalars().all()
    assert ids == [planning.digest_post_id("daily", slot)]
    assert len(planned) == 1


# --------------------------------------------------------------------------- bad input


def test_a_bounce_reader_that_fails_unexpectedly_stops_no_mail(
    ready: tuple[Site, Settings, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault of the bounce reader that is no error of ours (imaplib's
    UnicodeEncodeError on a password with an umlaut) failed the whole pass,
    every pass: nothing was planned or sent.  It is one problem of the pass."""
    from newsletter.delivery import bouncebox

    site, settings, engine = ready

    def broken(*_args: object, **_kwargs: object) -> None:
        raise UnicodeEncodeError("ascii", "pässwort", 1, 2, "ordinal not in range(128)")

    monkeypatch.setattr(bouncebox, "process_bounces", broken)
    box = site.root / "box"
    for folder in ("new", "cur", "tmp"):
        (box / folder).mkdir(parents=True)
    bounces = dataclasses.replace(settings.bounces, address="b@example.com", maildir=box)
    settings = dataclasses.replace(settings, bounces=bounces)
    site.write_post("2025-01-02-due.md", "Due", LAST_YEAR)
    report, transport = one_pass(settings, engine)
    assert len(transport.outbox) == len(MEMBERS)
    assert any(
        p.startswith("error: bounces: unexpected UnicodeEncodeError") for p in report.problems
    )


def test_a_broken_post_is_reported_and_the_others_still_go(
    ready: tuple[Site, Settings, Engine],
) -> None:
    site, settings, engine = ready
    (site.posts / "2025-01-01-broken.md").write_text("---\ntitle: [unclosed\n---\nx\n")
    site.write_post("2025-01-02-fine.md", "Fine", LAST_YEAR)
    report, transport = one_pass(settings, engine)
    assert len(transport.outbox) == 3
    assert any("2025-01-01-broken.md" in p and "error" in p for p in report.problems)


def test_a_lead_image_too_big_for_pillow_stops_no_mailing(
    ready: tuple[Site, Settings, Engine],
) -> None:
    """A post whose lead image is a valid 20000×20000 PNG of the site (48 KB
    on disk): Pillow's DecompressionBombError killed the pass, so the later
    post's mailing never went, pass after pass.  The image is now of unknown
    size and all three posts go."""
    site, settings, engine = ready
    write_png(site.root / "images" / "panorama.png", 20000, 20000)
    site.write_post("2025-01-01-normal.md", "Normal", LAST_YEAR)
    site.write_post(
        "2025-01-02-panorama.md", "Panorama", LAST_YEAR + timedelta(days=1),
        extra="image: /images/panorama.png\n",
    )  # fmt: skip
    site.write_post("2025-01-03-later.md", "Later", LAST_YEAR + timedelta(days=2))
    report, transport = one_pass(settings, engine)
    assert report.problems == ()
    subjects = Counter(subject_of(s.message) for s in transport.outbox)
    assert subjects == {"Normal": 3, "Panorama": 3, "Later": 3}


def test_a_mailing_whose_render_fails_unexpectedly_costs_only_itself(
    ready: tuple[Site, Settings, Engine],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception from one mailing's render that is no NewsletterError (a
    library's own, a bug: Pillow's DecompressionBombError was one) went
    through the pass's loop, which caught only NewsletterError, TransportError
    and SQLAlchemyError: the pass died and the later posts' mailings never
    went, pass after pass.  Now it is that mailing's one-line problem and
    last error, its traceback is logged once (not every scan), and the rest go.
    The fault is injected into the image size reader, standing for any bug."""
    from newsletter.delivery.mailings import mailing_summaries
    from newsletter.email import images

    site, settings, engine = ready
    measure = images.image_size

    def faulty(path: Path) -> tuple[int, int] | None:
        if path.name == "panorama.png":
            raise RuntimeError("a bug nobody foresaw")
        return measure(path)

    monkeypatch.setattr(images, "image_size", faulty)
    write_png(site.root / "images" / "panorama.png", 40, 20)
    site.write_post("2025-01-01-normal.md", "Normal", LAST_YEAR)
    site.write_post(
        "2025-01-02-panorama.md", "Panorama", LAST_YEAR + timedelta(days=1),
        extra="image: /images/panorama.png\n",
    )  # fmt: skip
    site.write_post("2025-01-03-later.md", "Later", LAST_YEAR + timedelta(days=2))
    transport = MemoryTransport()
    daemon = scheduler.Daemon(settings, engine, watch=False, transport_factory=lambda _s: transport)
    with caplog.at_level(logging.DEBUG, logger="newsletter.daemon"):
        first = daemon.run_one("scan")
        again = daemon.run_one("scan")  # the next scan meets the same fault
    assert Counter(subject_of(s.message) for s in transport.outbox) == {"Normal": 3, "Later": 3}
    line = "error: mailing 2: unexpected RuntimeError: a bug nobody foresaw"
    assert first.problems == again.problems == (line,)
    summary = {m.post_id: m for m in mailing_summaries(engine)}["panorama"]
    assert summary.last_error == "unexpected RuntimeError: a bug nobody foresaw"
    assert summary.counts == {"queued": 3}  # nobody failed for it: retried next pass
    tracebacks = [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
    assert len(tracebacks) == 1
    assert "in faulty" in caplog.text and "mailing 2" in tracebacks[0].getMessage()


def test_a_mailing_whose_post_vanished_is_reported_and_others_deliver(
    ready: tuple[Site, Settings, Engine],
) -> None:
    from newsletter.delivery.mailings import plan_mailing

    site, settings, engine = ready
    plan_mailing(engine, settings, "ghost", "news")  # planned, then its file is gone
    site.write_post("2025-01-02-real.md", "Real", LAST_YEAR)
    report, transport = one_pass(settings, engine)
    assert {subject_of(s.message) for s in transport.outbox} == {"Real"}
    assert any(p.startswith("error: mailing 1:") and "ghost" in p for p in report.problems)


def test_a_missing_posts_folder_is_a_problem_not_a_crash(
    ready: tuple[Site, Settings, Engine],
) -> None:
    site, settings, engine = ready
    site.posts.rmdir()
    report, _transport = one_pass(settings, engine)
    assert any("posts folder not found" in p for p in report.problems)


def test_deferred_recipients_set_the_next_wake_up(ready: tuple[Site, Settings, Engine]) -> None:
    site, settings, engine = ready
    site.write_post("2025-01-02-due.md", "Due", LAST_YEAR)

    def refuse(recipient: str) -> SendResult | None:
        if recipient == "grace@example.com":
            return SendResult(recipient, False, 451, "4.3.0 Try later")
        return None

    before = datetime.now(UTC)
    report = passes.run_pass(settings, engine, transport=MemoryTransport(refuse))
    after = datetime.now(UTC)  # the deferral is somewhere in the pass, however long it took
    assert report.delivery.sent == 2 and report.delivery.deferred == 1
    wake = passes.next_work_time(engine, before)
    assert wake is not None
    assert before < wake < after + timedelta(seconds=5)  # backoff_base = 0.3 s


def test_a_paused_mailing_sets_the_next_wake_up(ready: tuple[Site, Settings, Engine]) -> None:
    from newsletter.delivery.mailings import plan_mailing

    _site, settings, engine = ready
    mailing_id = plan_mailing(engine, settings, "x", "news")
    until = datetime.now(UTC) + timedelta(minutes=30)
    with engine.begin() as conn:
        conn.execute(
            update(mailings)
            .where(mailings.c.id == mailing_id)
            .values(state="paused", paused_until=until)
        )
    assert passes.next_work_time(engine, datetime.now(UTC)) == until


def test_a_pass_as_of_a_later_time_resumes_a_mailing_paused_until_before_it(
    ready: tuple[Site, Settings, Engine],
) -> None:
    """`run_pass(now=...)` moves the whole pass: a pause (a sending cap's
    `paused until`) is over when the pass's time is past it, not the wall
    clock's; and not over before, whatever the wall clock says."""
    from newsletter.delivery.mailings import plan_mailing

    site, settings, engine = ready
    site.write_post("2025-01-02-x.md", "X", LAST_YEAR)
    mailing_id = plan_mailing(engine, settings, "x", "news")
    until = datetime.now(UTC) + timedelta(hours=2)

    def pause(until: datetime) -> None:
        with engine.begin() as conn:
            conn.execute(
                update(mailings)
                .where(mailings.c.id == mailing_id)
                .values(state="paused", paused_until=until)
            )

    pause(until)
    report, transport = one_pass(settings, engine, now=until - timedelta(minutes=1))
    assert (report.delivery.sent, transport.outbox) == (0, [])  # not yet, as of then
    report, transport = one_pass(settings, engine, now=until + timedelta(minutes=1))
    assert report.delivery.sent == len(MEMBERS) == len(transport.outbox)  # over, as of then

    # The reverse: the wall clock is past the pause, the pass's time is not.
    site.write_post("2025-01-03-y.md", "Y", LAST_YEAR)
    mailing_id = plan_mailing(engine, settings, "y", "news")
    until = datetime.now(UTC) - timedelta(minutes=5)
    pause(until)
    report, transport = one_pass(settings, engine, now=until - timedelta(hours=1))
    assert (report.delivery.sent, transport.outbox) == (0, [])
    report, transport = one_pass(settings, engine, now=until + timedelta(seconds=1))
    assert report.delivery.sent == len(MEMBERS) == len(transport.outbox)


# --------------------------------------------------------------------------- the lock


def test_a_second_daemon_is_refused_with_a_clear_message(site: Site) -> None:
    engine = engine_of(site.settings())
    first = scheduler.DaemonLock(engine, db="sqlite:///news.db")
    first.acquire()
    second = scheduler.DaemonLock(engine, db="sqlite:///news.db")
    with pytest.raises(scheduler.DaemonBusyError) as info:
        second.acquire()
    message = str(info.value)
    assert message == (
        f"database.url: another newsletter daemon ({first.owner}, last heartbeat 0 s ago) "
        "is running on sqlite:///news.db; stop it first (a crashed one is taken over after 30 s)"
    )
    first.release()
    second.acquire()  # free again
    assert first.heartbeat() is False  # and the first knows it lost the lock
    assert second.heartbeat() is True


def put_lock(engine: Engine, owner: str, at: datetime, started: float | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(delete(state).where(state.c.key == scheduler.LOCK_KEY))
        conn.execute(
            state.insert().values(
                key=scheduler.LOCK_KEY,
                value=owner,
                updated_at=at,
                expires_at=at + timedelta(seconds=30),
                number=started,
            )
        )


def race_for_the_lock(locks: list[scheduler.DaemonLock]) -> list[str]:
    """Every lock's acquire at the same instant: "won", "refused" or the error."""
    import threading

    go = threading.Barrier(len(locks))
    outcomes: list[str] = []

    def start(lock: scheduler.DaemonLock) -> None:
        go.wait()
        try:
            lock.acquire()
            outcomes.append("won")
        except scheduler.DaemonBusyError as exc:
            assert "another newsletter daemon" in str(exc)
            outcomes.append("refused")
        except Exception as exc:  # the failure this test is about
            outcomes.append(repr(exc))

    threads = [threading.Thread(target=start, args=(lock,)) for lock in locks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_daemons_starting_at_the_same_instant_get_one_lock_and_refusals(site: Site) -> None:
    # Was a unique violation on PostgreSQL (select-then-insert): now
    # insert-or-ignore, then re-read the holder.
    engine = engine_of(site.settings())
    for _round in range(5):
        locks = [scheduler.DaemonLock(engine) for _ in range(4)]
        outcomes = race_for_the_lock(locks)
        assert sorted(outcomes) == ["refused"] * 3 + ["won"], outcomes
        for lock in locks:
            lock.release()


def test_a_lock_from_another_host_without_heartbeat_is_taken_over_after_its_ttl(
    site: Site,
) -> None:
    engine = engine_of(site.settings())
    at = datetime(2026, 1, 1, tzinfo=UTC)
    put_lock(engine, "elsewhere.example.com:4242:cafe", at)
    newcomer = scheduler.DaemonLock(engine, ttl=30, clock=lambda: at + timedelta(seconds=29))
    with pytest.raises(scheduler.DaemonBusyError, match=r"elsewhere\.example\.com:4242:cafe"):
        newcomer.acquire()
    late = scheduler.DaemonLock(engine, ttl=30, clock=lambda: at + timedelta(seconds=30))
    late.acquire()
    assert late.heartbeat() is True


def test_a_live_holder_on_this_host_keeps_the_lock_whatever_its_heartbeat(site: Site) -> None:
    """Its heartbeat may have waited behind a long write; its pid says it lives."""
    engine = engine_of(site.settings())
    clock = [datetime(2026, 1, 1, tzinfo=UTC)]
    holder = scheduler.DaemonLock(engine, ttl=30, clock=lambda: clock[0])
    holder.acquire()
    much_later = scheduler.DaemonLock(engine, ttl=30, clock=lambda: clock[0] + timedelta(hours=2))
    with pytest.raises(scheduler.DaemonBusyError, match="last heartbeat 7200 s ago"):
        much_later.acquire()
    assert holder.heartbeat() is True


def test_a_reused_pid_does_not_keep_a_dead_daemons_lock(site: Site) -> None:
    # Same pid as a live process (ours), but that process started at another time.
    engine = engine_of(site.settings())
    at = datetime.now(UTC)
    put_lock(engine, f"{socket.gethostname()}:{os.getpid()}:0ld0wner", at, started=1.0)
    scheduler.DaemonLock(engine).acquire()


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over_at_once(site: Site) -> None:
    engine = engine_of(site.settings())
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    owner = f"{socket.gethostname()}:{int(dead.stdout)}:deadbeef"
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            state.insert().values(
                key=scheduler.LOCK_KEY,
                value=owner,
                updated_at=now,
                expires_at=now + timedelta(hours=1),
            )
        )
    scheduler.DaemonLock(engine).acquire()
    with engine.connect() as conn:
        holder = conn.scalar(select(state.c.value).where(state.c.key == scheduler.LOCK_KEY))
    assert holder is not None and holder.split(":")[1] == str(os.getpid())


def test_run_once_refuses_while_a_daemon_holds_the_lock(
    ready: tuple[Site, Settings, Engine],
) -> None:
    site, settings, engine = ready
    site.write_post("2025-01-02-due.md", "Due", LAST_YEAR)
    holder = scheduler.DaemonLock(engine)
    holder.acquire()
    transport = MemoryTransport()
    if engine.dialect.name == "postgresql":  # any number of daemons: --once runs beside them
        assert scheduler.run_once(settings, engine, transport=transport).delivery.sent == 3
        return
    with pytest.raises(scheduler.DaemonBusyError):
        scheduler.run_once(settings, engine, transport=transport)
    assert transport.outbox == []
    holder.release()
    report = scheduler.run_once(settings, engine, transport=transport)
    assert report.delivery.sent == 3
    with engine.connect() as conn:  # released again after the pass
        assert conn.scalar(select(state.c.value).where(state.c.key == scheduler.LOCK_KEY)) is None


# --------------------------------------------------------------------------- the daemon's jobs


def _wait(condition: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_the_daemon_follows_a_future_post_as_it_is_redated_and_deleted(
    ready: tuple[Site, Settings, Engine],
) -> None:
    site, settings, engine = ready
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    path = site.write_post("2030-01-01-soon.md", "Soon", soon)
    transport = MemoryTransport()
    daemon = scheduler.Daemon(settings, engine, watch=False, transport_factory=lambda _s: transport)
    daemon.start()
    try:
        assert _wait(lambda: daemon.scheduler.get_job("post:soon") is not None)
        assert daemon.scheduler.get_job("post:soon").next_run_time == soon
        later = soon + timedelta(days=1)
        site.write_post(path.name, "Soon", later)
        daemon.wake("test")
        assert _wait(lambda: daemon.scheduler.get_job("post:soon").next_run_time == later)
        path.unlink()
        daemon.wake("test")
        assert _wait(lambda: daemon.scheduler.get_job("post:soon") is None)
        assert transport.outbox == []
    finally:
        daemon.stop()


def test_the_daemon_schedules_each_digest_on_its_cron(tmp_path: Path) -> None:
    lists = DIGEST_LISTS.replace(
        'cron = "0 8 * * MON"', 'cron = "0 8 * * MON"\ntimezone = "Asia/Tokyo"'
    )
    site = make_site(tmp_path, lists=lists)
    settings = site.settings()
    daemon = scheduler.Daemon(settings, engine_of(settings), watch=False)
    daemon.start()
    try:
        job = daemon.scheduler.get_job("digest:weekly")
        fire = job.next_run_time
        assert (fire.weekday(), fire.hour, fire.minute) == (0, 8, 0)
        assert str(fire.tzinfo) == "Asia/Tokyo"
    finally:
        daemon.stop()


def test_on_postgresql_every_daemon_runs_and_none_holds_a_lock_row(
    ready: tuple[Site, Settings, Engine],
) -> None:
    _site, settings, engine = ready
    first = scheduler.Daemon(settings, engine, watch=False)
    second = scheduler.Daemon(settings, engine, watch=False)
    shared = engine.dialect.name == "postgresql"
    first.start()
    try:
        if not shared:
            with pytest.raises(scheduler.DaemonBusyError):
                second.start()
            return
        second.start()
        second.stop()  # one stopping leaves the other running
        assert first.lock.heartbeat() and not first.stop_event.is_set()
        with engine.connect() as conn:
            assert (
                conn.scalar(select(state.c.value).where(state.c.key == scheduler.LOCK_KEY)) is None
            )
    finally:
        first.stop()


def test_a_daemon_that_loses_its_lock_stops(ready: tuple[Site, Settings, Engine]) -> None:
    _site, settings, engine = ready
    if engine.dialect.name == "postgresql":
        pytest.skip("no single daemon lock on PostgreSQL (see the test above)")
    daemon = scheduler.Daemon(settings, engine, watch=False)
    daemon.start()
    try:
        with engine.begin() as conn:
            conn.execute(
                update(state).where(state.c.key == scheduler.LOCK_KEY).values(value="x:1:y")
            )
        daemon._heartbeat()
        assert daemon.stop_event.is_set()
    finally:
        daemon.stop()
    with engine.connect() as conn:  # and it does not delete the new holder's row
        assert (
            conn.scalar(select(state.c.value).where(state.c.key == scheduler.LOCK_KEY)) == "x:1:y"
        )


def test_a_pass_that_blows_up_is_logged_and_the_daemon_lives_on(
    ready: tuple[Site, Settings, Engine], caplog: pytest.LogCaptureFixture
) -> None:
    _site, settings, engine = ready
    calls: list[int] = []

    def factory(_settings: Settings) -> MemoryTransport:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return MemoryTransport()

    daemon = scheduler.Daemon(settings, engine, watch=False, transport_factory=factory)
    with caplog.at_level(logging.ERROR, logger="newsletter.daemon"):
        daemon.start()
        try:
            assert _wait(lambda: daemon.passes >= 1)  # the scan after the failure ran
        finally:
            daemon.stop()
    assert "pass (scan) failed; retrying at the next scan" in caplog.text
    assert "RuntimeError: boom" in caplog.text


def test_a_paused_mailing_stays_quiet_then_resumes_when_its_time_comes(
    ready: tuple[Site, Settings, Engine], caplog: pytest.LogCaptureFixture
) -> None:
    site, settings, engine = ready
    site.write_post("2025-01-02-capped.md", "Capped", LAST_YEAR)
    from newsletter.delivery.mailings import plan_mailing

    mailing_id = plan_mailing(engine, settings, "capped", "news")
    # An hour ahead, and the clock moved there for the pass that resumes: a
    # pause of a fraction of a second could end during the first pass on a
    # loaded machine (which then sent everything).
    until = datetime.now(UTC) + timedelta(hours=1)
    with engine.begin() as conn:
        conn.execute(
            update(mailings)
            .where(mailings.c.id == mailing_id)
            .values(state="paused", paused_until=until)
        )
    with caplog.at_level(logging.INFO, logger="newsletter.daemon"):
        report, transport = one_pass(settings, engine)
    assert transport.outbox == [] and report.delivery.paused
    assert "start" not in caplog.text  # a paused mailing is not "started" every scan
    with time_machine.travel(until + timedelta(seconds=1), tick=True):
        report, transport = one_pass(settings, engine)
    assert sorted(s.recipient for s in transport.outbox) == sorted(MEMBERS)


def test_a_post_for_a_list_without_members_finishes_at_once(site: Site) -> None:
    settings = site.settings()
    engine = engine_of(settings)  # no members at all
    site.write_post("2025-01-02-lonely.md", "Lonely", LAST_YEAR)
    started = time.monotonic()
    report, transport = one_pass(settings, engine)
    # No wait on a locked database: SQLite's busy timeout would make it 30 s.
    assert time.monotonic() - started < 20
    assert report.problems == () and transport.outbox == []
    with engine.connect() as conn:
        assert conn.scalar(select(mailings.c.state)) == "done"


def test_the_scan_goes_on_when_the_system_clock_goes_back(
    ready: tuple[Site, Settings, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """APScheduler times its interval jobs on the wall clock: after the clock
    steps back an hour, the next scan (and lock heartbeat) would wait that hour.
    The daemon notices the step and runs them again at once."""
    import apscheduler.schedulers.base as aps_base

    _site, settings, engine = ready
    offset = {"seconds": 0.0}
    real = datetime

    class Shifted(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return real.now(tz) + timedelta(seconds=offset["seconds"])

    monkeypatch.setattr(aps_base, "datetime", Shifted)
    monkeypatch.setattr(scheduler, "_wall", lambda: time.time() + offset["seconds"])
    settings = dataclasses.replace(
        settings, schedule=dataclasses.replace(settings.schedule, scan_interval=0.3)
    )
    daemon = scheduler.Daemon(settings, engine, watch=False)
    daemon.start()
    try:
        # Scans every 0.3 s; the deadlines only bound a hang (without the fix
        # the next scan waits the hour), a loaded machine's passes take seconds.
        deadline = time.monotonic() + 60
        while daemon.passes < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemon.passes >= 2
        offset["seconds"] = -3600.0  # the clock steps back an hour
        time.sleep(0.5)
        before = daemon.passes  # a pass already under way may finish meanwhile
        deadline = time.monotonic() + 60
        while daemon.passes < before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemon.passes >= before + 2
    finally:
        daemon.stop()
