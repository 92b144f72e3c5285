"""Email addresses: trim, normalise and validate, fast enough for a million rows.

`normalise_email` is the one gate every address passes (import, add, sync):

* surrounding whitespace and a `mailto:` prefix are dropped, and so are the
  angle brackets of `Name <addr>` forms that spreadsheets produce;
* the domain is lower-cased and an internationalised domain becomes punycode
  (IDNA 2008 via email-validator), so the address is plain ASCII on the wire;
* the local part keeps its case: RFC 5321 §2.4 lets a server treat it
  case-sensitively.  Duplicates are still merged case-insensitively, through
  `email_key` (the whole address lower-cased);
* a non-ASCII local part is refused: it needs SMTPUTF8 (RFC 6531), which most
  relays do not offer, and a subscriber we cannot mail is worse than a clear
  error at import time.

email-validator costs ~20 µs per call here, so plain addresses take a fast
path: the local part is checked against the RFC 5322 §3.2.3 dot-atom grammar
and the domain's verdict is cached, because a list has millions of addresses
but only thousands of domains.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from newsletter.errors import SubscriberError

# RFC 5322 §3.2.3 atext, joined by single dots: what nearly every real local part is.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
# The whole address when it is a dot-atom at an ASCII host name: no angle
# brackets, no mailto:, nothing the slower checks below would strip first.
_PLAIN = re.compile(rf"({_ATEXT}(?:\.{_ATEXT})*)@([A-Za-z0-9.-]+)")
_MAX_LOCAL = 64  # RFC 5321 §4.5.3.1.1
_MAX_ADDRESS = 254  # RFC 3696 errata 1690: the longest usable forward-path


@dataclass(frozen=True)
class Address:
    """A normalised, validated address and its dedupe key."""

    email: str
    key: str


def email_key(email: str) -> str:
    """The case-insensitive identity used to merge duplicates."""
    return email.strip().lower()


def normalise_email(raw: str) -> Address:
    """The normalised form of `raw`, or a `SubscriberError` saying what is wrong."""
    return Address(*normalised(raw))


def normalised(raw: str) -> tuple[str, str]:
    """`normalise_email` as a plain (email, key) pair: the import's hot loop."""
    text = raw.strip()
    plain = _PLAIN.fullmatch(text)
    if plain is not None:  # nothing to strip or decode: the common case, one regex
        local, domain = plain.groups()
        # Cached by its lower-case form: `Example.COM` and `example.com` are
        # one domain to IDNA (UTS #46 maps ASCII to lower case first), and a
        # file that spells its domains both ways validates each once.
        ascii_domain = _domain(domain.lower())
        if ascii_domain is not None and len(local) <= _MAX_LOCAL:
            # Most domains are already in their ASCII, lower-case form.
            email = text if ascii_domain == domain else f"{local}@{ascii_domain}"
            if len(email) <= _MAX_ADDRESS:
                return email, email.lower()
    text = _strip_decoration(raw)
    if not text:
        raise SubscriberError("empty email address")
    local, at, domain = text.rpartition("@")
    if at and local and domain and _DOT_ATOM.fullmatch(local) and len(local) <= _MAX_LOCAL:
        ascii_domain = _domain(domain)
        if ascii_domain is not None:
            email = f"{local}@{ascii_domain}"
            if len(email) <= _MAX_ADDRESS:
                return email, email.lower()
    address = _slow_path(text)
    return address.email, address.key


def is_valid_email(raw: str) -> bool:
    try:
        normalise_email(raw)
    except SubscriberError:
        return False
    return True


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_ADDRESS_LIKE = re.compile(r"[@,;<>]")


def _strip_decoration(raw: str) -> str:
    text = raw.strip()
    if text.endswith(">") and "<" in text:  # `<addr>` or `Name <addr>`: the address
        start = text.rindex("<")
        # Only when what comes before is a display name: in "a@x, Bo <b@y>"
        # it is another address, and the cell is refused rather than read as b@y.
        if not _ADDRESS_LIKE.search(_QUOTED.sub("", text[:start])):
            text = text[start + 1 : -1].strip()
    if text[:7].lower() == "mailto:":
        text = text[7:].strip()
    return text


@lru_cache(maxsize=65536)
def _domain(domain: str) -> str | None:
    """The ASCII form of a domain if a plain address there is valid, else None.

    None sends the address to the slow path, which then reports the reason.
    """
    # Imported here (cached per domain, so once per domain): commands that
    # only read the store, such as `run --once`, never load email-validator.
    from email_validator import EmailNotValidError, validate_email

    try:
        checked = validate_email(f"a@{domain}", check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError:
        return None
    return checked.ascii_domain


def _slow_path(text: str) -> Address:
    from email_validator import EmailNotValidError, validate_email

    try:
        checked = validate_email(text, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise SubscriberError(f"invalid email address {text!r}: {exc}") from exc
    email = checked.ascii_email or checked.normalized
    # email-validator only enforces RFC 5321's 64-octet local part in strict
    # mode; a relay may refuse a longer one, so refuse it here, at import.
    local = email.rpartition("@")[0]
    if len(local.encode("utf-8")) > _MAX_LOCAL:
        raise SubscriberError(
            f"invalid email address {text!r}: the part before the @ is longer than "
            f"{_MAX_LOCAL} characters"
        )
    return Address(email, email.lower())
