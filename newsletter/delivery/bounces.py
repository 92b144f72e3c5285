"""Bounces and complaints: VERP addresses out, DSN and ARF reports in.

Outgoing, each delivery's envelope sender is ``bounces+<token>@domain``
(VERP) when ``[bounces] address`` is set; the token is the delivery's ledger
id with an HMAC, so a report that comes back names its delivery and nobody
can forge one for somebody else's address.

Incoming, `parse_report` reads one message of the bounce mailbox:

* RFC 3464 delivery status notifications (``multipart/report;
  report-type=delivery-status``), also when the ``message/delivery-status``
  part sits in some other multipart, and when ``Status:`` is missing and the
  code is only in ``Diagnostic-Code``;
* plain-text bounces without a report part: Exim's (``X-Failed-Recipients``
  header) and qmail's ("Hi. This is the qmail-send program");
* never an auto-reply (RFC 3834 ``Auto-Submitted``, ``X-Autoreply``...),
  whatever its text says;
* RFC 5965 ARF complaints (``report-type=feedback-report``), the recipient
  taken from the VERP sender, the unsubscribe token of the returned message,
  or ``Original-Rcpt-To`` — providers often redact the latter.

RFC 3463 status classes decide: 5.x.x is a hard bounce, 4.x.x soft, except
5.2.2 (mailbox full), which is temporary in practice and counted as soft.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.errors import MessageError
from email.message import EmailMessage, Message
from email.utils import parseaddr, parsedate_to_datetime
from typing import Literal

from newsletter.config import Settings
from newsletter.delivery.report import envelope_sender
from newsletter.email.tokens import load_secret
from newsletter.errors import NewsletterError

Kind = Literal["hard", "soft", "complaint"]

_VERP_MAC_BYTES = 10  # 80 bits, 16 base32 characters: short enough for a local part


class UnparseableReport(NewsletterError):
    """A message in the bounce mailbox that is neither a DSN nor a complaint."""


@dataclass(frozen=True)
class BounceEvent:
    kind: Kind
    email: str | None  # the recipient, when the report names one
    status: str | None  # RFC 3463 code, "5.1.1"
    diagnostic: str
    verp_text: str | None = None  # where our VERP sender may appear (headers)
    unsubscribe_token: str | None = None  # from a returned List-Unsubscribe header
    message_id: str | None = None  # of the returned original message


@dataclass(frozen=True)
class ParsedReport:
    source: str  # the report's Message-ID, or a digest of its bytes
    shape: str  # "dsn" | "arf" | "exim" | "qmail"
    events: tuple[BounceEvent, ...]  # empty for a delay warning
    # When it happened by the report's own word (Date, else a DSN's
    # Arrival-Date), in UTC; None when it has neither or they cannot be read.
    date: datetime | None = None


# --------------------------------------------------------------------------- VERP


def _verp_mac(secret: bytes, delivery_id: int) -> str:
    mac = hmac.new(secret, f"bounce\0{delivery_id}".encode(), hashlib.sha256).digest()
    return base64.b32encode(mac[:_VERP_MAC_BYTES]).decode("ascii").lower()


def verp_token(secret: bytes, delivery_id: int) -> str:
    # Lower case only: some servers fold the case of local parts.
    return f"d{delivery_id}-{_verp_mac(secret, delivery_id)}"


def verp_address(bounce_address: str, secret: bytes, delivery_id: int) -> str:
    local, _, domain = bounce_address.partition("@")
    return f"{local}+{verp_token(secret, delivery_id)}@{domain}"


def sender_for(settings: Settings) -> Callable[[int], str]:
    """The envelope sender of each delivery (by ledger id): with `[bounces]
    address`, a VERP address whose signed token names the delivery, so a
    bounce finds its way back to it."""
    plain = envelope_sender(settings)
    address = settings.bounces.address
    if not address:
        return lambda _delivery_id: plain
    secret = load_secret(settings)
    return lambda delivery_id: verp_address(address, secret, delivery_id)


def verify_verp(secret: bytes, token: str) -> int | None:
    """The delivery id inside a genuine token; None for anything else."""
    match = re.fullmatch(r"d(\d{1,18})-([a-z2-7]{16})", token.strip().lower())
    if match is None:
        return None
    delivery_id = int(match.group(1))
    if not hmac.compare_digest(match.group(2), _verp_mac(secret, delivery_id)):
        return None
    return delivery_id


def verp_tokens_in(text: str, bounce_address: str) -> list[str]:
    """Every ``local+token@domain`` of our bounce address found in `text`."""
    local, _, domain = bounce_address.partition("@")
    pattern = re.escape(local) + r"\+([A-Za-z0-9-]+)@" + re.escape(domain)
    return re.findall(pattern, text, flags=re.IGNORECASE)


# --------------------------------------------------------------------------- parsing


# Anyone can mail the bounce address, and Python's email parser fails on some
# malformed headers (`To: a@`, `Message-ID: <`) with an IndexError,
# AttributeError or HeaderParseError where it should record a defect; deep
# nesting raises RecursionError.
PARSER_FAILURES = (LookupError, AttributeError, TypeError, ValueError, MessageError, RecursionError)


def parse_report(data: bytes) -> ParsedReport:
    """Read one message of the bounce mailbox; `UnparseableReport` if it is neither
    a bounce nor a complaint we understand, or cannot be read at all."""
    try:
        return _parse_report(data)
    except PARSER_FAILURES as exc:
        # Set aside like any other message we do not understand, instead of
        # stopping every read of the mailbox (it stayed in new/, pass after pass).
        raise UnparseableReport(
            f"malformed message: Python's email parser failed ({type(exc).__name__}: {exc})"
        ) from exc


def _parse_report(data: bytes) -> ParsedReport:
    msg = message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    source = _source_key(msg, data)
    report_type = str(msg.get_param("report-type", "", header="content-type") or "").lower()
    if report_type == "feedback-report" or _part(msg, "message/feedback-report") is not None:
        return ParsedReport(source, "arf", (_arf(msg),), _report_date(msg, None))
    # A bounce is addressed to the VERP sender: the receiving server's
    # Delivered-To / X-Original-To, or the report's own To, carry it.
    envelope = " ".join(
        str(v) for name in ("delivered-to", "x-original-to", "envelope-to", "to")
        for v in msg.get_all(name, [])
    )  # fmt: skip
    subject = str(msg.get("subject", ""))[:80]
    responder = _responder_mark(msg)
    if responder:
        raise UnparseableReport(f"an auto-reply ({responder}), not a bounce ({subject!r})")
    status_part = _part(msg, "message/delivery-status")
    auto_submitted = _auto_submitted(msg)
    found: list[tuple[str, list[BounceEvent]]] = []
    if status_part is not None:
        found.append(("dsn", list(_dsn(msg, status_part))))
    else:
        found.append(("exim", _exim(msg)))
        if auto_submitted is None:
            found.append(("qmail", _qmail(msg)))
    for shape, events in found:
        if events or shape == "dsn":  # a DSN with no failure is a delay warning
            with_envelope = tuple(
                replace(e, verp_text=" ".join(filter(None, (envelope, e.verp_text))))
                for e in events
            )
            return ParsedReport(source, shape, with_envelope, _report_date(msg, status_part))
    if auto_submitted:
        raise UnparseableReport(f"an auto-reply ({auto_submitted}), not a bounce ({subject!r})")
    raise UnparseableReport(f"not a delivery status notification or complaint ({subject!r})")


# Vacation programs' and ticket systems' own marks: no MTA puts them on a bounce.
_RESPONDER_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Autoresponder")


def _responder_mark(msg: Message) -> str | None:
    """The header marking `msg` as a responder's reply, whatever its body says."""
    for name in _RESPONDER_HEADERS:
        if name in msg:
            return f"{name}: {str(msg[name]).strip()[:40]}"
    if str(msg.get("precedence", "")).strip().lower() == "auto_reply":
        return "Precedence: auto_reply"
    return None


