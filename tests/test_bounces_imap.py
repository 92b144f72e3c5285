"""Bounces read over IMAP with TLS from a real dovecot on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from bounce_support import Sent, send_mailing
from imapserver import DovecotServer, available

from newsletter.audience import members as subs
from newsletter.config import with_overrides
from newsletter.delivery.bouncebox import ImapBox, process_bounces
from newsletter.errors import ConfigError, DeliveryError

pytestmark = pytest.mark.skipif(not available(), reason="dovecot (dovecot-imapd) not installed")

FIXTURES = {
    "r0": "dsn-postfix-hard.eml",
    "r1": "dsn-exchange-no-status.eml",
    "r2": "exim-plain.eml",
    "r3": "arf-abuse.eml",
    "r4": "dsn-delayed.eml",
    "r5": "auto-reply.eml",
}


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "bounce-test-secret")
    monkeypatch.setenv("NEWSLETTER_IMAP_PASSWORD", "imap-test-password")


def start(tmp_path: Path, **kwargs: object) -> Iterator[DovecotServer]:
    server = DovecotServer(tmp_path / "imap", **kwargs).start()  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def imap(tmp_path: Path) -> Iterator[DovecotServer]:
    yield from start(tmp_path)


@pytest.fixture
def imap_without_move(tmp_path: Path) -> Iterator[DovecotServer]:
    yield from start(tmp_path, capabilities_off=("MOVE",))


def fill(server: DovecotServer, sent: Sent) -> None:
    for who, fixture in FIXTURES.items():
        server.append(sent.fill(fixture, f"{who}@example.org"))


def statuses(sent: Sent) -> dict[str, str]:
    found = {}
    for who in FIXTURES:
        row = subs.get_by_email(sent.engine, f"{who}@example.org")
        assert row is not None
        found[who] = row.status
    return found


@pytest.mark.parametrize("server_kind", ["move", "copy-expunge"])
def test_bounces_are_read_over_imap_once_and_filed(
    sample_site: Path, request: pytest.FixtureRequest, server_kind: str
) -> None:
    server: DovecotServer = request.getfixturevalue(
        "imap" if server_kind == "move" else "imap_without_move"
    )
    sent = send_mailing(sample_site, 6, **server.settings_overrides())
    fill(server, sent)
    run = process_bounces(sent.engine, sent.settings)
    assert (run.read, run.hard, run.complaints, run.delays) == (6, 3, 1, 1)
    assert len(run.unparsed) == 1 and "Out of office" in run.unparsed[0].message
    assert statuses(sent) == {
        "r0": "bounced", "r1": "bounced", "r2": "bounced", "r3": "complained",
        "r4": "active", "r5": "active",
    }  # fmt: skip
    assert server.mailbox("INBOX") == []
    assert len(server.mailbox("newsletter-processed")) == 5
    (kept,) = server.mailbox("newsletter-unparsed")
    assert b"Out of office" in kept[1]  # kept whole, never deleted
    assert process_bounces(sent.engine, sent.settings).read == 0
    # The path taken: MOVE (RFC 6851), or COPY + STORE \Deleted + EXPUNGE.
    box = ImapBox(sent.settings)
    box.close()
    assert ("MOVE" in box.capabilities) == (server_kind == "move")


def test_a_password_and_folders_beyond_ascii_work(
    sample_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """imaplib sends LOGIN's arguments and mailbox names as ASCII: a password
    or a folder name with an umlaut was a UnicodeEncodeError traceback, in
    `bounces` and in every daemon pass.  Now AUTHENTICATE PLAIN (UTF-8) and
    modified UTF-7 names (RFC 3501), against Dovecot."""
    from dataclasses import replace as changed

    for server in start(tmp_path, password="pässwörd-ü"):
        monkeypatch.setenv("NEWSLETTER_IMAP_PASSWORD", "pässwörd-ü")
        sent = send_mailing(sample_site, 6, **server.settings_overrides())
        bounces = changed(
            sent.settings.bounces, processed_folder="Verarbeitet ä", unparsed_folder="Ungelesen ö"
        )
        settings = with_overrides(sent.settings, bounces=bounces)
        fill(server, sent)
        run = process_bounces(sent.engine, settings)
        assert (run.read, run.hard) == (6, 3)
        assert len(server.mailbox("Verarbeitet ä")) == 5
        assert len(server.mailbox("Ungelesen ö")) == 1
        assert server.mailbox("INBOX") == []


def test_the_server_certificate_is_verified(sample_site: Path, imap: DovecotServer) -> None:
    sent = send_mailing(sample_site, 1, **imap.settings_overrides())
    untrusted = with_overrides(sent.settings, bounces=replace(sent.settings.bounces, ca_file=None))
    with pytest.raises(DeliveryError, match=r"certificate verify failed"):
        process_bounces(sent.engine, untrusted)


def test_a_wrong_password_is_one_clear_error(
    sample_site: Path, imap: DovecotServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = send_mailing(sample_site, 1, **imap.settings_overrides())
    monkeypatch.setenv("NEWSLETTER_IMAP_PASSWORD", "wrong")
    with pytest.raises(DeliveryError, match="IMAP login or select failed"):
        process_bounces(sent.engine, sent.settings)
    monkeypatch.delenv("NEWSLETTER_IMAP_PASSWORD")
    with pytest.raises(ConfigError, match="NEWSLETTER_IMAP_PASSWORD is not set"):
        process_bounces(sent.engine, sent.settings)


def test_nothing_listens_is_one_clear_error(sample_site: Path, tmp_path: Path) -> None:
    from smtpserver import free_port

    sent = send_mailing(
        sample_site, 1,
        **{"bounces.imap_host": "127.0.0.1", "bounces.port": free_port(),
           "bounces.username": "bounces", "bounces.password_env": "NEWSLETTER_IMAP_PASSWORD"},
    )  # fmt: skip
    with pytest.raises(DeliveryError, match=r"cannot reach IMAP server 127\.0\.0\.1"):
        process_bounces(sent.engine, sent.settings)


def test_a_connection_lost_mid_read_is_one_clear_error_and_keeps_what_was_filed(
    sample_site: Path, imap: DovecotServer
) -> None:
    sent = send_mailing(sample_site, 6, **imap.settings_overrides())
    fill(imap, sent)

    class DiesAfterTheFirst(ImapBox):
        def processed(self, ref: str) -> None:
            super().processed(ref)
            imap.stop()  # the server goes away in the middle of the session

    box = DiesAfterTheFirst(sent.settings)
    try:
        with pytest.raises(DeliveryError, match=r"IMAP connection to 127\.0\.0\.1:\d+ lost"):
            process_bounces(sent.engine, sent.settings, box)
    finally:
        box.close()
    # The first report, read and filed before the loss, is recorded.
    assert statuses(sent)["r0"] == "bounced"
    assert statuses(sent)["r1"] == "active"
