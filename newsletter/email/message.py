"""`RenderedEmail` × recipient → the exact bytes to send.

The fast path: `MessageTemplate.build` serialises the whole MIME message once
per mailing, with the per-recipient values still as placeholders, and splits
the bytes into constant segments and *slots*.  `personalise` then only fills
the slots (To, Message-ID, List-Unsubscribe and the placeholders in the two
body parts) and joins bytes: no `EmailMessage`, no re-rendering.

Why this is safe:

* Both body parts are quoted-printable (RFC 2045 §6.7), encoded with
  `binascii.b2a_qp` chunk by chunk *between* placeholders; every placeholder
  sits on its own soft-broken line, so a placeholder is never split or
  encoded and every line stays ≤ 76 characters even after substitution
  (`_qp`, `_qp_value`: b2a_qp alone leaves some lines of 77 or 78).
  That also honours RFC 5322 §2.1.1 (998) whatever premailer produced.
* The MIME boundary starts with `=_`, a sequence quoted-printable can never
  produce, so it cannot collide with the content.
* Every line ends in CRLF; header values are folded by `headers` (RFC 2047
  encoded words for non-ASCII, a space of the text never between two of
  them), except `List-Unsubscribe`, written by hand on one line because
  Gmail ignores an encoded one (RFC 2369, 8058).
* CR/LF in any per-recipient value is refused or collapsed: no header
  injection through a name, an address or a subject.
"""

from __future__ import annotations

import binascii
import email.utils
import functools
import hashlib
import html
import re
from dataclasses import dataclass, field
from datetime import datetime

from newsletter.config import Settings, utcnow
from newsletter.email.headers import (
    clean_address,
    clean_url,
    fold_address,
    fold_header,
    format_address,
    list_id_header,
    list_unsubscribe_header,
    parse_from,
)
from newsletter.email.linktokens import preferences_url
from newsletter.email.rendered import PLACEHOLDERS, RenderedEmail, one_line
from newsletter.email.tokens import unsubscribe_url

CRLF = b"\r\n"
TEST_PREFIX = "[TEST] "
_SOFT_BREAK = b"=" + CRLF  # quoted-printable soft line break

# Slots: the per-recipient holes in a pre-serialised message.
TO, MESSAGE_ID, LIST_UNSUBSCRIBE, SUBJECT = 0, 1, 2, 3
EMAIL_TEXT, NAME_TEXT, UNSUB_TEXT = 4, 5, 6
EMAIL_HTML, NAME_HTML, UNSUB_HTML = 7, 8, 9
PREFS_TEXT, PREFS_HTML = 10, 11
_BODY_SLOTS = {
    "text": {
        PLACEHOLDERS["email"]: EMAIL_TEXT,
        PLACEHOLDERS["name"]: NAME_TEXT,
        PLACEHOLDERS["unsubscribe_url"]: UNSUB_TEXT,
        PLACEHOLDERS["preferences_url"]: PREFS_TEXT,
    },
    "html": {
        PLACEHOLDERS["email"]: EMAIL_HTML,
        PLACEHOLDERS["name"]: NAME_HTML,
        PLACEHOLDERS["unsubscribe_url"]: UNSUB_HTML,
        PLACEHOLDERS["preferences_url"]: PREFS_HTML,
    },
}
_PLACEHOLDER_RE = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS.values()))

Segment = bytes | int
# A constant segment as it goes into SMTP DATA (RFC 5321 §4.5.2): its
# line-leading dots doubled inside it, whether it starts with a dot (doubled
# only where it starts a line), whether it ends a line.
DataSegment = tuple[bytes, bool, bool] | int
_NAME_SLOTS = frozenset({NAME_TEXT, NAME_HTML})
_PREFS_SLOTS = frozenset({PREFS_TEXT, PREFS_HTML})


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str
    unsubscribe_url: str
    preferences_url: str = ""  # the footer's link to /preferences/<token>


SAMPLE_RECIPIENT_EMAIL = "reader@example.com"
SAMPLE_RECIPIENT_NAME = "Sample Reader"


def sample_recipient(settings: Settings) -> Recipient:
    """A made-up recipient for previews and `render --format eml`."""
    return Recipient(
        SAMPLE_RECIPIENT_EMAIL,
        SAMPLE_RECIPIENT_NAME,
        unsubscribe_url(settings, "SAMPLE-TOKEN"),
        preferences_url(settings, "SAMPLE-TOKEN"),
    )


def message_id(mailing_key: str, email: str, domain: str) -> str:
    """Stable per (mailing, recipient): a resend after a crash reuses it."""
    digest = hashlib.sha256(f"{mailing_key}\0{email.lower()}".encode()).hexdigest()[:32]
    return f"<{digest}@{domain}>"


