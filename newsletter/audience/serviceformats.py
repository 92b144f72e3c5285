"""Each service's subscriber export, mapped onto one `SourceRow` shape.

`detect_format(header, file_name)` recognises an export by its header;
`mapper_for(format, header, ...)` returns a function turning one CSV record
into a `SourceRow` (raw email, name, status, attributes).  Columns a format
does not consume are kept as attributes when they hold a value.

Statuses are ours: active, pending (not yet confirmed: not mailable),
unsubscribed, bounced, complained.  Which source values map to which, and
which columns each service reads, is in `servicestatuses` and in
docs/subscribers.md.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from newsletter.audience.servicestatuses import (
    CONSUMED,
    SINCE,
    STATUS_RULES,
    Always,
    at_least_what_the_file_says,
    is_mailchimp_export_name,
    mailchimp_file_kind,
)
from newsletter.audience.storable import (
    MAX_NAME,
    finite_float,
    one_line,
    refuse_constant,
    storable_json,
)
from newsletter.errors import SubscriberError

FORMATS = (
    "generic",
    "newsletter",
    "mailchimp",
    "substack",
    "ghost",
    "listmonk",
    "beehiiv",
    "buttondown",
    "kit",
)

_ENGLISH_EMAIL_COLUMNS = ("email", "e-mail", "email address", "email_address", "emailaddress",
                          "mail")  # fmt: skip
# German, French, Spanish, Dutch, Italian spreadsheets and mail programs.
_LOCALIZED_EMAIL_COLUMNS = ("e-mail-adresse", "e-mail adresse", "e-mail address",
                            "adresse e-mail", "adresse email", "adresse électronique", "courriel",
                            "correo electrónico", "correo electronico", "e-mailadres",
                            "emailadres", "indirizzo email", "indirizzo e-mail")  # fmt: skip
EMAIL_COLUMNS = _ENGLISH_EMAIL_COLUMNS + _LOCALIZED_EMAIL_COLUMNS
NAME_COLUMNS = ("name", "full name", "full_name", "fullname", "display name")
# English first, then the headers German, French and Spanish spreadsheets use.
FIRST_COLUMNS = ("first name", "first_name", "firstname", "fname", "given name", "vorname",
                 "prénom", "prenom", "nombre")  # fmt: skip
LAST_COLUMNS = ("last name", "last_name", "lastname", "lname", "surname", "family name",
                "nachname", "nom", "apellido", "apellidos")  # fmt: skip

# Our own export's header starts with these (see newsletter.audience.subscribers.export).
NEWSLETTER_HEADER = ("email", "name", "status", "subscribed_at")
# A cell our export prefixed with ' against spreadsheet formula injection.
FORMULA_PREFIX = "'"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", FORMULA_PREFIX)
# Where a spreadsheet may start a cell inside one of ours: Excel in the
# de/fr/nl/it/es locales splits a double-clicked .csv on `;`, other readers
# on TAB, and such a reader ends a row at a line break even inside quotes.
# A formula character (or a `"`, which opens a quoted cell there) right after
# one gets the ' as well (`subscribers.escape_cell`), and import takes away
# exactly one ' after each of them, as it does the leading one.
INNER_FORMULA = re.compile("(?<=[;\t\r\n])(?=[=+\\-@\t\r'\"])")
_INNER_GUARD = re.compile("(?<=[;\t\r\n])'")
# An attribute name our export wrote as a JSON string (`subscribers.encode_key`).
KEY_QUOTE = '"'


class SourceRow(NamedTuple):
    """One usable record, before address validation.

    Immutable like the frozen dataclasses between the other stages, but a
    NamedTuple: one is built per row of a million-row file, and a frozen
    dataclass's `__init__` (one `object.__setattr__` per field) cost four
    times as much, more than the rest of the mapper."""

    path: Path
    line: int
    email: str
    name: str
    status: str
    reason: str | None
    attributes: dict[str, Any]
    subscribed_at: datetime | None
    warnings: tuple[str, ...]


Mapper = Callable[[int, list[str]], SourceRow]

# `SourceRow(...)` runs the NamedTuple's generated `__new__`, a Python function
# (one more frame per row of a million); this is the call it ends in, made
# directly: the same object, every field given in order.
_new_row = tuple.__new__


def header_key(name: str) -> str:
    """A header cell as the column names here are spelled: trimmed, lower
    case, accents composed (a Mac may write `ó` as `o` + a combining accent)."""
    return unicodedata.normalize("NFC", name.strip().strip("\ufeff").strip()).lower()


class _Columns:
    """Case-insensitive access to a record's cells by header name."""

    def __init__(self, header: Sequence[str]) -> None:
        self.header = list(header)
        self.index: dict[str, int] = {}
        for i, name in enumerate(header):
            self.index.setdefault(header_key(name), i)

    def find(self, *names: str) -> str | None:
        return next((n for n in names if n in self.index), None)

    def has(self, *names: str) -> bool:
        return all(n in self.index for n in names)


