"""kramdown's typography, for `kramdown.KramdownExtension`.

kramdown's defaults, which Jekyll keeps: `"a"` → “a”, `it's` → it’s, `'90s`
→ ’90s, `--` → –, `---` → —, `...` → …, `<<`/`>>` → «/»; a backslash keeps a
character as written (`It\\'s`).  Python-Markdown's `smarty` does the same
but costs more than all the other extensions together (its ten inline
patterns run over every run of text); `Typography` is one pass over the
finished tree's text, skipping code, before escapes are undone (so an
escaped quote is never touched).  `Guillemets` turns `<<` and `>>` into
« and » before inline HTML is looked for.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as etree

from markdown.inlinepatterns import InlineProcessor
from markdown.treeprocessors import Treeprocessor
from markdown.util import ETX, STX, AtomicString

__all__ = ["Guillemets", "Typography", "typographic"]

_VERBATIM = frozenset({"code", "pre", "kbd", "samp", "script", "style", "tt", "math", "svg"})
_BLOCK = frozenset(
    {"p", "li", "dt", "dd", "td", "th", "blockquote", "div", "h1", "h2", "h3", "h4", "h5",
     "h6", "figcaption", "caption", "sup"}
)  # fmt: skip
_SYMBOLS = re.compile(r"---|--|\.\.\.|<<|>>")
_SYMBOL_TEXT = {"---": "\u2014", "--": "\u2013", "...": "\u2026", "<<": "\u00ab", ">>": "\u00bb"}
_OPENERS = frozenset("\x00 \t\n([{\u201c\u2018\u2013\u2014-/\u00a0")
_DECADE = re.compile(r"\d\ds\b")
_POSSESSIVE = re.compile(r"s\b")
_START = "\x00"  # "before" at the start of a block


def typographic(text: str, prev: str = "\x00", following: str = " ") -> str:
    """kramdown's smart quotes and symbols for one run of text; `prev` is the
    character before it (from the text of the previous element), `following`
    the one after it (`"[a link](x)"`: the link's first letter)."""
    if not any(c in text for c in "'\"-.<>"):
        return text
    text = _SYMBOLS.sub(lambda m: _SYMBOL_TEXT[m.group(0)], text)
    if "'" not in text and '"' not in text:
        return text
    out: list[str] = []
    before = prev  # the last character a reader sees (stash placeholders are not)
    hidden = False
    for i, char in enumerate(text):
        if char in (STX, ETX):
            hidden = char == STX
        elif not hidden:
            after = text[i + 1] if i + 1 < len(text) else following
            char = _quote(char, before, after, text, i)
            before = char
        out.append(char)
    return "".join(out)


def _quote(char: str, before: str, after: str, text: str, i: int) -> str:
    opening = before in _OPENERS and not after.isspace()
    if char == "'":
        start = before == _START and _POSSESSIVE.match(text, i + 1)  # 's at a block's start
        if before.isalnum() or _DECADE.match(text, i + 1) or start:
            return "\u2019"
        return "\u2018" if opening else "\u2019"
    if char == '"':
        return "\u201c" if opening else "\u201d"
    return char


class Typography(Treeprocessor):
    """kramdown's smart quotes and symbols over the finished tree's text, code skipped."""

    def run(self, root: etree.Element) -> None:
        self._walk(root, _START)

    def _walk(self, el: etree.Element, prev: str) -> str:
        """Rewrites the text under `el`; returns the last character seen."""
        if el.tag in _VERBATIM:
            text = "".join(el.itertext())
            return text[-1] if text else prev
        if el.tag in _BLOCK:
            prev = _START
        children = list(el)
        if el.text:
            if not isinstance(el.text, AtomicString):
                el.text = typographic(el.text, prev, _next_visible(children, 0))
            prev = el.text[-1]
        for index, child in enumerate(children):
            prev = self._walk(child, prev)
            if child.tail:
                if not isinstance(child.tail, AtomicString):
                    child.tail = typographic(child.tail, prev, _next_visible(children, index + 1))
                prev = child.tail[-1]
        return prev


def _next_visible(children: list[etree.Element], start: int) -> str:
    """The first character a reader sees in `children[start:]` (an image is
    something; a line break, or nothing, is a space)."""
    for child in children[start:]:
        if child.tag == "br":
            return " "
        text = "".join(child.itertext()) or ("" if child.tag is etree.Comment else "x")
        text += child.tail or ""
        if text:
            return text[0]
    return " "


class Guillemets(InlineProcessor):
    """`<<` / `>>` are « / » before a tag is looked for: `<<word>>` is no
    `<word>` tag (whose text the sanitiser would drop with it)."""

    def handleMatch(  # type: ignore[override]
        self, m: re.Match[str], data: str
    ) -> tuple[str, int, int]:
        return _SYMBOL_TEXT[m.group(0)], m.start(0), m.end(0)