@dataclass(frozen=True)
class MessageTemplate:
    """One mailing's message, serialised once; `personalise` fills it per recipient."""

    rendered: RenderedEmail
    settings: Settings
    subject_prefix: str = ""
    segments: tuple[Segment, ...] = field(default=(), repr=False)
    domain: str = "localhost"  # the From domain: Message-IDs and List-Id
    sender: str = ""  # the From addr-spec (SMTP MAIL FROM)
    # `segments` ready for SMTP DATA (see `data`); None: a constant is not CRLF-clean
    data_segments: tuple[DataSegment, ...] | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls,
        rendered: RenderedEmail,
        settings: Settings,
        *,
        subject_prefix: str = "",
        date: datetime | None = None,
    ) -> MessageTemplate:
        """Serialise `rendered` once, with placeholders, ready for `personalise`."""
        sender = parse_from(settings.email.from_)
        domain = sender.domain.encode("idna").decode("ascii") if sender.domain else "localhost"
        subject = one_line(subject_prefix + rendered.subject)
        boundary = _boundary(rendered)
        segments: list[Segment] = [
            *_constant_headers(settings, rendered, subject, domain, date or utcnow()),
            f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'.encode(),
            f"--{boundary}\r\n".encode(),
            *_part("plain", rendered.text, "text"),
            f"\r\n--{boundary}\r\n".encode(),
            *_part("html", rendered.html, "html"),
            f"\r\n--{boundary}--\r\n".encode(),
        ]
        merged = tuple(_merge(segments))
        return cls(
            rendered,
            settings,
            subject_prefix,
            merged,
            domain,
            sender.addr_spec,
            _data_segments(merged),
        )

    @classmethod
    def for_test(
        cls, rendered: RenderedEmail, settings: Settings, *, date: datetime | None = None
    ) -> MessageTemplate:
        """The `send --test` variant: the subject starts with "[TEST] "."""
        return cls.build(rendered, settings, subject_prefix=TEST_PREFIX, date=date)

    def personalise(
        self, recipient: Recipient, *, mailing_key: str = "", message_id: str | None = None
    ) -> bytes:
        """The exact bytes for one recipient (CRLF line endings, lines ≤ 998).

        `message_id`: the Message-ID to carry (a mailing's deliveries name
        theirs, `delivery.messageids`); without it, one hashed from
        `mailing_key` and the address (previews, test sends)."""
        values = self._values(recipient, mailing_key, message_id)
        return b"".join([s if isinstance(s, bytes) else values[s] for s in self.segments])

    @functools.cached_property
    def uses_preferences(self) -> bool:
        """Whether the body links to the preferences page (else no token is needed)."""
        return any(s in _PREFS_SLOTS for s in self.segments if isinstance(s, int))

    def data(
        self, recipient: Recipient, *, mailing_key: str = "", message_id: str | None = None
    ) -> bytes:
        """`personalise`'s bytes as SMTP DATA content (dot-stuffed, without the final
        dot line).

        The same bytes as `transports.smtp.stuffed_body(personalise(...))`, but
        the constant segments were stuffed once, at build: only the short
        per-recipient values are looked at here (profiled: stuffing the whole
        10 KB message cost more than personalising it).
        """
        values = self._values(recipient, mailing_key, message_id)
        plan = self.data_segments
        if plan is None:
            raw = b"".join([s if isinstance(s, bytes) else values[s] for s in self.segments])
            return stuffed_body(raw)
        out: list[bytes] = []
        eol = True  # at the start of a line
        for seg in plan:
            if isinstance(seg, int):
                value = values[seg]
                if not value:
                    continue
                if b"\r\n." in value:
                    value = value.replace(b"\r\n.", b"\r\n..")
                if eol and value[:1] == b".":
                    value = b"." + value
                eol = value[-2:] == CRLF
                out.append(value)
            else:
                body, dot, eol_after = seg
                out.append(b"." + body if dot and eol else body)
                eol = eol_after
        if not eol:
            out.append(CRLF)
        return b"".join(out)

    def sample(self, *, mailing_key: str = "preview") -> bytes:
        """The message for a made-up recipient (previews, `render --format eml`)."""
        return self.personalise(sample_recipient(self.settings), mailing_key=mailing_key)

    @functools.cached_property
    def _slots(self) -> frozenset[int]:
        return frozenset(s for s in self.segments if isinstance(s, int))

    def _values(
        self, recipient: Recipient, mailing_key: str, message_id_: str | None = None
    ) -> list[bytes]:
        """Each slot's bytes (only the slots this template has; b"" for the others)."""
        slots = self._slots
        address = clean_address(recipient.email)
        name = one_line(recipient.name) if recipient.name else ""
        url = clean_url(recipient.unsubscribe_url, address)
        # A given Message-ID is ours (derived, or read back from the ledger
        # where only `<…>` without CR/LF was ever stored): used as it is.
        mid = message_id_ or message_id(mailing_key, address, self.domain)
        qp = _qp_value
        values = [b""] * 12
        values[TO] = b"To: " + format_address(name, address).encode() + CRLF
        values[MESSAGE_ID] = b"Message-ID: " + mid.encode() + CRLF
        values[LIST_UNSUBSCRIBE] = list_unsubscribe_header(url, self.settings.unsubscribe.mailto)
        if SUBJECT in slots:
            values[SUBJECT] = self._subject_header(recipient)
        if EMAIL_TEXT in slots:
            values[EMAIL_TEXT] = qp(address.encode())
        if EMAIL_HTML in slots:
            values[EMAIL_HTML] = qp(html.escape(address).encode())
        if UNSUB_TEXT in slots:
            values[UNSUB_TEXT] = qp(url.encode())
        if UNSUB_HTML in slots:
            values[UNSUB_HTML] = qp(html.escape(url).encode())
        if NAME_TEXT in slots:
            values[NAME_TEXT] = qp(name.encode())
        if NAME_HTML in slots:
            values[NAME_HTML] = qp(html.escape(name).encode())
        if slots & _PREFS_SLOTS:
            prefs = recipient.preferences_url
            prefs = clean_url(prefs, address) if prefs else ""
            values[PREFS_TEXT] = qp(prefs.encode())
            values[PREFS_HTML] = qp(html.escape(prefs).encode())
        return values

    def _subject_header(self, recipient: Recipient) -> bytes:
        """Only when the subject template used a recipient field (slow path)."""
        subject = one_line(self.subject_prefix + self.rendered.subject)
        subject = subject.replace(PLACEHOLDERS["name"], one_line(recipient.name))
        subject = subject.replace(PLACEHOLDERS["email"], clean_address(recipient.email))
        subject = subject.replace(PLACEHOLDERS["unsubscribe_url"], "")
        subject = subject.replace(PLACEHOLDERS["preferences_url"], "")
        return fold_header("Subject", one_line(subject))


