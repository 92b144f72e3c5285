"""Header values of our messages: folding, addresses, List-Id and List-Unsubscribe.

Every value is one line before it is folded: CR/LF and other controls in a
name, an address, a subject or a URL are refused or collapsed, so nothing
per recipient can inject a header.  Non-ASCII goes out as RFC 2047 encoded
words (and IDNA domains), except `List-Unsubscribe`, written by hand on one
line because Gmail ignores an encoded one (RFC 2369, 8058).

Whitespace between two encoded words is no text (RFC 2047 §6.2): a space of
the text goes inside an encoded word, or between an encoded word and a word
kept as it is, never between two encoded words (`_units`, `_fold`).
"""

from __future__ import annotations

import base64
import functools
import itertools
import re
from email import policy
from email.headerregistry import Address
from typing import Any
from urllib.parse import quote, urlsplit

from newsletter.config import Settings
from newsletter.config.settings import list_ident
from newsletter.email.rendered import one_line
from newsletter.errors import RenderError

__all__ = [
    "MAX_ASCII_NAME",
    "ascii_domain",
    "clean_address",
    "clean_url",
    "fold_address",
    "fold_header",
    "format_address",
    "list_id",
    "list_id_header",
    "list_unsubscribe_header",
    "mailto_url",
    "parse_from",
]

CRLF = b"\r\n"
_POLICY = policy.SMTP  # linesep CRLF, 78-column folding, RFC 2047 for non-ASCII
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ATOM_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
MAX_ASCII_NAME = 300
# What `fold_header` and a display name keep as they are (a word at a time):
# printable ASCII in unstructured text, RFC 5322 atext in a phrase.
_TEXT_WORD = re.compile(r"[!-~]+")
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
_PRINTABLE = re.compile(r"[ -~]*")
_LONE_SPACE = re.compile(r"(?<! ) (?! )")  # where a quoted string folds
# RFC 2047 §5(3): what a Q encoded word carries as it is wherever it stands
# (in a phrase too); a space is "_", any other byte "=XX".
_Q_LITERAL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_Q = [chr(c) if c in _Q_LITERAL else "_" if c == 32 else f"={c:02X}" for c in range(256)]
_Q_ONE = bytes(sorted(_Q_LITERAL)) + b" "  # the bytes Q writes as one character


def fold_header(name: str, value: str) -> bytes:
    """`Name: value` (unstructured text: Subject, Date) folded at 78 columns,
    RFC 2047-encoded where non-ASCII, CRLF.

    Written here, not by Python's policy: the policy folded between two
    encoded words at a space of the text, and whitespace between encoded
    words is no text (RFC 2047 §6.2), so every reader lost that space
    ("appris à" read "apprisà"); it also wrote 76-character encoded words.
    """
    start = f"{name}:"
    return _fold(start, _units(value, _TEXT_WORD, 78 - len(start) - 1))


def fold_address(name: str, value: str, key: str) -> bytes:
    if _CONTROL.search(value):
        raise RenderError(f"{name} must be one line", key=key)
    try:
        header = _ascii_domains(name, _POLICY.header_factory(name, value))
        if getattr(header, "defects", None):
            raise ValueError(header.defects[0])
        addresses: tuple[Address, ...] = tuple(getattr(header, "addresses", ()))
        if any(g.display_name is not None for g in getattr(header, "groups", ())) or not all(
            a.addr_spec.isascii() for a in addresses
        ):
            return header.fold(policy=_POLICY).encode("ascii")  # a group, or SMTPUTF8
        if all(_PRINTABLE.fullmatch(a.display_name) for a in addresses):
            folded: str = header.fold(policy=_POLICY)
            if folded.count("\r\n") == 1 and "=?" not in folded:
                return folded.encode("ascii")  # one line, nothing encoded
    except (ValueError, TypeError, IndexError) as exc:
        raise RenderError(f"not a valid address: {value!r}", key=key) from exc
    # Folded or encoded, the policy's phrase loses what a subject lost (a
    # space between encoded words) and, folded, a quoted name its quotes
    # (`"Doe, Jane, …"` read as several addresses): written here instead.
    start = f"{name}:"
    units: list[tuple[str, bool]] = []
    for i, address in enumerate(addresses):
        units += _phrase_units(address.display_name, 78 - len(start) - 1)
        comma = "," if i + 1 < len(addresses) else ""
        units.append((f"<{address.addr_spec}>{comma}", False))
    return _fold(start, units)