def detect_format(header: Sequence[str], file_name: str = "") -> str:
    """The service whose export has this header; `generic` when none matches."""
    cols = _Columns(header)
    lowered = [h.lower() for h in header]
    if tuple(lowered[:4]) == NEWSLETTER_HEADER:
        return "newsletter"
    if cols.has("email address") and _says_mailchimp(cols, file_name):
        return "mailchimp"
    if cols.has("email", "active_subscription", "email_disabled"):
        return "substack"
    if tuple(lowered[:3]) == ("email", "name", "subscription type"):
        return "substack"
    if cols.has("email", "subscribed_to_emails"):
        return "ghost"
    if cols.has("uuid", "email", "attributes", "status"):
        return "listmonk"
    if lowered == ["email", "name", "attributes"]:
        return "listmonk"
    if cols.has("subscriber_type"):
        return "buttondown"
    if cols.has("email", "status") and cols.find("tier", "unsubscribed_at", "utm_source"):
        return "beehiiv"
    if cols.has("state") and cols.find("email_address", "email") and cols.find("first_name"):
        return "kit"
    return "generic"


def _says_mailchimp(cols: _Columns, file_name: str) -> bool:
    """Besides `Email Address`: a column only Mailchimp writes, or the name it
    gives its export's files.  Columns deleted in a spreadsheet must not make
    an unsubscribed or cleaned file read as generic (that is, active)."""
    columns = ("member_rating", "optin_time", "leid", "euid", "unsub_time", "clean_time")
    return cols.find(*columns) is not None or is_mailchimp_export_name(file_name)


def mailchimp_refusal(header: Sequence[str], file_name: str, *, in_zip: bool) -> str | None:
    """Why the members of a Mailchimp file cannot be imported, or None.

    Its name or its UNSUB_TIME / CLEAN_TIME column says what they are.  A ZIP's
    member without either, or a file named like one of Mailchimp's own with
    another word (`nonsubscribed_members_export_….csv`: contacts who never
    subscribed), would otherwise be imported as active: the unsafe guess.
    A single file under a name of its own is the subscribed one.  Whatever
    format a file is read as, a name like Mailchimp's with another word is
    refused (`in_zip` only for a file read as Mailchimp's: another format's
    ZIP holds files of its owner's naming)."""
    cols = _Columns(header)
    if mailchimp_file_kind(file_name) or cols.find("unsub_time", "clean_time"):
        return None
    if not in_zip and not is_mailchimp_export_name(file_name):
        return None
    fix = (
        "take it out of the ZIP, or import the other files one by one"
        if in_zip
        else "import it only if they did subscribe, renamed subscribed_….csv"
    )
    return (
        "a Mailchimp file whose name does not say its members' status (the export names "
        "them subscribed_…, unsubscribed_… and cleaned_…; nonsubscribed_… lists contacts "
        f"who never subscribed), so nothing was imported: {fix}"
    )


# What a forced `--format` needs in the header: each entry is a set of
# alternatives, one of which must be present.  Without them the rows would be
# read in the wrong shape (statuses, names and dates all from the wrong cells).
_EXPECTED: dict[str, tuple[tuple[str, ...], ...]] = {
    "newsletter": (("email",), ("status",), ("subscribed_at",)),
    "mailchimp": (("email address",),),
    "substack": (("email",), ("email_disabled", "active_subscription", "subscription type")),
    "ghost": (("email",), ("subscribed_to_emails",)),
    "listmonk": (("email",), ("attributes", "uuid")),
    "beehiiv": (("email",), ("status",)),
    "buttondown": (("email",), ("subscriber_type",)),
    "kit": (("email_address", "email"), ("state",)),
}


def check_forced_format(fmt: str, header: Sequence[str], file_name: str, label: Path) -> None:
    """A `--format` the header does not fit is an error naming what is missing."""
    cols = _Columns(header)
    missing = [" or ".join(repr(n) for n in names) for names in _EXPECTED.get(fmt, ())
               if cols.find(*names) is None]  # fmt: skip
    if missing:
        looks = detect_format(header, file_name)
        raise SubscriberError(
            f"--format {fmt} expects a column {', '.join(missing)}, which the header lacks "
            f"({', '.join(header)}); this file looks like a {looks} export: "
            f"try --format {looks} or --format auto",
            path=label,
            line=1,
        )


