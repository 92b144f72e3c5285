"""How wide text is on a terminal, and plain-text headings underlined to it.

A wide East Asian character (`unicodedata.east_asian_width` W or F) takes two
columns, a combining mark none: "天気" needs a four-column rule, not two.
No lxml here: the templates' `text_heading` filter uses it too.
"""

from __future__ import annotations

import textwrap
import unicodedata

__all__ = ["HEADING_WIDTH", "RULES", "columns", "underlined"]

HEADING_WIDTH = 72
# One rule per level, so a reader tells the email's title (=) from a section
# (-) and a subsection (~) from the rule alone; h4-h6 share the dots.
RULES = {1: "=", 2: "-", 3: "~", 4: ".", 5: ".", 6: "."}


def columns(text: str) -> int:
    """Terminal columns `text` takes (a CJK ideograph: 2; a combining mark: 0)."""
    return sum(
        2 if unicodedata.east_asian_width(c) in "WF" else 0 if unicodedata.combining(c) else 1
        for c in text
    )


def underlined(title: str, rule: str, prefix: str = "") -> str:
    """`title` wrapped at 72 columns (less `prefix`), underlined with `rule`
    as wide as its longest line."""
    width = max(20, HEADING_WIDTH - columns(prefix))
    wide = columns(title)
    if wide <= width:  # the usual heading: one line, no textwrap
        return f"{prefix}{title}\n{prefix}{rule * wide}"
    lines = textwrap.wrap(title, width, break_long_words=False, break_on_hyphens=False)
    lines = lines or [title]
    rule_line = rule * min(width, max(map(columns, lines)))
    return "\n".join(prefix + line for line in [*lines, rule_line])
