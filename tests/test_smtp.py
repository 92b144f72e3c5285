"""The SMTP transport against a real aiosmtpd server: TLS, AUTH, replies, faults."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from smtpserver import (
    DROP,
    STALL,
    RawSmtpServer,
    SmtpTestServer,
    TlsMaterial,
    _Handler,
    self_signed_context,
    tls_material,
)

from newsletter.config import SmtpSettings
from newsletter.delivery.transports import ConnectError, SendResult, TransportError
from newsletter.delivery.transports.smtp import SmtpTransport
from newsletter.delivery.transports.smtp_common import (
    ascii_address,
    classify,
    dot_stuffed,
    enhanced_status,
)
from newsletter.errors import StoreError

MSG = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
SENDER = "news@example.com"


def plain(server: SmtpTestServer, **kw: object) -> SmtpTransport:
    return SmtpTransport(
        SmtpSettings(host="127.0.0.1", port=server.port, security="none", timeout=5, **kw)  # type: ignore[arg-type]
    )


@pytest.fixture
def tls(tmp_path: Path) -> TlsMaterial:
    return tls_material(tmp_path)


@pytest.fixture
def starttls_server(tls: TlsMaterial) -> Iterator[SmtpTestServer]:
    server = SmtpTestServer(tls="starttls", context=tls.server_context, auth={"editor": "s3cret"})
    with server:
        yield server


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("code", "text", "stage", "ok", "permanent", "throttled", "bounced"),
    [
        (250, "OK", "data", True, False, False, False),
        (451, "4.3.0 Try later", "rcpt", False, False, False, False),
        (451, "4.7.1 Rate limited", "rcpt", False, False, True, False),
        (454, "4.7.0 Throttling", "mail", False, False, True, False),
        (421, "4.4.2 closing", "rcpt", False, False, True, False),
        (550, "5.1.1 No such user", "rcpt", False, True, False, True),
        (550, "5.1.1 No such user", "data", False, True, False, False),
        (554, "5.7.1 Spam", "data", False, True, False, False),
        (550, "mailbox unavailable", "rcpt", False, True, False, False),
    ],
)
def test_classify(
    code: int, text: str, stage: str, ok: bool, permanent: bool, throttled: bool, bounced: bool
) -> None:
    r = classify("x@example.org", code, text, stage)
    assert (r.ok, r.permanent, r.throttled, r.bounced) == (ok, permanent, throttled, bounced)


def test_enhanced_status_and_idn() -> None:
    assert enhanced_status("5.1.1 <x> no") == "5.1.1"
    assert enhanced_status("no code here") is None
    assert ascii_address("reader@bücher.example") == ("reader@xn--bcher-kva.example", False)
    assert ascii_address("jöran@example.org") == ("jöran@example.org", True)


# --------------------------------------------------------------------------- replies


@pytest.fixture(params=[False, True], ids=["plain", "pipelining"])
def any_server(request: pytest.FixtureRequest) -> Iterator[SmtpTestServer]:
    """The same tests with and without PIPELINING offered."""
    with SmtpTestServer(pipelining=request.param) as server:
        yield server


def test_connection_is_reused_and_reset_after_refusals(any_server: SmtpTestServer) -> None:
    smtp_server = any_server
    smtp_server.script("gone@example.org", "550 5.1.1 No such user")
    smtp_server.script("later@example.org", "451 4.3.0 Try later")
    t = plain(smtp_server)
    results = [
        t.send(SENDER, rcpt, MSG)
        for rcpt in ("a@example.org", "gone@example.org", "later@example.org", "b@example.org")
    ]
    t.close()
    assert [r.ok for r in results] == [True, False, False, True]
    assert results[1].permanent and results[1].bounced and results[1].code == 550
    assert not results[2].permanent and results[2].code == 451
    assert t.connects == 1
    assert smtp_server.recipients() == ["a@example.org", "b@example.org"]


def test_5xx_after_data_fails_that_message_only(any_server: SmtpTestServer) -> None:
    smtp_server = any_server
    smtp_server.script("spam@example.org", "554 5.7.1 Looks like spam", stage="data")
    t = plain(smtp_server)
    bad = t.send(SENDER, "spam@example.org", MSG)
    good = t.send(SENDER, "fine@example.org", MSG)
    t.close()
    assert bad.permanent and not bad.bounced and bad.stage == "data"
    assert good.ok and smtp_server.recipients() == ["fine@example.org"]


def test_drop_mid_data_is_temporary_and_reconnects(any_server: SmtpTestServer) -> None:
    smtp_server = any_server
    smtp_server.script("a@example.org", DROP, stage="data", times=1)
    t = plain(smtp_server)
    dropped = t.send(SENDER, "a@example.org", MSG)
    again = t.send(SENDER, "a@example.org", MSG)
    t.close()
    assert not dropped.ok and not dropped.permanent and dropped.code is None
    assert "connection lost" in dropped.text
    assert again.ok and t.connects == 2


def test_421_drops_the_connection_and_is_throttling(any_server: SmtpTestServer) -> None:
    smtp_server = any_server
    smtp_server.script("a@example.org", "421 4.7.0 Too many connections", times=1)
    t = plain(smtp_server)
    first = t.send(SENDER, "a@example.org", MSG)
    second = t.send(SENDER, "a@example.org", MSG)
    t.close()
    assert first.throttled and not first.ok
    assert second.ok and t.connects == 2


def test_stalled_server_times_out_as_temporary(tmp_path: Path) -> None:
    server = SmtpTestServer(stall_seconds=2.0)
    server.script("slow@example.org", STALL, stage="data", times=1)
    with server:
        t = SmtpTransport(
            SmtpSettings(host="127.0.0.1", port=server.port, security="none", timeout=0.3)
        )
        result = t.send(SENDER, "slow@example.org", MSG)
        t.close()
    assert not result.ok and not result.permanent
    assert "timed out" in result.text


def test_server_down_is_a_connect_error_then_works_when_up(tmp_path: Path) -> None:
    server = SmtpTestServer()
    t = plain(server)
    with pytest.raises(ConnectError, match="cannot connect"):
        t.send(SENDER, "a@example.org", MSG)
    with server:
        assert t.send(SENDER, "a@example.org", MSG).ok
        t.close()


def test_idle_connection_closed_by_server_is_reopened(smtp_server: SmtpTestServer) -> None:
    t = plain(smtp_server)
    assert t.send(SENDER, "a@example.org", MSG).ok
    smtp_server.stop()
    smtp_server.start()  # same port: the old connection is dead
    assert t.send(SENDER, "b@example.org", MSG).ok
    t.close()
    assert smtp_server.recipients() == ["a@example.org", "b@example.org"]


def test_non_ascii_local_part_needs_smtputf8(any_server: SmtpTestServer) -> None:
    smtp_server = any_server
    t = plain(smtp_server)
    refused = t.send(SENDER, "jöran@example.org", MSG)
    idn = t.send(SENDER, "reader@bücher.example", MSG)
    t.close()
    assert refused.permanent and "SMTPUTF8" in refused.text
    assert idn.ok and smtp_server.recipients() == ["reader@xn--bcher-kva.example"]


def test_non_ascii_local_part_with_smtputf8_server() -> None:
    with SmtpTestServer(smtputf8=True) as server:
        t = plain(server)
        assert t.send(SENDER, "jöran@example.org", MSG).ok
        t.close()
        assert server.received[0].rcpt_tos == ("jöran@example.org",)
        assert "SMTPUTF8" in server.received[0].mail_options


# --------------------------------------------------------------------------- TLS and AUTH


def starttls_settings(server: SmtpTestServer, tls: TlsMaterial) -> SmtpSettings:
    """STARTTLS to `server`, its certificate verified, AUTH as editor with the
    password in TEST_SMTP_PW."""
    return SmtpSettings(
        host="127.0.0.1",
        port=server.port,
        security="starttls",
        username="editor",
        password_env="TEST_SMTP_PW",
        ca_file=tls.ca_file,
        timeout=5,
    )


def test_starttls_verified_and_auth_after_tls(
    starttls_server: SmtpTestServer,
    tls: TlsMaterial,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("TEST_SMTP_PW", "s3cret")
    caplog.set_level(logging.DEBUG)
    settings = starttls_settings(starttls_server, tls)
    with SmtpTransport(settings) as t:
        assert t.send(SENDER, "a@example.org", MSG).ok
    assert starttls_server.received[0].tls
    assert starttls_server.auth_attempts == [("editor", "s3cret", True)]
    assert "s3cret" not in caplog.text


def test_bad_password_is_a_clear_error_without_the_password(
    starttls_server: SmtpTestServer,
    tls: TlsMaterial,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_SMTP_PW", "wrong-pass")
    settings = SmtpSettings(
        host="127.0.0.1",
        port=starttls_server.port,
        username="editor",
        password_env="TEST_SMTP_PW",
        ca_file=tls.ca_file,
        timeout=5,
    )
    with pytest.raises(TransportError, match="login as editor refused: 535") as info:
        SmtpTransport(settings).open()
    assert "wrong-pass" not in str(info.value)


@pytest.mark.parametrize("mechanisms", [("XOAUTH2",), ()], ids=["unknown-only", "none"])
def test_auth_without_a_mechanism_we_speak_stops_the_command(
    tls: TlsMaterial, monkeypatch: pytest.MonkeyPatch, mechanisms: tuple[str, ...]
) -> None:
    """A configuration problem, as in the streams transport: a TransportError
    (the command stops, nothing spent), never a ConnectError that defers every
    recipient and spends their attempts on a server that will never take them."""
    monkeypatch.setenv("TEST_SMTP_PW", "s3cret")
    excluded = tuple(m for m in ("PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2") if m not in mechanisms)
    server = SmtpTestServer(
        tls="starttls", context=tls.server_context, auth={"editor": "s3cret"}, auth_exclude=excluded
    )
    settings = SmtpSettings(
        host="127.0.0.1",
        port=server.port,
        username="editor",
        password_env="TEST_SMTP_PW",
        ca_file=tls.ca_file,
        timeout=5,
    )
    with server, pytest.raises(TransportError) as info:
        SmtpTransport(settings).open()
    assert not isinstance(info.value, ConnectError)
    assert info.value.key == "smtp.username"
    expected = "offers no AUTH mechanism we support" if mechanisms else "does not offer AUTH"
    assert expected in str(info.value)
    assert server.auth_attempts == []


def test_starttls_refused_when_not_offered(smtp_server: SmtpTestServer) -> None:
    settings = SmtpSettings(host="127.0.0.1", port=smtp_server.port, security="starttls")
    with pytest.raises(TransportError, match="does not offer STARTTLS; refusing"):
        SmtpTransport(settings).open()
    assert smtp_server.received == []


def test_untrusted_ca_is_refused(starttls_server: SmtpTestServer) -> None:
    # No ca_file: the system store does not know the trustme CA.
    settings = SmtpSettings(host="127.0.0.1", port=starttls_server.port)
    with pytest.raises(TransportError, match=r"certificate of 127\.0\.0\.1:\d+ is not trusted"):
        SmtpTransport(settings).open()


def test_self_signed_certificate_is_refused(tmp_path: Path) -> None:
    with SmtpTestServer(tls="implicit", context=self_signed_context(tmp_path)) as server:
        settings = SmtpSettings(host="127.0.0.1", port=server.port, security="tls")
        with pytest.raises(TransportError, match=r"not trusted: self.signed certificate"):
            SmtpTransport(settings).open()
        assert server.received == []


def test_implicit_tls_with_trusted_ca(tls: TlsMaterial) -> None:
    with SmtpTestServer(tls="implicit", context=tls.server_context) as server:
        settings = SmtpSettings(
            host="127.0.0.1", port=server.port, security="tls", ca_file=tls.ca_file
        )
        with SmtpTransport(settings) as t:
            assert t.send(SENDER, "a@example.org", MSG).ok
        assert server.received[0].tls


def test_clear_text_only_to_localhost_and_never_with_auth() -> None:
    with pytest.raises(
        TransportError, match=r"refusing to send in clear text to mail\.example\.com"
    ):
        SmtpTransport(SmtpSettings(host="mail.example.com", security="none")).open()
    with pytest.raises(TransportError, match="AUTH only after TLS"):
        SmtpTransport(SmtpSettings(host="127.0.0.1", security="none", username="u")).open()


def test_dot_stuffing_and_line_ends() -> None:
    assert dot_stuffed(b"a\r\n.b\r\n") == b"a\r\n..b\r\n.\r\n"
    assert dot_stuffed(b".x") == b"..x\r\n.\r\n"
    assert dot_stuffed(b"bare\nlf\rcr\r\n") == b"bare\r\nlf\r\ncr\r\n.\r\n"


def test_pipelined_session_is_really_pipelined() -> None:
    with SmtpTestServer(pipelining=True) as server:
        t = plain(server)
        assert t.send(SENDER, "a@example.org", b"Subject: x\r\n\r\n.dot\r\n").ok
        assert t._conn is not None and t._conn.has_extn("pipelining")
        t.close()
        assert server.received[0].data == b"Subject: x\r\n\r\n.dot\r\n"


def test_ready_overlaps_the_servers_answer_to_the_envelope(
    any_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ready` (the previous outcome's commit) runs while the server answers MAIL.

    The server holds its answer to MAIL until `ready` has run: a client that
    calls it only after that answer (a round trip more per message) would
    make the server wait its full second, and the test sees it.
    """
    ran = threading.Event()
    waited: list[bool] = []
    mail = _Handler.handle_MAIL

    async def handle_mail(self: _Handler, *args: Any) -> str:
        waited.append(await asyncio.to_thread(ran.wait, 1.0))
        return await mail(self, *args)

    monkeypatch.setattr(_Handler, "handle_MAIL", handle_mail)
    t = plain(any_server)
    assert t.send(SENDER, "a@example.org", MSG, ready=ran.set).ok
    t.close()
    assert waited == [True]
    assert any_server.recipients() == ["a@example.org"]


