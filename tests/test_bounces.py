"""Bounces and complaints: VERP senders, DSN/ARF parsing in every shape, a Maildir box."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from bounce_support import (
    BOUNCE_ADDRESS,
    FIXTURES,
    Sent,
    drop,
    maildir,
    send_mailing,
    status_of,
)
from click.testing import CliRunner
from sqlalchemy import Engine, select

from newsletter.audience import members as subs
from newsletter.cli import main
from newsletter.config import Settings, load_settings, utcnow
from newsletter.delivery.bouncebox import MaildirBox, process_bounces
from newsletter.delivery.bounces import UnparseableReport, parse_report, verify_verp, verp_token
from newsletter.errors import ConfigError
from newsletter.store.schema import bounce_events, deliveries


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "bounce-test-secret")


@pytest.fixture
def sent(sample_site: Path) -> Sent:
    return send_mailing(sample_site, 10, **{"bounces.maildir": str(maildir(sample_site / "box"))})


# --------------------------------------------------------------------------- VERP


def test_verp_tokens_verify_and_refuse_forgeries() -> None:
    token = verp_token(b"k", 1234)
    assert re.fullmatch(r"d1234-[a-z2-7]{16}", token)
    assert verify_verp(b"k", token) == 1234
    assert verify_verp(b"k", token.upper()) == 1234  # a server that folded the case
    assert verify_verp(b"other", token) is None
    assert verify_verp(b"k", token.replace("d1234", "d1235")) is None
    assert verify_verp(b"k", "d1234-") is None and verify_verp(b"k", "garbage") is None


def test_each_delivery_has_its_own_signed_envelope_sender(sent: Sent) -> None:
    with sent.engine.connect() as conn:
        ids = {r.email: r.id for r in conn.execute(select(deliveries))}
    assert len(sent.by_email) == 10
    for email, mail in sent.by_email.items():
        local, _, domain = mail.verp.partition("@")
        assert domain == "example.com" and local.startswith("bounces+")
        assert len(local) <= 64  # RFC 5321 §4.5.3.1.1
        assert verify_verp(b"bounce-test-secret", local.removeprefix("bounces+")) == ids[email]


def test_the_bounce_address_is_validated(sample_site: Path) -> None:
    for bad in ("bounces+x@example.com", "not-an-address"):
        with pytest.raises(ConfigError, match="VERP adds one"):
            load_settings(sample_site / "newsletter.toml", {"bounces.address": bad})
    with pytest.raises(ConfigError, match="not both"):
        load_settings(
            sample_site / "newsletter.toml",
            {"bounces.maildir": "box", "bounces.imap_host": "imap.example.com"},
        )


# --------------------------------------------------------------------------- parsing


SHAPES = [
    ("dsn-postfix-hard.eml", "dsn", "hard", "5.1.1"),
    ("dsn-gmail-full-message.eml", "dsn", "hard", "5.1.1"),
    ("dsn-exchange-no-status.eml", "dsn", "hard", "5.5.0"),
    ("dsn-soft-gave-up.eml", "dsn", "soft", "4.4.7"),
    ("dsn-mailbox-full-5-2-2.eml", "dsn", "soft", "5.2.2"),
    ("exim-plain.eml", "exim", "hard", "5.1.1"),
    ("qmail-plain.eml", "qmail", "hard", "5.1.1"),
    ("arf-abuse.eml", "arf", "complaint", None),
    ("arf-redacted.eml", "arf", "complaint", None),
]


@pytest.mark.parametrize(("fixture", "shape", "kind", "status"), SHAPES)
def test_every_supported_shape_parses(
    sent: Sent, fixture: str, shape: str, kind: str, status: str | None
) -> None:
    report = parse_report(sent.fill(fixture, "r0@example.org"))
    assert report.shape == shape
    (event,) = report.events
    assert (event.kind, event.status) == (kind, status)
    if fixture != "arf-redacted.eml":
        assert event.email == "r0@example.org"
    # Each shape carries our VERP sender somewhere (envelope or returned headers)
    # except the redacted complaint, which only has the unsubscribe token.
    if fixture == "arf-redacted.eml":
        assert event.unsubscribe_token == sent.by_email["r0@example.org"].unsub
    else:
        assert sent.by_email["r0@example.org"].verp in (event.verp_text or "")


def test_a_delay_warning_is_a_report_with_no_bounce(sent: Sent) -> None:
    report = parse_report(sent.fill("dsn-delayed.eml", "r0@example.org"))
    assert report.shape == "dsn" and report.events == ()


def test_an_auto_reply_is_not_understood(sent: Sent) -> None:
    with pytest.raises(UnparseableReport, match="Out of office"):
        parse_report(sent.fill("auto-reply.eml", "r0@example.org"))
    with pytest.raises(UnparseableReport):
        parse_report(b"\x00\xff garbage without headers")


def test_every_fixture_is_covered() -> None:
    covered = {s[0] for s in SHAPES} | {"dsn-delayed.eml", "auto-reply.eml"}
    assert covered == {p.name for p in FIXTURES.glob("*.eml")}


# --------------------------------------------------------------------------- a Maildir box


def fill_box(sent: Sent, box: Path) -> None:
    plan = {
        "r0": "dsn-postfix-hard.eml",
        "r1": "dsn-gmail-full-message.eml",
        "r2": "dsn-exchange-no-status.eml",
        "r3": "exim-plain.eml",
        "r4": "qmail-plain.eml",
        "r5": "arf-abuse.eml",
        "r6": "arf-redacted.eml",
        "r7": "dsn-soft-gave-up.eml",
        "r8": "dsn-delayed.eml",
        "r9": "auto-reply.eml",
    }
    for who, fixture in plan.items():
        drop(box, f"{who}.{fixture}", sent.fill(fixture, f"{who}@example.org"))


def test_a_maildir_is_read_once_and_suppresses_the_right_addresses(
    sent: Sent, sample_site: Path
) -> None:
    box = sample_site / "box"
    fill_box(sent, box)
    run = process_bounces(sent.engine, sent.settings)
    assert (run.read, run.hard, run.soft, run.complaints, run.delays) == (10, 5, 1, 2, 1)
    assert [p.key for p in run.unparsed] == [str(box / "new" / "r9.auto-reply.eml")]
    statuses = {f"r{i}": status_of(sent, f"r{i}@example.org") for i in range(10)}
    assert statuses == {
        **{f"r{i}": "bounced" for i in range(5)},
        "r5": "complained",
        "r6": "complained",
        "r7": "active",  # one soft bounce: under the limit (3 in 14 days)
        "r8": "active",  # a delay warning changes nothing
        "r9": "active",
    }
    assert sorted(run.suppressed) == sorted(f"r{i}@example.org" for i in range(7))
    # Moved out of new/: understood ones to the processed folder, the other kept.
    assert list((box / "new").iterdir()) == []
    processed = sorted(p.name for p in (box / ".newsletter-processed" / "cur").iterdir())
    assert len(processed) == 9 and all(name.endswith(":2,S") for name in processed)
    (kept,) = (box / ".newsletter-unparsed" / "cur").iterdir()
    assert b"Out of office" in kept.read_bytes()
    # Every event is tied to the mailing and the delivery (VERP or Message-ID).
    with sent.engine.connect() as conn:
        rows = list(conn.execute(select(bounce_events)))
    assert len(rows) == 8
    assert {r.mailing_id for r in rows} == {sent.mailing_id} | {None}
    assert all(r.delivery_id is not None for r in rows if r.email != "r6@example.org")
    again = process_bounces(sent.engine, sent.settings)
    assert again.read == 0


def test_a_report_read_twice_is_recorded_once(sent: Sent, sample_site: Path) -> None:
    box = sample_site / "box"
    data = sent.fill("dsn-postfix-hard.eml", "r0@example.org")
    drop(box, "first", data)
    drop(box, "second", data)  # e.g. a crash after recording, before the move
    run = process_bounces(sent.engine, sent.settings)
    assert (run.read, run.hard) == (2, 1)
    with sent.engine.connect() as conn:
        assert len(list(conn.execute(select(bounce_events)))) == 1


def test_soft_bounces_suppress_after_the_limit_within_the_window(
    sample_site: Path,
) -> None:
    sent = send_mailing(
        sample_site, 2,
        **{"bounces.maildir": str(maildir(sample_site / "box")),
           "bounces.soft_limit": 2, "bounces.soft_days": 7},
    )  # fmt: skip
    box = sample_site / "box"
    start = utcnow()
    drop(box, "a1", sent.fill("dsn-soft-gave-up.eml", "r0@example.org", n=1))
    process_bounces(sent.engine, sent.settings, at=start)
    drop(box, "a2", sent.fill("dsn-soft-gave-up.eml", "r0@example.org", n=2))
    process_bounces(sent.engine, sent.settings, at=start + timedelta(days=10))
    assert status_of(sent, "r0@example.org") == "active"  # the first is out of the window
    drop(box, "a3", sent.fill("dsn-mailbox-full-5-2-2.eml", "r0@example.org", n=3))
    run = process_bounces(sent.engine, sent.settings, at=start + timedelta(days=12))
    assert run.suppressed == ("r0@example.org",)
    member = subs.get_by_email(sent.engine, "r0@example.org")
    assert member is not None and member.status == "bounced"
    assert "2 soft bounces in 7 days" in (member.status_reason or "")
    assert status_of(sent, "r1@example.org") == "active"


def test_a_forged_verp_token_is_not_trusted(sent: Sent, sample_site: Path) -> None:
    box = sample_site / "box"
    real = sent.by_email["r0@example.org"]
    # A report naming r0's delivery but with a token whose MAC is wrong, about
    # an address we never mailed: nobody is suppressed.
    forged = real.verp.replace(real.verp.split("-")[1][:4], "aaaa")
    data = sent.fill("exim-plain.eml", "r0@example.org")
    data = data.replace(real.verp.encode(), forged.encode())
    data = data.replace(b"r0@example.org", b"stranger@example.net")
    drop(box, "forged", data)
    run = process_bounces(sent.engine, sent.settings)
    assert run.unknown == () and run.suppressed == ()
    (unverified,) = run.unverified
    assert unverified.startswith("stranger@example.net: VERP token")
    assert status_of(sent, "r0@example.org") == "active"


# Headers that Python's email parser (3.11) fails on with an IndexError or an
# AttributeError instead of a defect: found by mutating the fixtures.
HOSTILE_HEADERS = [b"To: a@", b'To: "', b"To: a@[", b"To: =?utf-8?q?=ff?= <a@"]


@pytest.mark.parametrize("header", HOSTILE_HEADERS, ids=lambda h: h.decode())
def test_a_malformed_header_is_an_unparseable_report(sent: Sent, header: bytes) -> None:
    with pytest.raises(UnparseableReport, match="malformed"):
        parse_report(header + b"\r\n" + sent.fill("dsn-postfix-hard.eml", "r0@example.org"))


def test_a_malformed_report_is_set_aside_and_the_others_go_on(
    sent: Sent, sample_site: Path
) -> None:
    # One such message in the box stopped every read of it, pass after pass
    # (it stayed in new/): anyone could halt bounce handling with one email.
    box = sample_site / "box"
    drop(box, "a-hostile", b"To: a@\r\n" + sent.fill("dsn-postfix-hard.eml", "r1@example.org"))
    # A mangled header of the returned message: the report's own VERP address still counts.
    returned = sent.fill("dsn-gmail-full-message.eml", "r2@example.org")
    returned = returned.replace(b"\nSubject: How", b"\nMessage-ID: <\nSubject: How", 1)
    drop(box, "b-mangled-inside", returned)
    drop(box, "c-good", sent.fill("dsn-postfix-hard.eml", "r0@example.org"))
    run = process_bounces(sent.engine, sent.settings)
    assert (run.read, run.hard) == (3, 2)
    assert sorted(run.suppressed) == ["r0@example.org", "r2@example.org"]
    (hostile,) = run.unparsed
    assert Path(hostile.key).name == "a-hostile" and "malformed" in hostile.message
    assert status_of(sent, "r1@example.org") == "active"
    assert list((box / "new").iterdir()) == []
    assert len(list((box / ".newsletter-unparsed" / "cur").iterdir())) == 1


def test_a_message_filed_meanwhile_by_another_reader_is_skipped(
    sent: Sent, sample_site: Path
) -> None:
    # `newsletter bounces` run while the daemon reads the same Maildir: a
    # file listed by one can be gone (moved by the other) when it is read.
    box = sample_site / "box"
    for who in ("r0", "r1", "r2"):
        drop(box, who, sent.fill("dsn-postfix-hard.eml", f"{who}@example.org"))
    mailbox = MaildirBox(box, "newsletter-processed", "newsletter-unparsed")
    other = MaildirBox(box, "newsletter-processed", "newsletter-unparsed")

    class Racing(MaildirBox):
        def messages(self) -> Iterator[tuple[str, bytes]]:
            for n, (ref, data) in enumerate(mailbox.messages()):
                if n == 0:  # the other reader files r1 and r2 meanwhile
                    for who in ("r1", "r2"):
                        other.processed(str(box / "new" / who))
                yield ref, data

        def processed(self, ref: str) -> None:
            mailbox.processed(ref)
            mailbox.processed(ref)  # and a report both read: filed by the other first

    run = process_bounces(sent.engine, sent.settings, Racing(box, "p", "u"))
    assert (run.read, run.hard, run.suppressed) == (1, 1, ("r0@example.org",))
    assert list((box / "new").iterdir()) == []
    assert len(list((box / ".newsletter-processed" / "cur").iterdir())) == 3


def test_a_missing_maildir_is_a_config_error(sample_site: Path) -> None:
    with pytest.raises(ConfigError, match="not a Maildir"):
        MaildirBox(sample_site / "nowhere", "p", "u")


# --------------------------------------------------------------------------- commands


def write_config(site: Path) -> None:
    config = site / "newsletter.toml"
    config.write_text(
        config.read_text().replace(
            'url = "sqlite:///.newsletter/newsletter.db"', 'url = "sqlite:///db.sqlite"'
        )
        + f'\n[bounces]\naddress = "{BOUNCE_ADDRESS}"\nmaildir = "box"\n'
    )


def test_the_bounces_command_and_the_counts_in_status_and_lists(
    sent: Sent, sample_site: Path
) -> None:
    write_config(sample_site)
    fill_box(sent, sample_site / "box")
    result = CliRunner().invoke(main, ["bounces"])
    assert result.exit_code == 1, result.output  # one message not understood
    assert "suppressed r0@example.org" in result.output
    assert "unparsed: " in result.output and "r9.auto-reply.eml" in result.output
    assert result.output.strip().endswith(
        "10 message(s) read: 5 hard bounce(s), 1 soft, 2 complaint(s), "
        "1 delay warning(s), 1 not understood"
    )
    again = CliRunner().invoke(main, ["bounces", "--json"])
    assert again.exit_code == 0 and json.loads(again.output)["read"] == 0
    status = CliRunner().invoke(main, ["status"])
    assert "bounces: 5 hard, 1 soft; complaints: 1" in status.output, status.output
    data = json.loads(CliRunner().invoke(main, ["status", "--json"]).output)
    assert data["mailings"][0]["reports"] == {"hard": 5, "soft": 1, "complaint": 1}
    lists = json.loads(CliRunner().invoke(main, ["lists", "--json"]).output)
    sample = next(item for item in lists if item["name"] == "sample")
    assert sample["reports"] == {"hard": 5, "soft": 1, "complaint": 1}
    assert sample["counts"]["bounced"] == 5 and sample["counts"]["complained"] == 2
    table = CliRunner().invoke(main, ["lists"]).output
    assert "sample: reports read back: 5 hard bounces, 1 soft bounces, 1 complaints" in table


def test_each_daemon_pass_reads_the_bounce_box(sent: Sent, sample_site: Path) -> None:
    from newsletter.daemon.passes import run_pass

    drop(sample_site / "box", "hard", sent.fill("dsn-postfix-hard.eml", "r0@example.org"))
    drop(sample_site / "box", "junk", sent.fill("auto-reply.eml", "r0@example.org"))
    report = run_pass(sent.settings, sent.engine)
    assert status_of(sent, "r0@example.org") == "bounced"
    assert any("bounces:" in p and "Out of office" in p for p in report.problems)


def test_check_reports_bounce_settings_it_cannot_use(sample_site: Path) -> None:
    config = sample_site / "newsletter.toml"
    base = config.read_text()
    config.write_text(base + f'\n[bounces]\naddress = "{BOUNCE_ADDRESS}"\n')
    result = CliRunner().invoke(main, ["check"])
    assert "bounces.address: warning: bounces go to [bounces] address but nothing reads them" in (
        result.output
    )
    config.write_text(
        base + '\n[bounces]\nimap_host = "imap.example.com"\nusername = "b"\n'
        'password_env = "NEWSLETTER_TEST_UNSET_IMAP"\n'
    )
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 1
    assert "bounces.password_env: error: environment variable NEWSLETTER_TEST_UNSET_IMAP" in (
        result.output
    )


@pytest.mark.parametrize("pipelining", [False, True], ids=["threads", "rounds"])
def test_smtp_mail_from_is_the_verp_address_of_each_delivery(
    sample_site: Path, pipelining: bool
) -> None:
    from smtpserver import SmtpTestServer

    from newsletter.delivery.mailings import deliver_mailing, plan_mailing
    from newsletter.posts.collection import load_posts

    server = SmtpTestServer(pipelining=pipelining).start()
    try:
        settings = load_settings(
            sample_site / "newsletter.toml",
            {"database.url": f"sqlite:///{sample_site}/v.sqlite",
             "bounces.address": BOUNCE_ADDRESS, **server.settings_overrides()},
        )  # fmt: skip
        engine = open_store_for(settings, 4)
        mid = plan_mailing(engine, settings, "how-sleep-consolidates-memory", "sample")
        assert deliver_mailing(engine, settings, mid, load_posts(settings)).sent == 4
        with engine.connect() as conn:
            ids = {r.email: r.id for r in conn.execute(select(deliveries))}
        assert len(server.received) == 4
        for received in server.received:
            (rcpt,) = received.rcpt_tos
            local = received.mail_from.split("@")[0]
            assert verify_verp(b"bounce-test-secret", local.removeprefix("bounces+")) == ids[rcpt]
    finally:
        server.stop()


def open_store_for(settings: Settings, count: int) -> Engine:
    from newsletter.store import open_store

    engine = open_store(settings)
    subs.ensure_lists(engine, settings)
    for i in range(count):
        subs.add_subscriber(engine, f"v{i}@example.org", "sample")
    return engine
