"""How wide text is on a terminal, text wrapped to it, and plain-text headings
underlined to it.

A wide East Asian character (`unicodedata.east_asian_width` W or F) takes two
columns, a combining mark none: "天気" needs a four-column rule, not two.
Chinese and Japanese put no spaces between words, so a line of them may break
between any two wide characters (`wrap`); a Latin word or a URL still breaks
only at a space.  No lxml here: the templates' `text_heading` filter uses it too.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["HEADING_WIDTH", "RULES", "columns", "underlined", "wrap"]

HEADING_WIDTH = 72
# One rule per level, so a reader tells the email's title (=) from a section
# (-) and a subsection (~) from the rule alone; h4-h6 share the dots.
RULES = {1: "=", 2: "-", 3: "~", 4: ".", 5: ".", 6: "."}

# Kinsoku (JIS X 4051, and as Chinese is set): no line starts with a closing
# bracket, a full stop or comma, a small kana or a repeat mark, and none ends
# with an opening bracket.
_NO_START = frozenset(
    "、。，．・：；？！）」』】〕〉》〙〗〟］｝ー々〻ゝゞヽヾ"
    "ぁぃぅぇぉっゃゅょゎゕゖァィゥェォッャュョヮヵヶ"
)
_NO_END = frozenset("（「『【〔〈《〘〖〝［｛")
# What textwrap takes for whitespace (ASCII only: a no-break space holds).
_SPACES = re.compile(r"([\t\n\x0b\x0c\r ]+)")


def columns(text: str) -> int:
    """Terminal columns `text` takes (a CJK ideograph: 2; a combining mark: 0)."""
    if text.isascii():
        return len(text)
    return sum(2 if _wide(c) else 0 if unicodedata.combining(c) else 1 for c in text)


def _wide(char: str) -> bool:
    return unicodedata.east_asian_width(char) in "WF"


def wrap(text: str, width: int, initial_indent: str = "", subsequent_indent: str = "") -> list[str]:
    """`text` as lines of at most `width` columns, indent included, as
    `textwrap.wrap(break_long_words=False, break_on_hyphens=False)` makes
    them (runs of spaces kept inside a line, dropped at its ends), but
    measured in display columns and broken between two wide characters too.
    A word or URL longer than a line has a line to itself."""
    lines: list[str] = []
    line: list[str] = []
    used = 0
    for piece in _pieces(text.expandtabs()):
        indent = subsequent_indent if lines else initial_indent
        if piece.isascii() and piece.isspace():  # an ideographic space is text
            if line or not lines:  # spaces start no line but the first
                line.append(" " * len(piece))
                used += len(piece)
            continue
        size = columns(piece)
        if line and used + size > width - columns(indent):
            if "".join(line).strip():  # else only the first line's leading spaces
                lines.append(indent + "".join(line).rstrip(" "))
            line, used = [], 0
        line.append(piece)
        used += size
    if "".join(line).strip():
        lines.append((subsequent_indent if lines else initial_indent) + "".join(line).rstrip(" "))
    return lines


def _pieces(text: str) -> list[str]:
    """Runs of spaces, and what lies between cut where a line may break
    inside it: between two wide characters, kinsoku allowing."""
    pieces: list[str] = []
    for chunk in _SPACES.split(text):
        if not chunk:
            continue
        if chunk.isascii() or chunk.isspace():
            pieces.append(chunk)
            continue
        start = 0
        for i in range(1, len(chunk)):
            if _breaks_between(chunk[i - 1], chunk[i]):
                pieces.append(chunk[start:i])
                start = i
        pieces.append(chunk[start:])
    return pieces


def _breaks_between(before: str, after: str) -> bool:
    return (
        _wide(before)
        and _wide(after)
        and after not in _NO_START
        and before not in _NO_END
        and not unicodedata.combining(after)
    )


def underlined(title: str, rule: str, prefix: str = "") -> str:
    """`title` wrapped at 72 columns (less `prefix`), underlined with `rule`
    as wide as its longest line."""
    width = max(20, HEADING_WIDTH - columns(prefix))
    wide = columns(title)
    if wide <= width:  # the usual heading: one line, nothing to wrap
        return f"{prefix}{title}\n{prefix}{rule * wide}"
    lines = wrap(title, width) or [title]
    rule_line = rule * min(width, max(map(columns, lines)))
    return "\n".join(prefix + line for line in [*lines, rule_line])
