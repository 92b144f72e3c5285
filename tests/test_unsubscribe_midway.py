"""Someone who leaves while a mailing is under way is skipped, even when the
pass had already claimed their row.

Before, whether a recipient may be mailed was asked only at claim time, and
a claim holds 200 to 1,600 rows (up to ~15 s of sending under a rate
limit): an unsubscribe committed meanwhile was ignored for everyone already
claimed.  Now the pass re-reads its claimed rows not yet begun every
second (`delivery.hand.RECHECK_EVERY`, one statement for all of them) and
skips those no longer mailable as a claim would have.  Driven from the
test: the server holds the first message's reply while the reader leaves,
until the ledger shows them skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from lease_support import READERS, Sending, status_of, wait_until
from smtpserver import SmtpTestServer
from sqlalchemy import Engine
from test_delivery_smtp import POST, populate, site_settings

from newsletter.audience import members as subs
from newsletter.delivery.mailings import plan_mailing

LEAVER = READERS[3]


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "unsubscribe-midway-secret")


def _subscriber(engine: Engine) -> int:
    found = subs.get_by_email(engine, LEAVER)
    assert found is not None
    return found.id


LEAVING: dict[str, Callable[[Engine], object]] = {
    # `subscribers unsubscribe`, the one-click link: every list
    "unsubscribe": lambda e: subs.unsubscribe(e, _subscriber(e), None, reason="asked"),
    # unsubscribed from this list only (an import saying so, the preferences page)
    "list": lambda e: subs.unsubscribe(e, _subscriber(e), "sample", reason="asked"),
    "remove": lambda e: subs.remove_member(e, _subscriber(e), "sample"),
    "bounce": lambda e: subs.mark_bounced(e, _subscriber(e), reason="550 5.1.1 no such user"),
}


@pytest.mark.parametrize(
    ("strategy", "leaving"),
    [
        ("streams", "unsubscribe"),
        ("threaded", "unsubscribe"),
        ("rounds", "unsubscribe"),
        ("streams", "list"),
        ("streams", "remove"),
        ("threaded", "bounce"),
    ],
)
def test_a_reader_who_leaves_after_the_claim_is_skipped(
    sample_site: Path,
    smtp_server: SmtpTestServer,
    database_url: str,
    strategy: str,
    leaving: str,
) -> None:
    smtp_server.pipelining = strategy != "threaded"
    smtp_server.hold(after=1)  # r000 on the wire; the others claimed, waiting
    settings = site_settings(
        sample_site,
        smtp_server,
        **{
            "database.url": database_url,
            "delivery.strategy": strategy,
            "delivery.concurrency": 1,
        },
    )
    engine = populate(settings, len(READERS))
    mid = plan_mailing(engine, settings, POST, "sample")
    sending = Sending(engine, settings, mid)
    wait_until(lambda: len(smtp_server.received) >= 1, "the first message")
    assert status_of(engine, LEAVER) == "sending"  # claimed before they left
    LEAVING[leaving](engine)
    wait_until(lambda: status_of(engine, LEAVER) == "skipped", "the claimed row skipped")
    smtp_server.release()
    report = sending.finish()
    received = smtp_server.recipients()
    assert sorted(received) == [r for r in READERS if r != LEAVER], received
    assert (report.sent, report.skipped) == (5, 1), report


@pytest.mark.parametrize("strategy", ["streams", "threaded", "rounds"])
def test_a_reader_who_leaves_while_their_message_waits_out_a_throttle_is_skipped(
    sample_site: Path, smtp_server: SmtpTestServer, database_url: str, strategy: str
) -> None:
    """The server answers the leaver's message "451 4.7.0" (slow down): the pass
    pauses (`backoff_base`, 6 s) and tries it again.  Before, the row counted
    as begun from its first try, the re-check passed it over, and the retry
    mailed someone who had left seconds before."""
    smtp_server.pipelining = strategy != "threaded"
    smtp_server.script(LEAVER, "451 4.7.0 Throttling: slow down", stage="data", times=1)
    settings = site_settings(
        sample_site,
        smtp_server,
        **{
            "database.url": database_url,
            "delivery.strategy": strategy,
            "delivery.concurrency": 1,
            "delivery.backoff_base": 6.0,
        },
    )
    engine = populate(settings, len(READERS))
    mid = plan_mailing(engine, settings, POST, "sample")
    sending = Sending(engine, settings, mid)
    wait_until(lambda: len(smtp_server.refused) >= 1, "the throttled message")
    LEAVING["unsubscribe"](engine)
    wait_until(lambda: status_of(engine, LEAVER) != "sending", "the leaver's outcome")
    assert status_of(engine, LEAVER) == "skipped"
    report = sending.finish()
    received = smtp_server.recipients()
    assert sorted(received) == [r for r in READERS if r != LEAVER], received
    assert report.skipped == 1, report
