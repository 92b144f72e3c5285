"""Both SMTP connections (smtplib's and the event loop's) against servers that
misbehave on purpose (raw sockets on 127.0.0.1): each gives the same outcome,
bounded in time and memory, and the next recipient goes on."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from smtpserver import DROP, RawAction, RawSmtpServer, Slowly

from newsletter.config import SmtpSettings
from newsletter.delivery.transports import ConnectError, SendResult
from newsletter.delivery.transports.smtp import SmtpTransport
from newsletter.delivery.transports.smtp_stream import StreamSmtp

MSG = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
SENDER = "news@example.com"
KINDS = ["threaded", "streams"]


def send_each(kind: str, settings: SmtpSettings, recipients: list[str]) -> tuple[list[Any], int]:
    """Send MSG to each recipient on one transport of `kind`; (results, connects)."""
    if kind == "threaded":
        t = SmtpTransport(settings)
        try:
            return [t.send(SENDER, r, MSG) for r in recipients], t.connects
        finally:
            t.close()

    async def main() -> tuple[list[SendResult], int]:
        conn = StreamSmtp(settings)
        try:
            return [await conn.send(SENDER, r, MSG) for r in recipients], conn.connects
        finally:
            await conn.close()

    return asyncio.run(main())


def at_rcpt_of(victim: bytes, answer: RawAction | list[RawAction]) -> Any:
    def rule(line: bytes) -> RawAction | list[RawAction]:
        return answer if line.startswith(b"RCPT TO:<" + victim) else None

    return rule


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
def test_a_reply_trickled_one_byte_at_a_time_times_out_as_a_whole(
    kind: str, pipelining: bool
) -> None:
    # 30 s, 0.05 s a byte: each byte far within the 2 s timeout, the whole
    # far beyond it (a 0.5 s timeout could expire on a starved machine's
    # ordinary replies too).
    trickle = Slowly(b"250 " + b"x" * 600 + b"\r\n", 0.05)
    server = RawSmtpServer(at_rcpt_of(b"slow@", trickle), pipelining=pipelining)
    started = time.monotonic()
    try:
        (a, slow, c), connects = send_each(
            kind,
            server.settings(timeout=2),
            ["a@example.org", "slow@example.org", "c@example.org"],
        )
    finally:
        server.close()
    # Bounds a hang; what proves the timeout is `slow`'s error below (read
    # whole, the trickled reply would have been a 250).
    assert time.monotonic() - started < 25
    # Pipelined, the RCPT reply is one of the envelope's (stage "mail"): a
    # reused connection that fails there is tried once more on a new one (a
    # server may drop an idle connection without a word), trickled again.
    stage = "mail" if pipelining else "rcpt"
    assert a.ok and c.ok and connects == (3 if pipelining else 2)
    assert not slow.ok and not slow.permanent and slow.code is None
    assert slow.text.startswith(f"timed out during {stage}"), slow.text


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "answer",
    [
        b"250-" + b"x" * 1000 + b"\r\n",  # lines without end, quickly
        b"250 " + b"x" * 100_000,  # one line without end
    ],
    ids=["lines", "one-line"],
)
def test_a_reply_larger_than_any_sane_limit_drops_the_connection(kind: str, answer: bytes) -> None:
    """Memory: a reply that never ends is no reply once it passes a limit
    (64 KiB), long before the timeout; the recipient is deferred."""
    flood = answer * 200 if answer.startswith(b"250-") else answer
    server = RawSmtpServer(at_rcpt_of(b"big@", flood))
    started = time.monotonic()
    try:
        (big, c), connects = send_each(
            kind, server.settings(timeout=5), ["big@example.org", "c@example.org"]
        )
    finally:
        server.close()
    # Bounds a hang: "longer than" below says the limit, not the timeout, ended it.
    assert time.monotonic() - started < 60
    assert c.ok and connects == 2
    assert not big.ok and not big.permanent, big
    assert "longer than" in big.text, big.text


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "answer",
    [b"250-fine\r\n550 5.1.1 no such user\r\n", b"550-no such user\r\n250 ok\r\n"],
    ids=["ok-then-refused", "refused-then-ok"],
)
def test_a_multiline_reply_with_mixed_codes_is_malformed(kind: str, answer: bytes) -> None:
    """RFC 5321 §4.2.1: every line of a reply has the same code.  Mixed codes
    mean the session is out of step: neither a bounce (which would unsubscribe
    the reader) nor an acceptance, but a temporary failure on a dropped
    connection."""
    server = RawSmtpServer(at_rcpt_of(b"mixed@", answer))
    try:
        (mixed, c), connects = send_each(
            kind, server.settings(timeout=5), ["mixed@example.org", "c@example.org"]
        )
    finally:
        server.close()
    assert c.ok and connects == 2
    assert (mixed.ok, mixed.permanent, mixed.bounced) == (False, False, False), mixed
    assert mixed.text.startswith("malformed reply"), mixed.text
    assert server.messages == 1


def sized(limit: int) -> Any:
    def rule(line: bytes) -> RawAction | list[RawAction]:
        if line.upper().startswith(b"EHLO"):
            return f"250-raw\r\n250-PIPELINING\r\n250 SIZE {limit}\r\n".encode()
        return None

    return rule


@pytest.mark.parametrize("kind", KINDS)
def test_a_message_over_the_advertised_size_is_not_sent(kind: str) -> None:
    """RFC 1870: a server that advertises SIZE refuses larger messages; the
    message is not even offered (no content uploaded to be refused): a
    permanent failure that says why, and the connection stays usable."""
    server = RawSmtpServer(sized(len(MSG) // 2))
    try:
        (too_big,), connects = send_each(kind, server.settings(timeout=5), ["a@example.org"])
    finally:
        server.close()
    assert (too_big.ok, too_big.permanent, too_big.bounced) == (False, True, False), too_big
    assert "SIZE" in too_big.text and str(len(MSG) // 2) in too_big.text, too_big.text
    assert server.messages == 0 and connects == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("advertised", [b"SIZE", b"SIZE 0", b"SIZE lots"])
def test_a_size_without_a_usable_limit_sends(kind: str, advertised: bytes) -> None:
    """SIZE with no number, 0 (no limit, RFC 1870 §4) or garbage: no limit."""

    def rule(line: bytes) -> RawAction | list[RawAction]:
        if line.upper().startswith(b"EHLO"):
            return b"250-raw\r\n250 " + advertised + b"\r\n"
        return None

    server = RawSmtpServer(rule)
    try:
        (result,), _ = send_each(kind, server.settings(timeout=5), ["a@example.org"])
    finally:
        server.close()
    assert result.ok, result


def test_threaded_a_connection_lost_after_the_dot_is_not_sent_again_at_once() -> None:
    """Once the final dot is out the server may have kept the message: a
    reused connection lost before its reply is a deferral (stage "data"),
    never the immediate resend meant for an idle connection the server closed.
    With PIPELINING the smtplib transport resent it, the streams did not."""
    drops = {"left": 1}

    def rule(line: bytes) -> RawAction | list[RawAction]:
        if line == b"." and server.messages == 2 and drops["left"]:
            drops["left"] -= 1
            return DROP
        return None

    server = RawSmtpServer(rule, pipelining=True)
    try:
        (a, b), connects = send_each(
            "threaded", server.settings(timeout=5), ["a@example.org", "b@example.org"]
        )
    finally:
        server.close()
    assert a.ok
    assert (b.ok, b.stage, b.code) == (False, "data", None), b
    assert b.text.startswith("connection lost during data"), b.text
    assert server.messages == 2 and connects == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_tls_handshake_that_trickles_times_out(kind: str) -> None:
    """A server that answers STARTTLS, then sends its handshake one byte at a
    time (each within the read timeout): the connection fails as a whole
    within `timeout`, as a connection failure (the recipients deferred)."""
    # A 16 KiB handshake record, slowly: 1,000 bytes at 0.05 s a byte (50 s),
    # each far within the 2 s timeout.
    record = b"\x16\x03\x03\x40\x00" + b"\x02" * 1000

    def rule(line: bytes) -> RawAction | list[RawAction]:
        if line.upper().startswith(b"EHLO"):
            return b"250-raw\r\n250 STARTTLS\r\n"
        if line.upper().startswith(b"STARTTLS"):
            return [b"220 go ahead\r\n", Slowly(record, 0.05, after=0.2)]
        return None

    server = RawSmtpServer(rule)
    started = time.monotonic()
    settings = server.settings(timeout=2, security="starttls")
    try:
        with pytest.raises(ConnectError) as info:
            send_each(kind, settings, ["a@example.org"])
    finally:
        server.close()
    # Generous (it bounds a hang), but far short of the 50 s trickle: only a
    # deadline on the handshake as a whole ends it this soon.
    assert time.monotonic() - started < 25
    assert "timed out" in str(info.value) or "within" in str(info.value), info.value


def answer(verb: bytes, victim: bytes, reply: bytes) -> Any:
    """A rule answering `verb` with `reply` in the victim's transactions only."""
    state = {"victim": False}

    def rule(line: bytes) -> RawAction | list[RawAction]:
        if line.startswith(b"MAIL FROM:"):
            state["victim"] = False
        if line.startswith(b"RCPT TO:<"):
            state["victim"] = line.startswith(b"RCPT TO:<" + victim)
        return reply if state["victim"] and line.upper().startswith(verb) else None

    return rule


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
@pytest.mark.parametrize(
    ("verb", "reply"),
    [(b"DATA", b"250 2.0.0 Ok\r\n"), (b"RCPT", b"354 go ahead\r\n"), (b"DATA", b"220 hi\r\n")],
    ids=["250-to-DATA", "354-to-RCPT", "220-to-DATA"],
)
def test_a_positive_reply_out_of_place_is_no_success_and_no_bounce(
    kind: str, pipelining: bool, verb: bytes, reply: bytes
) -> None:
    """A 250 where DATA needs 354 is not "sent" (no content ever went out:
    the reader would silently miss the message), and a 354 to RCPT is not a
    permanent refusal: the session is out of step, so the reply is malformed
    (deferred, the connection dropped) and the next recipient goes on."""
    victim = b"odd@"
    rule = answer(verb, victim, reply)
    if verb == b"RCPT":
        rule = at_rcpt_of(victim, reply)
    server = RawSmtpServer(rule, pipelining=pipelining)
    try:
        (odd, c), connects = send_each(
            kind, server.settings(timeout=2), ["odd@example.org", "c@example.org"]
        )
    finally:
        server.close()
    assert (odd.ok, odd.permanent, odd.bounced) == (False, False, False), odd
    assert odd.text.startswith("malformed reply"), odd.text
    assert c.ok, c
    assert server.messages == 1 and connects == 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_flood_of_unasked_replies_is_not_kept(kind: str) -> None:
    """Memory: a server that answers one command with a million short replies
    (each under any size limit) is dropped, not queued reply by reply."""
    server = RawSmtpServer(at_rcpt_of(b"flood@", b"250 ok\r\n" * 1_000_000))
    started = time.monotonic()
    try:
        (flood, c), connects = send_each(
            kind, server.settings(timeout=5), ["flood@example.org", "c@example.org"]
        )
    finally:
        server.close()
    assert time.monotonic() - started < 60  # bounds a hang
    assert not flood.ok and not flood.permanent, flood
    assert c.ok and connects == 2


