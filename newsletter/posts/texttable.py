"""A table as plain text: aligned columns under a rule when it fits in 78
columns, else one block of "Header: value" lines per row (a phone's or a
terminal's narrow screen never sees a row broken mid-cell).

Widths are display columns (`textwidth.columns`): a CJK cell is twice as wide
as its character count.  The cells come as text from `plaintext`, which reads
the HTML.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from newsletter.posts.textwidth import columns, wrap

__all__ = ["Cell", "table_text"]

MAX_COLUMNS = 78  # RFC 5322 §2.1.1's line length, as the rest of the text part
WRAP_COLUMNS = 72
_GAP = "  "


@dataclass(frozen=True)
class Cell:
    text: str
    header: bool = False
    align: str = "left"  # "left" | "right" | "center"


def table_text(rows: Sequence[Sequence[Cell]], prefix: str = "", indent: int = 0) -> str:
    """`rows` as text, each line starting with `prefix` (a quote's "> "), to
    be indented `indent` more columns (inside a list item)."""
    rows = [row for row in rows if row]
    if not rows:
        return ""
    head = list(rows[0]) if all(c.header for c in rows[0]) else None
    body = [list(r) for r in (rows[1:] if head else rows)]
    count = max(len(r) for r in rows)
    grid = [_padded(r, count) for r in ([head] if head else []) + body]
    widths = [max(columns(row[i].text) for row in grid) for i in range(count)]
    margin = indent + columns(prefix)
    if margin + sum(widths) + len(_GAP) * (count - 1) <= MAX_COLUMNS:
        return _aligned(grid, widths, prefix, has_head=head is not None)
    return _blocks(head, body, prefix, margin)


def _padded(row: Sequence[Cell], count: int) -> list[Cell]:
    return [*row, *[Cell("") for _ in range(count - len(row))]]


def _aligned(grid: list[list[Cell]], widths: list[int], prefix: str, has_head: bool) -> str:
    aligns = [_column_align(grid[1:] if has_head else grid, i) for i in range(len(widths))]
    lines = [_line(row, widths, aligns, prefix) for row in grid]
    if has_head:
        rule = prefix + _GAP.join("-" * w for w in widths)
        lines.insert(1, rule)
    return "\n".join(lines)


def _column_align(rows: list[list[Cell]], index: int) -> str:
    """A column's alignment is its body cells' (python-markdown sets one per cell)."""
    found = {row[index].align for row in rows if row[index].text}
    return found.pop() if len(found) == 1 else "left"


def _line(row: list[Cell], widths: list[int], aligns: list[str], prefix: str) -> str:
    cells = []
    for cell, width, align in zip(row, widths, aligns, strict=True):
        room = width - columns(cell.text)
        if align == "right":
            cells.append(" " * room + cell.text)
        else:  # a centred cell reads as well left-aligned, and lines up better
            cells.append(cell.text + " " * room)
    return (prefix + _GAP.join(cells)).rstrip()


def _blocks(head: list[Cell] | None, body: list[list[Cell]], prefix: str, margin: int) -> str:
    """One block per row: "Header: value" lines (just the values without a
    header row), a blank line (quoted inside a quote) between rows."""
    width = max(20, WRAP_COLUMNS - margin + columns(prefix))
    blocks = []
    for row in body:
        lines = []
        for index, cell in enumerate(row):
            if not cell.text:
                continue
            label = head[index].text if head and index < len(head) else ""
            line = f"{label}: {cell.text}" if label else cell.text
            lines.extend(wrap(line, width, prefix, prefix + "  "))  # a URL stays whole
        if lines:
            blocks.append("\n".join(lines))
    return f"\n{prefix.rstrip()}\n".join(blocks)
