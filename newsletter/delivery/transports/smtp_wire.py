"""smtplib connections whose replies have a deadline and a size limit.

smtplib's `timeout` bounds each socket read, not a reply: a server that
trickles one byte a second holds a connection (and a mailing) for ever, and
a multiline reply may grow without bound.  These subclasses replace
`getreply` only (every command of smtplib reads through it): a whole reply
must arrive within `timeout` (as the event-loop transport's replies must,
see smtp_session.Replies.take), and one larger than `MAX_REPLY` bytes, or
with lines of different codes (RFC 5321 §4.2.1), is no reply at all.
`write` and `early_refusal` are the transport's raw writes and the reply
it reads when a write fails.

Once a plain (not TLS) connection is open, `kernel_timeouts` makes its
socket blocking and leaves the timeout to the kernel (SO_RCVTIMEO,
SO_SNDTIMEO): Python's own timeout costs a poll() before every recv and
send, and each poll gives the GIL away and takes it back (measured: 8 polls
and, with the old per-read `settimeout`, 8 ioctls a message without
PIPELINING, where smtplib's blocking socket makes none).  Only a reply or a
write that comes in pieces pays for the shorter deadline it then needs.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import struct
import sys
import time

from newsletter.delivery.transports.smtp_common import MAX_LINE, MAX_REPLY

__all__ = ["SMTP", "SMTP_SSL", "ReplyTooLong", "early_refusal", "kernel_timeouts", "write"]


class ReplyTooLong(smtplib.SMTPServerDisconnected):
    """A reply (or one line of it) beyond any sane size: the connection is dropped."""


# How late a read may begin after its reply's start and still wait the whole
# timeout: a reply's deadline is kept to within this.
SLACK = 0.01


class _Reader:
    """Reply lines from one socket, each reply read within a deadline."""

    __slots__ = ("buffer", "kernel", "pos", "sock", "timeout")

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout  # the socket's own, for each read (and write)
        self.buffer = b""
        self.pos = 0  # where the unread part of `buffer` starts
        # True: a blocking socket whose timeout the kernel keeps (`kernel_timeouts`)
        self.kernel = False

    def reply(self) -> tuple[int, bytes]:
        """One reply: (code, text lines joined by LF), as smtplib's `getreply`."""
        started = time.monotonic()
        line = self._line(started)
        if line[3:4] != b"-":  # the usual one-line reply: nothing more to check
            return _code(line), line[4:].strip(b" \t\r\n")
        lines = [line[4:].strip(b" \t\r\n")]
        first, mixed, size = line[:3], False, len(line)
        while line[3:4] == b"-":
            line = self._line(started)
            size += len(line)
            if size > MAX_REPLY:
                raise ReplyTooLong(f"the server's reply is longer than {MAX_REPLY} bytes")
            lines.append(line[4:].strip(b" \t\r\n"))
            mixed = mixed or line[:3] != first
        # RFC 5321 §4.2.1: one code per reply; mixed codes mean out of step.
        return -1 if mixed else _code(line), b"\n".join(lines)

    def _line(self, started: float) -> bytes:
        buffer, pos = self.buffer, self.pos
        end = buffer.find(b"\n", pos)
        if end < 0:
            buffer, pos = self._fill(buffer[pos:], started), 0
            end = buffer.find(b"\n")
        self.pos = end + 1
        return buffer[pos : end + 1]

    def _fill(self, buffer: bytes, started: float) -> bytes:
        """Read until `buffer` holds a line end, within `timeout` of `started`.

        A read that begins within `SLACK` of `started` (the first of nearly
        every reply) waits the socket's usual timeout, sparing a system call
        to set it; a reply in pieces gets what is left of its deadline, and
        the usual timeout is put back after it.
        """
        changed = False
        try:
            while b"\n" not in buffer:
                if len(buffer) > MAX_LINE:
                    raise ReplyTooLong(
                        f"a line of the server's reply is longer than {MAX_LINE} bytes"
                    )
                left = started + self.timeout - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no complete reply within {self.timeout:g} s")
                if left < self.timeout - SLACK:
                    _set_timeout(self.sock, left, self.kernel)
                    changed = True
                try:
                    chunk = self.sock.recv(65536)
                except (TimeoutError, BlockingIOError):  # BlockingIOError: the kernel's timeout
                    raise TimeoutError(f"no complete reply within {self.timeout:g} s") from None
                if not chunk:
                    raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
                buffer += chunk
        finally:
            if changed:
                _set_timeout(self.sock, self.timeout, self.kernel)  # writes keep the usual one
        self.buffer = buffer
        return buffer


