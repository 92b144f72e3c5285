"""The thread-per-connection strategy's overlaps: work done while the server answers.

Without PIPELINING a message costs four round trips; the worker builds the
next message while the server answers MAIL (threaded.Ahead), and commits the
previous outcome then too, or, with several connections, after the server's
354 to DATA (grouped with the other workers' outcomes), instead of adding
that work to the round trips.  These tests pin where that work happens, that
the commit still comes before the final dot, and that a failure in it loses
nothing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from smtpserver import DROP, SmtpTestServer, _Handler
from test_delivery_smtp import ledger, populate, recorded, site_settings
from test_delivery_streams import (
    HOLD,
    built_events,
    failing_build,
    nothing_lost_by_a_failed_build,
)

from newsletter.config import Settings
from newsletter.delivery.mailings import deliver_mailing, plan_mailing
from newsletter.posts.collection import load_posts

POST = "how-sleep-consolidates-memory"


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "threaded-test-secret")


def threaded(site: Path, server: SmtpTestServer) -> Settings:
    # A client timeout well past HOLD: the server's answer is late, never lost.
    return site_settings(
        site,
        server,
        **{"delivery.strategy": "threaded", "delivery.concurrency": 1, "smtp.timeout": 3 * HOLD},
    )


def hold_second_mail(monkeypatch: pytest.MonkeyPatch, until: threading.Event) -> list[bool]:
    """The server holds its answer to the second MAIL (r001's) until `until` is
    set (at most HOLD seconds); what it saw: whether `until` came first."""
    seen: list[bool] = []
    mail = _Handler.handle_MAIL

    async def held_mail(self: _Handler, *args: Any) -> str:
        self.server.mails = getattr(self.server, "mails", 0) + 1
        if self.server.mails == 2:
            deadline = time.monotonic() + HOLD
            while not until.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            seen.append(until.is_set())
        return await mail(self, *args)

    monkeypatch.setattr(_Handler, "handle_MAIL", held_mail)
    return seen


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
def test_the_next_message_is_built_while_the_server_answers_mail(
    sample_site: Path,
    smtp_server: SmtpTestServer,
    monkeypatch: pytest.MonkeyPatch,
    pipelining: bool,
) -> None:
    smtp_server.pipelining = pipelining
    built = built_events(monkeypatch)
    seen = hold_second_mail(monkeypatch, built["r002@example.org"])
    settings = threaded(sample_site, smtp_server)
    engine = populate(settings, 4)
    mid = plan_mailing(engine, settings, POST, "sample")
    report = deliver_mailing(engine, settings, mid, load_posts(settings))
    assert report.sent == 4
    assert smtp_server.recipients() == [f"r{i:03d}@example.org" for i in range(4)]
    # r001's MAIL is not answered until r002 is built: only the look-ahead
    # builds it then (without it, r002 is built after r001's reply, and the
    # server gives up waiting: False).  No clock decides it.
    assert seen == [True]
    assert all(row.status == "sent" for row in ledger(engine).values())


def test_a_message_that_cannot_be_built_ahead_fails_the_pass_cleanly(
    sample_site: Path, smtp_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Building r002 fails while r001's MAIL is answered: the error is raised
    # where r002 is taken (as when it was built then), r001 still goes out
    # and is recorded, and nothing after it is sent.
    failing_build(monkeypatch, "r002@example.org")
    settings = threaded(sample_site, smtp_server)
    engine = populate(settings, 5)
    nothing_lost_by_a_failed_build(engine, settings, smtp_server, "r002@example.org")


@pytest.mark.parametrize("faults", [False, True], ids=["clean", "faults"])
def test_with_several_connections_the_previous_outcome_is_committed_before_the_next_dot(
    sample_site: Path, smtp_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch, faults: bool
) -> None:
    """Invariant 2 with the threads' group commit: with several connections a
    worker commits its previous outcome only once the server has answered DATA
    (threaded.py, `late`), still before the final dot.  When the server has a
    message whole, the one before it on that connection is in the ledger; with
    451/550 refusals and a dropped connection each recipient is recorded once."""
    smtp_server.pipelining = False
    if faults:
        smtp_server.script("r005@example.org", "451 4.3.0 Try later", times=1)
        smtp_server.script("r011@example.org", "550 5.1.1 No such user")
        smtp_server.script("r017@example.org", DROP, stage="data", times=1)
    settings = site_settings(
        sample_site, smtp_server, **{"delivery.strategy": "threaded", "delivery.concurrency": 4}
    )
    engine = populate(settings, 40)
    mid = plan_mailing(engine, settings, POST, "sample")
    last: dict[int, str] = {}  # connection (aiosmtpd session) -> its last whole message
    unrecorded: list[str] = []
    data = _Handler.handle_DATA

    async def checked(self: _Handler, smtp: Any, session: Any, envelope: Any) -> str:
        previous = last.get(id(session))
        if previous is not None:
            status = recorded(engine)[previous]
            if status not in ("sent", "failed", "deferred"):
                unrecorded.append(f"{previous}: {status}")
        last[id(session)] = envelope.rcpt_tos[0]
        return await data(self, smtp, session, envelope)

    monkeypatch.setattr(_Handler, "handle_DATA", checked)
    report = deliver_mailing(engine, settings, mid, load_posts(settings), wait=5)
    assert unrecorded == []
    assert len(last) >= 2  # several connections took part
    rows = ledger(engine)
    got = sorted(smtp_server.recipients())
    if not faults:
        assert report.sent == 40 and got == [f"r{i:03d}@example.org" for i in range(40)]
        return
    assert rows["r011@example.org"].status == "failed"
    assert report.sent == 39 and report.failed == 1
    # Each recipient once: the 451 and the dropped one went again later, once.
    assert got == sorted(f"r{i:03d}@example.org" for i in range(40) if i != 11)
    assert rows["r005@example.org"].attempts == 2 and rows["r017@example.org"].attempts == 2