def _ascii_domains(name: str, header: Any) -> Any:
    """`header` with each non-ASCII domain in IDNA form: the policy would write
    an encoded word inside the address, which is no address (RFC 2047 §5)."""
    addresses: tuple[Address, ...] = tuple(getattr(header, "addresses", ()))
    if all(a.domain.isascii() for a in addresses):
        return header
    ascii_addresses = [
        Address(a.display_name, a.username, _idna(a.domain) or a.domain) for a in addresses
    ]
    return _POLICY.header_factory(name, ", ".join(str(a) for a in ascii_addresses))


def parse_from(value: str) -> Address:
    fold_address("From", value, "email.from")
    header = _ascii_domains("From", _POLICY.header_factory("From", value))
    addresses: list[Address] = list(getattr(header, "addresses", ()))
    if len(addresses) != 1 or not addresses[0].domain:
        raise RenderError(f"expected one address, got {value!r}", key="email.from")
    return addresses[0]


def list_id(settings: Settings, list_name: str) -> str:
    """RFC 2919: `"Title" <list.site-domain>`; the id is stable, the title cosmetic.

    The title is a phrase (RFC 5322 §3.2.5): quoted unless it is plain
    atoms, or "Field Notes (every post)" would read as a name and a comment.
    """
    title, ident = _list_title_and_id(settings, list_name)
    return f"{phrase(title)} <{ident}>"


def phrase(text: str) -> str:
    """`text` as an RFC 5322 phrase: as it is when it is atoms, else one
    quoted string (backslash and quote escaped)."""
    if _ATOM_PHRASE.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def list_id_header(settings: Settings, list_name: str) -> bytes:
    """The `List-Id` header line.  A non-ASCII title goes as encoded words
    itself (RFC 2047 §5(3): a phrase may be encoded words), never quoted
    first: the quotes and backslashes would be read back as its text."""
    title, ident = _list_title_and_id(settings, list_name)
    if title.isascii() and "=?" not in title:
        # Folded here at the spaces (in a quoted string too: unfolding keeps
        # the space): the policy would encode a long word, and with it the
        # quotes and `<list-id>`, which belong outside encoded words (§5).
        words = [(word, False) for word in list_id(settings, list_name).split(" ")]
        folded = _fold("List-Id:", words)
        if all(len(line) <= 78 for line in folded.split(b"\r\n")):
            return folded
    return f"List-Id: {_encoded_words(title, 9)}\r\n <{ident}>\r\n".encode("ascii")


def _units(text: str, plain: re.Pattern[str], longest: int) -> list[tuple[str, bool]]:
    """`text` as the units `_fold` writes with a space between each, as
    (unit, encode): a word `plain` matches, without "=?" and at most `longest`
    long, as it is; each run of other words as one unit to encode, the spaces
    between its words inside it.  Whitespace between two encoded words is no
    text (RFC 2047 §6.2), so two units to encode are never next to each other:
    every space `_fold` writes between units is one of the text's."""
    words = text.split(" ")
    keep = [len(w) <= longest and bool(plain.fullmatch(w)) and "=?" not in w for w in words]
    for i, word in enumerate(words):
        # An empty word (two spaces, a leading or a trailing one) between
        # kept words would be an empty encoded word: a neighbour joins it.
        if not word and (i == 0 or keep[i - 1]) and (i + 1 == len(words) or keep[i + 1]):
            if i + 1 < len(words):
                keep[i + 1] = False
            elif i:
                keep[i - 1] = False
    units: list[tuple[str, bool]] = []
    for kept, group in itertools.groupby(zip(words, keep, strict=True), key=lambda p: p[1]):
        run = [word for word, _ in group]
        if kept:
            units += [(word, False) for word in run]
        elif run != [""]:  # "" only when the whole text is empty
            units.append((" ".join(run), True))
    return units


