"""What each service's export says about a subscriber's status, in our terms.

One status rule per format (`STATUS_RULES`: the columns of a header in, a
function from one record's cells to (status, reason, warnings) out), the
columns each format reads rather than keeps as attributes (`CONSUMED`), and
where it keeps the time someone subscribed (`SINCE`).  `serviceformats`
builds each row's mapper from these.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from newsletter.audience.serviceformats import _Columns

_TRUE = {"true", "yes", "1", "y", "t"}
_FALSE = {"false", "no", "0", "n", "f"}

StatusResult = tuple[str, str | None, tuple[str, ...]]
StatusRule = Callable[[list[str]], StatusResult]


def _lookup(cols: _Columns, *names: str) -> Callable[[list[str]], str]:
    found = cols.find(*names)
    i = cols.index[found] if found else None

    def get(cells: list[str]) -> str:
        return cells[i].strip().lower() if i is not None and i < len(cells) else ""

    return get


def _mapped(column: str, table: dict[str, str], service: str) -> Callable[..., StatusRule]:
    """A rule reading one state column through a table; unknown → pending."""

    def rule(cols: _Columns, _file: str) -> StatusRule:
        get = _lookup(cols, column)

        def status(cells: list[str]) -> StatusResult:
            value = get(cells)
            if value in table:
                ours = table[value]
                return ours, None if ours == "active" else f"{service}: {value}", ()
            if not value:
                return "active", None, ()
            warning = f"unknown {column} {value!r}; imported as pending (not mailable)"
            return "pending", f"{service}: {value}", (warning,)

        if cols.find(column) is None:  # no such column: one answer for every row
            return Always(status([]))
        return status

    return rule


_GENERIC = {
    "active": "active",
    "subscribed": "active",
    "enabled": "active",
    "confirmed": "active",
    "pending": "pending",
    "unconfirmed": "pending",
    "unsubscribed": "unsubscribed",
    "blocklisted": "unsubscribed",
    "opted out": "unsubscribed",
    "cancelled": "unsubscribed",
    "bounced": "bounced",
    "cleaned": "bounced",
    "complained": "complained",
}


class Always:
    """A status rule with one answer for every row (the file has no column
    for it): the mapper reads `result` once instead of calling it per row."""

    __slots__ = ("result",)

    def __init__(self, result: StatusResult) -> None:
        self.result = result

    def __call__(self, _cells: list[str]) -> StatusResult:
        return self.result


def _generic(cols: _Columns, file_name: str) -> StatusRule:
    # An optional `status` column (our own export writes one).  A value we do
    # not know is not guessed to be "active": better unmailed than unwanted.
    return _mapped("status", _GENERIC, "import")(cols, file_name)


# The member files of Mailchimp's export ZIP, by the word their names start
# with (`subscribed_members_export_….csv`).  The whole word: `subscribed_` is
# also how `unsubscribed_` and `nonsubscribed_` (contacts who never
# subscribed) end.  Any other name says nothing (`serviceformats.mailchimp_refusal`).
MAILCHIMP_FILES = ("subscribed", "unsubscribed", "cleaned")
MAILCHIMP_EXPORT_NAME = re.compile(r"[a-z]+_members_export")


def mailchimp_file_kind(file_name: str) -> str | None:
    """`subscribed`, `unsubscribed` or `cleaned`, from a Mailchimp export's file name; else None."""
    word = Path(file_name).name.lower().partition("_")[0]
    return word if word in MAILCHIMP_FILES else None


def is_mailchimp_export_name(file_name: str) -> bool:
    """Whether a file is named as Mailchimp names its export's files
    (`<word>_members_export_….csv`), whatever the word."""
    return MAILCHIMP_EXPORT_NAME.match(Path(file_name).name.lower()) is not None


_UNSUBSCRIBED: StatusResult = ("unsubscribed", "mailchimp: unsubscribed", ())
_CLEANED: StatusResult = ("bounced", "mailchimp: cleaned", ())


def _mailchimp_suppression(cols: _Columns, kind: str | None) -> StatusResult | None:
    """The status every member of a Mailchimp unsubscribed or cleaned file
    has, by its name's word (`kind`) or its UNSUB_TIME / CLEAN_TIME column."""
    if kind == "unsubscribed" or cols.has("unsub_time"):
        return _UNSUBSCRIBED
    if kind == "cleaned" or cols.has("clean_time"):
        return _CLEANED
    return None


def _mailchimp(cols: _Columns, file_name: str) -> StatusRule:
    # A single file may have a name of its own: its UNSUB_TIME / CLEAN_TIME
    # columns say the same, and a file without either is the subscribed one.
    fixed = _mailchimp_suppression(cols, mailchimp_file_kind(file_name))
    return Always(fixed or ("active", None, ()))


