"""The thread-per-connection strategy's overlaps: work done while the server answers.

Without PIPELINING a message costs four round trips; the worker commits the
previous outcome and builds the next message while the server answers MAIL
(threaded.Ahead), instead of adding that work to the round trips.  These
tests pin where that work happens and that a failure in it loses nothing.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from smtpserver import SmtpTestServer, _Handler
from test_delivery_smtp import ledger, populate, site_settings
from test_delivery_streams import failing_build, nothing_lost_by_a_failed_build, timed_builds

from newsletter.config import Settings
from newsletter.delivery.mailings import deliver_mailing, plan_mailing
from newsletter.posts.collection import load_posts

POST = "how-sleep-consolidates-memory"
STALL = 0.4  # seconds the server holds its answer to one MAIL


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "threaded-test-secret")


def threaded(site: Path, server: SmtpTestServer) -> Settings:
    return site_settings(
        site, server, **{"delivery.strategy": "threaded", "delivery.concurrency": 1}
    )


def stall_second_mail(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The server holds its answer to the second MAIL (r001's); start and end, timed."""
    window: list[float] = []
    mail = _Handler.handle_MAIL

    async def slow_mail(self: _Handler, *args: Any) -> str:
        self.server.mails = getattr(self.server, "mails", 0) + 1
        if self.server.mails == 2:
            window.append(time.monotonic())
            await asyncio.sleep(STALL)
            window.append(time.monotonic())
        return await mail(self, *args)

    monkeypatch.setattr(_Handler, "handle_MAIL", slow_mail)
    return window


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
def test_the_next_message_is_built_while_the_server_answers_mail(
    sample_site: Path,
    smtp_server: SmtpTestServer,
    monkeypatch: pytest.MonkeyPatch,
    pipelining: bool,
) -> None:
    smtp_server.pipelining = pipelining
    window = stall_second_mail(monkeypatch)
    built = timed_builds(monkeypatch)
    settings = threaded(sample_site, smtp_server)
    engine = populate(settings, 4)
    mid = plan_mailing(engine, settings, POST, "sample")
    report = deliver_mailing(engine, settings, mid, load_posts(settings))
    assert report.sent == 4
    assert smtp_server.recipients() == [f"r{i:03d}@example.org" for i in range(4)]
    start, end = window
    # r001's MAIL is answered late; r002 was built meanwhile (without the
    # look-ahead it would be built after r001's reply, well after `end`).
    assert start < built["r002@example.org"] < end
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