def mapper_for(fmt: str, header: Sequence[str], file_name: str, label: Path) -> Mapper:
    cols = _Columns(header)
    email_col = cols.find(*EMAIL_COLUMNS)
    if email_col is None:
        raise SubscriberError(
            f"no email column in the header (looked for: {', '.join(_ENGLISH_EMAIL_COLUMNS)}, "
            "or a localized one such as e-mail-adresse, courriel, correo electrónico; "
            f"found: {', '.join(header)})",
            path=label,
            line=1,
        )
    status_of = STATUS_RULES[fmt](cols, file_name)
    # Not our own export either: its status column is the store's word (a
    # resubscribed member's kept `unsub_time` attribute must not undo it).
    if fmt not in ("mailchimp", "newsletter"):
        status_of = at_least_what_the_file_says(status_of, cols, file_name)
    always = status_of.result if isinstance(status_of, Always) else None
    email_i = cols.index[email_col]
    unescape = fmt == "newsletter"
    since_col = cols.find(*SINCE.get(fmt, ()))
    since_i = cols.index[since_col] if since_col else None
    if unescape:
        # Our own export: the name is its `name` column, and every column but
        # the four it starts with is an attribute, whatever its name (a
        # listmonk attribute may be called `Name`, `email` or `first_name`).
        full_i, first_i, last_i = cols.index.get("name"), None, None
        used = {email_i, full_i, cols.index.get("status"), since_i}
    else:
        full_i, first_i, last_i = _name_indexes(cols)
        consumed = {email_col, *_NAME_PARTS, *CONSUMED.get(fmt, ())}
        used = {cols.index[n] for n in consumed if n in cols.index}
    keep = _attribute_columns(cols.header, used, exact=unescape)
    width = len(cols.header)
    no_attributes = not keep and fmt not in ("ghost", "listmonk")
    # Plain text cells, kept as they are (every format but these): inline below.
    plain_attributes = fmt not in ("newsletter", "ghost", "listmonk")

    def mapper(line: int, record: list[str]) -> SourceRow:
        # Per row of a million: positional cells, no closures, no generators.
        cells = [_unescape(c) for c in record] if unescape else record
        size = len(cells)
        email = cells[email_i].strip() if email_i < size else ""
        full = cells[full_i].strip() if full_i is not None and full_i < size else ""
        if full:
            name = " ".join(full.split())
        else:
            first = cells[first_i].strip() if first_i is not None and first_i < size else ""
            last = cells[last_i].strip() if last_i is not None and last_i < size else ""
            name = " ".join(f"{first} {last}".split()) if first or last else ""
        status, reason, warnings = status_of(cells) if always is None else always
        # What PostgreSQL cannot store (a NUL, a name over its column) is
        # cleaned as a form's name is: one cell must not fail the import there.
        if not name.isprintable() or len(name) > MAX_NAME:
            name, warnings = _storable_name(name, warnings)
        if reason is not None and not reason.isprintable():  # a status cell's word
            reason = one_line(reason)
        attributes: dict[str, Any]
        if no_attributes:
            attributes = {}
        elif plain_attributes:  # `_attributes` for these formats, without a call per row
            attributes = {}
            for i, column in keep:
                value = cells[i].strip() if i < size else ""
                if value:
                    attributes[column] = value
        else:
            attributes, more = _attributes(fmt, cols, cells, keep)
            warnings += more
        since = cells[since_i].strip() if since_i is not None and since_i < size else ""
        if size > width:  # an unquoted comma, most often: say what was left out
            warnings += _beyond_header(cells, width)
        return _new_row(SourceRow, (label, line, email, name, status, reason, attributes,
                                    parse_time(since) if since else None, warnings))  # fmt: skip

    return mapper