def test_streams_an_idle_connection_keeps_no_unasked_replies() -> None:
    """The event loop reads while a connection waits for its next message: a
    server that floods replies after a 250 must not fill memory meanwhile
    (16 MB of "250 ok" here); the connection is dropped and the next
    message goes out on a new one."""

    def rule(line: bytes) -> RawAction | list[RawAction]:
        return b"250 queued\r\n" + b"250 ok\r\n" * 2_000_000 if line == b"." else None

    server = RawSmtpServer(rule, pipelining=True)

    async def main() -> tuple[SendResult, int, SendResult, int]:
        conn = StreamSmtp(server.settings(timeout=5))
        try:
            first = await conn.send(SENDER, "a@example.org", MSG)
            proto = conn._proto  # what this connection holds
            assert proto is not None
            # Idle until the connection has met the flood and dropped it (its
            # state, not a guess at how long the flood takes on a busy machine:
            # a fixed sleep let a late flood pass the test without being read).
            deadline = time.monotonic() + 60  # bounds a hang
            while proto.lost is None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert "replies nobody asked for" in str(proto.lost), proto.lost
            held = len(proto.replies)
            second = await conn.send(SENDER, "c@example.org", MSG)
            return first, held, second, conn.connects
        finally:
            conn.abandon()

    try:
        first, held, second, connects = asyncio.run(main())
    finally:
        server.close()
    assert first.ok and second.ok, (first, second)
    assert held < 10_000, held  # what one read (64 KiB) brought at most, not 2,000,000
    assert connects == 2