def _phrase_units(name: str, longest: int) -> list[tuple[str, bool]]:
    """A display name as `_fold` units: printable ASCII as atoms or one quoted
    string (folded at its spaces: unfolding keeps them), else encoded words
    where atoms will not do (RFC 2047 §5(3))."""
    if not name:
        return []
    if _PRINTABLE.fullmatch(name) and "=?" not in name:
        words = _LONE_SPACE.split(phrase(name))
        if all(len(word) <= longest for word in words):
            return [(word, False) for word in words]
    return _units(name, _ATOM, longest)


def _fold(start: str, units: list[tuple[str, bool]]) -> bytes:
    """`start` and `units` (see `_units`) as a header, CRLF, no line past 78
    columns (RFC 5322 §2.1.1) unless a unit kept as it is would not fit one.

    A unit to encode becomes `utf-8` encoded words of ≤ 75 characters
    (RFC 2047 §2), Q or B whichever is shorter, split between characters
    (never inside one, §5) to fill each line; the folds between them are
    whitespace between encoded words, which readers drop (§6.2).
    """
    lines = [start]
    for text, encode in units:
        if not encode:
            if len(lines[-1]) + 1 + len(text) > 78 and lines[-1] != start:
                lines.append("")
            lines[-1] += " " + text
            continue
        data = text.encode("utf-8")
        b = _word_size(data, True) < _word_size(data, False)
        width = min(75, 77 - len(lines[-1]))  # the first word, on this line
        chunk = b""
        for char in text:
            piece = char.encode("utf-8")
            if _word_size(chunk + piece, b) > width:
                if chunk:
                    lines[-1] += " " + _encoded_word(chunk, b)
                lines.append("")
                width, chunk = 75, b""
            chunk += piece
        lines[-1] += " " + _encoded_word(chunk, b)
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _word_size(data: bytes, b: bool) -> int:
    """The length of `data`'s encoded word: B (base64) or Q."""
    if b:
        return 12 + (len(data) + 2) // 3 * 4  # "=?utf-8?b?" + "?="
    return 12 + len(data) + 2 * len(data.translate(None, _Q_ONE))


def _encoded_word(data: bytes, b: bool) -> str:
    if b:
        return f"=?utf-8?b?{base64.b64encode(data).decode('ascii')}?="
    return "=?utf-8?q?" + "".join([_Q[c] for c in data]) + "?="


def _list_title_and_id(settings: Settings, list_name: str) -> tuple[str, str]:
    host = (urlsplit(settings.site.url).hostname or "localhost").encode("idna").decode("ascii")
    lst = settings.lists.get(list_name)
    title = one_line(lst.title if lst else list_name)
    return title, f"{list_ident(list_name)}.{host}"


def list_unsubscribe_header(url: str, mailto: str | None) -> bytes:
    """RFC 2369/8058 `List-Unsubscribe`, written by hand on one line.

    Python's policy would RFC 2047-encode a long value, which Gmail ignores;
    the value is ASCII (URLs), so it never needs encoding.  Only if the line
    would pass 998 bytes does the mailto go on a continuation line.
    """
    entries = [f"<{url}>"]
    if mailto:
        entries.append(f"<{mailto_url(mailto)}>")
    line = "List-Unsubscribe: " + ", ".join(entries)
    if len(line) > 998 and len(entries) > 1:
        line = "List-Unsubscribe: " + entries[0] + ",\r\n " + entries[1]
    return line.encode("ascii") + CRLF


