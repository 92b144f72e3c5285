"""The streams strategy over real SMTP (aiosmtpd): each connection on its own.

What the lockstep rounds could not do (a stalled connection held every
other one up), per-recipient refusals mixed into busy connections, a drop
mid-DATA, and invariant 2 after kill -9 with several connections.
"""

from __future__ import annotations

import asyncio
import collections
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from smtpserver import DROP, STALL, SmtpTestServer, _Handler
from test_delivery_smtp import ledger, populate, site_settings

from newsletter.config import Settings
from newsletter.delivery.mailing_pass import MailingPass
from newsletter.delivery.mailings import deliver_mailing, plan_mailing
from newsletter.delivery.rounds import RoundsStrategy
from newsletter.delivery.streams import StreamsStrategy, loop_factory, run_loop
from newsletter.delivery.threaded import ThreadedStrategy
from newsletter.posts.collection import load_posts
from newsletter.store import mailings as q

POST = "how-sleep-consolidates-memory"


EVENT_LOOP = "auto"  # `each_loop` sets it per test


def streams_settings(site: Path, server: SmtpTestServer, **extra: Any) -> Settings:
    """Settings for `server` with the streams strategy, whatever the server offers."""
    chosen = {"delivery.strategy": "streams", "delivery.event_loop": EVENT_LOOP}
    return site_settings(site, server, **{**chosen, **extra})


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "streams-test-secret")


@pytest.fixture(params=["asyncio", "uvloop"])
def each_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pass on asyncio's loop (`[delivery] event_loop = "asyncio"`), then on
    uvloop's ("auto", the default, with uvloop installed)."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
        monkeypatch.setitem(globals(), "EVENT_LOOP", "auto")
    else:
        monkeypatch.setitem(globals(), "EVENT_LOOP", "asyncio")


def test_auto_takes_uvloop_when_installed_and_asyncio_on_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uvloop = pytest.importorskip("uvloop")
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("asyncio") is None  # asyncio.Runner's own loop
    assert run_loop(running_loop, "auto").__module__.startswith("uvloop")
    assert isinstance(run_loop(running_loop, "asyncio"), asyncio.SelectorEventLoop)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # not installed (Windows): asyncio's
    assert loop_factory("auto") is None
    assert isinstance(run_loop(running_loop, "auto"), asyncio.SelectorEventLoop)