def test_ready_runs_before_the_final_dot_and_a_failure_discards_the_message(
    any_server: SmtpTestServer,
) -> None:
    t = plain(any_server)
    seen: list[int] = []
    assert t.send(
        SENDER, "a@example.org", MSG, ready=lambda: seen.append(len(any_server.received))
    ).ok
    assert seen == [0] and len(any_server.received) == 1

    def fail() -> None:
        raise StoreError("the ledger is full")

    with pytest.raises(StoreError, match="ledger is full"):
        t.send(SENDER, "b@example.org", MSG, ready=fail)
    assert t.send(SENDER, "c@example.org", MSG).ok  # a fresh connection
    t.close()
    # Without the final dot the server kept nothing of b's message.
    assert any_server.recipients() == ["a@example.org", "c@example.org"]


def _send_to_a_server_that_stalls_in_data(
    after_data: Callable[[socket.socket, threading.Event], None],
) -> tuple[SendResult, float]:
    """A 64 MB message to a server that answers up to DATA's 354, then lets
    `after_data` read what it will until the test is done: (result, seconds)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"220 sink ESMTP\r\n")
            for line in conn.makefile("rb"):
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    conn.sendall(b"250 sink\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    break
                else:
                    conn.sendall(b"250 ok\r\n")
            after_data(conn, stop)

    threading.Thread(target=serve, daemon=True).start()
    port = listener.getsockname()[1]
    t = SmtpTransport(SmtpSettings(host="127.0.0.1", port=port, security="none", timeout=0.5))
    big = MSG + (b"y" * 998 + b"\r\n") * 64_000  # 64 MB: more than any socket buffer
    started = time.monotonic()
    result = t.send(SENDER, "b@example.org", big)
    elapsed = time.monotonic() - started
    stop.set()
    t.close()
    listener.close()
    return result, elapsed


def test_a_server_that_stops_reading_mid_data_times_out_as_temporary() -> None:
    """The send side of the timeout: the server takes DATA, then reads nothing more."""

    def read_nothing(conn: socket.socket, stop: threading.Event) -> None:
        stop.wait(10)  # the client's send buffer fills

    result, elapsed = _send_to_a_server_that_stalls_in_data(read_nothing)
    assert not result.ok and not result.permanent
    assert result.text.startswith("timed out during data"), result.text
    assert elapsed < 8  # bounds a hang: without the timeout, the server's 10 s


def test_a_server_that_reads_slowly_times_out_the_write_as_a_whole() -> None:
    """The kernel's send timeout (smtp_wire.kernel_timeouts) is per system call:
    a server that reads a little now and then must not keep one write going for
    ever.  The whole write of the content has `timeout` seconds, as a reply has."""

    def read_slowly(conn: socket.socket, stop: threading.Event) -> None:
        conn.setblocking(True)
        while not stop.wait(0.05):  # 64 KB every 0.05 s: never a stall of 0.5 s
            if not conn.recv(65536):
                break

    result, elapsed = _send_to_a_server_that_stalls_in_data(read_slowly)
    assert not result.ok and not result.permanent
    assert result.text.startswith("timed out during data"), result.text
    assert elapsed < 20  # bounds a hang: the whole 64 MB at the server's pace is ~50 s


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only (smtp_wire)")
def test_a_plain_connection_leaves_its_timeout_to_the_kernel_and_tls_does_not(
    starttls_server: SmtpTestServer, tls: TlsMaterial, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No poll() before each read and write on a plain connection (as smtplib's
    blocking socket); a TLS socket keeps Python's timeout (smtp_wire)."""
    server = SmtpTestServer()
    with server:
        t = SmtpTransport(
            SmtpSettings(host="127.0.0.1", port=server.port, security="none", timeout=7.5)
        )
        assert t.send(SENDER, "a@example.org", MSG).ok
        sock = t._conn.sock if t._conn is not None else None
        assert sock is not None and sock.gettimeout() is None
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)
        assert struct.unpack("@ll", raw) == (7, 500_000)
        assert t.send(SENDER, "b@example.org", MSG).ok  # the same connection, still right
        assert t.connects == 1
        t.close()
    assert server.recipients() == ["a@example.org", "b@example.org"]
    monkeypatch.setenv("TEST_SMTP_PW", "s3cret")
    settings = starttls_settings(starttls_server, tls)
    with SmtpTransport(settings) as secure:
        assert secure.send(SENDER, "c@example.org", MSG).ok
        tls_sock = secure._conn.sock if secure._conn is not None else None
        assert tls_sock is not None and tls_sock.gettimeout() == 5


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
@pytest.mark.parametrize("garbage", [b"garbage\r\n", b"\r\n", b"2\r\n"])
def test_a_malformed_reply_is_temporary_and_the_session_starts_afresh(
    pipelining: bool, garbage: bytes
) -> None:
    """Not an SMTP reply (RFC 5321 §4.2): the session is out of step, not the
    recipient refused for good; the next recipient goes on a new connection."""

    def rule(line: bytes) -> bytes | None:
        return garbage if line.startswith(b"RCPT TO:<bad@") else None

    server = RawSmtpServer(rule, pipelining=pipelining)
    t = SmtpTransport(server.settings(timeout=5))
    try:
        results = [
            t.send(SENDER, r, MSG) for r in ("a@example.org", "bad@example.org", "c@example.org")
        ]
    finally:
        t.close()
        server.close()
    a, bad, c = results
    assert a.ok and c.ok
    assert not bad.ok and not bad.permanent and not bad.bounced
    assert bad.text.startswith("malformed reply from the server"), bad.text
    assert server.messages == 2
    assert t.connects == 2


