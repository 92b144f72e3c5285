"""Opening an SMTP session on an event loop: the reply parser, connect, EHLO, STARTTLS, AUTH.

The rules are the smtplib transport's (smtp.py), whose helpers this reuses:
certificates verified with `ssl.create_default_context`, STARTTLS refused
when not offered, AUTH only after TLS and with one mechanism, once.  Sending
on the open session is `smtp_stream.StreamSmtp`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from newsletter.config import SmtpSettings
from newsletter.delivery.transports.base import ConnectError, TransportError
from newsletter.delivery.transports.logins import LOGINS, Key, login_key
from newsletter.delivery.transports.smtp_common import (
    MAX_LINE,
    MAX_REPLY,
    auth_unusable,
    bad_challenge,
    hello_refused,
    login_failed,
    no_starttls,
    reply_text,
    starttls_refused,
    tls_context,
    try_helo,
)

__all__ = ["Lost", "Replies", "Session", "open_session"]

Reply = tuple[int, bytes]


class Lost(ConnectionError):
    """The connection closed (or timed out) while we waited for a reply."""


class Overflow(Lost):
    """More from the server than any reply may hold (a reply or a line beyond
    any sane size, replies nobody asked for): the connection is dropped."""


# Replies kept unread: a few are owed at most (pipelined RSETs, an envelope);
# more arrive only from a server that answers what was never asked.
MAX_PENDING = 64


class Replies(asyncio.Protocol):
    """Collects complete SMTP replies (multi-line ones joined) as they arrive."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.replies: deque[Reply] = deque()
        self._buffer = b""
        self._lines: list[bytes] = []
        self._code = b""  # a multiline reply's code, from its first line
        self._size = 0  # and its bytes so far
        self._mixed = False  # and whether its lines' codes differ
        self._waiter: asyncio.Future[None] | None = None
        self._need = 0
        self.lost: BaseException | None = None
        # One timer per connection, re-armed only when it fires (see `take`).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadline = 0.0  # when the reply awaited now is late
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports have asyncio.Transport's
        # methods without deriving from it.
        self.transport = cast(asyncio.Transport, transport)

    def write(self, data: bytes) -> None:
        """Send `data`; dropped once the connection is closing or lost, where the
        replies then say so.  asyncio's transports drop it themselves; uvloop's
        raise RuntimeError ("the handler is closed"), e.g. while the content goes
        out to a server that refused it and closed."""
        transport = self.transport
        assert transport is not None
        if not transport.is_closing():
            transport.write(data)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            # CRLF, or LF alone from a sloppy server, as smtplib reads them.
            line = buffer[start : end - 1 if end > start and buffer[end - 1] == 13 else end]
            start = end + 1
            if line[3:4] == b"-":
                if not self._more(line):
                    return
                continue
            try:
                code = int(line[:3])
            except ValueError:
                code = -1  # a malformed reply: refused like any other code
            if self._lines:
                if not self._more(line):
                    return
                if self._mixed:
                    code = -1  # RFC 5321 §4.2.1: one code per reply; else out of step
                text = b"\n".join(self._lines)
                self._lines = []
            else:
                text = line[4:]
            self.replies.append((code, text))
        self._buffer = buffer[start:]
        if len(self.replies) > MAX_PENDING:
            self._drop(
                Overflow(f"the server sent more than {MAX_PENDING} replies nobody asked for")
            )
            return
        if len(self._buffer) > MAX_LINE:
            self._drop(Overflow(f"a line of the server's reply is longer than {MAX_LINE} bytes"))
            return
        waiter = self._waiter
        if waiter is not None and len(self.replies) >= self._need and not waiter.done():
            waiter.set_result(None)

    def _more(self, line: bytes) -> bool:
        """Keep one line of a multiline reply; False once the reply is too long
        (the connection is dropped)."""
        if not self._lines:
            self._code, self._size, self._mixed = line[:3], 0, False
        self._size += len(line)
        if self._size > MAX_REPLY:
            self._drop(Overflow(f"the server's reply is longer than {MAX_REPLY} bytes"))
            return False
        self._mixed = self._mixed or line[:3] != self._code
        self._lines.append(line[4:])
        return True

    def _drop(self, why: Lost) -> None:
        """Stop reading a server that sends more than any reply may hold (memory)."""
        self._buffer, self._lines = b"", []  # the replies complete so far stay readable
        if self.transport is not None:
            self.transport.abort()
        self.connection_lost(why)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is not None:
            return  # dropped by `_drop`: keep its reason
        self.lost = exc or Lost("the server closed the connection")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def take(self, count: int, timeout: float) -> list[Reply]:
        """The next `count` replies; raises `Lost` (or TimeoutError) when they do not come.

        They must all arrive within `timeout`.  Rather than a timer set and
        cancelled for every wait (~2 us each on uvloop, one or two waits a
        message), the connection keeps one timer: it is armed when none is
        pending, and when it fires it either expires the wait still running
        past its deadline or re-arms itself for the current wait's deadline.
        """
        replies = self.replies
        if len(replies) < count:
            if self.lost is not None:
                raise Lost(f"connection lost: {self.lost}")
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            self._need = count
            deadline = self._deadline = loop.time() + timeout
            if self._timer is None or self._timer_at > deadline:
                self._arm(loop, deadline)
            try:
                await waiter
            finally:
                self._waiter = None
            if len(replies) < count:
                if isinstance(self.lost, Overflow):
                    raise self.lost
                raise Lost(f"connection lost: {self.lost}")
        return [replies.popleft() for _ in range(count)]

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = loop.call_at(when, self._expire), when

    def _expire(self) -> None:
        """The timer fired: expire a wait past its deadline, else follow the current wait."""
        self._timer = None
        waiter, loop = self._waiter, self._loop
        if waiter is None or waiter.done() or loop is None:
            return  # no wait now: the next one arms a timer
        # Within a millisecond: libuv's clock counts whole ones.
        if loop.time() >= self._deadline - 0.001:
            waiter.set_exception(TimeoutError("timed out"))
        else:
            self._arm(loop, self._deadline)


