"""One SMTP connection on an asyncio event loop, for the streams strategy.

The same session as `smtp.SmtpTransport` (verified TLS, STARTTLS before
AUTH, PIPELINING when offered, RSET after a refusal, the same reply
classification and error messages: its helpers are reused, not copied), but
non-blocking, so one thread drives every connection of a mailing and each
advances on its own.  `send` awaits `ready` between the content and the final
dot: the moment after which the server may keep the message (invariant 2).

Replies are parsed in `data_received` straight from the socket's bytes; a
waiter sleeps on one future until the replies it needs have arrived (no
StreamReader, no task per read: profiled, they cost more than the parsing).
aiosmtplib does not fit here: it neither pipelines MAIL/RCPT/DATA nor lets a
caller act between the content and the final dot.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable

from newsletter.config import SmtpSettings
from newsletter.delivery.transports.base import ConnectError, SendResult, TransportError
from newsletter.delivery.transports.smtp import (
    NON_ASCII_LOCAL_PART,
    ascii_address,
    check_policy,
    classify,
    login_refused,
    no_starttls,
    reply_text,
    stuffed_body,
    tls_context,
    tls_error,
)

__all__ = ["StreamSmtp"]

Reply = tuple[int, bytes]
# Called just before a final dot; an awaitable it returns holds the dot back.
Ready = Callable[[], Awaitable[None] | None]
Next = tuple[str, str, bytes]  # sender, recipient and bytes of the next message


class Lost(ConnectionError):
    """The connection closed (or timed out) while we waited for a reply."""


class _Replies(asyncio.Protocol):
    """Collects complete SMTP replies (multi-line ones joined) as they arrive."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.replies: deque[Reply] = deque()
        self._buffer = b""
        self._lines: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._need = 0
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        start = 0
        while (end := buffer.find(b"\r\n", start)) >= 0:
            line = buffer[start:end]
            start = end + 2
            if line[3:4] == b"-":
                self._lines.append(line[4:])
                continue
            try:
                code = int(line[:3])
            except ValueError:
                code = -1  # a malformed reply: refused like any other code
            if self._lines:
                self._lines.append(line[4:])
                text = b"\n".join(self._lines)
                self._lines = []
            else:
                text = line[4:]
            self.replies.append((code, text))
        self._buffer = buffer[start:]
        waiter = self._waiter
        if waiter is not None and len(self.replies) >= self._need and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or Lost("the server closed the connection")
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def take(self, count: int, timeout: float) -> list[Reply]:
        """The next `count` replies; raises `Lost` (or TimeoutError) when they do not come."""
        replies = self.replies
        if len(replies) < count:
            if self.lost is not None:
                raise Lost(f"connection lost: {self.lost}")
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            self._need = count
            timer = loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if len(replies) < count:
                raise Lost(f"connection lost: {self.lost}")
        return [replies.popleft() for _ in range(count)]


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("timed out"))


