"""The plain-text part, tidied for reading: no trailing spaces, single blank
lines, and no line over 78 columns except what cannot be broken (a URL, a
line of code).  Columns are display columns (`posts.textwidth`): a CJK
character takes two, and CJK text breaks between characters.

The post's own text comes wrapped at 72 columns from `posts.markup`; what
runs longer is the template's (the footer names the reader's address, "Read
the full post: <URL>"); a table comes aligned only when it fits
(`posts.texttable`).  RFC 5322 §2.1.1 asks for 78
characters a line; here it is for the reader's terminal, not the wire.
"""

from __future__ import annotations

import re

from newsletter.email.rendered import PLACEHOLDERS
from newsletter.posts.textwidth import columns, wrap

MAX_COLUMNS = 78
WRAP_COLUMNS = 72  # as the post's text, so a rewrapped line matches its neighbours

# A recipient's values replace the placeholders after this runs: each counts
# as wide as a typical value (an unsubscribe URL carries a ~60-character token,
# so a label and its URL never share a line).
_TYPICAL_WIDTH = {"email": 32, "name": 24, "unsubscribe_url": 100, "preferences_url": 100}
_STAND_INS = {
    token: chr(0xE000 + n) * _TYPICAL_WIDTH[key]  # private-use characters: never in a post
    for n, (key, token) in enumerate(PLACEHOLDERS.items())
}
_QUOTE = re.compile(r"(?:> ?)*")
_MARKER = re.compile(r"( *)((?:[-*•] |\d{1,3}[.)] )?)")


def tidy_text(text: str) -> str:
    """No trailing spaces (but the "-- " signature separator's), long lines
    wrapped, at most one blank line in a row, one final newline."""
    lines: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        lines.extend(_wrapped(_rstrip(line)))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"


def _rstrip(line: str) -> str:
    return line if line == "-- " else line.rstrip()


def _wrapped(line: str) -> list[str]:
    wide = _with_stand_ins(line)
    if columns(wide) <= MAX_COLUMNS:  # a CJK character takes two
        return [line]
    quote = _QUOTE.match(wide).group(0)  # type: ignore[union-attr]
    if wide[len(quote) :].startswith("    "):
        return [line]  # code: verbatim, however long
    marker = _MARKER.match(wide, len(quote))
    indent, bullet = marker.group(1), marker.group(2)  # type: ignore[union-attr]
    start = len(quote) + len(indent) + len(bullet)
    # A URL stays whole and clickable; CJK text breaks between characters.
    pieces = wrap(
        wide[start:], WRAP_COLUMNS, quote + indent + bullet, quote + indent + " " * len(bullet)
    )
    return [_without_stand_ins(piece) for piece in pieces] or [line]


def _with_stand_ins(line: str) -> str:
    if "NLPH0" not in line:
        return line
    for token, stand_in in _STAND_INS.items():
        line = line.replace(token, stand_in)
    return line


def _without_stand_ins(line: str) -> str:
    for token, stand_in in _STAND_INS.items():
        line = line.replace(stand_in, token)
    return line
