"""What the bounce box does with a report, on SQLite and on PostgreSQL: whom it
trusts (VERP tokens that fail their check) and when a report happened."""

from __future__ import annotations

from pathlib import Path

import pytest
from bounce_support import BOUNCE_ADDRESS, Sent, drop, maildir, send_mailing
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


def status_of(sent: Sent, email: str) -> str:
    row = subs.get_by_email(sent.engine, email)
    assert row is not None
    return row.status


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