# --------------------------------------------------------------------------- headers


def _constant_headers(
    settings: Settings, rendered: RenderedEmail, subject: str, domain: str, date: datetime
) -> list[Segment]:
    headers: list[Segment] = [
        fold_header("Date", email.utils.format_datetime(date)),
        fold_address("From", settings.email.from_, "email.from"),
        TO,
    ]
    if settings.email.reply_to:
        headers.append(fold_address("Reply-To", settings.email.reply_to, "email.reply_to"))
    if _PLACEHOLDER_RE.search(subject):
        headers.append(SUBJECT)
    else:
        headers.append(fold_header("Subject", subject))
    headers += [
        MESSAGE_ID,
        list_id_header(settings, rendered.list_name),
        LIST_UNSUBSCRIBE,
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",  # RFC 8058 §3.1
        b"MIME-Version: 1.0\r\n",
    ]
    return headers


# --------------------------------------------------------------------------- body parts


def _part(subtype: str, content: str, kind: str) -> list[Segment]:
    head = (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    ).encode("ascii")
    return [head, *_qp_segments(content, _BODY_SLOTS[kind])]


def fill_placeholders(rendered: RenderedEmail, recipient: Recipient) -> tuple[str, str]:
    """(html, text) with the recipient's values in place (previews, `render`)."""
    values = {
        PLACEHOLDERS["email"]: recipient.email,
        PLACEHOLDERS["name"]: recipient.name,
        PLACEHOLDERS["unsubscribe_url"]: recipient.unsubscribe_url,
        PLACEHOLDERS["preferences_url"]: recipient.preferences_url,
    }
    html_part, text_part = rendered.html, rendered.text
    for key, value in values.items():
        html_part = html_part.replace(key, html.escape(value))
        text_part = text_part.replace(key, value)
    return html_part, text_part


def _qp_segments(content: str, slots: dict[str, int]) -> list[Segment]:
    """Quoted-printable with each placeholder alone on a soft-broken line."""
    content = content.replace("\r\n", "\n").replace("\r", "\n")
    out: list[Segment] = []
    pos = 0
    for match in _PLACEHOLDER_RE.finditer(content):
        if match.start() > pos:
            out += [_qp(content[pos : match.start()], soft_break_after=True), _SOFT_BREAK]
        out += [slots[match.group(0)], _SOFT_BREAK]
        pos = match.end()
    if pos < len(content):
        out.append(_qp(content[pos:]))
    return out


