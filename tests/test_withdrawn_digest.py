"""A post pulled while the daemon's digest that lists it is under way.

A digest is stopped after its first reader; the writer then pulls one of its
three posts.  The rest of the readers get the digest without it, once; those
who had it get nothing more; the pulled post is not carried by a later
digest of the list (its first readers have it).  On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select
from test_daemon_support import MEMBERS, Site, add_members, engine_of, make_site

from newsletter.cli import main
from newsletter.config import Settings
from newsletter.daemon import passes, planning
from newsletter.delivery.transports.memory import MemoryTransport
from newsletter.store.schema import deliveries, mailings

pytestmark = pytest.mark.usefixtures("database_env")

MONDAY = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
LISTS = '[lists.weekly]\ntitle = "Weekly"\nmode = "digest"\ncron = "0 8 * * MON"\n'
TITLES = ("Monday Notes", "Wednesday Notes", "Friday Notes")
PULLED = "2026-02-25-wednesday-notes.md"


def write(site: Site, title: str, extra: str = "") -> None:
    offset = {"Monday Notes": 7, "Wednesday Notes": 5, "Friday Notes": 3}[title]
    slug = title.lower().replace(" ", "-")
    date = MONDAY - timedelta(days=offset, hours=-1)
    site.write_post(f"{date:%Y-%m-%d}-{slug}.md", title, date, extra=extra)


@pytest.fixture
def started(tmp_path: Path) -> tuple[Site, Settings, Engine, MemoryTransport]:
    """The Monday digest of three posts, stopped after its first reader."""
    site = make_site(tmp_path, lists=LISTS)
    settings = site.settings()
    engine = engine_of(settings)
    add_members(engine, "weekly", settings=settings)
    planning.write_state_time(engine, planning.digest_anchor_key("weekly"), MONDAY - timedelta(7))
    for title in TITLES:
        write(site, title)
    stop = threading.Event()
    transport = MemoryTransport()

    def progress(_mailing: int, done: int, _total: int) -> None:
        if done >= 1:
            stop.set()

    report = passes.run_pass(
        settings, engine, now=MONDAY + timedelta(seconds=1), transport=transport, stop=stop,
        progress=progress,
    )  # fmt: skip
    assert len(report.digests) == 1 and len(transport.outbox) == 1
    return site, settings, engine, transport


def unpublish(site: Site) -> None:
    write(site, "Wednesday Notes", "published: false\n")


def make_draft(site: Site) -> None:
    write(site, "Wednesday Notes", "draft: true\n")


def delete(site: Site) -> None:
    (site.posts / PULLED).unlink()


def opt_out(site: Site) -> None:
    write(site, "Wednesday Notes", "newsletter: false\n")


PULLS = {"unpublished": unpublish, "draft": make_draft, "deleted": delete, "opted-out": opt_out}


def later_pass(settings: Settings, engine: Engine, at: datetime) -> MemoryTransport:
    transport = MemoryTransport()
    report = passes.run_pass(settings, engine, now=at, transport=transport)
    assert report.problems == (), report.problems
    return transport


def text_of(data: bytes) -> str:
    message = message_from_bytes(data, policy=policy.default)
    return str(message.get_body(("plain",)).get_content())  # type: ignore[union-attr]


def digests(engine: Engine) -> list[tuple[int, str, tuple[str, ...], str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(mailings.c.id, mailings.c.state, mailings.c.post_ids, mailings.c.last_error)
            .where(mailings.c.kind == "digest")
            .order_by(mailings.c.id)
        )
        return [(r.id, r.state, tuple(r.post_ids), r.last_error) for r in rows]


def received(engine: Engine) -> dict[str, list[int]]:
    """Who has a sent digest row, and in which mailings."""
    got: dict[str, list[int]] = {}
    with engine.connect() as conn:
        rows = conn.execute(
            select(deliveries.c.email, deliveries.c.mailing_id).where(deliveries.c.status == "sent")
        )
        for email, mid in rows:
            got.setdefault(email, []).append(mid)
    return got


@pytest.mark.parametrize("how", sorted(PULLS))
def test_the_rest_get_the_digest_without_the_pulled_post(
    started: tuple[Site, Settings, Engine, MemoryTransport], how: str
) -> None:
    site, settings, engine, first = started
    [had] = [m.recipient for m in first.outbox]
    PULLS[how](site)
    report = passes.run_pass(
        settings,
        engine,
        now=MONDAY + timedelta(minutes=1),
        transport=(transport := MemoryTransport()),
    )
    assert report.problems == (), report.problems
    [change] = report.halts
    assert (change.change, change.sent, change.not_sent) == ("withdrawn", 1, 2)
    rest = sorted(set(MEMBERS) - {had})
    assert sorted(m.recipient for m in transport.outbox) == rest  # each once
    for message in transport.outbox:
        text = text_of(message.message)
        assert "Wednesday Notes" not in text
        assert "Monday Notes" in text and "Friday Notes" in text
    (old, old_state, old_posts, note), (new, new_state, new_posts, _) = digests(engine)
    assert (old_state, new_state) == ("withdrawn", "done")
    assert len(old_posts) == 3 and len(new_posts) == 2
    assert note is not None and f"the rest get the digest without it: mailing {new}" in note
    assert {email: sorted(ids) for email, ids in received(engine).items()} == {
        had: [old],
        **{email: [new] for email in rest},
    }
    status = CliRunner().invoke(main, ["--config", str(site.config), "status"])
    lines = status.output.splitlines()
    digest = "digest:weekly:2026-03-02T08:00:00+00:00 → weekly [digest]"
    assert lines[0] == f"#{old} {digest}: withdrawn (its post was pulled); 1 recipient(s): sent 1"
    assert lines[1].startswith("    why: withdrawn: its post wednesday-notes ")
    assert lines[2] == f"#{new} {digest}: done; 2 recipient(s): sent 2"
    # Back again, the pulled post is in no later digest: its first reader has it.
    write(site, "Wednesday Notes")
    assert later_pass(settings, engine, MONDAY + timedelta(minutes=2)).outbox == []
    assert later_pass(settings, engine, MONDAY + timedelta(days=7, seconds=1)).outbox == []


def test_every_post_pulled_withdraws_the_digest_until_one_is_back(
    started: tuple[Site, Settings, Engine, MemoryTransport],
) -> None:
    site, settings, engine, first = started
    [had] = [m.recipient for m in first.outbox]
    for title in TITLES:
        write(site, title, "published: false\n")
    assert later_pass(settings, engine, MONDAY + timedelta(minutes=1)).outbox == []
    [(old, state, _posts, note)] = digests(engine)
    assert state == "withdrawn" and note is not None
    status = CliRunner().invoke(main, ["--config", str(site.config), "status"])
    assert f"#{old} " in status.output and "withdrawn" in status.output, status.output
    # One is published again: the rest get a digest of that one.
    write(site, "Friday Notes")
    transport = later_pass(settings, engine, MONDAY + timedelta(minutes=2))
    assert sorted(m.recipient for m in transport.outbox) == sorted(set(MEMBERS) - {had})
    for message in transport.outbox:
        text = text_of(message.message)
        assert "Friday Notes" in text and "Monday Notes" not in text
    # All back: nobody gets anything more.
    for title in TITLES:
        write(site, title)
    assert later_pass(settings, engine, MONDAY + timedelta(minutes=3)).outbox == []


def test_a_digest_whose_posts_all_stay_is_not_touched(
    started: tuple[Site, Settings, Engine, MemoryTransport],
) -> None:
    site, settings, engine, _first = started
    write(site, "Wednesday Notes", "title_note: edited\n")  # edited, still published
    transport = later_pass(settings, engine, MONDAY + timedelta(minutes=1))
    assert len(transport.outbox) == len(MEMBERS) - 1
    assert "Wednesday Notes" in text_of(transport.outbox[0].message)
    [(_id, state, posts, _note)] = digests(engine)
    assert state == "done" and len(posts) == 3


READERS = tuple(f"reader{i:02d}@example.com" for i in range(40))


def test_a_post_pulled_while_the_digest_is_sending_stops_it_and_the_rest_get_the_new_one(
    tmp_path: Path,
) -> None:
    """5 messages a second: the pass stops within seconds of the pull, the
    rows it held go back and move on to the new digest (`replans.sweep`), and
    every reader gets one digest, those after the pull without the post."""
    site = make_site(tmp_path, lists=LISTS)
    settings = site.settings({"delivery.rate_per_second": 5, "delivery.lease_seconds": 0.3})
    engine = engine_of(settings)
    add_members(engine, "weekly", READERS, settings=settings)
    planning.write_state_time(engine, planning.digest_anchor_key("weekly"), MONDAY - timedelta(7))
    for title in TITLES:
        write(site, title)

    def pull_after_three(recipient: str) -> None:
        if recipient == READERS[2]:
            unpublish(site)

    transport = MemoryTransport(pull_after_three)  # type: ignore[arg-type]
    passes.run_pass(settings, engine, now=MONDAY + timedelta(seconds=1), transport=transport)
    # Stopped within seconds (the 40 take 8 s; a pass looks every 2 s), not at the end.
    assert 3 <= len(transport.outbox) < len(READERS), len(transport.outbox)
    rest = MemoryTransport()
    for minute in (1, 2):
        # Unpaced, with the usual lease: a 0.3 s lease can lapse under load
        # while its row is in hand, and a claim then takes it again.
        more = later_pass(site.settings(), engine, MONDAY + timedelta(minutes=minute))
        rest.outbox.extend(more.outbox)
    everyone = [m.recipient for m in transport.outbox + rest.outbox]
    assert sorted(everyone) == sorted(READERS)  # each once
    assert all("Wednesday Notes" not in text_of(m.message) for m in rest.outbox)
    assert all("Friday Notes" in text_of(m.message) for m in rest.outbox)
    (first_state, *_), (second_state, *_) = [row[1:] for row in digests(engine)]
    # The first is done when the messages it had in flight all went (nobody
    # came back to it), as any stopped mailing with nobody left.
    assert (first_state, second_state) in {("withdrawn", "done"), ("done", "done")}


def test_a_second_replan_of_the_same_digest_changes_nothing(
    started: tuple[Site, Settings, Engine, MemoryTransport],
) -> None:
    """Two daemons re-planning one digest at once: the next generation's
    unique key lets one do it; the other's transaction is rolled back whole
    (no second new digest, no stray ledger key, nobody moved twice)."""
    from sqlalchemy import func, update

    from newsletter.store import replans
    from newsletter.store.schema import ledger_keys

    _site, _settings, engine, _first = started
    with engine.connect() as conn:
        [digest] = replans.watched_digests(conn)
    with engine.begin() as conn:  # one row still in a sender's hands: the old one has work
        queued = select(func.min(deliveries.c.id)).where(deliveries.c.status == "queued")
        held = conn.scalar(queued)
        conn.execute(update(deliveries).where(deliveries.c.id == held).values(status="sending"))
        keys = conn.scalar(select(func.count()).select_from(ledger_keys))
    keep = digest.post_ids[:2]
    note = "withdrawn: test; the rest get the digest without it: mailing {new}"
    new = replans.replan(engine, digest, keep, "Weekly: 2 new posts", note)
    assert new is not None
    assert replans.replan(engine, digest, keep, "Weekly: 2 new posts", note) is None
    assert [(i, state) for i, state, _posts, _note in digests(engine)] == [
        (digest.id, "withdrawn"),
        (new, "planned"),
    ]
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(ledger_keys)) == keys + 1
        by_mailing = dict(
            conn.execute(
                select(deliveries.c.mailing_id, func.count()).group_by(deliveries.c.mailing_id)
            ).all()
        )
    assert by_mailing == {digest.id: 2, new: 1}  # sent one + in hand one; the rest moved


def test_a_replanned_digest_that_finishes_keeps_why_in_status(
    started: tuple[Site, Settings, Engine, MemoryTransport],
) -> None:
    """A sender still holds one reader's row when the post is pulled: the old
    digest is withdrawn with a note naming the new one, the rest move there.
    When that row's message goes out and its pass ends, the old digest is
    done, and `status` still says why it has so few recipients and where the
    rest went (before, the note was erased as the mailing finished)."""
    from newsletter.store import mailings as q

    site, _settings, engine, _first = started
    [(old, *_)] = digests(engine)
    owner = q.owner_identity()  # a live sender (this process) holds one row
    with q.OwnerLock(engine, owner):
        [held], _ = q.claim(engine, old, owner, 1, 600)
        unpublish(site)
        transport = later_pass(site.settings(), engine, MONDAY + timedelta(minutes=1))
        assert len(transport.outbox) == len(MEMBERS) - 2  # all but the first and the held
        # The holder's message went out; its pass records it and ends (MailingPass._finish).
        assert q.record_many(engine, [(held.id, q.Outcome("sent", 1))], owner) == 1
        q.set_state(engine, old, "done", over_halt=True)
    (_, old_state, _, note), (new, new_state, _, _) = digests(engine)
    assert (old_state, new_state) == ("done", "done")
    assert note is not None and f"the rest get the digest without it: mailing {new}" in note
    status = CliRunner().invoke(main, ["--config", str(site.config), "status"])
    lines = status.output.splitlines()
    at = lines.index(next(line for line in lines if line.startswith(f"#{old} ")))
    assert lines[at].endswith(": done; 2 recipient(s): sent 2"), lines
    assert lines[at + 1].startswith("    why: withdrawn: its post wednesday-notes "), lines
    assert lines[at + 1].endswith(f"the rest get the digest without it: mailing {new}")
    as_json = CliRunner().invoke(main, ["--config", str(site.config), "status", "--json"])
    [entry] = [m for m in json.loads(as_json.output)["mailings"] if m["id"] == old]
    assert entry["state"] == "done" and entry["last_error"] == note