def _auto_submitted(msg: Message) -> str | None:
    """RFC 3834's ``Auto-Submitted`` unless "no".  Exim and Postfix mark their
    bounces auto-replied too, so it rules out only the shape that has no report
    structure of its own to go by: qmail's plain text."""
    value = str(msg.get("auto-submitted", "")).split(";")[0].split("(")[0].strip().lower()
    return f"Auto-Submitted: {value[:40]}" if value and value != "no" else None


def _source_key(msg: Message, data: bytes) -> str:
    mid = str(msg.get("message-id", "")).strip()
    return mid[:300] if mid else "sha256:" + hashlib.sha256(data).hexdigest()


def _report_date(msg: Message, status_part: Message | None) -> datetime | None:
    """The report's Date, else the Arrival-Date of its delivery-status part."""
    found = _date(_text(msg, "date"))
    if found is None and status_part is not None:
        arrival = (str(g.get("arrival-date", "")) for g in _field_groups(status_part))
        found = next(filter(None, map(_date, arrival)), None)
    return found


def _date(value: str) -> datetime | None:
    """An RFC 5322 date-time in UTC; a zone of -0000 (unknown) is taken as UTC."""
    try:
        parsed = parsedate_to_datetime(value.strip())
        return parsed.replace(tzinfo=parsed.tzinfo or UTC).astimezone(UTC)
    except (TypeError, ValueError, IndexError, OverflowError):  # anyone's words: no date
        return None


