"""A mailing's life cycle under review: halts, cancels, resends, and what the
other commands then say.  Each test is a defect found in review (it failed
before its fix).  On SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, select
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
from newsletter.store.schema import deliveries, mailings

pytestmark = pytest.mark.usefixtures("database_env")

LAST_YEAR = datetime.now(UTC).replace(microsecond=0) - timedelta(days=300)
POST = "2025-01-02-life.md"


def cli(site: Site, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(site.config), *args])


def states(engine: Engine) -> list[tuple[int, str]]:
    with engine.connect() as conn:
        rows = conn.execute(select(mailings.c.id, mailings.c.state).order_by(mailings.c.id))
        return [(int(i), str(s)) for i, s in rows]


def received(engine: Engine) -> Counter[str]:
    """How many times each address was sent the post, over every mailing."""
    with engine.connect() as conn:
        rows = conn.execute(select(deliveries.c.email).where(deliveries.c.status == "sent"))
        return Counter(rows.scalars())


def site_with_post(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Site, Settings, Engine]:
    """A site whose list `news` has its members and one post of last year, due."""
    monkeypatch.setenv("NEWSLETTER_SECRET", "lifecycle-test-secret")
    site = make_site(tmp_path)
    settings = site.settings()
    engine = engine_of(settings)
    add_members(engine, "news", settings=settings)
    site.write_post(POST, "Life", LAST_YEAR)
    return site, settings, engine


@pytest.fixture
def started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Site, Settings, Engine]:
    """The daemon's mailing of a post, stopped after its first message."""
    site, settings, engine = site_with_post(tmp_path, monkeypatch)
    first_recipient_only(settings, engine)
    return site, settings, engine


def later_pass(settings: Settings, engine: Engine, now: datetime | None = None) -> MemoryTransport:
    transport = MemoryTransport()
    passes.run_pass(settings, engine, now=now, transport=transport)
    return transport


# --------------------------------------------------------------------------- resend


@pytest.mark.parametrize("pulled", ["withdrawn", "postponed", "sending"])
def test_a_resend_supersedes_an_unfinished_mailing_nobody_gets_it_twice(
    started: tuple[Site, Settings, Engine], pulled: str
) -> None:
    """`send --resend` sends to everyone; the older, unfinished mailing of the
    same post and list must not then go on to the rest (the daemon resumed a
    withdrawn or postponed one when the post came back: a second copy)."""
    site, settings, engine = started
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    if pulled == "withdrawn":
        site.write_post(POST, "Life", LAST_YEAR, extra="published: false\n")
    elif pulled == "postponed":
        site.write_post(POST, "Life", later)
    if pulled != "sending":
        later_pass(settings, engine)
        assert states(engine) == [(1, pulled)]
        site.write_post(POST, "Life", LAST_YEAR)  # back, as it was
    resent = cli(site, "send", "life", "--list", "news", "--resend")
    assert resent.exit_code == 0, resent.output
    # The daemon, at any time from now on, sends nothing more.
    assert later_pass(settings, engine).outbox == []
    assert later_pass(settings, engine, now=later + timedelta(seconds=1)).outbox == []
    got = received(engine)
    # The first reader had it from mailing 1 and again from the resend (that
    # is what --resend means); every other reader exactly once.
    assert sorted(got.values()) == [1, 1, 2]
    assert states(engine)[0][1] == "cancelled"
    assert states(engine)[1] == (2, "done")
    status = cli(site, "status")
    assert "superseded by mailing 2 (send --resend)" in status.output


# --------------------------------------------------------------------------- cancel


