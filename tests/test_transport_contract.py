"""One contract, three transports: memory, maildir, and SMTP against real aiosmtpd."""

from __future__ import annotations

import mailbox
from collections.abc import Callable, Iterator
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from smtpserver import SmtpTestServer

from newsletter.config import DeliverySettings, Settings, SmtpSettings, load_settings
from newsletter.delivery.transports import Transport, TransportError, make_transport
from newsletter.delivery.transports.maildir import MaildirTransport
from newsletter.delivery.transports.memory import MemoryTransport
from newsletter.delivery.transports.smtp import SmtpTransport

MESSAGE = (
    b"From: Sender <sender@example.com>\r\n"
    b"To: reader@example.org\r\n"
    b"Subject: Contract\r\n"
    b"Message-ID: <contract-1@example.com>\r\n"
    b"\r\n"
    b"Hello.\r\n.leading dot survives\r\n"
)

Received = Callable[[], list[tuple[str, bytes]]]


@pytest.fixture(params=["memory", "maildir", "smtp"])
def transport_and_outbox(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Transport, Received]]:
    kind = request.param
    if kind == "memory":
        mem = MemoryTransport()
        yield mem, lambda: [(s.recipient, s.message) for s in mem.outbox]
    elif kind == "maildir":
        box = tmp_path / "outbox"

        def read() -> list[tuple[str, bytes]]:
            md = mailbox.Maildir(box, create=False)
            return [(str(m["Delivered-To"]), m.as_bytes()) for m in md]

        yield MaildirTransport(box), read
    else:
        server = SmtpTestServer().start()
        try:
            settings = SmtpSettings(host="127.0.0.1", port=server.port, security="none")
            yield (
                SmtpTransport(settings),
                lambda: [(r.rcpt_tos[0], r.data) for r in server.received],
            )
        finally:
            server.stop()


def test_open_send_close_delivers_each_message(
    transport_and_outbox: tuple[Transport, Received],
) -> None:
    transport, received = transport_and_outbox
    with transport as t:
        first = t.send("sender@example.com", "reader@example.org", MESSAGE)
        second = t.send("sender@example.com", "other@example.org", MESSAGE)
    assert first.ok and second.ok and first.code == 250
    got = received()
    # A Maildir has no order; compare as sets of recipients.
    assert sorted(r for r, _ in got) == ["other@example.org", "reader@example.org"]
    for _, data in got:
        parsed = message_from_bytes(data, policy=policy.default)
        assert parsed["Subject"] == "Contract"
        assert parsed["Message-ID"] == "<contract-1@example.com>"
        assert ".leading dot survives" in parsed.get_content()


def test_close_is_idempotent_and_send_reopens(
    transport_and_outbox: tuple[Transport, Received],
) -> None:
    transport, received = transport_and_outbox
    transport.close()
    assert transport.send("sender@example.com", "reader@example.org", MESSAGE).ok
    transport.close()
    transport.close()
    assert len(received()) == 1


def test_make_transport_follows_settings(tmp_path: Path) -> None:
    base = load_settings(None)
    for kind, cls in (("memory", MemoryTransport), ("smtp", SmtpTransport)):
        settings = Settings(delivery=DeliverySettings(transport=kind))  # type: ignore[arg-type]
        assert isinstance(make_transport(settings), cls)
    maildir = make_transport(
        Settings(delivery=DeliverySettings(transport="maildir", outbox_dir=tmp_path / "o"))
    )
    assert isinstance(maildir, MaildirTransport)
    assert isinstance(make_transport(base), MaildirTransport)


def test_maildir_is_readable_by_a_mail_reader(tmp_path: Path) -> None:
    box = tmp_path / "outbox"
    with MaildirTransport(box) as t:
        t.send("sender@example.com", "reader@example.org", MESSAGE)
    # The layout mutt expects: new/ holds the file, cur/ and tmp/ exist.
    assert {p.name for p in box.iterdir()} == {"new", "cur", "tmp"}
    files = list((box / "new").iterdir())
    assert len(files) == 1
    text = files[0].read_bytes()
    assert text.startswith(b"Return-Path: <sender@example.com>")
    assert b"Subject: Contract" in text


def test_maildir_unwritable_is_a_transport_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TransportError, match="cannot"):
        MaildirTransport(blocker / "outbox").send("a@example.com", "b@example.org", MESSAGE)
