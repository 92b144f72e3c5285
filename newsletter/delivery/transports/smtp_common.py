"""What every SMTP connection of ours shares, threaded (smtp.py) or on an
event loop (smtp_stream.py, smtp_session.py): reply classification by code
and enhanced status (RFC 3463), address encoding, DATA transparency, the TLS
and clear-text policy, and the errors a session raises.
"""

from __future__ import annotations

import contextlib
import re
import ssl

from newsletter.config import SmtpSettings
from newsletter.delivery.transports.base import ConnectError, SendResult, TransportError
from newsletter.email.message import stuffed_body

__all__ = [
    "LOCALHOST",
    "MALFORMED",
    "MAX_LINE",
    "MAX_REPLY",
    "NON_ASCII_LOCAL_PART",
    "ascii_address",
    "auth_unusable",
    "bad_challenge",
    "check_policy",
    "classify",
    "dot_stuffed",
    "enhanced_status",
    "hello_refused",
    "login_failed",
    "login_refused",
    "malformed",
    "no_starttls",
    "refusal_before_close",
    "refusal_code",
    "reply_text",
    "size_limit",
    "starttls_refused",
    "tls_context",
    "tls_error",
    "too_big",
    "try_helo",
]

LOCALHOST = {"localhost", "127.0.0.1", "::1"}
# Bounds on what a server may make us hold for one reply (memory): smtplib's
# own limit on a line, and on a whole reply (an EHLO list is a few hundred bytes).
MAX_LINE = 8192
MAX_REPLY = 64 * 1024
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


def enhanced_status(text: str) -> str | None:
    """The RFC 3463 enhanced status code at the start of a reply text, if any."""
    match = _ENHANCED.match(text)
    return ".".join(match.groups()) if match else None


def malformed(code: int) -> bool:
    """Whether a reply code is no SMTP reply at all (the parsers give -1 for
    one without three digits): the session is out of step with the server,
    so the connection must be dropped, never reused."""
    return not 200 <= code < 600


def refusal_code(code: int) -> int:
    """The code of a reply that is not the one a command needed (250, 354):
    a 2xx or 3xx there (a 250 to DATA, a 354 to RCPT) is no refusal but a
    session out of step, malformed (-1): never "sent" for content that never
    went out, never a bounce."""
    return code if 400 <= code < 600 else -1


def classify(recipient: str, code: int, text: str, stage: str) -> SendResult:
    """Turn one SMTP reply into a `SendResult`."""
    if malformed(code):
        # RFC 5321 §4.2: a reply is three digits, then text.  Garbage is the
        # server's (or the network's) trouble, not this recipient's: temporary.
        return SendResult(recipient, False, None, MALFORMED, stage=stage)
    if 200 <= code < 300:
        return SendResult(recipient, True, code, text, stage=stage)
    status = enhanced_status(text) or ""
    # RFC 5321 §4.2.3: 421 means the server is closing the channel; 454 and
    # 451 4.7.x are what providers answer when a sender goes too fast.
    throttled = code in (421, 454) or (code == 451 and status.startswith("4.7."))
    if 400 <= code < 500:
        return SendResult(recipient, False, code, text, throttled=throttled, stage=stage)
    bounced = stage == "rcpt" and status.startswith("5.1.")
    return SendResult(recipient, False, code, text, permanent=True, stage=stage, bounced=bounced)


# What each pipelined envelope reply must be (RFC 2920 §3.1), in order.
_ENVELOPE = (("mail", (250,)), ("rcpt", (250, 251)), ("data", (354,)))


def refusal_before_close(recipient: str, replies: list[tuple[int, bytes]]) -> SendResult | None:
    """After a server closed (or stalled) mid-envelope: the refusal it sent
    first, if any, from the replies read so far (MAIL's, RCPT's, DATA's).

    RFC 5321 §3.8: a server shutting the channel answers with 421 and closes;
    one that refuses a sender for good (554 to MAIL FROM, "transaction
    failed") often closes too, so the other pipelined replies never come.  The
    server's reply, not a lost connection, is the outcome, with its words,
    where "connection lost" would be re-sent at once on a reused connection
    and the server's answer never shown (what a refused sender then means for
    the recipient and the pass: `delivery.senders`).
    """
    for (code, text), (stage, good) in zip(replies, _ENVELOPE, strict=False):
        if code not in good:
            return classify(recipient, refusal_code(code), reply_text(text), stage)
    return None


def size_limit(advertised: str | None) -> int:
    """The message size a server accepts, from its EHLO SIZE parameter (RFC 1870);
    0 when it gives none (no SIZE, "SIZE", "SIZE 0") or one that is no number."""
    try:
        return max(0, int((advertised or "").split()[0]))
    except (IndexError, ValueError):
        return 0


def too_big(recipient: str, size: int, limit: int) -> SendResult:
    """A message over the server's SIZE: not offered at all, and permanent
    (RFC 1870 §6: the server would refuse it with 552 every time)."""
    return SendResult(
        recipient,
        False,
        None,
        f"the message ({size} bytes) is larger than the server accepts (SIZE {limit}, RFC 1870)",
        permanent=True,
        stage="data",
    )


def reply_text(reply: bytes | str) -> str:
    """A reply's text on one line."""
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return " ".join(reply.split())