def _part(msg: Message, content_type: str) -> Message | None:
    for part in msg.walk():
        if part.get_content_type() == content_type:
            return part
    return None


def _field_groups(part: Message) -> list[Message]:
    """The header blocks of a message/delivery-status or feedback-report part."""
    payload = part.get_payload()
    if str(part.get("content-transfer-encoding", "")).strip().lower() == "base64":
        # Python parses the base64 text as if it were the fields (Exchange sends this).
        encoded = payload if isinstance(payload, str) else ""
        if isinstance(payload, list):
            encoded = "".join(str(p.get_payload()) for p in payload if isinstance(p, Message))
        try:
            payload = base64.b64decode(encoded).decode("utf-8", "replace")
        except ValueError:
            return []
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    raw = payload if isinstance(payload, str) else ""
    blocks = re.split(r"\r?\n[ \t]*\r?\n", raw.strip())
    return [message_from_bytes(b.encode("utf-8") + b"\n\n") for b in blocks if b.strip()]


# A code is never part of a longer dotted number: "4.5.6" inside the MX's
# address 10.4.5.6, or "250 " ending 10.0.2.250, is no status (RFC 3463).
_NOT_IN_NUMBER = r"(?<![\w.])"
_CODE = re.compile(_NOT_IN_NUMBER + r"([245])\.(\d{1,3})\.(\d{1,3})(?!\w|\.\d)")
_SMTP_REPLY = re.compile(_NOT_IN_NUMBER + r"([245])\d\d[ -]")


def _status_of(status: str, diagnostic: str) -> str | None:
    for text in (status, diagnostic):
        match = _CODE.search(text)
        if match:
            return ".".join(match.groups())
    reply = _SMTP_REPLY.search(diagnostic)  # "550 No such user" without an enhanced code
    return f"{reply.group(1)}.0.0" if reply else None


def classify(status: str | None) -> Kind | None:
    if status is None:
        return None
    if status.startswith("5.2.2"):  # mailbox full: temporary in practice
        return "soft"
    return {"5": "hard", "4": "soft"}.get(status[0])  # type: ignore[return-value]


def _address(value: str) -> str | None:
    """``rfc822; a@example.org`` (RFC 3464 address-type; address) -> the address."""
    value = value.split(";", 1)[-1].strip()
    address = parseaddr(value)[1] or value
    return address.lower() if "@" in address else None


def _original(msg: Message) -> Message | None:
    """The returned message (or its headers) inside a report."""
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        if ctype == "text/rfc822-headers":
            body = part.get_payload(decode=True)
            if isinstance(body, bytes):
                return message_from_bytes(body + b"\n\n")
    return None


def _returned_ids(msg: Message) -> dict[str, str | None]:
    original = _original(msg)
    if original is None:
        return {"message_id": None, "unsubscribe": None, "return_path": None}
    unsubscribe = re.search(r"/unsubscribe/([A-Za-z0-9_-]+)", _text(original, "list-unsubscribe"))
    return {
        "message_id": _text(original, "message-id").strip() or None,
        "unsubscribe": unsubscribe.group(1) if unsubscribe else None,
        "return_path": _text(original, "return-path") or None,
    }


def _text(msg: Message, name: str) -> str:
    """A header of the returned message; '' when the parser fails on it.

    A mangled header there must not hide the report's own VERP address.
    """
    try:
        return str(msg.get(name, ""))
    except PARSER_FAILURES:
        return ""


