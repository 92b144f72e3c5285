"""The SMTP transport: smtplib with verified TLS, one reused connection.

One instance is one connection and is not thread-safe; delivery gives each
worker thread its own.  Refusals come back as `SendResult` data, classified
by reply code and enhanced status (RFC 3463): 2xx sent; 421, 451 4.7.x and
454 mean "slow down" (throttled); other 4xx, a drop or a timeout are
temporary; 5xx are permanent, and 5.1.x at RCPT means the mailbox does not
exist (a hard bounce).  After any refusal the session is reset (RSET) and the
connection reused, so one recipient never blocks the others.
"""

from __future__ import annotations

import binascii
import logging
import smtplib
import socket
import ssl
from collections.abc import Callable
from typing import Any

from newsletter.config import SmtpSettings
from newsletter.delivery.transports import smtp_wire
from newsletter.delivery.transports.base import ConnectError, SendResult
from newsletter.delivery.transports.logins import LOGINS, Key, login_key
from newsletter.delivery.transports.smtp_common import (
    NON_ASCII_LOCAL_PART,
    ascii_address,
    auth_unusable,
    bad_challenge,
    check_policy,
    classify,
    hello_refused,
    login_failed,
    malformed,
    no_starttls,
    refusal_before_close,
    refusal_code,
    reply_text,
    size_limit,
    starttls_refused,
    tls_context,
    tls_error,
    too_big,
    try_helo,
)
from newsletter.delivery.transports.smtp_wire import early_refusal, kernel_timeouts, write
from newsletter.email.message import stuffed_body

log = logging.getLogger(__name__)


Ready = Callable[[], None]


class Flight:
    """One message on its way through `SmtpTransport.begin` … `reply`."""

    __slots__ = ("dotted", "message", "recipient", "result", "retry", "reused")

    def __init__(self, recipient: str, message: bytes) -> None:
        self.recipient = recipient
        self.message = message
        self.result: SendResult | None = None
        self.retry = False  # a reused connection was found closed: send() it again
        self.reused = True
        self.dotted = False