@dataclass
class Session:
    """An open, greeted, secured and logged-in connection."""

    replies: Replies
    features: dict[str, str] = field(default_factory=dict)


async def open_session(settings: SmtpSettings, local_hostname: str) -> Session:
    """Connect, EHLO, STARTTLS and AUTH as configured; raises as `SmtpTransport.open`."""
    s = settings
    key = _key(s)
    if key is not None:
        LOGINS.check(key)  # a password refused before is not tried again
    loop = asyncio.get_running_loop()
    implicit = tls_context(s) if s.security == "tls" else None
    async with asyncio.timeout(s.timeout):
        _, proto = await loop.create_connection(
            Replies, s.host, s.effective_port, ssl=implicit,
            server_hostname=s.host if implicit else None,
        )  # fmt: skip
    session = Session(proto)
    try:
        code, text = await _reply(session, s)
        if code != 220:
            where = f"{s.host}:{s.effective_port}"
            raise ConnectError(
                f"{where} refused the connection: {code} {reply_text(text)}", code=code
            )
        await _ehlo(session, s, local_hostname)
        if s.security == "starttls":
            await _starttls(session, s, local_hostname)
        if key is not None:
            async with _first_login(key):
                # One login at a time on this loop until one has succeeded
                # (LOGINS' own gate is a thread lock: it must not be waited
                # for by two coroutines of one thread).
                with LOGINS.attempt(key) as refuse:
                    await _login(session, s, refuse)
    except BaseException:
        if proto.transport is not None:
            proto.transport.abort()
        raise
    return session


# Per event loop (an asyncio.Lock belongs to the loop that first waits on it).
_loop_logins: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Key, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _first_login(key: Key) -> asyncio.Lock:
    locks = _loop_logins.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault(key, asyncio.Lock())


def _key(settings: SmtpSettings) -> Key | None:
    s = settings
    if not s.username:
        return None
    return login_key(s.host, s.effective_port, s.username, s.password() or "")


async def _reply(session: Session, settings: SmtpSettings) -> Reply:
    return (await session.replies.take(1, settings.timeout))[0]


async def _command(session: Session, settings: SmtpSettings, line: bytes) -> Reply:
    session.replies.write(line + b"\r\n")
    return await _reply(session, settings)


async def _ehlo(session: Session, settings: SmtpSettings, local_hostname: str) -> None:
    code, text = await _command(session, settings, b"EHLO " + local_hostname.encode())
    session.features = {}
    if code != 250:
        where = f"{settings.host}:{settings.effective_port}"
        if not try_helo(code):  # 421: the server's throttle, as a 421 greeting
            raise hello_refused(where, "EHLO", code, text)
        # An old server: HELO and no extensions.  Its reply counts too: MAIL
        # without an accepted greeting is refused (503) and would be blamed
        # on the envelope sender.
        code, text = await _command(session, settings, b"HELO " + local_hostname.encode())
        if code != 250:
            raise hello_refused(where, "HELO", code, text)
        return
    for line in text.decode("latin-1").split("\n")[1:]:
        keyword, _, params = line.strip().partition(" ")
        session.features[keyword.lower()] = params


async def _starttls(session: Session, settings: SmtpSettings, local_hostname: str) -> None:
    if "starttls" not in session.features:
        raise no_starttls(settings)
    code, text = await _command(session, settings, b"STARTTLS")
    if code != 220:
        raise starttls_refused(settings, code, text)
    loop = asyncio.get_running_loop()
    proto = session.replies
    assert proto.transport is not None
    async with asyncio.timeout(settings.timeout):
        secured = await loop.start_tls(
            proto.transport, proto, tls_context(settings), server_hostname=settings.host
        )
    assert secured is not None
    proto.transport = cast(asyncio.Transport, secured)  # uvloop's: see connection_made
    await _ehlo(session, settings, local_hostname)


async def _login(
    session: Session, settings: SmtpSettings, refuse: Callable[[TransportError], None]
) -> None:
    s = settings
    assert s.username
    password = s.password() or ""
    offered = session.features.get("auth", "").upper().split()
    unusable = auth_unusable(s.host, offered)
    if unusable is not None:
        raise unusable
    user = s.username.encode()

    async def command(line: bytes) -> Reply:
        return await _command(session, s, line)

    if "PLAIN" in offered:
        # One mechanism, once (as the smtplib transport): no retry with others.
        code, text = await command(
            b"AUTH PLAIN " + base64.b64encode(b"\0" + user + b"\0" + password.encode())
        )
    elif "LOGIN" in offered:
        code, text = await command(b"AUTH LOGIN")
        if code == 334:
            code, text = await command(base64.b64encode(user))
        if code == 334:
            code, text = await command(base64.b64encode(password.encode()))
    elif "CRAM-MD5" in offered:
        code, text = await command(b"AUTH CRAM-MD5")
        if code == 334:
            try:
                challenge = base64.b64decode(text, validate=True)
            except binascii.Error as exc:
                raise bad_challenge(s.host, exc) from exc
            digest = hmac.new(password.encode(), challenge, "md5").hexdigest()
            code, text = await command(base64.b64encode(user + b" " + digest.encode()))
    else:  # pragma: no cover - auth_unusable refused it
        raise AssertionError(offered)
    if code != 235:
        error = login_failed(s.username, code, text)
        if code >= 500:  # permanent: never again with this password
            refuse(error)
        raise error
