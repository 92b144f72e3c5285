"""One SMTP connection on an asyncio event loop, for the streams strategy.

The same session as `smtp.SmtpTransport` (verified TLS, STARTTLS before
AUTH, PIPELINING when offered, RSET after a refusal, the same reply
classification and error messages: its helpers are reused, not copied), but
non-blocking, so one thread drives every connection of a mailing and each
advances on its own.  `send` awaits `ready` between the content and the final
dot: the moment after which the server may keep the message (invariant 2).

Opening the session (connect, EHLO, STARTTLS, AUTH) and the reply parser
live in smtp_session.py.  aiosmtplib does not fit here: it neither pipelines MAIL/RCPT/DATA nor lets a
caller act between the content and the final dot.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable

from newsletter.config import SmtpSettings
from newsletter.delivery.transports.base import ConnectError, SendResult
from newsletter.delivery.transports.smtp_common import (
    NON_ASCII_LOCAL_PART,
    ascii_address,
    check_policy,
    classify,
    malformed,
    refusal_before_close,
    refusal_code,
    reply_text,
    size_limit,
    stuffed_body,
    tls_error,
    too_big,
)
from newsletter.delivery.transports.smtp_session import Lost, Replies, open_session

__all__ = ["StreamSmtp"]

Reply = tuple[int, bytes]
# Called just before a final dot; an awaitable it returns holds the dot back.
Ready = Callable[[], Awaitable[None] | None]
Next = tuple[str, str, bytes]  # sender, recipient and bytes of the next message


class StreamSmtp:
    """One SMTP connection, opened on first use and reused until it fails."""

    def __init__(self, settings: SmtpSettings, *, local_hostname: str | None = None) -> None:
        self.settings = settings
        self.local_hostname = local_hostname or socket.gethostname() or "localhost"
        self.where = f"{settings.host}:{settings.effective_port}"
        self.timeout = settings.timeout
        self.connects = 0
        self._proto: Replies | None = None
        self._features: dict[str, str] = {}
        self._limit = 0  # the server's SIZE (RFC 1870); 0: none
        self._owed = 0  # replies to RSETs written without waiting (PIPELINING)
        # (connection, recipient) whose MAIL/RCPT/DATA went out behind the last dot
        self._announced: tuple[Replies, str] | None = None

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
            session = await open_session(self.settings, self.local_hostname)
        except ssl.SSLError as exc:
            raise tls_error(self.where, exc) from exc
        except (OSError, TimeoutError) as exc:  # Lost is an OSError
            # asyncio.timeout's TimeoutError says nothing by itself.
            detail = str(exc) or f"timed out after {self.timeout:g} s"
            raise ConnectError(f"cannot connect to {self.where}: {detail}") from exc
        self._proto, self._features = session.replies, session.features
        self._limit = size_limit(self._features.get("size"))
        self._owed = 0
        self.connects += 1

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
            proto.write(b"QUIT\r\n")
            await self._replies(proto, 1)  # after any RSET replies still owed
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
        *,
        stuffed: bool = False,
        prepare: Callable[[], None] | None = None,
    ) -> SendResult:
        """One message; refusals are data.  Raises ConnectError when the server is unreachable.

        `prepare()` is called once the final dot is written, before its reply
        is awaited: work that overlaps the server's (it must not raise).

        `stuffed`: `message` is DATA content already (`stuffed_body`'s), as the
        streams build it from the template at a fraction of the cost.

        `ready()` is called before the final dot; when it returns an awaitable,
        the dot waits for it.  `then`: the message this connection sends next;
        with PIPELINING its MAIL, RCPT and DATA go out right behind this
        message's final dot (RFC 2920 §3.1), saving a round trip per message.
        """
        reused = self._proto is not None
        body = message if stuffed else stuffed_body(message)
        result = await self._attempt(sender, recipient, body, ready, then, prepare)
        if reused and result.stage == "mail" and result.code is None:
            # The server closed an idle connection; nothing of this message was
            # accepted, so reconnect and try once more.
            result = await self._attempt(sender, recipient, body, ready, then, prepare)
        return result

    def _envelope(self, sender: str, recipient: str, message: bytes) -> bytes | SendResult:
        """MAIL and RCPT for one message, or its refusal when the server cannot take it."""
        if self._limit and len(message) > self._limit:
            return too_big(recipient, len(message), self._limit)
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
        self,
        sender: str,
        recipient: str,
        message: bytes,
        ready: Ready | None,
        then: Next | None,
        prepare: Callable[[], None] | None = None,
    ) -> SendResult:
        announced, self._announced = self._announced, None
        if self._proto is not None and self._proto.lost is not None:
            if announced == (self._proto, recipient):
                # This envelope went out behind the last dot: the server may
                # have refused it (554 to MAIL) before it closed.
                closing = self._closing(self._proto, recipient)
                if closing is not None:
                    return closing
            self.abandon()  # closed (or dropped) while idle: what it holds is stale
        if announced is not None and announced[0] is self._proto and announced[1] != recipient:
            self.abandon()  # in DATA for another message: never end that one
        written = announced is not None and announced[0] is self._proto
        if self._proto is None:
            await self.open()
        proto = self._proto
        assert proto is not None and proto.transport is not None
        # Announced behind the last dot: that envelope was built (and valid) then.
        envelope = b"" if written else self._envelope(sender, recipient, message)
        if isinstance(envelope, SendResult):
            return envelope
        stage = "mail"
        try:
            if "pipelining" in self._features:
                if not written:
                    proto.write(envelope + b"DATA\r\n")
                refusal = await self._pipelined(proto, recipient)
            else:
                refusal = await self._stepwise(proto, recipient, envelope)
            if refusal is not None:
                return refusal
            stage = "data"
            return await self._content(proto, recipient, message, ready, then, prepare)
        except (OSError, TimeoutError) as exc:
            return self._broken(recipient, stage, exc)

    def _broken(self, recipient: str, stage: str, exc: BaseException) -> SendResult:
        """The connection failed (closed, timed out): dropped, the message deferred."""
        self.abandon()
        what = "timed out" if isinstance(exc, TimeoutError) else "connection lost"
        return SendResult(recipient, False, None, f"{what} during {stage}: {exc}", stage=stage)

    async def _replies(self, proto: Replies, count: int) -> list[Reply]:
        owed = self._owed
        replies = await proto.take(owed + count, self.timeout)
        self._owed = 0
        return replies[owed:]

    def _closing(self, proto: Replies, recipient: str) -> SendResult | None:
        """After the server closed mid-envelope: the refusal it sent first, if any.

        RFC 5321 §3.8: a server shutting the channel answers the next command
        with 421 and closes (throttling); one refusing the sender for good
        answers MAIL with 554 and closes.  Either way the other pipelined
        replies never come, and the server's reply is the outcome, not a lost
        connection (`refusal_before_close`).
        """
        refusal = refusal_before_close(recipient, list(proto.replies)[self._owed :])
        if refusal is not None:
            self.abandon()
        return refusal

    async def _pipelined(self, proto: Replies, recipient: str) -> SendResult | None:
        """The replies to MAIL, RCPT and DATA written in one go; the refusal, or None on 354."""
        assert proto.transport is not None
        try:
            replies = await self._replies(proto, 3)
        except (Lost, TimeoutError):
            closing = self._closing(proto, recipient)
            if closing is None:
                raise
            return closing
        (mail_code, mail_text), (rcpt_code, rcpt_text), (data_code, data_text) = replies
        refused = mail_code != 250 or rcpt_code not in (250, 251)
        if refused or data_code != 354:  # a positive reply out of place: out of step
            mail_code = mail_code if mail_code == 250 else refusal_code(mail_code)
            rcpt_code = rcpt_code if rcpt_code in (250, 251) else refusal_code(rcpt_code)
            data_code = data_code if data_code == 354 else refusal_code(data_code)
        if data_code == 354 and refused and not (malformed(mail_code) or malformed(rcpt_code)):
            # RFC 2920 §3.1: a server may accept DATA although every RCPT failed;
            # end the empty message at once, then reset.  (Out of step, the
            # connection is dropped instead: the server may hold a recipient.)
            proto.write(b".\r\n")
            self._owed += 1
        if mail_code != 250:
            return self._refused(recipient, mail_code, mail_text, "mail")
        if rcpt_code not in (250, 251):
            return self._refused(recipient, rcpt_code, rcpt_text, "rcpt")
        if data_code != 354:
            return self._refused(recipient, data_code, data_text, "data")
        return None

    async def _stepwise(self, proto: Replies, recipient: str, envelope: bytes) -> SendResult | None:
        """Without PIPELINING: one command, one reply (RFC 5321 §4.1.1)."""
        assert proto.transport is not None
        mail, to, _ = envelope.split(b"\r\n")
        steps = ((mail, "mail", 250), (to, "rcpt", 250), (b"DATA", "data", 354))
        for line, stage, good in steps:
            proto.write(line + b"\r\n")
            try:
                code, text = (await self._replies(proto, 1))[0]
            except (OSError, TimeoutError) as exc:  # named by its stage, as smtplib's
                return self._broken(recipient, stage, exc)
            if code != good and not (stage == "rcpt" and code == 251):
                refusal = self._refused(recipient, refusal_code(code), text, stage)
                await self._settle_rset(proto)
                return refusal
        return None

    async def _settle_rset(self, proto: Replies) -> None:
        """Without PIPELINING the RSET's reply comes before the next command."""
        if self._owed and self._proto is proto:
            try:
                await self._replies(proto, 0)
            except (OSError, TimeoutError):
                self.abandon()

    async def _content(
        self,
        proto: Replies,
        recipient: str,
        message: bytes,
        ready: Ready | None,
        then: Next | None,
        prepare: Callable[[], None] | None = None,
    ) -> SendResult:
        assert proto.transport is not None
        body = message  # stuffed by `send`
        try:
            wait = ready() if ready is not None else None
            if wait is not None:
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
        proto.write(body + tail)
        if then is not None and announce:
            self._announced = (proto, then[1])
        if prepare is not None:
            prepare()
        code, text = (await self._replies(proto, 1))[0]
        if code == 250:
            return SendResult(recipient, True, code, reply_text(text), stage="data")
        if announce:
            # The transaction ended with the dot either way; an RSET now would
            # reset the next one, already under way.
            if code == 421 or malformed(code):
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
        if code == 421 or malformed(code) or proto is None or proto.transport is None:
            self.abandon()  # the server is closing the channel (RFC 5321 §3.8), or out of step
            return result
        proto.write(b"RSET\r\n")
        self._owed += 1
        return result