def test_a_refusal_written_while_the_content_is_sent_is_read() -> None:
    """A server may answer 552 (message too big) before the client has written
    the whole message, then close: the client's write fails, the reply is
    there to read, and it is permanent (not a lost connection retried later)."""

    def rule(line: bytes) -> list[bytes | str | None] | None:
        if line == b"DATA-CONTENT":
            return [b"552 5.3.4 Message too big for system\r\n", DROP]
        return None

    server = RawSmtpServer(rule)
    t = SmtpTransport(server.settings(timeout=5))
    big = MSG + (b"y" * 998 + b"\r\n") * 16_000  # 16 MB: more than the socket buffers hold
    try:
        result = t.send(SENDER, "b@example.org", big)
    finally:
        t.close()
        server.close()
    assert (result.ok, result.code, result.permanent) == (False, 552, True), result
    assert result.text == "5.3.4 Message too big for system"


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
def test_a_421_then_close_at_mail_is_throttling_not_a_lost_connection(pipelining: bool) -> None:
    """RFC 5321 §3.8: a server closing the channel answers 421 to the next
    command and closes; with the envelope pipelined, the replies to RCPT and
    DATA never come, and the 421 must still be what the result says."""

    def rule(line: bytes) -> list[bytes | str | None] | None:
        if line.startswith(b"MAIL FROM:"):
            return [b"421 4.7.0 Too many messages, closing\r\n", DROP]
        return None

    server = RawSmtpServer(rule, pipelining=pipelining)
    t = SmtpTransport(server.settings(timeout=5))
    try:
        result = t.send(SENDER, "a@example.org", MSG)
    finally:
        t.close()
        server.close()
    assert (result.ok, result.code, result.throttled) == (False, 421, True), result