def ascii_address(address: str) -> tuple[str, bool]:
    """(address with an IDNA domain, whether the local part needs SMTPUTF8)."""
    local, sep, domain = address.rpartition("@")
    if not sep:
        return address, not address.isascii()
    if not domain.isascii():
        # Left as it is when IDNA cannot encode it: the server's refusal names it.
        with contextlib.suppress(UnicodeError):
            domain = domain.encode("idna").decode("ascii")
    return f"{local}@{domain}", not local.isascii()


def dot_stuffed(message: bytes) -> bytes:
    """The DATA payload: CRLF line ends, leading dots doubled, the final dot line.

    RFC 5321 §4.5.2 transparency.  Messages from `message` are CRLF already;
    only a message with a bare CR or LF takes the slower normalising path.
    """
    return stuffed_body(message) + b".\r\n"


def tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    """Verified TLS: smtplib and asyncio verify nothing unless given this."""
    ca_file = settings.ca_file
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def check_policy(settings: SmtpSettings) -> None:
    """Refuse clear text except to localhost, and AUTH without TLS always."""
    s = settings
    if s.security == "none" and s.host not in LOCALHOST and not s.allow_insecure:
        raise TransportError(
            f'refusing to send in clear text to {s.host} (security = "none" is only '
            "for localhost unless allow_insecure = true)",
            key="smtp.security",
        )
    if s.security == "none" and s.username:
        raise TransportError(
            "refusing to log in without TLS (AUTH only after TLS)", key="smtp.username"
        )


def no_starttls(settings: SmtpSettings) -> TransportError:
    return TransportError(
        f"{settings.host} does not offer STARTTLS; refusing to send in clear "
        '(use security = "tls" for port 465)',
        key="smtp.security",
    )


SUPPORTED_AUTH = ("PLAIN", "LOGIN", "CRAM-MD5")  # what both transports speak


def auth_unusable(host: str, offered: list[str]) -> TransportError | None:
    """Why AUTH cannot be tried with what the server offers (None: it can).

    A configuration problem that stops the command (nothing spent), never a
    connection failure that would defer every recipient.
    """
    if not offered:  # no AUTH keyword, or one with no mechanism after it
        return TransportError(f"{host} does not offer AUTH", key="smtp.username")
    if not set(offered) & set(SUPPORTED_AUTH):
        return TransportError(
            f"{host} offers no AUTH mechanism we support ({' '.join(offered)})",
            key="smtp.username",
        )
    return None


def bad_challenge(host: str, exc: ValueError) -> TransportError:
    """An AUTH challenge that is not base64 (RFC 4954 §4): the server's fault."""
    return TransportError(f"{host} sent a malformed AUTH challenge ({exc})", key="smtp.username")


def starttls_refused(settings: SmtpSettings, code: int, reply: bytes | str) -> TransportError:
    """STARTTLS offered, then refused: as when it is missing, never sent in clear."""
    return TransportError(
        f"STARTTLS refused by {settings.host}: {code} {reply_text(reply)}", key="smtp.security"
    )


def tls_error(where: str, exc: ssl.SSLError) -> TransportError:
    """The one message for a failed TLS handshake (an untrusted certificate says so)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TransportError(
            f"the TLS certificate of {where} is not trusted: {exc.verify_message}",
            key="smtp.ca_file",
        )
    return TransportError(f"TLS with {where} failed: {exc}", key="smtp.security")


def try_helo(code: int) -> bool:
    """Whether a refused EHLO is followed by HELO: an old (or strict) server
    answers a command it does not know with 5xx (500, 502; RFC 5321
    §4.1.1.1, §4.2.4).  A 4xx is no such thing but the server's temporary
    refusal (421: closing, RFC 5321 §3.8): `hello_refused`, as a greeting's."""
    return 500 <= code < 600


def hello_refused(where: str, verb: str, code: int, reply: bytes | str) -> TransportError:
    """EHLO (4xx) or HELO refused.  Temporary (4xx, or no SMTP reply at all):
    a connection failure carrying its code, exactly as a refused greeting,
    so a 421 or 454 slows every connection down and spends no attempt
    (`strategy.connect_failure`).  Permanent (5xx to HELO after EHLO): the
    command stops with the server's words; nothing is sent or spent."""
    text = f"{where} refused {verb}: {code} {reply_text(reply)}"
    if 500 <= code < 600:
        return TransportError(f"{text} (no mail is possible on this connection)", code=code)
    return ConnectError(text, code=code)


def login_refused(username: str, code: int, reply: bytes | str) -> TransportError:
    # The reply is the server's; the password never appears in it.
    return TransportError(
        f"login as {username} refused: {code} {reply_text(reply)} "
        "(not tried again with this password by this command)",
        key="smtp.username",
        code=code,
    )


def login_failed(username: str, code: int, reply: bytes | str) -> TransportError:
    """A login refused: for good (5xx, `login_refused`), or, for a 454
    (RFC 4954 §6, "temporary authentication failure"), for now: a connection
    failure the pass slows down for, as a 454 greeting, never stopping the
    command over one connection's hiccup."""
    if code == 454:
        return ConnectError(
            f"login as {username} refused for now: {code} {reply_text(reply)}", code=code
        )
    return login_refused(username, code, reply)


MALFORMED = "malformed reply from the server (not an SMTP reply; the connection is dropped)"

NON_ASCII_LOCAL_PART = (
    "the address has a non-ASCII local part and the server does not support SMTPUTF8 (RFC 6531)"
)