class StreamSmtp:
    """One SMTP connection, opened on first use and reused until it fails."""

    def __init__(self, settings: SmtpSettings, *, local_hostname: str | None = None) -> None:
        self.settings = settings
        self.local_hostname = local_hostname or socket.gethostname() or "localhost"
        self.where = f"{settings.host}:{settings.effective_port}"
        self.timeout = settings.timeout
        self.connects = 0
        self._proto: _Replies | None = None
        self._features: dict[str, str] = {}
        self._owed = 0  # replies to RSETs written without waiting (PIPELINING)
        # (connection, recipient) whose MAIL/RCPT/DATA went out behind the last dot
        self._announced: tuple[_Replies, str] | None = None

    # ------------------------------------------------------------------ connection

    @property
    def is_open(self) -> bool:
        return self._proto is not None

    def has_extn(self, name: str) -> bool:
        return name in self._features

    async def open(self) -> None:
        if self._proto is not None:
            return
        check_policy(self.settings)
        self._owed = 0
        try:
            proto = await self._connect()
        except ssl.SSLError as exc:
            raise tls_error(self.where, exc) from exc
        except (OSError, TimeoutError) as exc:  # Lost is an OSError
            raise ConnectError(f"cannot connect to {self.where}: {exc}") from exc
        self._proto = proto
        self._owed = 0
        self.connects += 1

    async def _connect(self) -> _Replies:
        s = self.settings
        loop = asyncio.get_running_loop()
        implicit = tls_context(s) if s.security == "tls" else None
        async with asyncio.timeout(self.timeout):
            _, proto = await loop.create_connection(
                _Replies, s.host, s.effective_port, ssl=implicit,
                server_hostname=s.host if implicit else None,
            )  # fmt: skip
        try:
            code, text = (await proto.take(1, self.timeout))[0]
            if code != 220:
                raise ConnectError(
                    f"{self.where} refused the connection: {code} {reply_text(text)}", code=code
                )
            await self._ehlo(proto)
            if s.security == "starttls":
                proto = await self._starttls(proto)
            if s.username:
                await self._login(proto)
        except BaseException:
            if proto.transport is not None:
                proto.transport.abort()
            raise
        return proto

    async def _command(self, proto: _Replies, line: bytes) -> Reply:
        assert proto.transport is not None
        proto.transport.write(line + b"\r\n")
        return (await self._replies(proto, 1))[0]

    async def _ehlo(self, proto: _Replies) -> None:
        code, text = await self._command(proto, b"EHLO " + self.local_hostname.encode())
        self._features = {}
        if code != 250:  # an old server: HELO and no extensions, as smtplib does
            await self._command(proto, b"HELO " + self.local_hostname.encode())
            return
        for line in text.decode("latin-1").split("\n")[1:]:
            keyword, _, params = line.strip().partition(" ")
            self._features[keyword.lower()] = params

    async def _starttls(self, proto: _Replies) -> _Replies:
        if not self.has_extn("starttls"):
            raise no_starttls(self.settings)
        code, text = await self._command(proto, b"STARTTLS")
        if code != 220:
            raise TransportError(
                f"STARTTLS refused by {self.where}: {code} {reply_text(text)}",
                key="smtp.security",
            )
        loop = asyncio.get_running_loop()
        assert proto.transport is not None
        async with asyncio.timeout(self.timeout):
            secured = await loop.start_tls(
                proto.transport, proto, tls_context(self.settings),
                server_hostname=self.settings.host,
            )  # fmt: skip
        assert isinstance(secured, asyncio.Transport)
        proto.transport = secured
        await self._ehlo(proto)
        return proto

    async def _login(self, proto: _Replies) -> None:
        s = self.settings
        assert s.username
        password = s.password() or ""
        offered = self._features.get("auth", "").upper().split()
        if not self.has_extn("auth"):
            raise TransportError(f"{s.host} does not offer AUTH", key="smtp.username")
        user = s.username.encode()
        if "PLAIN" in offered:
            # One mechanism, once (as the smtplib transport): no retry with others.
            token = base64.b64encode(b"\0" + user + b"\0" + password.encode())
            code, text = await self._command(proto, b"AUTH PLAIN " + token)
        elif "LOGIN" in offered:
            code, text = await self._command(proto, b"AUTH LOGIN")
            if code == 334:
                code, text = await self._command(proto, base64.b64encode(user))
            if code == 334:
                code, text = await self._command(proto, base64.b64encode(password.encode()))
        elif "CRAM-MD5" in offered:
            code, text = await self._command(proto, b"AUTH CRAM-MD5")
            if code == 334:
                digest = hmac.new(password.encode(), base64.b64decode(text), "md5").hexdigest()
                code, text = await self._command(
                    proto, base64.b64encode(user + b" " + digest.encode())
                )
        else:
            raise TransportError(
                f"{s.host} offers no AUTH mechanism we support ({' '.join(offered)})",
                key="smtp.username",
            )
        if code != 235:
            raise login_refused(s.username, code, text)

    def abandon(self) -> None:
        """Drop the connection without QUIT: a message without its final dot is discarded."""
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.abort()

    async def close(self) -> None:
        if self._announced is not None and self._announced[0] is self._proto:
            self.abandon()  # in DATA for a message never sent: QUIT would become its text
            return
        proto, self._proto = self._proto, None
        if proto is None or proto.transport is None:
            return
        try:
            await self._command(proto, b"QUIT")
        except (OSError, TimeoutError):
            pass
        finally:
            proto.transport.close()

    # ------------------------------------------------------------------ sending

    async def send(
        self,
        sender: str,
        recipient: str,
        message: bytes,
        ready: Ready | None = None,
        then: Next | None = None,
    ) -> SendResult:
        """One message; refusals are data.  Raises ConnectError when the server is unreachable.

        `ready()` is called before the final dot; when it returns an awaitable,
        the dot waits for it.  `then`: the message this connection sends next;
        with PIPELINING its MAIL, RCPT and DATA go out right behind this
        message's final dot (RFC 2920 §3.1), saving a round trip per message.
        """
        reused = self._proto is not None
        result = await self._attempt(sender, recipient, message, ready, then)
        if reused and result.stage == "mail" and result.code is None:
            # The server closed an idle connection; nothing of this message was
            # accepted, so reconnect and try once more.
            result = await self._attempt(sender, recipient, message, ready, then)
        return result

    def _envelope(self, sender: str, recipient: str, message: bytes) -> bytes | SendResult:
        """MAIL and RCPT for one message, or its refusal when the server cannot take it."""
        rcpt, needs_utf8 = ascii_address(recipient)
        options = ""
        if needs_utf8:
            if not self.has_extn("smtputf8"):
                return SendResult(
                    recipient, False, None, NON_ASCII_LOCAL_PART, permanent=True, stage="rcpt"
                )
            options += " SMTPUTF8"
        if not message.isascii() and self.has_extn("8bitmime"):
            options += " BODY=8BITMIME"
        return f"MAIL FROM:<{sender}>{options}\r\nRCPT TO:<{rcpt}>\r\n".encode()

    async def _attempt(
        self, sender: str, recipient: str, message: bytes, ready: Ready | None, then: Next | None
    ) -> SendResult:
        announced, self._announced = self._announced, None
        if announced is not None and announced[0] is self._proto and announced[1] != recipient:
            self.abandon()  # in DATA for another message: never end that one
        written = announced is not None and announced[0] is self._proto
        await self.open()
        proto = self._proto
        assert proto is not None and proto.transport is not None
        envelope = self._envelope(sender, recipient, message)
        if isinstance(envelope, SendResult):
            return envelope
        stage = "mail"
        try:
            if "pipelining" in self._features:
                if not written:
                    proto.transport.write(envelope + b"DATA\r\n")
                refusal = await self._pipelined(proto, recipient)
            else:
                refusal = await self._stepwise(proto, recipient, envelope)
            if refusal is not None:
                return refusal
            stage = "data"
            return await self._content(proto, recipient, message, ready, then)
        except (OSError, TimeoutError) as exc:
            self.abandon()
            what = "timed out" if isinstance(exc, TimeoutError) else "connection lost"
            return SendResult(recipient, False, None, f"{what} during {stage}: {exc}", stage=stage)

    async def _replies(self, proto: _Replies, count: int) -> list[Reply]:
        owed, self._owed = self._owed, 0
        return (await proto.take(owed + count, self.timeout))[owed:]

    async def _pipelined(self, proto: _Replies, recipient: str) -> SendResult | None:
        """The replies to MAIL, RCPT and DATA written in one go; the refusal, or None on 354."""
        assert proto.transport is not None
        replies = await self._replies(proto, 3)
        (mail_code, mail_text), (rcpt_code, rcpt_text), (data_code, data_text) = replies
        refused = mail_code != 250 or rcpt_code not in (250, 251)
        if data_code == 354 and refused:
            # RFC 2920 §3.1: a server may accept DATA although every RCPT failed;
            # end the empty message at once, then reset.
            proto.transport.write(b".\r\n")
            self._owed += 1
        if mail_code != 250:
            return self._refused(recipient, mail_code, mail_text, "mail")
        if rcpt_code not in (250, 251):
            return self._refused(recipient, rcpt_code, rcpt_text, "rcpt")
        if data_code != 354:
            return self._refused(recipient, data_code, data_text, "data")
        return None

    async def _stepwise(
        self, proto: _Replies, recipient: str, envelope: bytes
    ) -> SendResult | None:
        """Without PIPELINING: one command, one reply (RFC 5321 §4.1.1)."""
        assert proto.transport is not None
        mail, to, _ = envelope.split(b"\r\n")
        for line, stage, good in ((mail, "mail", (250,)), (to, "rcpt", (250, 251))):
            proto.transport.write(line + b"\r\n")
            code, text = (await self._replies(proto, 1))[0]
            if code not in good:
                refusal = self._refused(recipient, code, text, stage)
                await self._settle_rset(proto)
                return refusal
        proto.transport.write(b"DATA\r\n")
        code, text = (await self._replies(proto, 1))[0]
        if code != 354:
            refusal = self._refused(recipient, code, text, "data")
            await self._settle_rset(proto)
            return refusal
        return None

    async def _settle_rset(self, proto: _Replies) -> None:
        """Without PIPELINING the RSET's reply comes before the next command."""
        if self._owed and self._proto is proto:
            try:
                await self._replies(proto, 0)
            except (OSError, TimeoutError):
                self.abandon()

    async def _content(
        self,
        proto: _Replies,
        recipient: str,
        message: bytes,
        ready: Ready | None,
        then: Next | None,
    ) -> SendResult:
        assert proto.transport is not None
        body = stuffed_body(message)
        try:
            wait = ready() if ready is not None else None
            if wait is not None:
                proto.transport.write(body)
                body = b""
                await wait
        except BaseException:
            self.abandon()  # no final dot: the server discards the message
            raise
        tail = b".\r\n"  # from here the server may keep the message
        announce = then is not None and "pipelining" in self._features
        if then is not None and announce:
            envelope = self._envelope(*then)
            announce = not isinstance(envelope, SendResult)
            if not isinstance(envelope, SendResult):
                tail += envelope + b"DATA\r\n"
        proto.transport.write(body + tail)
        if then is not None and announce:
            self._announced = (proto, then[1])
        code, text = (await self._replies(proto, 1))[0]
        if code == 250:
            return SendResult(recipient, True, code, reply_text(text), stage="data")
        if announce:
            # The transaction ended with the dot either way; an RSET now would
            # reset the next one, already under way.
            if code == 421:
                self.abandon()
            return classify(recipient, code, reply_text(text), "data")
        refusal = self._refused(recipient, code, text, "data")
        if "pipelining" not in self._features:
            await self._settle_rset(proto)
        return refusal

    def _refused(self, recipient: str, code: int, text: bytes, stage: str) -> SendResult:
        """Classify the refusal; reset the session (its reply is read with the next ones)."""
        result = classify(recipient, code, reply_text(text), stage)
        proto = self._proto
        if code == 421 or proto is None or proto.transport is None:
            self.abandon()  # the server is closing the channel (RFC 5321 §3.8)
            return result
        proto.transport.write(b"RSET\r\n")
        self._owed += 1
        return result