def _storable_name(name: str, warnings: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """A file's name as `storable.clean_name` makes a form's, with a warning
    where it is cut (a form's field is limited; a file's cell is not)."""
    cleaned = one_line(name)
    if len(cleaned) <= MAX_NAME:
        return cleaned, warnings
    cut = f"name longer than {MAX_NAME} characters; imported cut to its first {MAX_NAME}"
    return cleaned[:MAX_NAME].rstrip(), (*warnings, cut)


def _attribute_columns(
    header: list[str], used: set[int | None], *, exact: bool
) -> list[tuple[int, str]]:
    """(index, attribute name) of every column not read as email, name, status
    or time.  A repeated name is kept as `NAME 2`, `NAME 3`… and a blank one
    as `column N`, so that no cell overwrites another under one name.  Our
    own export's names are taken exactly (a blank one too), with the formula
    guard removed and a JSON-quoted name decoded (`_exact_name`)."""
    keep: list[tuple[int, str]] = []
    taken: set[str] = set()
    for i, header_name in enumerate(header):
        if i in used:
            continue
        base = name = _exact_name(header_name) if exact else header_name or f"column {i + 1}"
        n = 1
        while name in taken:
            n += 1
            name = f"{base} {n}"
        taken.add(name)
        keep.append((i, name))
    return keep


def _exact_name(header_name: str) -> str:
    """An attribute's name as our export wrote it (`subscribers.encode_key`):
    its formula guard removed, and, JSON-quoted, decoded."""
    name = _unescape(header_name)  # export escapes column names too
    if name.startswith(KEY_QUOTE):
        try:
            decoded = loads_bounded(name)
        except ValueError:
            return name
        return decoded if isinstance(decoded, str) else name
    return name


def _beyond_header(cells: list[str], width: int) -> tuple[str, ...]:
    extra = [c.strip() for c in cells[width:] if c.strip()]
    if not extra:  # empty trailing cells: a spreadsheet's ragged rows
        return ()
    shown = ", ".join(repr(c[:40] + "…" if len(c) > 40 else c) for c in extra[:5])
    more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
    cells_word = "cell" if len(extra) == 1 else "cells"
    return (
        f"{len(extra)} {cells_word} more than the header's {width} columns, "
        f"not imported: {shown}{more}",
    )


_NAME_PARTS = frozenset(NAME_COLUMNS + FIRST_COLUMNS + LAST_COLUMNS)


def _name_indexes(cols: _Columns) -> tuple[int | None, int | None, int | None]:
    def idx(names: tuple[str, ...]) -> int | None:
        found = cols.find(*names)
        return cols.index[found] if found else None

    return idx(NAME_COLUMNS), idx(FIRST_COLUMNS), idx(LAST_COLUMNS)


def _unescape(value: str) -> str:
    # Our export prefixed cells starting with a formula character (or a ')
    # with one ', and put one after each `;`, TAB or line break followed by
    # one (`INNER_FORMULA`); take exactly those away again.
    if value.startswith(FORMULA_PREFIX):
        value = value[1:]
    if FORMULA_PREFIX in value:  # rare: no regular expression for most cells
        value = _INNER_GUARD.sub("", value)
    return value


def parse_time(text: str) -> datetime | None:
    """An ISO 8601-ish time as aware UTC (naive means UTC); None if unreadable."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace(" UTC", "").replace("Z", "+00:00"))
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (ValueError, OverflowError):  # year 1 east of UTC has no UTC time
        return None


# --------------------------------------------------------------------------- attributes


def _attributes(
    fmt: str, cols: _Columns, cells: list[str], keep: list[tuple[int, str]]
) -> tuple[dict[str, Any], tuple[str, ...]]:
    attributes: dict[str, Any] = {}
    warnings: tuple[str, ...] = ()
    for i, name in keep:
        value = cells[i].strip() if i < len(cells) else ""
        if value:
            attributes[name] = _decode_json(value) if fmt == "newsletter" else value
    if fmt == "ghost" and "labels" in attributes:
        labels = (v.strip() for v in str(attributes["labels"]).split(","))
        attributes["labels"] = [label for label in labels if label]
    if fmt == "listmonk":
        found = cols.find("attributes")
        raw = cells[cols.index[found]].strip() if found and cols.index[found] < len(cells) else ""
        if raw:
            try:
                extra = loads_bounded(raw)
                if not isinstance(extra, dict):
                    raise ValueError("not a JSON object")
                attributes.update(extra)
            except ValueError as exc:
                warnings = (f"attributes are not a JSON object ({exc}); imported without them",)
    return attributes, warnings


def _decode_json(value: str) -> Any:
    # Our export writes non-string attributes (and strings that would read as
    # JSON) as JSON, so reading JSON back where it parses restores the type.
    try:
        return loads_bounded(value)
    except ValueError:
        return value


MAX_JSON_DEPTH = 32  # attributes are flat in practice; this is ample
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def loads_bounded(text: str) -> Any:
    """`json.loads`, refusing (ValueError) what nests deeper than `MAX_JSON_DEPTH`,
    and NaN, Infinity and numbers too large for a double, which Python reads
    but JSON has not (SQLite stored them, PostgreSQL refused the whole import);
    a lone surrogate is U+FFFD (`storable.storable_json`).

    The json module recurses once per level: a cell of 100,000 `[` raised
    RecursionError (a traceback, not a row's problem), and a few hundred levels
    that do parse would recurse again wherever the value is compared, stored
    or exported.  Counting brackets outside strings first costs nothing for
    the flat values real exports hold.
    """
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH:
        depth = deepest = 0
        for bracket in _JSON_BRACKET.finditer(_JSON_STRING.sub("", text)):
            depth += 1 if bracket.group() in "[{" else -1
            deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    value = json.loads(text, parse_constant=refuse_constant, parse_float=finite_float)
    return storable_json(text, value)  # half an emoji (`\ud83d`) as U+FFFD
