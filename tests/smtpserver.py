"""A real SMTP server on 127.0.0.1 for tests (aiosmtpd), scriptable per recipient.

    server = SmtpTestServer()                  # plain, no TLS, no AUTH
    server.start()
    server.script("a@example.com", "451 4.3.0 Try later")            # every time, at RCPT
    server.script("b@example.com", "454 4.7.0 Throttling", times=2)  # twice, then normal
    server.script("c@example.com", DROP, stage="data")                # drop mid-DATA
    server.script("d@example.com", STALL, stage="data")               # never answer
    server.script("e@example.com", SLOW, stage="data")                # 250, but late
    ... send ...
    server.received        # [Received(mail_from, rcpt_tos, data, tls, auth)]
    server.stop()

TLS: ``SmtpTestServer(tls="starttls" | "implicit", cert=...)`` with a trustme CA
(`tls_material()`); ``self_signed_context()`` makes a certificate no CA vouches
for.  AUTH: ``auth={"user": "secret"}`` (offered only after TLS, as a real
server does).  ``pipelining=True`` advertises RFC 2920 PIPELINING.
`settings_overrides()` gives the keys to point `load_settings`
at this server.  The `smtp_server` fixture in conftest.py yields a started one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

DROP = "DROP"  # close the connection without a reply
STALL = "STALL"  # answer nothing for `stall_seconds`
SLOW = "SLOW"  # at "data": take the message, but answer 250 only after `stall_seconds`


def free_port() -> int:
    """A port nobody listens on now (aiosmtpd's Controller(port=0) cannot be used).

    Free only at this instant: another process may take it before it is bound
    again.  SmtpTestServer keeps its port bound from the start instead."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bound_socket(port: int) -> socket.socket:
    """A socket bound to 127.0.0.1:`port` (0: any free one), not listening yet:
    the port is ours, and a connection to it is refused as if nothing were there."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A restart on the same port meets the old connections in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


# aiosmtpd's own default (5 s) to start its thread and answer a first
# connection; a starved 2-core machine has taken longer.  Only bounds a hang.
READY_TIMEOUT = 60.0


class _BoundController(Controller):
    """aiosmtpd's Controller listening on a socket bound beforehand (see
    `_bound_socket`) instead of binding host:port itself when started."""

    def __init__(self, handler: Any, sock: socket.socket, **kwargs: Any) -> None:
        host, port = sock.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, **kwargs)
        self._sock = sock

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    tls: bool
    auth: str | None
    mail_options: tuple[str, ...] = ()
    at: float = 0.0  # time.time() when the server took it (before its reply)


@dataclass
class _Rule:
    reply: str
    times: int | None  # None: forever


@dataclass
class TlsMaterial:
    """A trustme CA and a server certificate for 127.0.0.1 / localhost."""

    ca_file: Path
    server_context: ssl.SSLContext


def tls_material(directory: Path) -> TlsMaterial:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_file = directory / "test-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return TlsMaterial(ca_file, context)


def self_signed_context(directory: Path) -> ssl.SSLContext:
    """A server context whose certificate signs itself (must be refused by clients)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    start = datetime.now(UTC) - timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "self-signed.pem", directory / "self-signed.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert_path), str(key_path))
    return context


def _is_tls(smtp: SMTP, session: Session) -> bool:
    """STARTTLS sets session.ssl; implicit TLS shows on the transport."""
    transport = smtp.transport
    implicit = transport is not None and transport.get_extra_info("ssl_object") is not None
    return session.ssl is not None or implicit