def _qp(text: str, *, soft_break_after: bool = False) -> bytes:
    """`text` quoted-printable, CRLF, no line past 76 (RFC 2045 §6.7 (5));
    `soft_break_after`: with room for the "=" of a soft break after it."""
    encoded = binascii.b2a_qp(text.encode("utf-8"), quotetabs=False, istext=True, header=False)
    if _ESCAPED_LINE_END.search(encoded):
        # b2a_qp escapes a space or tab that ends a line after it measured
        # the line: such a line can reach 78 characters.
        encoded = _LONG_LINE.sub(lambda m: _wrap(m.group(0), 76), encoded)
    if soft_break_after:
        encoded = _room_for_soft_break(encoded)
    return encoded.replace(b"\n", CRLF)


def _qp_value(value: bytes) -> bytes:
    """A per-recipient value quoted-printable, ready for the soft break after
    its slot.  Run for every value of every recipient: kept to the fewest calls."""
    # Values are one line (CR/LF removed before: b2a_qp would measure an
    # escaped LF as a line end); b2a_qp still wraps at 76.  Positional
    # arguments (quotetabs, istext, header): keywords cost more per call.
    encoded = _b2a_qp(value, False, False, False)
    if len(encoded) <= 75:
        return encoded  # one line, with room for the soft break after it
    if encoded.rfind(b"\n", -76) < 0:  # its last line passes 75
        encoded = _room_for_soft_break(encoded)
    return encoded.replace(b"\n", CRLF)


_b2a_qp = binascii.b2a_qp
_ESCAPED_LINE_END = re.compile(rb"=(?:20|09)\n")
_LONG_LINE = re.compile(rb"[^\n]{77,}")


def _room_for_soft_break(encoded: bytes) -> bytes:
    """`encoded` (quoted-printable, LF) with its last line ≤ 75 characters.

    b2a_qp keeps a line it breaks to 76 characters with its "=", but leaves
    a last line of 76 as it is: the soft break after it made 77.
    """
    start = encoded.rfind(b"\n") + 1
    if len(encoded) - start <= 75:
        return encoded
    return encoded[:start] + _wrap(encoded[start:], 75)


def _wrap(line: bytes, last: int) -> bytes:
    """One quoted-printable line cut by soft breaks: each line ≤ 76 characters
    with its "=", the last ≤ `last`; never inside an escape `=XX` (a literal
    "=" is always escaped, so every "=" starts one)."""
    lines = []
    while len(line) > last:
        cut = 74 if line[74] == 61 else 73 if line[73] == 61 else 75  # 61: "="
        lines.append(line[:cut] + b"=")
        line = line[cut:]
    lines.append(line)
    return b"\n".join(lines)


def _merge(segments: list[Segment]) -> list[Segment]:
    """Adjacent constant segments joined: fewer items to walk per recipient."""
    merged: list[Segment] = []
    for seg in segments:
        if isinstance(seg, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] = merged[-1] + seg
        elif seg != b"":
            merged.append(seg)
    return merged


def stuffed_body(message: bytes) -> bytes:
    """SMTP DATA content (RFC 5321 §4.5.2): CRLF line ends, leading dots doubled,
    without the final dot line (it goes out on its own)."""
    # Profiled: this ran ~27 µs per 10 KB message, more than personalising it,
    # all under the GIL; each bytes pass costs 3–10 µs, so do as few as possible
    # (and `MessageTemplate.data` none over the whole message).
    if not _crlf_clean(message):
        message = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed


def _crlf_clean(data: bytes) -> bool:
    lf = data.count(b"\n")
    return lf == data.count(b"\r") == data.count(b"\r\n")


def _data_segments(segments: tuple[Segment, ...]) -> tuple[DataSegment, ...] | None:
    """`segments` with every constant stuffed for DATA, once (see `MessageTemplate.data`).

    A constant's line-leading dots inside it are doubled here; its first byte
    depends on what comes before it (a value that ends a line or not), so only
    whether it is a dot is kept.  Stuffing piece by piece equals stuffing the
    joined message only if no CRLF is split between pieces: every piece must
    be CRLF-clean (values are: quoted-printable or folded headers).
    """
    plan: list[DataSegment] = []
    for seg in segments:
        if isinstance(seg, int):
            plan.append(seg)
            continue
        if not _crlf_clean(seg):
            return None
        plan.append((seg.replace(b"\r\n.", b"\r\n.."), seg[:1] == b".", seg[-2:] == CRLF))
    return tuple(plan)


def _boundary(rendered: RenderedEmail) -> str:
    # "=_" never occurs in quoted-printable output (RFC 2045 §6.7), so the
    # boundary cannot collide; hashing the content keeps builds reproducible.
    digest = hashlib.sha256((rendered.html + rendered.text).encode("utf-8")).hexdigest()[:24]
    return f"=_nl_{digest}"
