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
"""

from __future__ import annotations

import smtplib
import socket
import time

from newsletter.delivery.transports.smtp_common import MAX_LINE, MAX_REPLY

__all__ = ["SMTP", "SMTP_SSL", "ReplyTooLong", "early_refusal", "write"]


class ReplyTooLong(smtplib.SMTPServerDisconnected):
    """A reply (or one line of it) beyond any sane size: the connection is dropped."""


class _Reader:
    """Reply lines from one socket, each reply read within a deadline."""

    __slots__ = ("buffer", "pos", "sock", "timeout")

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout  # the socket's own, for each read (and write)
        self.buffer = b""
        self.pos = 0  # where the unread part of `buffer` starts

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
        """Read until `buffer` holds a line end, within `timeout` of `started`."""
        try:
            while b"\n" not in buffer:
                if len(buffer) > MAX_LINE:
                    raise ReplyTooLong(
                        f"a line of the server's reply is longer than {MAX_LINE} bytes"
                    )
                left = started + self.timeout - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no complete reply within {self.timeout:g} s")
                if left < self.timeout:
                    self.sock.settimeout(left)  # only a reply in pieces pays this
                try:
                    chunk = self.sock.recv(65536)
                except TimeoutError:
                    raise TimeoutError(f"no complete reply within {self.timeout:g} s") from None
                if not chunk:
                    raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
                buffer += chunk
        finally:
            if self.sock.gettimeout() != self.timeout:
                self.sock.settimeout(self.timeout)  # writes keep the usual timeout
        self.buffer = buffer
        return buffer


def _code(line: bytes) -> int:
    try:
        return int(line[:3])
    except ValueError:
        return -1  # not an SMTP reply: the callers drop the connection


class _Deadlines(smtplib.SMTP):
    _reader: _Reader | None = None

    def getreply(self) -> tuple[int, bytes]:
        sock = self.sock
        if sock is None:
            raise smtplib.SMTPServerDisconnected("not connected")
        reader = self._reader
        if reader is None or reader.sock is not sock:  # new, or secured by STARTTLS
            timeout = self.timeout if isinstance(self.timeout, int | float) else None
            reader = self._reader = _Reader(sock, timeout or 300.0)
        try:
            code, text = reader.reply()
        except OSError:  # out of step from here: as smtplib, close (smtplib errors are OSErrors)
            self.close()
            raise
        return code, text

    def close(self) -> None:
        self._reader = None
        super().close()


class SMTP(_Deadlines):
    pass


class SMTP_SSL(_Deadlines, smtplib.SMTP_SSL):
    pass


def write(conn: smtplib.SMTP, data: bytes) -> None:
    """`conn.send` minus its audit event and its error translation: smtplib
    turns every failed send, a timeout included, into "Server not connected",
    so a stalled server read as a lost connection."""
    if conn.sock is None:
        raise smtplib.SMTPServerDisconnected("not connected")
    conn.sock.sendall(data)


def early_refusal(conn: smtplib.SMTP) -> tuple[int, bytes] | None:
    """The refusal a server wrote before it stopped reading, if there is one."""
    try:
        code, reply = conn.getreply()
    except (smtplib.SMTPException, OSError):
        return None
    return (code, reply) if 400 <= code < 600 else None