def _dsn(msg: Message, status_part: Message) -> Iterator[BounceEvent]:
    returned = _returned_ids(msg)
    for group in _recipient_groups(_field_groups(status_part)):
        action = _action_of(str(group.get("action", "")))
        diagnostic = " ".join(str(group.get("diagnostic-code", "")).split())
        status = _status_of(str(group.get("status", "")), diagnostic)
        recipient = _address(
            str(group.get("final-recipient", "") or group.get("original-recipient", ""))
        )
        if action and action != "failed":
            continue  # delayed / delivered / relayed / expanded: not a bounce
        kind = classify(status)
        if kind is None:
            continue
        yield BounceEvent(
            kind, recipient, status, diagnostic or str(group.get("status", "")).strip(),
            message_id=returned["message_id"], unsubscribe_token=returned["unsubscribe"],
            verp_text=returned["return_path"],
        )  # fmt: skip


# RFC 3464 §2.3: Final-Recipient, Action and Status are required of each
# per-recipient block; the per-message block (Reporting-MTA...) has none of them.
_RECIPIENT_FIELDS = ("final-recipient", "original-recipient", "action", "status")


def _recipient_groups(groups: list[Message]) -> list[Message]:
    """The per-recipient blocks, by their fields: some reporters leave out the
    per-message block, so the first block may already be a recipient's."""
    return [g for g in groups if any(name in g for name in _RECIPIENT_FIELDS)]


def _action_of(value: str) -> str:
    """The action word of ``Action: failed (permanent)``: RFC 3464 fields may
    carry RFC 822 comments, nested ones too, and the word is case-insensitive."""
    while True:
        bare = re.sub(r"\([^()]*\)", " ", value)
        if bare == value:
            break
        value = bare
    words = value.split()
    return words[0].lower() if words else ""


def _arf(msg: Message) -> BounceEvent:
    part = _part(msg, "message/feedback-report")
    fields: Message = _field_groups(part)[0] if part is not None else Message()
    returned = _returned_ids(msg)
    feedback = str(fields.get("feedback-type", "abuse")).strip().lower()
    recipient = _address(str(fields.get("original-rcpt-to", "")))
    verp_text = " ".join(
        str(v) for v in (fields.get("original-mail-from"), returned["return_path"]) if v
    )
    return BounceEvent(
        "complaint",
        recipient,
        None,
        f"feedback-type: {feedback}",
        verp_text=verp_text or None,
        unsubscribe_token=returned["unsubscribe"],
        message_id=returned["message_id"],
    )


def _text_body(msg: Message) -> str:
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            body = part.get_payload(decode=True)
            if isinstance(body, bytes):
                return _decoded(body, part.get_content_charset() or "utf-8")
    return ""


def _decoded(body: bytes, charset: str) -> str:
    try:
        return body.decode(charset, "replace")
    except LookupError:  # a charset Python does not know (Exim's x-unknown-8bit)
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            return body.decode("latin-1")  # every byte is a latin-1 character


def _exim(msg: Message) -> list[BounceEvent]:
    """Exim: an ``X-Failed-Recipients`` header and the SMTP reply in the body."""
    failed = str(msg.get("x-failed-recipients", ""))
    if not failed:
        return []
    body = _text_body(msg)
    events = []
    for raw in failed.split(","):
        address = _address(raw)
        if address is None:
            continue
        around = _near(body, address)
        status = _status_of("", around) or "5.0.0"  # Exim sends this only on permanent failure
        events.append(BounceEvent(classify(status) or "hard", address, status, around))
    return events


# qmail-send's opening lines (qmail-send.c), not quoted ("> ") by somebody else.
_QMAIL_PREAMBLE = re.compile(
    r"^(?!>)[^\n]*(?:qmail-send program|I'm afraid I wasn't able to deliver)", re.MULTILINE
)


def _qmail(msg: Message) -> list[BounceEvent]:
    """qmail: "<a@example.org>:" followed by the remote server's words."""
    body = _text_body(msg)
    if not _QMAIL_PREAMBLE.search(body):  # "permanent error" alone is anybody's words
        return []
    events = []
    for match in re.finditer(r"^<([^<>\s]+@[^<>\s]+)>:\s*\n((?:.+\n?)*)", body, re.MULTILINE):
        text = " ".join(match.group(2).split())
        status = _status_of("", text) or "5.0.0"
        events.append(BounceEvent(classify(status) or "hard", match.group(1).lower(), status, text))
    return events


def _near(body: str, address: str) -> str:
    """The lines of `body` that follow the first mention of `address`."""
    at = body.lower().find(address)
    text = body[at : at + 400] if at >= 0 else body[:400]
    return " ".join(text.split())