class SmtpTransport:
    thread_safe = False
    # send() takes `ready`: called just before the final dot of DATA, the
    # moment after which the server may keep the message.
    accepts_ready = True
    accepts_stuffed = True  # `send(..., stuffed=True)`: DATA content built by the template

    def __init__(self, settings: SmtpSettings, *, local_hostname: str | None = None) -> None:
        self.settings = settings
        # Never let smtplib call socket.getfqdn(): a DNS lookup per connection.
        self.local_hostname = local_hostname or socket.gethostname() or "localhost"
        self._conn: smtplib.SMTP | None = None
        self.connects = 0
        self._limit = 0  # the server's SIZE (RFC 1870); 0: none

    # ------------------------------------------------------------------ connection

    def _context(self) -> ssl.SSLContext:
        return tls_context(self.settings)

    def _check_policy(self) -> None:
        check_policy(self.settings)

    def open(self) -> None:
        if self._conn is not None:
            return
        self._check_policy()
        key = self._login_key()
        if key is not None:
            LOGINS.check(key)  # a password refused before is not tried again
        s = self.settings
        where = f"{s.host}:{s.effective_port}"
        try:
            conn = self._connect()
            self._secure(conn)
            self._login(conn)
        except ssl.SSLError as exc:
            raise tls_error(where, exc) from exc
        except smtplib.SMTPConnectError as exc:
            raise ConnectError(
                f"{where} refused the connection: {exc.smtp_code} {reply_text(exc.smtp_error)}",
                code=exc.smtp_code,
            ) from exc
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise ConnectError(f"cannot connect to {where}: {exc}") from exc
        if conn.sock is not None:
            # Commands and the rounds' final ".\r\n" (see `end`) go out as small
            # writes; without TCP_NODELAY, Nagle's algorithm would hold them for an ACK.
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # No poll() before each read and write, as smtplib's own blocking
            # socket (smtp_wire); TLS keeps Python's timeout.
            kernel_timeouts(conn)
        self._conn = conn
        self._limit = size_limit(conn.esmtp_features.get("size"))
        self.connects += 1

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        if s.security == "tls":
            return smtp_wire.SMTP_SSL(
                s.host,
                s.effective_port,
                local_hostname=self.local_hostname,
                timeout=s.timeout,
                context=self._context(),
            )
        return smtp_wire.SMTP(
            s.host, s.effective_port, local_hostname=self.local_hostname, timeout=s.timeout
        )

    def _secure(self, conn: smtplib.SMTP) -> None:
        self._hello(conn)
        if self.settings.security != "starttls":
            return
        if not conn.has_extn("starttls"):
            conn.close()
            raise no_starttls(self.settings)
        try:
            conn.starttls(context=self._context())
        except smtplib.SMTPResponseException as exc:
            # An OSError, which `open` would report as a connection failure.
            conn.close()
            raise starttls_refused(self.settings, exc.smtp_code, exc.smtp_error) from exc
        self._hello(conn)

    def _hello(self, conn: smtplib.SMTP) -> None:
        """EHLO, or HELO when the server does not know it; refusals raise.

        smtplib's `ehlo()` only returns its reply (and MAIL, written straight
        to the socket here, never asks for a greeting first): a 421 would be
        ignored until MAIL met the closed connection, and a server without
        EHLO would see MAIL with no greeting at all.
        """
        code, reply = conn.ehlo()
        if code == 250:
            return
        s = self.settings
        where = f"{s.host}:{s.effective_port}"
        if try_helo(code):
            code, reply = conn.helo()
            if code == 250:
                return
            verb = "HELO"
        else:
            verb = "EHLO"
        conn.close()
        raise hello_refused(where, verb, code, reply)

    def _login_key(self) -> Key | None:
        s = self.settings
        if not s.username:
            return None
        return login_key(s.host, s.effective_port, s.username, s.password() or "")

    def _login(self, conn: smtplib.SMTP) -> None:
        s = self.settings
        username, key = s.username, self._login_key()
        if key is None or not username:
            return
        password = s.password() or ""
        offered = conn.esmtp_features.get("auth", "").upper().split()
        unusable = auth_unusable(s.host, offered)
        if unusable is not None:
            # smtplib's own "No suitable authentication method found" is an
            # OSError, which `open` would report as a connection failure.
            conn.close()
            raise unusable
        with LOGINS.attempt(key) as refuse:
            try:
                if "PLAIN" in offered:
                    # One mechanism, once: smtplib.login() would retry a refused
                    # password with every other mechanism the server offers.
                    conn.user, conn.password = username, password
                    conn.auth("PLAIN", conn.auth_plain)
                else:
                    conn.login(username, password)
            except binascii.Error as exc:  # CRAM-MD5's challenge is not base64
                conn.close()
                raise bad_challenge(s.host, exc) from exc
            except smtplib.SMTPAuthenticationError as exc:
                error = login_failed(username, exc.smtp_code, exc.smtp_error)
                if exc.smtp_code >= 500:  # permanent: never again with this password
                    refuse(error)
                conn.close()
                raise error from exc

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.quit()
        except (smtplib.SMTPException, OSError):
            conn.close()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # ------------------------------------------------------------------ sending

    def send(
        self,
        sender: str,
        recipient: str,
        message: bytes,
        *,
        ready: Ready | None = None,
        stuffed: bool = False,
        spare: Ready | None = None,
        late: bool = False,
    ) -> SendResult:
        """One message; `stuffed`: `message` is DATA content already (`stuffed_body`'s).

        `ready()` runs before the final dot, while the server answers MAIL (or
        the pipelined MAIL/RCPT/DATA), so its work overlaps a round trip;
        `spare()` (work that must not raise) right after it.  `late`: without
        PIPELINING, `ready()` runs only once the server has answered DATA,
        just before the content (the threads' group commit, threaded.py).
        Either may run twice when a message is sent again on a new connection.
        """
        reused = self._conn is not None
        body = message if stuffed else stuffed_body(message)
        result = self._attempt(sender, recipient, body, ready, spare, late)
        if reused and result.stage == "mail" and result.code is None:
            # The server closed an idle connection; nothing of this message was
            # accepted, so reconnect and try once more.
            result = self._attempt(sender, recipient, body, ready, spare, late)
        return result

    def _attempt(
        self,
        sender: str,
        recipient: str,
        message: bytes,
        ready: Ready | None,
        spare: Ready | None = None,
        late: bool = False,
    ) -> SendResult:
        self.open()
        conn = self._conn
        assert conn is not None
        if self._limit and len(message) > self._limit:
            return too_big(recipient, len(message), self._limit)
        rcpt, needs_utf8 = ascii_address(recipient)
        mail_options: list[str] = []
        if needs_utf8:
            if not conn.has_extn("smtputf8"):
                return SendResult(
                    recipient,
                    False,
                    None,
                    NON_ASCII_LOCAL_PART,
                    permanent=True,
                    stage="rcpt",
                )
            mail_options.append("SMTPUTF8")
        if not message.isascii() and conn.has_extn("8bitmime"):
            mail_options.append("BODY=8BITMIME")
        options = "".join(f" {o}" for o in mail_options)
        commands = (
            f"MAIL FROM:<{sender}>{options}",
            f"RCPT TO:<{rcpt}>",
        )
        stage = "mail"
        try:
            if conn.has_extn("pipelining"):
                refusal = self._pipelined(conn, recipient, commands, ready, spare)
                if refusal is not None:
                    return refusal
                stage = "data"  # from here the server may keep the message: never retried
                return self._content(conn, recipient, message)
            # `ready` (the previous outcome's commit) runs while the server
            # answers MAIL: a round trip it would otherwise add to each message
            # (`late`: after DATA's 354, when other connections' outcomes have
            # joined it in one transaction).
            write(conn, commands[0].encode("utf-8") + b"\r\n")
            if not late:
                self._ready(ready)
            if spare is not None:
                spare()
            code, reply = conn.getreply()
            if code != 250:
                return self._refused(recipient, refusal_code(code), reply, stage)
            stage = "rcpt"
            code, reply = self._command(conn, commands[1])
            if code not in (250, 251):
                return self._refused(recipient, refusal_code(code), reply, stage)
            stage = "data"
            code, reply = self._command(conn, "DATA")
            if code != 354:
                return self._refused(recipient, refusal_code(code), reply, stage)
            if late:
                self._ready(ready)
            return self._content(conn, recipient, message)
        except (smtplib.SMTPServerDisconnected, smtplib.SMTPResponseException, OSError) as exc:
            self._drop()
            what = "timed out" if isinstance(exc, TimeoutError) else "connection lost"
            return SendResult(recipient, False, None, f"{what} during {stage}: {exc}", stage=stage)

    @staticmethod
    def _command(conn: smtplib.SMTP, line: str) -> tuple[int, bytes]:
        # Straight to the socket: smtplib's mail()/rcpt() re-parse each address
        # with email.utils, which costs more than the round trip on loopback.
        write(conn, line.encode("utf-8") + b"\r\n")
        return conn.getreply()

    def _pipelined(
        self,
        conn: smtplib.SMTP,
        recipient: str,
        commands: tuple[str, str],
        ready: Ready | None,
        spare: Ready | None = None,
    ) -> SendResult | None:
        """MAIL, RCPT and DATA in one write when the server offers PIPELINING (RFC 2920).

        The refusal, or None when the server awaits the content."""
        write(conn, "".join(f"{c}\r\n" for c in (*commands, "DATA")).encode("utf-8"))
        self._ready(ready)  # while the server answers the envelope
        if spare is not None:
            spare()
        return self._envelope_replies(conn, recipient)

    def _envelope_replies(self, conn: smtplib.SMTP, recipient: str) -> SendResult | None:
        """Read the pipelined MAIL, RCPT and DATA replies; the refusal, or None on 354."""
        replies: list[tuple[int, bytes]] = []
        for stage in ("mail", "rcpt", "data"):
            try:
                code, text = conn.getreply()
            except (smtplib.SMTPServerDisconnected, OSError):
                # Closed after a refusal (554 to MAIL FROM, then the close):
                # the server's reply is the outcome, not the lost connection.
                refusal = refusal_before_close(recipient, replies)
                if refusal is None:
                    raise
                self._drop()
                return refusal
            if code == 421:  # closing (RFC 5321 §3.8): the other replies never come
                return self._refused(recipient, code, text, stage)
            replies.append((code, text))
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
            write(conn, b".\r\n")
            conn.getreply()
        if mail_code != 250:
            return self._refused(recipient, mail_code, mail_text, "mail")
        if rcpt_code not in (250, 251):
            return self._refused(recipient, rcpt_code, rcpt_text, "rcpt")
        if data_code != 354:
            return self._refused(recipient, data_code, data_text, "data")
        return None

    def _ready(self, ready: Ready | None) -> None:
        """`ready()` before any final dot; when it fails, no dot ever follows.

        Dropping the connection in the middle of a transaction makes the server
        discard it (RFC 5321 §3.8), so a failed commit of the previous outcome
        sends nothing more on this connection.
        """
        if ready is None:
            return
        try:
            ready()
        except BaseException:
            self._drop()
            raise

    def _content(self, conn: smtplib.SMTP, recipient: str, message: bytes) -> SendResult:
        # The content (stuffed by `send`) and its final dot in one write: from
        # here the server may keep the message, so `ready` has run already.
        try:
            write(conn, message + b".\r\n")
        except ConnectionError:
            # A server may refuse (552: too big) before reading the whole
            # message, then close; its reply, not our failed write, is the outcome.
            early = early_refusal(conn)
            if early is None:
                raise
            return self._refused(recipient, *early, "data")
        code, reply = conn.getreply()
        if code != 250:
            return self._refused(recipient, code, reply, "data")
        return SendResult(recipient, True, code, reply_text(reply), stage="data")

    def _refused(self, recipient: str, code: int, reply: Any, stage: str) -> SendResult:
        result = classify(recipient, code, reply_text(reply), stage)
        if code == 421 or malformed(code):
            self._drop()  # the server is closing the channel (RFC 5321 §3.8), or out of step
            return result
        try:
            self._conn.rset() if self._conn is not None else None
        except (smtplib.SMTPException, OSError):
            self._drop()
        return result

    # ------------------------------------------------------------------ in flight
    # One thread drives several connections through these steps in lockstep
    # (see sending.MailingPass._round): begin on each, body on each, then the
    # caller commits the previous outcomes, then end and reply on each.

    def pipelines(self, recipient: str) -> bool:
        """Whether `begin` can take this message (else use `send`); opens the connection."""
        self.open()
        conn = self._conn
        assert conn is not None
        return conn.has_extn("pipelining") and not ascii_address(recipient)[1]

    def begin(self, sender: str, recipient: str, message: bytes, *, reused: bool) -> Flight:
        """Write MAIL, RCPT and DATA in one go (the connection is open: see `pipelines`)."""
        conn = self._conn
        assert conn is not None
        flight = Flight(recipient, message)
        flight.reused = reused
        if self._limit and len(message) > self._limit:
            flight.result = too_big(recipient, len(message), self._limit)
            return flight
        rcpt = ascii_address(recipient)[0]
        options = " BODY=8BITMIME" if not message.isascii() and conn.has_extn("8bitmime") else ""
        try:
            write(conn, f"MAIL FROM:<{sender}>{options}\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            self._lost(flight, exc, "mail")
        return flight

    def body(self, flight: Flight) -> None:
        """Read the three replies; on 354 write the content without its final dot."""
        conn = self._conn
        if flight.result is not None or conn is None:
            return
        try:
            flight.result = self._envelope_replies(conn, flight.recipient)
        except (smtplib.SMTPServerDisconnected, smtplib.SMTPResponseException, OSError) as exc:
            self._lost(flight, exc, "mail")
            return
        if flight.result is None:
            self._write_content(flight, stuffed_body(flight.message))

    def end(self, flight: Flight) -> None:
        """The final dot: from here the server may keep the message."""
        conn = self._conn
        if flight.result is not None or conn is None:
            return
        flight.dotted = self._write_content(flight, b".\r\n")

    def _write_content(self, flight: Flight, data: bytes) -> bool:
        """Write content (or its final dot); False when the connection failed.

        A server may refuse (552: too big) before reading the whole message,
        then close: its reply, not our failed write, is the outcome, as in
        `_content`.
        """
        conn = self._conn
        assert conn is not None
        try:
            write(conn, data)
            return True
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            early = early_refusal(conn) if isinstance(exc, ConnectionError) else None
            if early is None:
                self._lost(flight, exc, "data")
            else:
                flight.result = self._refused(flight.recipient, *early, "data")
            return False

    def reply(self, flight: Flight) -> None:
        conn = self._conn
        if flight.result is not None:
            return
        if conn is None:  # another step dropped the connection
            flight.result = SendResult(
                flight.recipient, False, None, "connection lost", stage="mail"
            )
            return
        try:
            code, reply = conn.getreply()
            if code != 250:
                flight.result = self._refused(flight.recipient, code, reply, "data")
            else:
                flight.result = SendResult(
                    flight.recipient, True, code, reply_text(reply), stage="data"
                )
        except (smtplib.SMTPServerDisconnected, smtplib.SMTPResponseException, OSError) as exc:
            self._lost(flight, exc, "data")

    def abandon(self) -> None:
        """Drop the connection without QUIT: a message without its final dot is discarded."""
        self._drop()

    def _lost(self, flight: Flight, exc: BaseException, stage: str) -> None:
        """As `_attempt` does: drop the connection; `retry` when a reused one
        failed before the content (an idle connection the server closed)."""
        self._drop()
        what = "timed out" if isinstance(exc, TimeoutError) else "connection lost"
        flight.retry = flight.reused and stage == "mail"
        flight.result = SendResult(
            flight.recipient, False, None, f"{what} during {stage}: {exc}", stage=stage
        )

    def __enter__(self) -> SmtpTransport:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
