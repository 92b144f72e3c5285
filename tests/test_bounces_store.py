"""What the bounce box does with a report, on SQLite and on PostgreSQL: whom it
trusts (VERP tokens that fail their check) and when a report happened."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from bounce_support import BOUNCE_ADDRESS, Sent, drop, maildir, send_mailing, status_of
from click.testing import CliRunner
from sqlalchemy import select

from newsletter.audience import members as subs
from newsletter.cli import main
from newsletter.delivery.bouncebox import process_bounces
from newsletter.store.schema import bounce_events

# On SQLite and on PostgreSQL (see conftest.database_url).
pytestmark = pytest.mark.usefixtures("database_env")


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "bounce-test-secret")


@pytest.fixture
def sent(sample_site: Path) -> Sent:
    return send_mailing(sample_site, 4, **{"bounces.maildir": str(maildir(sample_site / "box"))})


def events_of(sent: Sent) -> list[tuple[str, str]]:
    with sent.engine.connect() as conn:
        return [(r.email, r.kind) for r in conn.execute(select(bounce_events))]


# --------------------------------------------------------------------------- VERP tokens

FORGED = "bounces+d4294967298-aaaaaaaaaaaaaaaa@example.com"

DSN_TO = """\
From: MAILER-DAEMON@mx.example.net
To: {to}
Subject: Undelivered Mail Returned to Sender
Message-ID: <{mid}@mx.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="F"

--F
Content-Type: text/plain

Your message could not be delivered.

--F
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; {rcpt}
Action: failed
Status: 5.1.1

--F--
"""


def dsn_to(to: str, rcpt: str, mid: str) -> bytes:
    return DSN_TO.format(to=to, rcpt=rcpt, mid=mid).replace("\n", "\r\n").encode()


def test_a_report_whose_verp_token_fails_its_check_is_not_acted_upon(
    sent: Sent, sample_site: Path
) -> None:
    # Anyone could suppress any subscriber: the forged token was passed over
    # and the report's Final-Recipient address trusted instead.
    box = sample_site / "box"
    drop(box, "forged", dsn_to(FORGED, "r1@example.org", "forged"))
    run = process_bounces(sent.engine, sent.settings)
    assert (run.read, run.hard, run.suppressed, run.unknown) == (1, 0, (), ())
    (line,) = run.unverified
    assert line.startswith("r1@example.org: VERP token d4294967298-aaaaaaaaaaaaaaaa")
    assert "not acted upon" in line and "<forged@mx.example.net>" in line
    assert status_of(sent, "r1@example.org") == "active"
    assert events_of(sent) == []
    assert list((box / ".newsletter-processed" / "cur").iterdir())  # filed, kept


def test_reports_without_a_token_still_use_the_fallbacks(sent: Sent, sample_site: Path) -> None:
    box = sample_site / "box"
    # To the bare bounce address (send --test, or a server that dropped the
    # VERP part): the recipient address decides, as documented.
    drop(box, "a-bare", dsn_to(BOUNCE_ADDRESS, "r1@example.org", "bare"))
    # A genuine token beside a forged one: the genuine one decides (r2's delivery).
    genuine = sent.by_email["r2@example.org"].verp
    drop(box, "b-both", dsn_to(f"{FORGED}, {genuine}", "r3@example.org", "both"))
    run = process_bounces(sent.engine, sent.settings)
    assert sorted(run.suppressed) == ["r1@example.org", "r2@example.org"]
    assert run.unverified == ()
    assert status_of(sent, "r3@example.org") == "active"


def test_the_bounces_command_says_which_report_it_did_not_trust(
    sent: Sent, sample_site: Path
) -> None:
    config = sample_site / "newsletter.toml"
    config.write_text(
        config.read_text() + f'\n[bounces]\naddress = "{BOUNCE_ADDRESS}"\nmaildir = "box"\n'
    )
    drop(sample_site / "box", "forged", dsn_to(FORGED, "r1@example.org", "forged"))
    result = CliRunner().invoke(main, ["bounces"])
    assert result.exit_code == 0, result.output
    assert "suppressed" not in result.output
    assert (
        "unverified: r1@example.org: VERP token d4294967298-aaaaaaaaaaaaaaaa fails its check"
        in result.output
    )
    assert result.output.strip().endswith("0 not understood, 1 unverified")


# --------------------------------------------------------------------------- when


def soft_report(
    sent: Sent, n: int, *, date: str | None = None, arrival: str | None = None
) -> bytes:
    """r0's 4.4.7 "gave up" DSN, with a Date header and an Arrival-Date as given."""
    text = sent.fill("dsn-soft-gave-up.eml", "r0@example.org", n=n)
    if arrival:
        text = text.replace(
            b"Reporting-MTA: dns; mx.example.net\n",
            b"Reporting-MTA: dns; mx.example.net\nArrival-Date: " + arrival.encode() + b"\n",
        )
    return (f"Date: {date}\n".encode() if date else b"") + text