def every_reply(shape: Any) -> Any:
    """A rule giving each usual reply reshaped by `shape` (bytes -> action)."""
    usual = {
        b"GREETING": b"220-raw ESMTP\r\n220 welcome\r\n",
        b"EHLO": b"250-raw\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10000000\r\n",
        b"MAIL": b"250 2.1.0 ok\r\n",
        b"RCPT": b"250 2.1.5 ok\r\n",
        b"DATA": b"354 go ahead\r\n",
        b".": b"250-2.0.0 queued\r\n250 as 12345\r\n",
        b"RSET": b"250 ok\r\n",
        b"QUIT": b"221 bye\r\n",
    }

    def rule(line: bytes) -> RawAction | list[RawAction]:
        if line == b"DATA-CONTENT":
            return None
        for verb, reply in usual.items():
            if line.upper().startswith(verb) and (verb != b"." or line == b"."):
                return shape(reply)
        return None

    return rule


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
def test_replies_split_at_every_byte_are_read_whole(kind: str, pipelining: bool) -> None:
    """TCP keeps no message boundaries: every reply of the session (multiline
    greeting, EHLO, the final dot's) arrives one byte per packet, splitting
    CR from LF and codes from their text; each is read whole and in step."""
    server = RawSmtpServer(every_reply(lambda reply: Slowly(reply, 0.001)), pipelining=pipelining)
    try:
        results, connects = send_each(
            kind, server.settings(timeout=5), ["a@example.org", "b@example.org"]
        )
    finally:
        server.close()
    assert [r.ok for r in results] == [True, True], results
    assert results[0].text.replace("\n", " ") == "2.0.0 queued as 12345"
    assert server.messages == 2 and connects == 1


@pytest.mark.parametrize("kind", KINDS)
def test_replies_ending_in_a_bare_lf_are_read_alike(kind: str) -> None:
    """RFC 5321 wants CRLF, some servers send LF alone: smtplib reads them,
    so the event loop must too (not wait for a CRLF until the timeout)."""
    server = RawSmtpServer(every_reply(lambda reply: reply.replace(b"\r\n", b"\n")))
    try:
        # Waiting for a CRLF, the send would time out: the message not sent.
        results, _ = send_each(kind, server.settings(timeout=10), ["a@example.org"])
    finally:
        server.close()
    assert [r.ok for r in results] == [True], results
    assert server.messages == 1