def test_a_cancel_that_comes_while_the_last_recipients_are_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner cancels while the pass has every remaining row in hand: those
    go (the messages in hand finish), so everyone got it.  The mailing must
    end `done`, not `cancelled` with nobody left out, and `cancel` must not
    count the rows in flight as "not sent"."""
    site, settings, engine = site_with_post(tmp_path, monkeypatch)
    said: list[Result] = []

    def cancel_on_first(recipient: str) -> None:
        if not said:
            said.append(cli(site, "cancel", "1"))

    passes.run_pass(settings, engine, transport=MemoryTransport(cancel_on_first))  # type: ignore[arg-type]
    assert said[0].exit_code == 0, said[0].output
    assert said[0].output == (
        "mailing 1 cancelled: life -> news: sent 0, not sent 0, "
        "in flight 3 (a sending process holds them: they may still go)\n"
    )
    assert received(engine) == Counter({m: 1 for m in MEMBERS})
    assert states(engine) == [(1, "done")]
    status = cli(site, "status").output
    assert "#1 life → news: done; 3 recipient(s): sent 3\n" in status
    assert "cancelled" not in status


def test_cancel_with_nothing_left_to_send_says_so(
    started: tuple[Site, Settings, Engine],
) -> None:
    """Every row finished (sent, failed, skipped) but the pass has not yet
    written `done`: nothing is left to cancel."""
    site, _settings, engine = started
    with engine.begin() as conn:
        conn.execute(deliveries.update().values(status="sent"))
    result = cli(site, "cancel", "1")
    assert result.exit_code == 1
    assert result.stderr == (
        "error: mailing 1 has nothing left to send (sent 3, not sent 0); nothing to cancel\n"
    )
    assert states(engine) == [(1, "sending")]


# --------------------------------------------------------------------------- newsletter posts


def posts_listing(site: Site) -> tuple[str, dict[str, object]]:
    import json

    text = cli(site, "posts")
    assert text.exit_code == 0, text.output
    rows = json.loads(cli(site, "posts", "--json").output)
    return text.output, next(r for r in rows if r["id"] == "life")


@pytest.mark.parametrize(
    ("how", "word"),
    [
        ("sending", "sending"),
        ("withdrawn", "withdrawn"),
        ("postponed", "postponed"),
        ("cancelled", "cancelled"),
        ("done", "sent"),
    ],
)
def test_the_posts_listing_says_where_the_mailing_stands(
    started: tuple[Site, Settings, Engine], how: str, word: str
) -> None:
    """`newsletter posts` said `sent` for any post with a mailing, also one
    pulled, cancelled or still going out to half the list."""
    site, settings, engine = started
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    if how == "withdrawn":
        site.write_post(POST, "Life", LAST_YEAR, extra="published: false\n")
        later_pass(settings, engine)
    elif how == "postponed":
        site.write_post(POST, "Life", later)
        later_pass(settings, engine)
    elif how == "cancelled":
        assert cli(site, "cancel", "1").exit_code == 0
    elif how == "done":
        later_pass(settings, engine)
    assert states(engine) == [(1, how)]
    text, row = posts_listing(site)
    assert f"  {word:<12}  Life  " in text
    assert row["status"] == word
    assert row["sent_to"] == ["news"]
    assert row["mailings"] == [{"mailing": 1, "list": "news", "state": how}]


# --------------------------------------------------------------------------- digests

WEEKLY = '[lists.weekly]\ntitle = "Weekly"\nmode = "digest"\ncron = "0 8 * * MON"\n'
MONDAY = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


DIGEST = "digest:weekly:2026-03-02T08:00:00+00:00"


def test_a_cancelled_digest_is_resumed_by_send_and_not_carried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cancel` promised that `send` of the same post and list sends the rest;
    for a digest `send` knew no such post.  Its posts stay out of the next
    digest (who got it would get them twice): the owner resumes it instead."""
    from newsletter.daemon import planning

    monkeypatch.setenv("NEWSLETTER_SECRET", "lifecycle-test-secret")
    site = make_site(tmp_path, lists=WEEKLY)
    settings = site.settings()
    engine = engine_of(settings)
    add_members(engine, "weekly", settings=settings)
    planning.write_state_time(
        engine, planning.digest_anchor_key("weekly"), MONDAY - timedelta(days=7)
    )
    site.write_post("2026-02-25-notes.md", "Notes", MONDAY - timedelta(days=5))
    stop = threading.Event()
    first = MemoryTransport()
    passes.run_pass(
        settings,
        engine,
        now=MONDAY + timedelta(seconds=1),
        transport=first,
        stop=stop,
        progress=lambda _m, done, _t: stop.set(),
    )
    assert len(first.outbox) == 1
    cancelled = cli(site, "cancel", "1")
    assert cancelled.output == (
        f"mailing 1 cancelled: {DIGEST} -> weekly: sent 1, not sent 2\n"
        f"(`newsletter send {DIGEST} --list weekly` sends the rest after all)\n"
    )
    # The next slot carries what is new, not the cancelled digest's posts.
    site.write_post("2026-03-04-more.md", "More", MONDAY + timedelta(days=2))
    later_pass(settings, engine, now=MONDAY + timedelta(days=7, seconds=1))
    with engine.connect() as conn:
        carried = conn.execute(select(mailings.c.post_ids).where(mailings.c.id == 2)).scalar()
    assert list(carried) == ["more"]
    dry = cli(site, "send", DIGEST, "--list", "weekly", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.output == (
        f"would send {DIGEST!r} to 2 subscriber(s) of list 'weekly' "
        "(the rest of mailing 1, cancelled)\n"
    )
    resumed = cli(site, "send", DIGEST, "--list", "weekly")
    assert resumed.exit_code == 0, resumed.output
    assert resumed.output.startswith("sent 2, deferred 0, failed 0, skipped 0")
    assert states(engine) == [(1, "done"), (2, "done")]
    with engine.connect() as conn:
        rows = conn.execute(
            select(deliveries.c.email).where(
                deliveries.c.mailing_id == 1, deliveries.c.status == "sent"
            )
        )
        assert sorted(rows.scalars()) == sorted(MEMBERS)
    again = cli(site, "send", DIGEST, "--list", "weekly")
    assert again.exit_code == 0 and "already sent" in again.output
    unknown = cli(site, "send", "digest:weekly:2020-01-01T08:00:00+00:00", "--list", "weekly")
    assert unknown.exit_code == 1
    assert unknown.stderr == (
        "error: no digest 'digest:weekly:2020-01-01T08:00:00+00:00' of list 'weekly' "
        "(`newsletter status` lists them)\n"
    )
    resend = cli(site, "send", DIGEST, "--list", "weekly", "--resend")
    assert resend.exit_code == 1
    assert "a digest is not sent again" in resend.stderr


# --------------------------------------------------------------------------- run --once


def test_run_once_says_which_mailing_it_withdrew_and_resumed(
    started: tuple[Site, Settings, Engine],
) -> None:
    """`run --once` (cron) printed "Sent 0" and nothing else when it withdrew
    a mailing: the one line a cron mail shows must say why nothing went."""
    import json

    site, _settings, _engine = started
    site.write_post(POST, "Life", LAST_YEAR, extra="published: false\n")
    result = cli(site, "run", "--once")
    assert result.exit_code == 0, result.output
    assert (
        "Withdrawn: mailing 1, life -> news: its post is unpublished (published: false, "
        "draft: true or a _drafts folder); the rest get it if it is published again; "
        "sent 1, not sent 2.\n"
    ) in result.stdout
    site.write_post(POST, "Life", LAST_YEAR)
    again = cli(site, "run", "--once", "--json")
    assert again.exit_code == 0, again.output
    data = json.loads(again.stdout)
    assert data["sent"] == 2
    assert data["halts"] == [
        {
            "mailing": 1,
            "post": "life",
            "list": "news",
            "change": "resumed",
            "why": "its post may go again",
            "sent": 1,
            "not_sent": 2,
        }
    ]


@pytest.mark.parametrize("pulled", ["withdrawn", "postponed"])
def test_a_halted_mailing_cancelled_stays_cancelled_when_its_post_comes_back(
    started: tuple[Site, Settings, Engine], pulled: str
) -> None:
    """Checked, held already: the daemon resumes only what it halted."""
    site, settings, engine = started
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    if pulled == "withdrawn":
        site.write_post(POST, "Life", LAST_YEAR, extra="draft: true\n")
    else:
        site.write_post(POST, "Life", later)
    later_pass(settings, engine)
    assert states(engine) == [(1, pulled)]
    assert cli(site, "cancel", "1").exit_code == 0
    site.write_post(POST, "Life", LAST_YEAR)
    assert later_pass(settings, engine).outbox == []
    assert later_pass(settings, engine, now=later + timedelta(seconds=1)).outbox == []
    assert states(engine) == [(1, "cancelled")]
    assert "upcoming" not in cli(site, "status").output
    assert passes.next_work_time(engine, datetime.now(UTC)) is None


def test_a_mailing_paused_by_a_cap_then_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked, held already: the cap's pause gives way to the cancel, and no
    pass (nor the daemon's wake-up time) comes back for it."""
    monkeypatch.setenv("NEWSLETTER_SECRET", "lifecycle-test-secret")
    site = make_site(tmp_path)
    settings = site.settings({"delivery.max_per_hour": 1})
    engine = engine_of(settings)
    add_members(engine, "news", settings=settings)
    site.write_post(POST, "Life", LAST_YEAR)
    assert len(later_pass(settings, engine).outbox) == 1
    assert states(engine) == [(1, "paused")]
    assert passes.next_work_time(engine, datetime.now(UTC)) is not None
    assert cli(site, "cancel", "1").exit_code == 0
    assert passes.next_work_time(engine, datetime.now(UTC)) is None
    far = datetime.now(UTC) + timedelta(hours=2)
    assert later_pass(settings, engine, now=far).outbox == []
    assert states(engine) == [(1, "cancelled")]


# --------------------------------------------------------------------------- races


def test_a_withdrawal_racing_the_owners_take_over_leaves_it_the_owners(
    started: tuple[Site, Settings, Engine],
) -> None:
    """Checked, held already: `send` takes the daemon's mailing over in its
    planning transaction while another daemon withdraws it.  The withdrawal
    waits for that transaction (a row lock on PostgreSQL, the write lock on
    SQLite) and then finds the mailing the owner's: nothing to withdraw."""
    from newsletter.store import halts

    _site, _settings, engine = started
    outcome: list[str | None] = []
    with engine.connect() as conn, conn.begin():
        halts.take_over(conn, 1)
        racer = threading.Thread(
            target=lambda: outcome.append(
                halts.halt(engine, 1, halts.WITHDRAWN, None, "withdrawn: its post is gone")
            )
        )
        racer.start()
        racer.join(timeout=0.5)
        assert racer.is_alive()  # it waits for the take-over's commit
    racer.join(timeout=30)
    assert outcome == [None]
    with engine.connect() as conn:
        row = conn.execute(select(mailings.c.state, mailings.c.origin)).one()
    assert tuple(row) == ("sending", "send")


# --------------------------------------------------------------------------- send's options


def test_send_dry_run_says_what_send_would_do(started: tuple[Site, Settings, Engine]) -> None:
    """--dry-run said "would send it to 0 subscriber(s)" for a mailing that is
    done, where `send` says it was already sent; for a cancelled one it
    counts the rest, which `send` sends."""
    site, settings, engine = started
    assert cli(site, "cancel", "1").exit_code == 0
    dry = cli(site, "send", "life", "--list", "news", "--dry-run")
    assert dry.output == (
        "would send 'life' to 2 subscriber(s) of list 'news' (the rest of mailing 1, cancelled)\n"
    )
    test = cli(site, "send", "life", "--list", "news", "--test", "me@example.net")
    assert test.exit_code == 0 and states(engine) == [(1, "cancelled")]
    later_pass(settings, engine)
    assert cli(site, "send", "life", "--list", "news").exit_code == 0
    done = cli(site, "send", "life", "--list", "news", "--dry-run")
    assert done.exit_code == 0
    assert done.output.startswith("'life' was already sent to list 'news' ")
    assert done.output.endswith("; nothing would be sent (use --resend to send it again)\n")
    resend = cli(site, "send", "life", "--list", "news", "--dry-run", "--resend")
    assert resend.output == "would send 'life' to 3 subscriber(s) of list 'news'\n"


def test_a_failure_of_an_earlier_pass_stays_in_status_once_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass that finishes a mailing writes `done` over a halt now (the last
    rows in flight); it must not wipe the last error an earlier pass kept."""
    from newsletter.delivery.transports import SendResult

    site, settings, engine = site_with_post(tmp_path, monkeypatch)
    stop = threading.Event()

    def refuse_first(recipient: str) -> SendResult | None:
        stop.set()
        return SendResult(recipient, False, 550, "5.1.1 No such user", permanent=True)

    passes.run_pass(settings, engine, transport=MemoryTransport(refuse_first), stop=stop)
    assert len(later_pass(settings, engine).outbox) == 2
    assert states(engine) == [(1, "done")]
    status = cli(site, "status").output
    assert "    last error: " in status and "550" in status


# --------------------------------------------------------------------------- the web archive


@pytest.mark.parametrize(
    ("how", "shown"),
    [("postponed", False), ("opted-out", False), ("cancelled", True), ("sending", True)],
)
def test_the_archive_leaves_out_a_post_pulled_mid_mailing(
    started: tuple[Site, Settings, Engine], how: str, shown: bool
) -> None:
    """The public archive showed a post the daemon had stopped mailing because
    it was re-dated into the future (Jekyll does not publish it yet: the
    archive leaked it) or opted out.  A cancelled mailing's post stays: the
    post is live, and the emails that went out link to it."""
    from starlette.testclient import TestClient

    from newsletter.web.public import create_public_app

    site, settings, engine = started
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    if how == "postponed":
        site.write_post(POST, "Life", later)
        later_pass(settings, engine)
    elif how == "opted-out":
        site.write_post(POST, "Life", LAST_YEAR, extra="newsletter: false\n")
        later_pass(settings, engine)
    elif how == "cancelled":
        assert cli(site, "cancel", "1").exit_code == 0
    app = create_public_app(settings, engine=engine, secret=b"k" * 32)
    with TestClient(app, base_url="https://news.example.com") as client:
        index = client.get("/archive/")
        page = client.get("/archive/life")
    assert index.status_code == 200
    assert ("Life" in index.text) is shown
    assert page.status_code == (200 if shown else 404)
    if how == "postponed":  # its date comes: the rest get it, the archive shows it
        later_pass(settings, engine, now=later + timedelta(seconds=1))
        app = create_public_app(settings, engine=engine, secret=b"k" * 32)
        with TestClient(app, base_url="https://news.example.com") as client:
            assert "Life" in client.get("/archive/").text


# --------------------------------------------------------------------------- the posts folder


def test_an_empty_posts_folder_withdraws_nothing(
    started: tuple[Site, Settings, Engine],
) -> None:
    """A posts folder with no post at all (a share not mounted yet on one of
    several hosts, a checkout being replaced) read as "every post deleted":
    the daemon withdrew every unfinished mailing, and the hosts that still
    had the posts resumed them, back and forth.  Like a folder that cannot be
    read, it is no verdict on any post."""
    site, settings, engine = started
    kept = (site.posts / POST).read_bytes()
    (site.posts / POST).unlink()
    report = passes.run_pass(settings, engine, transport=MemoryTransport())
    assert states(engine) == [(1, "sending")]
    assert any("no posts" in p or "no post" in p for p in report.problems), report.problems
    (site.posts / POST).write_bytes(kept)
    assert len(later_pass(settings, engine).outbox) == 2
    assert states(engine) == [(1, "done")]