async def running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def timed_stall(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The server's scripted special replies (a stall), timed: start and end of each."""
    window: list[float] = []
    special = _Handler._special

    async def timed_special(self: _Handler, smtp: Any, session: Any, reply: str) -> str:
        window.append(time.monotonic())
        try:
            return await special(self, smtp, session, reply)
        finally:
            window.append(time.monotonic())

    monkeypatch.setattr(_Handler, "_special", timed_special)
    return window


def built_events(monkeypatch: pytest.MonkeyPatch) -> dict[str, threading.Event]:
    """One event per recipient, set when its message has been built (personalised)."""
    built: dict[str, threading.Event] = collections.defaultdict(threading.Event)
    data = MailingPass.data

    def noted(self: MailingPass, row: q.Claimed) -> Any:
        made = data(self, row)
        built[row.email].set()
        return made

    monkeypatch.setattr(MailingPass, "data", noted)
    return built


# How long the test server may hold a reply waiting for a look-ahead build:
# without the look-ahead the wait always runs out; with it, it ends at the build.
HOLD = 10.0


def failing_build(monkeypatch: pytest.MonkeyPatch, email: str) -> None:
    """Building `email`'s message raises a RenderError (the others build as usual)."""
    from newsletter.errors import RenderError

    data = MailingPass.data

    def failing(self: MailingPass, row: q.Claimed) -> Any:
        if row.email == email:
            raise RenderError("not a usable address", recipient=row.email)
        return data(self, row)

    monkeypatch.setattr(MailingPass, "data", failing)


def nothing_lost_by_a_failed_build(
    engine: Any, settings: Settings, server: SmtpTestServer, failed: str
) -> None:
    """The pass fails on `failed`'s build; only r000 and r001 went out, each recorded."""
    from newsletter.errors import NewsletterError

    mid = plan_mailing(engine, settings, POST, "sample")
    with pytest.raises(NewsletterError, match="usable address"):
        deliver_mailing(engine, settings, mid, load_posts(settings))
    rows = ledger(engine)
    received = sorted(server.recipients())
    assert received == ["r000@example.org", "r001@example.org"]
    assert all(rows[r].status == "sent" for r in received)  # none sent unrecorded
    assert rows[failed].status != "sent"


@pytest.mark.parametrize("concurrency", [1, 4])
@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
def test_the_strategy_follows_the_setting_and_the_server(
    sample_site: Path, smtp_server: SmtpTestServer, pipelining: bool, concurrency: int
) -> None:
    # "auto": the streams for several connections with or without PIPELINING
    # (measured faster, for less CPU); a thread for one connection without it.
    smtp_server.pipelining = pipelining
    base = site_settings(sample_site, smtp_server, **{"delivery.concurrency": concurrency})
    posts = load_posts(base)
    engine = populate(base, 1)
    with engine.connect() as conn:
        row = q.get_mailing(conn, plan_mailing(engine, base, POST, "sample"))
    assert row is not None
    picked = {}
    for choice in ("auto", "streams", "rounds", "threaded"):
        settings = site_settings(
            sample_site,
            smtp_server,
            **{"delivery.strategy": choice, "delivery.concurrency": concurrency},
        )
        picked[choice] = type(MailingPass(engine, settings, row, posts)._strategy())
    assert base.delivery.strategy == "auto"
    assert picked == {
        "auto": StreamsStrategy if pipelining or concurrency > 1 else ThreadedStrategy,
        "streams": StreamsStrategy,
        "rounds": RoundsStrategy if pipelining else ThreadedStrategy,
        "threaded": ThreadedStrategy,
    }


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
@pytest.mark.usefixtures("each_loop")
def test_a_stalled_connection_does_not_hold_up_the_others(
    sample_site: Path, pipelining: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One recipient's final dot gets no answer for 3 s; meanwhile the other
    # two connections must keep delivering (the rounds delivered nothing then).
    stall = 3.0
    server = SmtpTestServer(pipelining=pipelining, stall_seconds=stall)
    window = timed_stall(monkeypatch)
    delivered_at: list[float] = []
    record = SmtpTestServer._record

    def timed_record(self: SmtpTestServer, *args: Any) -> None:
        delivered_at.append(time.monotonic())
        record(self, *args)

    monkeypatch.setattr(SmtpTestServer, "_record", timed_record)
    server.script("r003@example.org", STALL, stage="data", times=1)
    with server:
        settings = streams_settings(
            sample_site, server, **{"delivery.concurrency": 3, "smtp.timeout": 10.0}
        )
        engine = populate(settings, 150)
        mid = plan_mailing(engine, settings, POST, "sample")
        report = deliver_mailing(engine, settings, mid, load_posts(settings))
    assert (report.sent, report.deferred) == (149, 1)  # the stalled one: 451, deferred
    assert ledger(engine)["r003@example.org"].last_code == 451
    start, end = window
    assert end - start >= stall * 0.9
    during = sum(start < t < end for t in delivered_at)
    # Everything else could go out during the stall; far more than the one
    # round (two messages) the lockstep strategy managed.
    assert during >= 40, f"only {during} of 149 messages delivered during the stall"


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
@pytest.mark.usefixtures("each_loop")
def test_mixed_refusals_across_busy_connections(
    sample_site: Path, smtp_server: SmtpTestServer, pipelining: bool
) -> None:
    smtp_server.pipelining = pipelining
    settings = streams_settings(sample_site, smtp_server, **{"delivery.concurrency": 4})
    engine = populate(settings, 40)
    later = {f"r{i:03d}@example.org" for i in range(40) if i % 7 == 1}
    gone = {f"r{i:03d}@example.org" for i in range(40) if i % 7 == 2}
    spam = {f"r{i:03d}@example.org" for i in range(40) if i % 7 == 3}
    for address in later:
        smtp_server.script(address, "451 4.3.0 Try again later")
    for address in gone:
        smtp_server.script(address, "550 5.1.1 No such user here")
    for address in spam:
        smtp_server.script(address, "554 5.7.1 Rejected as spam", stage="data")
    mid = plan_mailing(engine, settings, POST, "sample")
    report = deliver_mailing(engine, settings, mid, load_posts(settings))
    refused = later | gone | spam
    assert (report.sent, report.deferred, report.failed) == (40 - len(refused), len(later), 12)
    rows = ledger(engine)
    assert {e for e, r in rows.items() if r.status == "deferred"} == later
    assert {e for e, r in rows.items() if r.status == "failed"} == gone | spam
    assert all(rows[e].last_code == 550 for e in gone)
    assert all(rows[e].last_code == 554 for e in spam)
    expected = sorted(
        f"r{i:03d}@example.org" for i in range(40) if f"r{i:03d}@example.org" not in refused
    )
    assert sorted(smtp_server.recipients()) == expected  # each once


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
@pytest.mark.usefixtures("each_loop")
def test_drop_mid_data_on_one_connection_others_go_on(
    sample_site: Path, smtp_server: SmtpTestServer, pipelining: bool
) -> None:
    smtp_server.pipelining = pipelining
    settings = streams_settings(sample_site, smtp_server, **{"delivery.concurrency": 3})
    engine = populate(settings, 30)
    smtp_server.script("r004@example.org", DROP, stage="data", times=1)
    smtp_server.script("r011@example.org", DROP, stage="rcpt", times=1)
    mid = plan_mailing(engine, settings, POST, "sample")
    report = deliver_mailing(engine, settings, mid, load_posts(settings), wait=5)
    assert (report.sent, report.failed) == (30, 0)
    rows = ledger(engine)
    assert (rows["r004@example.org"].status, rows["r004@example.org"].attempts) == ("sent", 2)
    # A drop before DATA on a reused connection is retried at once (nothing
    # of the message was accepted) or deferred: either way sent once.
    assert rows["r011@example.org"].status == "sent"
    assert sorted(smtp_server.recipients()) == [f"r{i:03d}@example.org" for i in range(30)]


@pytest.mark.usefixtures("each_loop")
def test_stop_finishes_the_messages_in_flight(
    sample_site: Path, smtp_server: SmtpTestServer
) -> None:
    smtp_server.pipelining = True  # with announced envelopes behind each dot
    settings = streams_settings(
        sample_site, smtp_server, **{"delivery.concurrency": 3, "delivery.rate_per_second": 60.0}
    )
    engine = populate(settings, 60)
    mid = plan_mailing(engine, settings, POST, "sample")
    stop = threading.Event()
    timers: list[threading.Timer] = []

    def progress(done: int, total: int) -> None:
        if not timers:  # stop 0.3 s after the first message, however slow the start
            timers.append(threading.Timer(0.3, stop.set))
            timers[0].start()

    posts = load_posts(settings)
    report = deliver_mailing(engine, settings, mid, posts, stop=stop, progress=progress)
    assert 0 < report.sent < 60
    assert len(smtp_server.received) == report.sent  # nothing half-sent, nothing unrecorded
    again = deliver_mailing(engine, settings, mid, posts)
    assert report.sent + again.sent == 60
    assert sorted(smtp_server.recipients()) == [f"r{i:03d}@example.org" for i in range(60)]


def test_commits_leave_the_loop_only_for_a_networked_database(
    sample_site: Path,
    smtp_server: SmtpTestServer,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # SQLite commits on the loop's thread; PostgreSQL's commits wait for the
    # server, so they run on the "commits" thread while the loop goes on.
    from newsletter.store.outcomes import LedgerWriter

    smtp_server.pipelining = True
    settings = streams_settings(
        sample_site, smtp_server, **{"database.url": database_url, "delivery.concurrency": 4}
    )
    engine = populate(settings, 40)
    mid = plan_mailing(engine, settings, POST, "sample")
    threads: set[str] = set()
    write = LedgerWriter.write

    def watched(self: LedgerWriter, outcomes: list[Any], *times: Any) -> int:
        threads.add(threading.current_thread().name)
        return write(self, outcomes, *times)

    monkeypatch.setattr(LedgerWriter, "write", watched)
    report = deliver_mailing(engine, settings, mid, load_posts(settings))
    assert report.sent == 40
    received = [rcpt for message in smtp_server.received for rcpt in message.rcpt_tos]
    assert sorted(received) == sorted(f"r{i:03d}@example.org" for i in range(40))
    assert {row.status for row in ledger(engine).values()} == {"sent"}
    on_helper = {name for name in threads if name.startswith("commits")}
    if engine.dialect.name == "sqlite":
        assert not on_helper
    else:
        assert on_helper


@pytest.mark.parametrize("strategy", ["streams", "threaded"])
def test_the_wal_is_checkpointed_beside_the_commits_after_each_claim(
    sample_site: Path, smtp_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    # SQLite's autocheckpoint would run inside the commit that takes the WAL
    # past 1,000 pages (two fsyncs, in the way of the next final dot): the
    # feeder checkpoints after each claim instead, on its own thread.
    from newsletter.delivery.recorder import Recorder

    smtp_server.pipelining = strategy == "streams"
    settings = site_settings(
        sample_site,
        smtp_server,
        **{"delivery.strategy": strategy, "delivery.concurrency": 2},
    )
    engine = populate(settings, 30)
    mid = plan_mailing(engine, settings, POST, "sample")
    threads: list[str] = []
    claims: list[int] = []
    checkpoint, claim = Recorder.checkpoint, MailingPass.claim

    def watched(self: Recorder) -> None:
        threads.append(threading.current_thread().name)
        checkpoint(self)

    def counted(self: MailingPass, *args: Any, **kwargs: Any) -> Any:
        claims.append(1)
        return claim(self, *args, **kwargs)

    monkeypatch.setattr(Recorder, "checkpoint", watched)
    monkeypatch.setattr(MailingPass, "claim", counted)
    pass_ = MailingPass(engine, settings, _mailing(engine, mid), load_posts(settings))
    pass_.limit_batch(7)  # several claims
    report = pass_.run()
    assert report.sent == 30
    assert len(threads) == len(claims) >= 5
    main = threading.main_thread().name
    if strategy == "streams":  # the loop runs on the main thread, claims on "ledger"
        assert all(name.startswith("ledger") for name in threads)
    else:  # the feeder is the main thread; the workers commit
        assert set(threads) == {main}


@pytest.mark.parametrize("strategy", ["streams", "rounds", "threaded"])
def test_claims_start_small_and_double_up_to_the_cap(
    sample_site: Path, smtp_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    # The first claim small (the first message soon), then each full claim
    # twice the last, up to the cap: a claim's fixed cost spread wider.
    from newsletter.delivery import mailing_pass

    monkeypatch.setattr(mailing_pass, "FIRST_CLAIM", 3)
    monkeypatch.setattr(mailing_pass, "CLAIM_CAP", 100)
    settings = site_settings(
        sample_site, smtp_server, **{"delivery.strategy": strategy, "delivery.concurrency": 1}
    )
    engine = populate(settings, 70)
    mid = plan_mailing(engine, settings, POST, "sample")
    limits: list[int] = []
    claim = MailingPass.claim

    def counted(self: MailingPass, limit: int, *args: Any, **kwargs: Any) -> Any:
        limits.append(limit)
        return claim(self, limit, *args, **kwargs)

    monkeypatch.setattr(MailingPass, "claim", counted)
    pass_ = MailingPass(engine, settings, _mailing(engine, mid), load_posts(settings))
    assert (pass_.batch, pass_.batch_cap) == (8, 100)  # concurrency 1: 8 rows at least
    report = pass_.run()
    assert report.sent == 70
    assert sorted(collections.Counter(smtp_server.recipients()).values()) == [1] * 70
    # 8 + 16 + 32 = 56; 64 asked, 14 taken: a short claim does not grow the next.
    assert limits == [8, 16, 32, 64, 64]
    pass_._grow(64, 64)
    assert pass_.batch == 100  # not 128: the cap
    # A rate limit caps the growth: never more than a quarter lease's worth.
    slow = site_settings(
        sample_site,
        smtp_server,
        **{
            "delivery.rate_per_second": 0.5,
            "delivery.lease_seconds": 60,
            "delivery.concurrency": 1,
        },
    )
    capped = MailingPass(engine, slow, _mailing(engine, mid), load_posts(slow))
    assert (capped.batch, capped.batch_cap) == (7, 7)
    capped.limit_batch(5)  # a split pass's share caps it too
    assert (capped.batch, capped.batch_cap) == (5, 5)


@pytest.mark.usefixtures("each_loop")
def test_a_commit_blocked_by_a_claim_goes_when_the_claim_ends(
    sample_site: Path, smtp_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A claim holds the write lock; a commit asked for meanwhile is tried
    # again on a timer (1 ms), or at once when the claim gives the lock back.
    # With the timer made endless, only the second way can finish the pass.
    from newsletter.delivery import streams
    from newsletter.delivery.recorder import Recorder
    from newsletter.store import journal

    # The group commits themselves: without the outcome journal that a
    # SQLite file's pass keeps (store.journal), as on an in-memory database.
    monkeypatch.setattr(journal, "folder_of", lambda _engine: None)
    smtp_server.pipelining = True
    settings = streams_settings(sample_site, smtp_server, **{"delivery.concurrency": 2})
    engine = populate(settings, 40)
    mid = plan_mailing(engine, settings, POST, "sample")
    claim, try_flush = q.claim, Recorder.try_flush
    blocked: list[int] = []

    def slow_claim(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.2)  # under the write lock, while the connections send
        return claim(*args, **kwargs)

    def counted(self: Recorder) -> bool:
        done = try_flush(self)
        if not done:
            blocked.append(1)
        return done

    monkeypatch.setattr(q, "claim", slow_claim)
    monkeypatch.setattr(Recorder, "try_flush", counted)
    monkeypatch.setattr(streams, "RETRY_COMMIT", 3600.0)
    pass_ = MailingPass(engine, settings, _mailing(engine, mid), load_posts(settings))
    pass_.limit_batch(10)  # claims ahead while messages go out
    finished = threading.Event()
    result: list[Any] = []
    runner = threading.Thread(target=lambda: (result.append(pass_.run()), finished.set()))
    runner.daemon = True
    runner.start()
    assert finished.wait(30), "a blocked commit waited for its retry timer"
    assert blocked, "no commit met a claim: the test proves nothing"
    assert result[0].sent == 40
    received = [rcpt for message in smtp_server.received for rcpt in message.rcpt_tos]
    assert sorted(received) == sorted(f"r{i:03d}@example.org" for i in range(40))
    assert {row.status for row in ledger(engine).values()} == {"sent"}


def _mailing(engine: Any, mid: int) -> q.MailingRow:
    with engine.connect() as conn:
        row = q.get_mailing(conn, mid)
    assert row is not None
    return row


DOTTY_POST = """---
layout: post
title: "Dots"
date: 2024-12-20 07:30:00 +0000
---

Lines that start with a dot:

.hidden

.

..two

and a last one
.
"""


@pytest.mark.parametrize(
    ("strategy", "pipelining"),
    [("streams", True), ("streams", False), ("threaded", False), ("threaded", True)],
)
def test_the_server_receives_exactly_the_personalised_message(
    sample_site: Path, smtp_server: SmtpTestServer, strategy: str, pipelining: bool
) -> None:
    # SMTP transports send DATA content stuffed from the template's pre-stuffed
    # segments (MessageTemplate.data), not the whole message stuffed per send:
    # the server must unstuff it back to the very bytes `personalise` makes.
    from sqlalchemy import select

    from newsletter.delivery.outgoing import MessageContext, build_template
    from newsletter.store.schema import deliveries, subscribers

    (sample_site / "posts" / "2024-12-20-dots.md").write_text(DOTTY_POST)
    smtp_server.pipelining = pipelining
    settings = site_settings(
        sample_site, smtp_server, **{"delivery.strategy": strategy, "delivery.concurrency": 2}
    )
    engine = populate(settings, 6)
    posts = load_posts(settings)
    mid = plan_mailing(engine, settings, "dots", "sample")
    report = deliver_mailing(engine, settings, mid, posts)
    assert report.sent == 6
    row = _mailing(engine, mid)
    context = MessageContext(settings, row, build_template(settings, row, posts), None, engine)
    query = (
        select(
            deliveries.c.id,
            deliveries.c.subscriber_id,
            subscribers.c.uid,
            deliveries.c.email,
            subscribers.c.name,
            deliveries.c.attempts,
            deliveries.c.message_id,
        )
        .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
        .where(deliveries.c.mailing_id == mid)
    )
    with engine.connect() as conn:
        expected = {r.email: context.message(q.Claimed(*r)) for r in conn.execute(query)}
    assert any(b"\r\n." in message for message in expected.values())

    def undated(message: bytes) -> bytes:  # each template build has its own Date
        return re.sub(rb"^Date: [^\r]*\r\n", b"", message)

    assert len(smtp_server.received) == 6
    for message in smtp_server.received:
        (rcpt,) = message.rcpt_tos
        assert undated(message.data) == undated(expected[rcpt])


def test_the_message_after_next_is_built_while_the_server_works(
    sample_site: Path, smtp_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With one connection nothing else overlaps the wait for a reply: the
    # message after the one announced behind the dot is personalised then
    # (StreamSmtp.send's `prepare`), not after the reply came.  The server
    # holds its reply to r001's dot until r003 has been built: only the
    # look-ahead builds it then (without it, r003 is built after that reply
    # and the server gives up waiting).  No clock decides it.
    smtp_server.pipelining = True
    built = built_events(monkeypatch)
    seen: list[tuple[bool, bool]] = []
    handle_data = _Handler.handle_DATA

    async def held_data(self: _Handler, smtp: Any, session: Any, envelope: Any) -> str:
        if "r001@example.org" in envelope.rcpt_tos:
            deadline = time.monotonic() + HOLD
            while not built["r003@example.org"].is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            seen.append((built["r003@example.org"].is_set(), built["r004@example.org"].is_set()))
        return await handle_data(self, smtp, session, envelope)

    monkeypatch.setattr(_Handler, "handle_DATA", held_data)
    settings = streams_settings(
        sample_site, smtp_server, **{"delivery.concurrency": 1, "smtp.timeout": 3 * HOLD}
    )
    engine = populate(settings, 5)
    mid = plan_mailing(engine, settings, POST, "sample")
    report = deliver_mailing(engine, settings, mid, load_posts(settings))
    assert report.sent == 5
    # r002's envelope rode behind r001's dot; r003 was built while r001's
    # reply was held; r004 only after it (one message ahead, no more).
    assert seen == [(True, False)]


def test_a_message_that_cannot_be_built_ahead_fails_the_pass_cleanly(
    sample_site: Path, smtp_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Building r003 fails while r001's reply is awaited (`prepare`): the error
    # is raised where r003 is taken (before r002 goes out, as when it was built
    # then), never between r001's dot and its reply, which is still recorded.
    smtp_server.pipelining = True
    failing_build(monkeypatch, "r003@example.org")
    settings = streams_settings(sample_site, smtp_server, **{"delivery.concurrency": 1})
    engine = populate(settings, 6)
    nothing_lost_by_a_failed_build(engine, settings, smtp_server, "r003@example.org")


def test_a_message_built_ahead_is_sent_when_no_other_was_queued(
    sample_site: Path, smtp_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # r002 goes out with nothing queued behind it (the next claim is slow);
    # that claim lands while r002's envelope replies are awaited, so r003 is
    # built ahead once r002's dot is written.  It must be the next one sent,
    # not left in hand when the connection looks for work (it was: 5 of 6).
    import asyncio

    from newsletter.delivery.transports.smtp_stream import StreamSmtp

    smtp_server.pipelining = True
    claim, pipelined = MailingPass.claim, StreamSmtp._pipelined
    claims: list[int] = []

    def slow_claim(self: MailingPass, *args: Any, **kwargs: Any) -> Any:
        claims.append(1)
        if len(claims) > 1:
            time.sleep(0.1)
        return claim(self, *args, **kwargs)

    async def slow_envelope(self: StreamSmtp, proto: Any, recipient: str) -> Any:
        if recipient == "r002@example.org":
            await asyncio.sleep(0.4)
        return await pipelined(self, proto, recipient)

    monkeypatch.setattr(MailingPass, "claim", slow_claim)
    monkeypatch.setattr(StreamSmtp, "_pipelined", slow_envelope)
    settings = streams_settings(sample_site, smtp_server, **{"delivery.concurrency": 1})
    engine = populate(settings, 6)
    mid = plan_mailing(engine, settings, POST, "sample")
    pass_ = MailingPass(engine, settings, _mailing(engine, mid), load_posts(settings))
    pass_.limit_batch(3)
    report = pass_.run()
    assert report.sent == 6
    assert smtp_server.recipients() == [f"r{i:03d}@example.org" for i in range(6)]