def at_least_what_the_file_says(rule: StatusRule, cols: _Columns, file_name: str) -> StatusRule:
    """`rule`, never weaker than what a Mailchimp unsubscribed or cleaned file
    says of all its members, for a file read as another format.

    Such a file read as generic (its owner deleted the columns that recognise
    Mailchimp's header, or renamed `Email Address`), or forced to another
    `--format`, was imported active: mail to people who left.  Only the
    export's full name counts here (`unsubscribed_members_export_….csv`): a
    file of one's own named `cleaned_list.csv` says nothing about its people.
    """
    kind = mailchimp_file_kind(file_name) if is_mailchimp_export_name(file_name) else None
    floor = {"unsubscribed": _UNSUBSCRIBED, "cleaned": _CLEANED}.get(kind or "")
    if floor is not None:  # the export's own name: every member
        if isinstance(rule, Always):
            return Always(_stronger(rule.result, floor))
        return lambda cells: _stronger(rule(cells), floor)
    # Only the columns: each row by its own cell.  Mailchimp fills them in
    # every row of such a file, but a file of another tool may carry an
    # `unsub_time` column left empty for the people still subscribed.
    marks = [
        (_lookup(cols, column), result)
        for column, result in (("unsub_time", _UNSUBSCRIBED), ("clean_time", _CLEANED))
        if cols.has(column)
    ]
    if not marks:
        return rule

    def status(cells: list[str]) -> StatusResult:
        given = rule(cells)
        for cell, result in marks:
            if cell(cells):
                given = _stronger(given, result)
        return given

    return status


# How strong each status is, as the import ranks them (`importer._RANK`).
_RANK = {"active": 0, "pending": 0, "unsubscribed": 1, "bounced": 2, "complained": 3}


def _stronger(given: StatusResult, floor: StatusResult) -> StatusResult:
    """The row's own status where it is as strong as the file's, else the
    file's (keeping the row's warnings)."""
    if _RANK[given[0]] >= _RANK[floor[0]]:
        return given
    return floor[0], floor[1], given[2]


def _substack(cols: _Columns, _file: str) -> StatusRule:
    disabled = _lookup(cols, "email_disabled")

    def status(cells: list[str]) -> StatusResult:
        if disabled(cells) in _TRUE:
            return "unsubscribed", "substack: email_disabled", ()
        return "active", None, ()

    return status


def _ghost(cols: _Columns, _file: str) -> StatusRule:
    subscribed = _lookup(cols, "subscribed_to_emails")
    deleted = _lookup(cols, "deleted_at")

    def status(cells: list[str]) -> StatusResult:
        if deleted(cells):
            return "unsubscribed", "ghost: deleted", ()
        if subscribed(cells) in _FALSE:
            return "unsubscribed", "ghost: subscribed_to_emails=false", ()
        return "active", None, ()

    return status


def _beehiiv(cols: _Columns, _file: str) -> StatusRule:
    state = _lookup(cols, "status")
    unsubscribed_at = _lookup(cols, "unsubscribed_at")
    table = {
        "active": "active",
        "pending": "pending",
        "validating": "pending",
        "inactive": "unsubscribed",
        "unsubscribed": "unsubscribed",
        "invalid": "bounced",
    }

    def status(cells: list[str]) -> StatusResult:
        if unsubscribed_at(cells):
            return "unsubscribed", "beehiiv: unsubscribed_at", ()
        value = state(cells)
        if not value:
            return "active", None, ()
        ours = table.get(value)
        if ours is None:
            warning = f"unknown status {value!r}; imported as pending (not mailable)"
            return "pending", f"beehiiv: {value}", (warning,)
        return ours, None if ours == "active" else f"beehiiv: {value}", ()

    return status


_LISTMONK = {"enabled": "active", "blocklisted": "unsubscribed", "disabled": "unsubscribed"}
_BUTTONDOWN = {
    "regular": "active",
    "premium": "active",
    "gifted": "active",
    "trialed": "active",
    "churning": "active",
    "past_due": "active",
    "unactivated": "pending",
    "paused": "pending",
    "unsubscribed": "unsubscribed",
    "removed": "unsubscribed",
    "undeliverable": "bounced",
    "bounced": "bounced",
    "complained": "complained",
    "spammy": "complained",
}
_KIT = {
    "active": "active",
    "cold": "active",
    "inactive": "pending",
    "unconfirmed": "pending",
    "cancelled": "unsubscribed",
    "canceled": "unsubscribed",
    "bounced": "bounced",
    "complained": "complained",
}

STATUS_RULES: dict[str, Callable[[_Columns, str], StatusRule]] = {
    "generic": _generic,
    "newsletter": _generic,
    "mailchimp": _mailchimp,
    "substack": _substack,
    "ghost": _ghost,
    "listmonk": _mapped("status", _LISTMONK, "listmonk"),
    "beehiiv": _beehiiv,
    "buttondown": _mapped("subscriber_type", _BUTTONDOWN, "buttondown"),
    "kit": _mapped("state", _KIT, "kit"),
}

# Columns a format turns into status/name/time rather than attributes.
CONSUMED: dict[str, tuple[str, ...]] = {
    "generic": ("status",),
    "newsletter": ("status", "subscribed_at"),
    "mailchimp": ("optin_time",),
    "substack": ("email_disabled", "created_at"),
    "ghost": ("subscribed_to_emails", "deleted_at", "created_at"),
    "listmonk": ("status", "created_at", "updated_at", "attributes"),
    "beehiiv": ("status", "unsubscribed_at", "created_at"),
    "buttondown": ("subscriber_type", "creation_date"),
    "kit": ("state", "created_at"),
}
# Where the time someone subscribed lives.
SINCE: dict[str, tuple[str, ...]] = {
    "newsletter": ("subscribed_at",),
    "mailchimp": ("optin_time", "confirm_time"),
    "substack": ("created_at", "start date"),
    "ghost": ("created_at",),
    "listmonk": ("created_at",),
    "beehiiv": ("created_at",),
    "buttondown": ("creation_date",),
    "kit": ("created_at",),
}