@functools.lru_cache(maxsize=16)
def mailto_url(mailto: str) -> str:
    """`[unsubscribe] mailto` (an address, or a mailto: URL with a query) as an
    ASCII RFC 6068 URL with `subject=unsubscribe` unless it names a subject:
    the domain in IDNA form, a non-ASCII local part percent-encoded (a header
    URL is ASCII; config validation already refused spaces and '<>')."""
    target = mailto[7:] if mailto[:7].lower() == "mailto:" else mailto
    target, _, query = target.partition("?")
    local, _, domain = target.rpartition("@")
    address = f"{quote(local, safe=_MAILTO_SAFE)}@{_idna(domain) or quote(domain)}"
    params = [p for p in query.split("&") if p]
    if not any(p.lower().startswith("subject=") for p in params):
        params.append("subject=unsubscribe")
    return f"mailto:{address}?{'&'.join(quote(p, safe=_MAILTO_SAFE + '=') for p in params)}"


# RFC 6068 §2: what may stay as it is in a mailto address (and its percent escapes).
_MAILTO_SAFE = "!$'*+-.^_`{|}~%&"


def format_address(name: str, address: str) -> str:
    """A To value: `Name <addr>`; quoted or RFC 2047-encoded as the name needs.

    The domain is written in IDNA (xn--) form so that the header is ASCII
    unless the local part itself is not (then it needs SMTPUTF8, RFC 6531).
    """
    addr = ascii_domain(address)
    if not name:
        return addr
    if name.isascii() and "=?" not in name:
        # A quoted string is never folded (unfolding would keep the space), so
        # cap its length well below the 998-byte line limit.
        return f"{phrase(name[:MAX_ASCII_NAME])} <{addr}>"
    # Non-ASCII, or ASCII that a reader would take for an RFC 2047 encoded
    # word (even inside quotes, as Python's parser does): encode the name
    # itself, so what a reader decodes is exactly the text we were given.
    words = _encoded_words(name)
    # The address on a line of its own when it would take the last past 78.
    last = words.rsplit("\r\n", 1)[-1]
    space = "\r\n " if len(last) + len(addr) + 7 > 78 else " "
    return f"{words}{space}<{addr}>"


def _encoded_words(text: str, column: int = 4) -> str:
    """RFC 2047 `B` encoded words of ≤ 75 characters, folded onto new lines;
    the first starts at `column` (after `To: `), and no line passes 78."""
    words: list[bytes] = []
    chunk = b""
    room = min(45, (78 - column - 12) // 4 * 3)  # 45 bytes → 60 base64 chars + 12 = 72
    for char in text:
        data = char.encode("utf-8")
        if len(chunk) + len(data) > room and chunk:
            words.append(chunk)
            chunk = b""
            room = 45
        chunk += data
    words.append(chunk)
    return "\r\n ".join(f"=?utf-8?b?{base64.b64encode(w).decode('ascii')}?=" for w in words)


def ascii_domain(address: str) -> str:
    local, at, domain = address.rpartition("@")
    if not at:
        return address
    idna = _idna(domain)
    return address if idna is None else f"{local}@{idna}"


@functools.lru_cache(maxsize=4096)
def _idna(domain: str) -> str | None:
    """Cached: Python's idna codec is slow, and a list has few distinct domains."""
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None  # not IDNA-encodable: send as UTF-8 (SMTPUTF8)


_UNUSABLE_IN_ADDRESS = re.compile(r'[\x00-\x1f\x7f<>," ]')
# A URL goes into a header verbatim: printable ASCII only, no '<' or '>' (RFC 2369).
_HEADER_URL = re.compile(r"[!-;=?-~]+")


def clean_address(address: str) -> str:
    address = address.strip()
    if not address or _UNUSABLE_IN_ADDRESS.search(address):
        raise RenderError(f"not a usable address: {address!r}", recipient=address)
    return address


def clean_url(url: str, recipient: str) -> str:
    if not _HEADER_URL.fullmatch(url):
        raise RenderError(f"unusable unsubscribe URL {url!r}", recipient=recipient)
    return url