def received(sent: Sent) -> list[datetime]:
    with sent.engine.connect() as conn:
        return sorted(conn.scalars(select(bounce_events.c.received_at)))


def test_soft_bounces_are_counted_when_they_happened_not_when_read(
    sent: Sent, sample_site: Path
) -> None:
    # Three soft bounces weeks apart, read in one run: "3 soft bounces in 14 days".
    box = sample_site / "box"
    dates = ["Mon, 01 Sep 2025 08:00:00 +0000", "Mon, 06 Oct 2025 08:00:00 +0000",
             "Mon, 10 Nov 2025 08:00:00 +0100"]  # fmt: skip
    for n, date in enumerate(dates):
        drop(box, f"soft{n}", soft_report(sent, n, date=date))
    read_at = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)
    run = process_bounces(sent.engine, sent.settings, at=read_at)
    assert (run.soft, run.suppressed) == (3, ())
    assert status_of(sent, "r0@example.org") == "active"
    assert received(sent) == [
        datetime(2025, 9, 1, 8, tzinfo=UTC), datetime(2025, 10, 6, 8, tzinfo=UTC),
        datetime(2025, 11, 10, 7, tzinfo=UTC),
    ]  # fmt: skip


def test_soft_bounces_within_the_window_suppress_in_any_order_read(
    sent: Sent, sample_site: Path
) -> None:
    # The mailbox need not hold them in the order they happened in: the last
    # one read (5 Nov) is between the other two, all within 14 days.
    box = sample_site / "box"
    for n, day in enumerate((10, 1, 5)):
        drop(box, f"soft{n}", soft_report(sent, n, date=f"{day:02d} Nov 2025 08:00:00 +0000"))
    run = process_bounces(sent.engine, sent.settings, at=datetime(2025, 11, 20, tzinfo=UTC))
    assert run.suppressed == ("r0@example.org",)
    member = subs.get_by_email(sent.engine, "r0@example.org")
    assert member is not None and "3 soft bounces in 14 days" in (member.status_reason or "")


def test_soft_bounces_read_out_of_order_are_not_counted_together_when_apart(
    sent: Sent, sample_site: Path
) -> None:
    # Read last, the 1 Sep report is months before the other two: no window holds all three.
    box = sample_site / "box"
    for n, date in enumerate(("10 Nov 2025", "12 Nov 2025", "01 Sep 2025")):
        drop(box, f"soft{n}", soft_report(sent, n, date=f"{date} 08:00:00 +0000"))
    run = process_bounces(sent.engine, sent.settings, at=datetime(2025, 11, 20, tzinfo=UTC))
    assert (run.soft, run.suppressed) == (3, ())


def test_a_report_without_a_plausible_date_counts_when_read(sent: Sent, sample_site: Path) -> None:
    box = sample_site / "box"
    read_at = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)
    # The DSN's Arrival-Date when there is no Date header.
    drop(box, "a", soft_report(sent, 1, arrival="Wed, 19 Nov 2025 10:00:00 -0500 (EST)"))
    drop(box, "b", soft_report(sent, 2, date="Fri, 01 Jan 2100 00:00:00 +0000"))  # future
    drop(box, "c", soft_report(sent, 3, date="Thu, 01 Jan 1970 00:00:00 +0000"))  # a reset clock
    drop(box, "d", soft_report(sent, 4, date="the day before yesterday"))
    run = process_bounces(sent.engine, sent.settings, at=read_at)
    assert run.soft == 4
    assert received(sent) == [datetime(2025, 11, 19, 15, tzinfo=UTC)] + [read_at] * 3