def _set_timeout(sock: socket.socket, seconds: float, kernel: bool) -> None:
    if not kernel:
        sock.settimeout(seconds)
        return
    value = _timeval(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _timeval(seconds: float) -> bytes:
    """A `struct timeval`, never zero (to the kernel, zero means no timeout)."""
    micro = max(1, round(seconds * 1_000_000))
    return struct.pack("@ll", micro // 1_000_000, micro % 1_000_000)


def _code(line: bytes) -> int:
    try:
        return int(line[:3])
    except ValueError:
        return -1  # not an SMTP reply: the callers drop the connection


class _Deadlines(smtplib.SMTP):
    _reader: _Reader | None = None
    _kernel = False  # `kernel_timeouts`: a blocking socket, the kernel keeps its timeout

    def seconds(self) -> float:
        """The timeout of a reply (and of a write)."""
        timeout = self.timeout if isinstance(self.timeout, int | float) else None
        return timeout or 300.0

    def getreply(self) -> tuple[int, bytes]:
        sock = self.sock
        if sock is None:
            raise smtplib.SMTPServerDisconnected("not connected")
        reader = self._reader
        if reader is None or reader.sock is not sock:  # new, or secured by STARTTLS
            reader = self._reader = _Reader(sock, self.seconds())
            reader.kernel = self._kernel
        try:
            code, text = reader.reply()
        except OSError:  # out of step from here: as smtplib, close (smtplib errors are OSErrors)
            self.close()
            raise
        return code, text

    def close(self) -> None:
        self._reader = None
        self._kernel = False
        super().close()


class SMTP(_Deadlines):
    pass


class SMTP_SSL(_Deadlines, smtplib.SMTP_SSL):
    pass


def kernel_timeouts(conn: smtplib.SMTP) -> bool:
    """Make an open plain connection's socket blocking, its timeout the kernel's.

    A TLS socket keeps Python's timeout: an SSL read on a blocking socket
    whose kernel timeout expires is not reported as one.  Only on Linux,
    where `struct timeval` is two longs and an expired SO_RCVTIMEO is EAGAIN
    (Windows takes milliseconds, and leaves such a socket unusable).
    False: unchanged.
    """
    sock = conn.sock
    if not isinstance(conn, _Deadlines) or sock is None or isinstance(sock, ssl.SSLSocket):
        return False
    if not sys.platform.startswith("linux"):
        return False
    sock.settimeout(None)
    _set_timeout(sock, conn.seconds(), kernel=True)
    conn._kernel = True
    if conn._reader is not None and conn._reader.sock is sock:
        conn._reader.kernel = True
    return True


def write(conn: smtplib.SMTP, data: bytes) -> None:
    """`conn.send` minus its audit event and its error translation: smtplib
    turns every failed send, a timeout included, into "Server not connected",
    so a stalled server read as a lost connection."""
    sock = conn.sock
    if sock is None:
        raise smtplib.SMTPServerDisconnected("not connected")
    if not (isinstance(conn, _Deadlines) and conn._kernel):
        sock.sendall(data)
        return
    # One send() takes the whole message unless the server stops reading;
    # then the rest must go within what is left of the write's deadline.
    started = time.monotonic()
    sent = _send(sock, data)
    if sent == len(data):
        return
    timeout = conn.seconds()
    rest = memoryview(data)[sent:]
    try:
        while rest:
            left = started + timeout - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            _set_timeout(sock, left, kernel=True)
            rest = rest[_send(sock, rest) :]
    finally:
        _set_timeout(sock, timeout, kernel=True)


def _send(sock: socket.socket, data: bytes | memoryview) -> int:
    try:
        return sock.send(data)
    except BlockingIOError:  # the kernel's SO_SNDTIMEO ran out with nothing sent
        raise TimeoutError("timed out") from None


def early_refusal(conn: smtplib.SMTP) -> tuple[int, bytes] | None:
    """The refusal a server wrote before it stopped reading, if there is one."""
    try:
        code, reply = conn.getreply()
    except (smtplib.SMTPException, OSError):
        return None
    return (code, reply) if 400 <= code < 600 else None