def test_starttls_refused_by_the_server_stops_the_command() -> None:
    """STARTTLS offered, then refused (454): as when it is not offered, a
    TransportError that stops the command with nothing spent (docs/delivery.md),
    as in the streams transport, not a ConnectError deferring every recipient."""

    def rule(line: bytes) -> bytes | None:
        if line.upper().startswith(b"EHLO"):  # smtplib writes "ehlo"
            return b"250-raw\r\n250 STARTTLS\r\n"
        if line.upper().startswith(b"STARTTLS"):
            return b"454 4.7.0 TLS not available due to temporary reason\r\n"
        return None

    server = RawSmtpServer(rule)
    try:
        with pytest.raises(TransportError) as info:
            SmtpTransport(server.settings(timeout=5, security="starttls")).open()
    finally:
        server.close()
    assert not isinstance(info.value, ConnectError)
    assert info.value.key == "smtp.security"
    assert str(info.value) == (
        "smtp.security: STARTTLS refused by 127.0.0.1: 454 4.7.0 TLS not available due to "
        "temporary reason"
    )


def test_a_malformed_cram_md5_challenge_is_one_clear_error(
    tls: TlsMaterial, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A challenge that is not base64: the server's fault, said in one line
    naming the key, not an internal error (binascii.Error) from deep in AUTH."""
    monkeypatch.setenv("TEST_SMTP_PW", "s3cret")
    server = SmtpTestServer(
        tls="starttls",
        context=tls.server_context,
        auth={"editor": "s3cret"},
        auth_exclude=("PLAIN", "LOGIN", "XOAUTH2"),
    )
    settings = SmtpSettings(
        host="127.0.0.1",
        port=server.port,
        username="editor",
        password_env="TEST_SMTP_PW",
        ca_file=tls.ca_file,
        timeout=5,
    )
    with server, pytest.raises(TransportError) as info:
        SmtpTransport(settings).open()
    assert not isinstance(info.value, ConnectError)
    assert info.value.key == "smtp.username"
    assert "sent a malformed AUTH challenge" in str(info.value)