class _Handler:
    def __init__(self, server: SmtpTestServer) -> None:
        self.server = server

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        """A mechanism the client does not speak (offered only when not excluded)."""
        return AuthResult(success=False, handled=False)

    async def auth_CRAM__MD5(self, server: SMTP, args: list[str]) -> AuthResult:
        """A challenge that is not base64 (offered only when not excluded)."""
        await server.challenge_auth("!not base64!", encode_to_b64=False)
        return AuthResult(success=False, handled=False)

    async def handle_EHLO(
        self, smtp: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.server.pipelining:
            # aiosmtpd reads commands one by one from the stream, so pipelined
            # input works; it just does not say so.
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.server._next_reply(address, "rcpt")
        if reply is not None:
            return await self._special(smtp, session, reply)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        for address in envelope.rcpt_tos:
            reply = self.server._next_reply(address, "data")
            if reply == SLOW:
                self.server._record(envelope, session, smtp)
                await asyncio.sleep(self.server.stall_seconds)
                return "250 Message accepted, slowly"
            if reply is not None:
                if reply not in (DROP, STALL):  # refused, but read to the end
                    self.server._record(envelope, session, smtp, self.server.refused)
                return await self._special(smtp, session, reply)
        self.server._record(envelope, session, smtp)
        await self.server._held()
        return "250 Message accepted"

    async def _special(self, smtp: SMTP, session: Session, reply: str) -> str:
        if reply == DROP:
            assert smtp.transport is not None
            smtp.transport.abort()  # type: ignore[attr-defined]
            return "421 dropped"  # never reaches the client
        if reply == STALL:
            await asyncio.sleep(self.server.stall_seconds)
            return "451 4.4.2 Timed out"
        return reply


@dataclass
class SmtpTestServer:
    """A scriptable aiosmtpd server on 127.0.0.1; see the module docstring."""

    tls: str | None = None  # None | "starttls" | "implicit"
    context: ssl.SSLContext | None = None  # the server's certificate for TLS
    auth: dict[str, str] | None = None
    smtputf8: bool = False
    pipelining: bool = False  # advertise PIPELINING (RFC 2920)
    # AUTH mechanisms not offered; XOAUTH2 (never accepting) and CRAM-MD5 (a
    # malformed challenge) only when a test asks.
    auth_exclude: tuple[str, ...] = ("XOAUTH2", "CRAM-MD5")
    stall_seconds: float = 2.0
    # 0: any free port, bound at once (not listening until `start`); `port`
    # then names it.  A connection before `start` is refused.
    port: int = 0
    received: list[Received] = field(default_factory=list)
    refused: list[Received] = field(default_factory=list)  # content answered by a script
    auth_attempts: list[tuple[str, str, bool]] = field(default_factory=list)  # user, pw, tls
    auth_busy: int = 0  # logins still to answer "454 4.7.0 Temporary authentication failure"
    connections: int = 0

    def __post_init__(self) -> None:
        self._rules: dict[tuple[str, str], deque[_Rule]] = {}
        self._lock = threading.Lock()
        self._controller: Controller | None = None
        self._hold_after: int | None = None
        self._released = threading.Event()
        self._sock: socket.socket | None = _bound_socket(self.port)
        self.port = int(self._sock.getsockname()[1])

    # ------------------------------------------------------------------ scripting

    def script(
        self, address: str, reply: str, *, stage: str = "rcpt", times: int | None = None
    ) -> None:
        """Answer `reply` for `address` at `stage` ("rcpt" or "data"), `times` times or forever."""
        with self._lock:
            self._rules.setdefault((stage, address.lower()), deque()).append(_Rule(reply, times))

    def _next_reply(self, address: str, stage: str) -> str | None:
        with self._lock:
            rules = self._rules.get((stage, address.lower()))
            if not rules:
                return None
            rule = rules[0]
            if rule.times is not None:
                rule.times -= 1
                if rule.times <= 0:
                    rules.popleft()
            return rule.reply

    def _record(
        self,
        envelope: Envelope,
        session: Session,
        smtp: SMTP,
        into: list[Received] | None = None,
    ) -> None:
        data = envelope.original_content or envelope.content or b""
        if isinstance(data, str):  # pragma: no cover - decode_data is off
            data = data.encode()
        with self._lock:
            (self.received if into is None else into).append(
                Received(
                    envelope.mail_from or "",
                    tuple(envelope.rcpt_tos),
                    bytes(data),
                    _is_tls(smtp, session),
                    session.auth_data.login.decode() if session.auth_data else None,
                    tuple(envelope.mail_options),
                    time.time(),
                )
            )

    def hold(self, after: int) -> None:
        """From the `after`-th message on, take each message (it is in `received`)
        but keep its reply until `release()`: a sender stuck mid-mailing, with
        its messages in flight, for as long as a test needs (however slow the
        machine), instead of a race against its rate."""
        with self._lock:
            self._hold_after = after
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    async def _held(self) -> None:
        with self._lock:
            holding = self._hold_after is not None and len(self.received) >= self._hold_after
        while holding and not self._released.is_set():
            await asyncio.sleep(0.01)

    def recipients(self) -> list[str]:
        with self._lock:
            return [r for item in self.received for r in item.rcpt_tos]

    # ------------------------------------------------------------------ lifecycle

    def _authenticate(
        self, smtp: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = data.login.decode(), data.password.decode()
        self.auth_attempts.append((user, password, _is_tls(smtp, session)))
        with self._lock:
            busy, self.auth_busy = self.auth_busy > 0, max(0, self.auth_busy - 1)
        if busy:
            message = "454 4.7.0 Temporary authentication failure"
            return AuthResult(success=False, handled=False, message=message)
        ok = self.auth is not None and self.auth.get(user) == password
        if not ok:
            return AuthResult(success=False, handled=False)  # aiosmtpd then answers 535
        return AuthResult(success=True, auth_data=data)

    def start(self) -> SmtpTestServer:
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": self.smtputf8, "decode_data": False}
        if self.tls == "starttls":
            kwargs["tls_context"] = self.context
        if self.auth is not None:
            kwargs["authenticator"] = self._authenticate
            kwargs["auth_require_tls"] = True
            kwargs["auth_exclude_mechanism"] = list(self.auth_exclude)
        # After a `stop` (a restart on the same port) the old socket is closed.
        sock, self._sock = self._sock or _bound_socket(self.port), None
        controller = _BoundController(
            _Handler(self),
            sock,
            ssl_context=self.context if self.tls == "implicit" else None,
            server_hostname="test.example.com",
            ready_timeout=READY_TIMEOUT,
            **kwargs,
        )
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        self.release()
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        if self._sock is not None:  # never started
            self._sock.close()
            self._sock = None

    def __enter__(self) -> SmtpTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def settings_overrides(self, ca_file: Path | None = None) -> dict[str, Any]:
        """Keys for `load_settings(path, overrides)` that send through this server."""
        security = {None: "none", "starttls": "starttls", "implicit": "tls"}[self.tls]
        values: dict[str, Any] = {
            "delivery.transport": "smtp",
            "smtp.host": "127.0.0.1",
            "smtp.port": self.port,
            "smtp.security": security,
            "smtp.timeout": 5.0,
            "smtp.username": "",  # AUTH only when a test asks for it
        }
        if ca_file is not None:
            values["smtp.ca_file"] = str(ca_file)
        return values


@dataclass(frozen=True)
class Slowly:
    """A raw server action: write `data` one byte every `every` seconds (a
    server that trickles a reply, each byte well within a read timeout)."""

    data: bytes
    every: float
    after: float = 0.0  # seconds before the first byte


# What a raw server does for one line: None, the usual reply; bytes, written
# instead; a `Slowly`, written byte by byte; DROP, close the socket; a list,
# each of those in turn.
RawAction = bytes | str | Slowly | None
RawRule = Callable[[bytes], "RawAction | list[RawAction]"]


class RawSmtpServer:
    """A hand-written SMTP peer on a raw socket, for replies aiosmtpd cannot give
    (a malformed reply, a refusal written while the client is still sending DATA).

    `rule(line)` sees "GREETING" first, then each command line (and
    "DATA-CONTENT" once the content starts, "." at its end), and returns the bytes to answer, DROP, or None for the usual reply.
    """

    def __init__(self, rule: RawRule, *, pipelining: bool = False) -> None:
        self.rule = rule
        self.pipelining = pipelining
        self.messages = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket, line: bytes, usual: bytes) -> bytes | None:
        """Act on one line; what was written last, or None once the connection is closed."""
        actions = self.rule(line)
        written = b""
        for action in actions if isinstance(actions, list) else [actions]:
            if action == DROP:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
                return None
            if isinstance(action, Slowly):
                written = action.data
                if not self._trickle(conn, action):
                    return None
                continue
            written = action if isinstance(action, bytes) else usual
            try:
                conn.sendall(written)
            except OSError:  # the client dropped us (a flood it stopped reading)
                return None
        return written

    @staticmethod
    def _trickle(conn: socket.socket, action: Slowly) -> bool:
        time.sleep(action.after)
        for i in range(len(action.data)):
            try:
                conn.sendall(action.data[i : i + 1])
            except OSError:  # the client gave up and closed
                return False
            time.sleep(action.every)
        return True

    def _session(self, conn: socket.socket) -> None:
        with contextlib.suppress(ConnectionError):  # the client dropped a server it gave up on
            self._converse(conn)

    def _converse(self, conn: socket.socket) -> None:
        extensions = b"250-PIPELINING\r\n" if self.pipelining else b""
        with conn:
            if self._answer(conn, b"GREETING", b"220 raw ESMTP\r\n") is None:
                return
            lines = conn.makefile("rb")
            for line in lines:
                verb = line[:4].upper()
                if verb == b"EHLO":
                    usual = b"250-raw\r\n" + extensions + b"250 8BITMIME\r\n"
                elif verb == b"QUIT":
                    usual = b"221 bye\r\n"
                elif verb == b"DATA":
                    usual = b"354 go ahead\r\n"
                else:
                    usual = b"250 ok\r\n"
                written = self._answer(conn, line, usual)
                if written is None or verb == b"QUIT":
                    return
                # Content follows only a 354 (a refused DATA leaves the session in commands).
                if (
                    verb == b"DATA"
                    and written.startswith(b"354")
                    and not self._content(conn, lines)
                ):
                    return

    def _content(self, conn: socket.socket, lines: Any) -> bool:
        if self._answer(conn, b"DATA-CONTENT", b"") is None:
            return False
        for line in lines:
            if line == b".\r\n":
                self.messages += 1
                return self._answer(conn, b".", b"250 queued\r\n") is not None
        return False

    def settings(self, **kw: Any) -> Any:
        from newsletter.config import SmtpSettings

        return SmtpSettings(**{"host": "127.0.0.1", "port": self.port, "security": "none", **kw})

    def settings_overrides(self) -> dict[str, Any]:
        """Keys for `load_settings(path, overrides)` that send through this server."""
        return {
            "delivery.transport": "smtp",
            "smtp.host": "127.0.0.1",
            "smtp.port": self.port,
            "smtp.security": "none",
            "smtp.timeout": 5.0,
            "smtp.username": "",
        }

    def close(self) -> None:
        self._listener.close()
