"""The event-loop SMTP connection (streams strategy) against a real aiosmtpd server.

The same session rules as the smtplib transport (tests/test_smtp.py): verified
TLS, AUTH only after TLS, one error message per failure, replies classified
per recipient; plus what only this connection does: the hook before the
final dot may be awaited, and the next message's envelope rides behind a dot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from smtpserver import (
    DROP,
    STALL,
    RawSmtpServer,
    SmtpTestServer,
    TlsMaterial,
    self_signed_context,
    tls_material,
)

from newsletter.config import SmtpSettings
from newsletter.delivery.transports import ConnectError, SendResult, TransportError
from newsletter.delivery.transports.smtp_stream import StreamSmtp
from newsletter.errors import StoreError

MSG = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n.dot\r\n"
SENDER = "news@example.com"
T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def wrapped() -> T:
        return await main()

    return asyncio.run(wrapped())


def plain(server: SmtpTestServer, **kw: Any) -> StreamSmtp:
    settings = SmtpSettings(host="127.0.0.1", port=server.port, security="none", timeout=5, **kw)
    return StreamSmtp(settings)


def send_all(conn: StreamSmtp, recipients: list[str], *, lookahead: bool = False) -> list[Any]:
    """Send MSG to each recipient on one connection, then QUIT."""

    async def main() -> list[SendResult]:
        results = []
        for i, rcpt in enumerate(recipients):
            nxt = recipients[i + 1] if lookahead and i + 1 < len(recipients) else None
            then = (SENDER, nxt, MSG) if nxt else None
            results.append(await conn.send(SENDER, rcpt, MSG, None, then))
        await conn.close()
        return results

    return run(main)


@pytest.fixture(params=[False, True], ids=["plain", "pipelining"])
def any_server(request: pytest.FixtureRequest) -> Iterator[SmtpTestServer]:
    with SmtpTestServer(pipelining=request.param) as server:
        yield server


@pytest.fixture
def tls(tmp_path: Path) -> TlsMaterial:
    return tls_material(tmp_path)


@pytest.fixture(params=["asyncio", "uvloop"])
def each_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test on asyncio's loop, then on uvloop's (bench/send.py's ours-uvloop):
    TLS, timeouts and drops must behave the same on both."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")

        def run_uvloop(main: Callable[[], Awaitable[T]]) -> T:
            async def wrapped() -> T:
                return await main()

            return uvloop.run(wrapped())

        monkeypatch.setitem(globals(), "run", run_uvloop)


# --------------------------------------------------------------------------- replies


@pytest.mark.parametrize("lookahead", [False, True], ids=["one-by-one", "lookahead"])
@pytest.mark.usefixtures("each_loop")
def test_refusals_per_recipient_on_one_connection(
    any_server: SmtpTestServer, lookahead: bool
) -> None:
    any_server.script("gone@example.org", "550 5.1.1 No such user")
    any_server.script("later@example.org", "451 4.3.0 Try later")
    any_server.script("spam@example.org", "554 5.7.1 Looks like spam", stage="data")
    conn = plain(any_server)
    rcpts = ["a@example.org", "gone@example.org", "later@example.org", "spam@example.org"]
    rcpts += ["b@example.org", "spam@example.org", "c@example.org"]
    results = send_all(conn, rcpts, lookahead=lookahead)
    assert [r.ok for r in results] == [True, False, False, False, True, False, True]
    gone, later, spam = results[1], results[2], results[3]
    assert gone.permanent and gone.bounced and gone.code == 550 and gone.stage == "rcpt"
    assert not later.permanent and later.code == 451 and not later.throttled
    assert spam.permanent and not spam.bounced and spam.stage == "data"
    assert conn.connects == 1
    assert any_server.recipients() == ["a@example.org", "b@example.org", "c@example.org"]
    # The dot-stuffed line came back as it was.
    assert any_server.received[0].data.endswith(b"body\r\n.dot\r\n")


@pytest.mark.usefixtures("each_loop")
def test_drop_mid_data_is_temporary_and_the_next_message_reconnects(
    any_server: SmtpTestServer,
) -> None:
    any_server.script("a@example.org", DROP, stage="data", times=1)
    conn = plain(any_server)
    dropped, nxt, again = send_all(
        conn, ["a@example.org", "b@example.org", "a@example.org"], lookahead=True
    )
    assert not dropped.ok and not dropped.permanent and dropped.code is None
    assert dropped.stage == "data" and "connection lost during data" in dropped.text
    assert nxt.ok and again.ok and conn.connects == 2
    assert any_server.recipients() == ["b@example.org", "a@example.org"]


@pytest.mark.usefixtures("each_loop")
def test_421_drops_the_connection_and_is_throttling(any_server: SmtpTestServer) -> None:
    any_server.script("a@example.org", "421 4.7.0 Too many connections", times=1)
    conn = plain(any_server)
    first, second = send_all(conn, ["a@example.org", "a@example.org"])
    assert first.throttled and not first.ok
    assert second.ok and conn.connects == 2


@pytest.mark.usefixtures("each_loop")
def test_stalled_server_times_out_as_temporary() -> None:
    # The server stalls far longer than the client's timeout, which is long
    # enough that a starved machine's ordinary replies beat it (0.3 s was not).
    server = SmtpTestServer(stall_seconds=60.0)
    server.script("slow@example.org", STALL, stage="data", times=1)
    with server:
        settings = SmtpSettings(host="127.0.0.1", port=server.port, security="none", timeout=3)
        (result,) = send_all(StreamSmtp(settings), ["slow@example.org"])
    assert not result.ok and not result.permanent
    assert "timed out during data" in result.text


def test_server_down_is_a_connect_error_then_works_when_up() -> None:
    server = SmtpTestServer()
    conn = plain(server)
    with pytest.raises(ConnectError, match=r"cannot connect to 127\.0\.0\.1:\d+"):
        send_all(conn, ["a@example.org"])
    with server:
        assert send_all(conn, ["a@example.org"])[0].ok


def test_idle_connection_closed_by_server_is_reopened(smtp_server: SmtpTestServer) -> None:
    conn = plain(smtp_server)

    async def main() -> list[SendResult]:
        first = await conn.send(SENDER, "a@example.org", MSG)
        smtp_server.stop()
        smtp_server.start()  # same port: the old connection is dead
        second = await conn.send(SENDER, "b@example.org", MSG)
        await conn.close()
        return [first, second]

    assert all(r.ok for r in run(main))
    assert smtp_server.recipients() == ["a@example.org", "b@example.org"]


def test_non_ascii_local_part_needs_smtputf8(any_server: SmtpTestServer) -> None:
    refused, idn = send_all(plain(any_server), ["jöran@example.org", "reader@bücher.example"])
    assert refused.permanent and "SMTPUTF8" in refused.text
    assert idn.ok and any_server.recipients() == ["reader@xn--bcher-kva.example"]
    with SmtpTestServer(smtputf8=True, pipelining=True) as server:
        assert send_all(plain(server), ["jöran@example.org"])[0].ok
        assert "SMTPUTF8" in server.received[0].mail_options


# --------------------------------------------------------------------------- the final dot


def test_an_awaited_ready_holds_the_final_dot(any_server: SmtpTestServer) -> None:
    conn = plain(any_server)
    seen: list[int] = []

    async def main() -> None:
        gate, asked = asyncio.Event(), asyncio.Event()

        def ready() -> Awaitable[None]:
            async def wait() -> None:
                asked.set()
                await gate.wait()
                seen.append(len(any_server.received))

            return wait()

        sending = asyncio.create_task(conn.send(SENDER, "a@example.org", MSG, ready))
        # From the moment the content is sent, not from the start (a starved
        # machine may not have connected in 0.3 s): a dot sent early would
        # reach the server in this window.
        await asyncio.wait_for(asked.wait(), 60)
        await asyncio.sleep(0.3)
        assert any_server.received == []  # content sent, no dot: nothing kept yet
        gate.set()
        assert (await sending).ok
        await conn.close()

    run(main)
    assert seen == [0] and any_server.recipients() == ["a@example.org"]


def test_a_failing_ready_discards_the_message(any_server: SmtpTestServer) -> None:
    conn = plain(any_server)

    def fail() -> None:
        raise StoreError("the ledger is full")

    async def main() -> SendResult:
        with pytest.raises(StoreError, match="ledger is full"):
            await conn.send(SENDER, "b@example.org", MSG, fail)
        result = await conn.send(SENDER, "c@example.org", MSG)  # a fresh connection
        await conn.close()
        return result

    assert run(main).ok
    assert any_server.recipients() == ["c@example.org"] and conn.connects == 2


def test_an_announced_message_is_never_sent_without_its_own_send() -> None:
    # The next envelope went out behind the dot; stopping then (close), or
    # sending someone else instead, must not turn it into a message.
    with SmtpTestServer(pipelining=True) as server:
        conn = plain(server)

        async def main() -> list[SendResult]:
            first = await conn.send(
                SENDER, "a@example.org", MSG, None, (SENDER, "b@example.org", MSG)
            )
            other = await conn.send(
                SENDER, "c@example.org", MSG, None, (SENDER, "d@example.org", MSG)
            )
            await conn.close()
            return [first, other]

        assert all(r.ok for r in run(main))
        assert server.recipients() == ["a@example.org", "c@example.org"]
        assert conn.connects == 2  # b's open transaction was abandoned, not ended


# --------------------------------------------------------------------------- TLS and AUTH


@pytest.mark.usefixtures("each_loop")
def test_starttls_verified_and_auth_after_tls(
    tls: TlsMaterial, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TEST_SMTP_PW", "s3cret")
    caplog.set_level(logging.DEBUG)
    server = SmtpTestServer(tls="starttls", context=tls.server_context, auth={"editor": "s3cret"})
    with server:
        settings = SmtpSettings(
            host="127.0.0.1", port=server.port, security="starttls", username="editor",
            password_env="TEST_SMTP_PW", ca_file=tls.ca_file, timeout=5,
        )  # fmt: skip
        assert send_all(StreamSmtp(settings), ["a@example.org"])[0].ok
    assert server.received[0].tls
    assert server.auth_attempts == [("editor", "s3cret", True)]
    assert "s3cret" not in caplog.text


def test_bad_password_is_a_clear_error_without_the_password(
    tls: TlsMaterial, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_SMTP_PW", "wrong-pass")
    server = SmtpTestServer(tls="starttls", context=tls.server_context, auth={"editor": "s3cret"})
    with server:
        settings = SmtpSettings(
            host="127.0.0.1", port=server.port, username="editor",
            password_env="TEST_SMTP_PW", ca_file=tls.ca_file, timeout=5,
        )  # fmt: skip
        with pytest.raises(TransportError, match="login as editor refused: 535") as info:
            run(StreamSmtp(settings).open)
    assert "wrong-pass" not in str(info.value)


def test_starttls_refused_when_not_offered(smtp_server: SmtpTestServer) -> None:
    settings = SmtpSettings(host="127.0.0.1", port=smtp_server.port, security="starttls")
    with pytest.raises(TransportError, match="does not offer STARTTLS; refusing"):
        run(StreamSmtp(settings).open)


@pytest.mark.usefixtures("each_loop")
def test_untrusted_ca_is_refused(tls: TlsMaterial) -> None:
    with SmtpTestServer(tls="starttls", context=tls.server_context) as server:
        settings = SmtpSettings(host="127.0.0.1", port=server.port)  # no ca_file
        with pytest.raises(TransportError, match=r"certificate of 127\.0\.0\.1:\d+ is not trusted"):
            run(StreamSmtp(settings).open)


@pytest.mark.usefixtures("each_loop")
def test_self_signed_certificate_is_refused(tmp_path: Path) -> None:
    with SmtpTestServer(tls="implicit", context=self_signed_context(tmp_path)) as server:
        settings = SmtpSettings(host="127.0.0.1", port=server.port, security="tls")
        with pytest.raises(TransportError, match=r"not trusted: self.signed certificate"):
            run(StreamSmtp(settings).open)
        assert server.received == []


@pytest.mark.usefixtures("each_loop")
def test_implicit_tls_with_trusted_ca(tls: TlsMaterial) -> None:
    with SmtpTestServer(tls="implicit", context=tls.server_context, pipelining=True) as server:
        settings = SmtpSettings(
            host="127.0.0.1", port=server.port, security="tls", ca_file=tls.ca_file
        )
        results = send_all(StreamSmtp(settings), ["a@example.org", "b@example.org"], lookahead=True)
        assert all(r.ok for r in results)
        assert [r.tls for r in server.received] == [True, True]


def test_clear_text_only_to_localhost_and_never_with_auth() -> None:
    with pytest.raises(TransportError, match=r"refusing to send in clear text to mail\.example"):
        run(StreamSmtp(SmtpSettings(host="mail.example.com", security="none")).open)
    with pytest.raises(TransportError, match="AUTH only after TLS"):
        run(StreamSmtp(SmtpSettings(host="127.0.0.1", security="none", username="u")).open)


@pytest.mark.parametrize("lookahead", [False, True])
@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
@pytest.mark.parametrize("stage", ["rcpt", "data"])
def test_a_malformed_reply_is_temporary_and_the_session_starts_afresh(
    pipelining: bool, stage: str, lookahead: bool
) -> None:
    """Not an SMTP reply (RFC 5321 §4.2): the session is out of step, not the
    recipient refused for good; the next recipient goes on a new connection."""
    marks = {"rcpt": 0, "data": 0}

    def rule(line: bytes) -> bytes | None:
        if line.startswith(b"RCPT TO:<"):
            marks["rcpt"] = line.startswith(b"RCPT TO:<bad@")
            return b"garbage\r\n" if marks["rcpt"] and stage == "rcpt" else None
        if line == b"." and marks["rcpt"] and stage == "data":
            return b"garbage\r\n"
        return None

    server = RawSmtpServer(rule, pipelining=pipelining)
    conn = StreamSmtp(server.settings(timeout=5))
    try:
        a, bad, c = send_all(
            conn, ["a@example.org", "bad@example.org", "c@example.org"], lookahead=lookahead
        )
    finally:
        server.close()
    assert a.ok and c.ok, (a, c)
    assert not bad.ok and not bad.permanent and not bad.bounced
    assert bad.text.startswith("malformed reply from the server"), bad.text
    assert conn.connects == 2


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
    try:
        (result,) = send_all(StreamSmtp(server.settings(timeout=5)), ["a@example.org"])
    finally:
        server.close()
    assert (result.ok, result.code, result.throttled) == (False, 421, True), result


@pytest.mark.usefixtures("each_loop")
def test_a_554_to_an_announced_mail_then_close_is_read_after_an_idle_pause() -> None:
    """The second envelope goes out behind the first message's dot; the server
    answers it 554 and closes while the connection waits (the pass records,
    builds the next message).  The 554 is still the second message's outcome,
    never "closed while idle" (reconnected, sent again in spite of the server)."""
    mails = {"n": 0}

    def rule(line: bytes) -> list[bytes | str | None] | None:
        if line.startswith(b"MAIL FROM:"):
            mails["n"] += 1
            if mails["n"] == 2:
                return [b"554 5.7.1 Sender rejected\r\n", DROP]
        return None

    server = RawSmtpServer(rule, pipelining=True)
    conn = StreamSmtp(server.settings(timeout=5))

    async def main() -> list[SendResult]:
        first = await conn.send(SENDER, "a@example.org", MSG, None, (SENDER, "b@example.org", MSG))
        # The close arrives before the next send: waited for, not slept on
        # (on a starved machine 0.3 s may not see it, and nothing is checked).
        proto = conn._proto
        for _ in range(1200):
            if proto is None or proto.lost is not None:
                break
            await asyncio.sleep(0.05)
        assert proto is None or proto.lost is not None, "the server's close never arrived"
        second = await conn.send(SENDER, "b@example.org", MSG)
        await conn.close()
        return [first, second]

    try:
        first, second = run(main)
    finally:
        server.close()
    assert first.ok, first
    assert (second.ok, second.code, second.permanent, second.stage) == (False, 554, True, "mail")
    assert second.text == "5.7.1 Sender rejected"
    assert server.messages == 1 and conn.connects == 1


def test_a_refusal_written_while_the_content_is_sent_is_read() -> None:
    """As the smtplib transport: a 552 (too big) written before the server has
    read the whole message, then a close, is the outcome (permanent)."""

    def rule(line: bytes) -> list[bytes | str | None] | None:
        if line == b"DATA-CONTENT":
            return [b"552 5.3.4 Message too big for system\r\n", DROP]
        return None

    server = RawSmtpServer(rule)
    big = MSG + (b"y" * 998 + b"\r\n") * 16_000  # 16 MB: more than the socket buffers hold

    async def main() -> SendResult:
        conn = StreamSmtp(server.settings(timeout=5))
        try:
            return await conn.send(SENDER, "b@example.org", big)
        finally:
            await conn.close()

    try:
        result = run(main)
    finally:
        server.close()
    assert (result.ok, result.code, result.permanent) == (False, 552, True), result
    assert result.text == "5.3.4 Message too big for system"


def test_a_malformed_cram_md5_challenge_is_one_clear_error(
    tls: TlsMaterial, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_SMTP_PW", "s3cret")
    server = SmtpTestServer(
        tls="starttls",
        context=tls.server_context,
        auth={"editor": "s3cret"},
        auth_exclude=("PLAIN", "LOGIN", "XOAUTH2"),
    )
    with server:
        settings = SmtpSettings(
            host="127.0.0.1", port=server.port, username="editor",
            password_env="TEST_SMTP_PW", ca_file=tls.ca_file, timeout=5,
        )  # fmt: skip
        with pytest.raises(TransportError) as info:
            run(StreamSmtp(settings).open)
    assert not isinstance(info.value, ConnectError)
    assert info.value.key == "smtp.username"
    assert "sent a malformed AUTH challenge" in str(info.value)


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_each_wait_for_replies_has_its_own_deadline(event_loop: str) -> None:
    # One timer per connection, re-armed when it fires (Replies.take): a
    # wait that starts after an earlier one's deadline-to-be still gets its
    # whole timeout, and one whose replies never come still times out.
    from newsletter.delivery.transports.smtp_session import Replies

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        written: list[asyncio.StreamWriter] = []

        async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            written.append(writer)
            writer.write(b"220 ready\r\n")

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, proto = await loop.create_connection(Replies, "127.0.0.1", port)
        assert (await proto.take(1, 0.3)) == [(220, b"ready")]  # arms the timer
        await asyncio.sleep(0.2)
        # Due 0.25 s into a 0.3 s wait: after the first wait's deadline, in time for this one.
        loop.call_later(0.25, written[0].write, b"250 ok\r\n")
        started = loop.time()
        assert (await proto.take(1, 0.3)) == [(250, b"ok")]
        kept = loop.time() - started
        started = loop.time()
        with pytest.raises(TimeoutError):
            await proto.take(1, 0.3)  # nothing more comes
        expired = loop.time() - started
        assert proto.transport is not None
        proto.transport.close()
        server.close()
        return kept, expired

    if event_loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        kept, expired = uvloop.run(main())
    else:
        kept, expired = asyncio.run(main())
    assert kept < 0.3
    assert 0.29 <= expired < 2.0
