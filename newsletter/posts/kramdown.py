"""kramdown's own syntax, taught to Python-Markdown.

Jekyll renders posts with kramdown; Python-Markdown with `extra` and `smarty`
already reads most of what kramdown reads (tables, footnotes, definition
lists, abbreviations, attribute lists, `markdown="1"`, typographic quotes).
What is left is kramdown's extension syntax, which must never reach a reader
as text:

* `{::comment} … {:/comment}` (or `{:/}`): dropped with its content;
* `{::nomarkdown} … {:/nomarkdown}`: its content kept as it is;
* `{::options … /}` and any other `{::name … /}`: dropped.

kramdown's typography (its defaults, which Jekyll keeps): `"a"` → “a”,
`it's` → it’s, `'90s` → ’90s, `--` → –, `---` → —, `...` → …, `<<`/`>>` →
«/»; a backslash keeps a character as written (`It\\'s`).  Python-Markdown's
`smarty` does the same but costs more than all the other extensions together
(its ten inline patterns run over every run of text); `_Typography` is one
pass over the finished tree's text, skipping code, before escapes are undone
(so an escaped quote is never touched).

Block and span attribute lists (`{: .x}`, `{:ref: .x}`) that Python-Markdown
leaves behind are removed by `markup.sanitise_html`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as etree

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor
from markdown.treeprocessors import Treeprocessor
from markdown.util import ETX, HTML_PLACEHOLDER_RE, STX, AtomicString

_EXTENSION = re.compile(
    r"\{::(?P<name>comment|nomarkdown)(?:\s[^}]*)?\}(?P<body>.*?)\{:/(?P=name)?\}"
    r"|\{::\w+(?:\s[^}]*)?/\}",
    re.S,
)


def strip_extensions(text: str) -> str:
    """`text` without kramdown's `{::…}` extensions (comment content dropped)."""
    if "{::" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        if match.group("name") == "nomarkdown":
            return match.group("body")
        return ""

    return _EXTENSION.sub(replace, text)


class _KramdownExtensions(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        text = "\n".join(lines)
        return strip_extensions(text).split("\n") if "{::" in text else lines


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


def typographic(text: str, prev: str = "\x00") -> str:
    """kramdown's smart quotes and symbols for one run of text; `prev` is the
    character before it (from the text of the previous element)."""
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
            after = text[i + 1] if i + 1 < len(text) else " "
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


class _Typography(Treeprocessor):
    def run(self, root: etree.Element) -> None:
        self._walk(root, _START)

    def _walk(self, el: etree.Element, prev: str) -> str:
        """Rewrites the text under `el`; returns the last character seen."""
        if el.tag in _VERBATIM:
            text = "".join(el.itertext())
            return text[-1] if text else prev
        if el.tag in _BLOCK:
            prev = _START
        if el.text:
            if not isinstance(el.text, AtomicString):
                el.text = typographic(el.text, prev)
            prev = el.text[-1]
        for child in el:
            prev = self._walk(child, prev)
            if child.tail:
                if not isinstance(child.tail, AtomicString):
                    child.tail = typographic(child.tail, prev)
                prev = child.tail[-1]
        return prev


_NON_WORD = re.compile(r"[^\w\- ]")
_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})


class _HeaderIds(Treeprocessor):
    """Header ids as kramdown's GFM parser makes them (Jekyll's default input).

    The heading's text, lower-cased, without anything but word characters,
    hyphens and spaces, spaces and tabs turned into hyphens; the n-th repeat
    gets `-n`; a heading with no such text gets no id; an explicit `{#id}`
    is kept.  Anchors such as `[see below](#getting-started)` then work.
    """

    def run(self, root: etree.Element) -> None:
        seen: dict[str, int] = {}
        for el in root.iter():
            if el.tag not in _HEADINGS or el.get("id"):
                continue
            text = HTML_PLACEHOLDER_RE.sub("", "".join(el.itertext()))  # raw HTML tags
            text = _NON_WORD.sub("", text.lower())
            ident = text.replace(" ", "-").replace("\t", "-")
            if not ident:
                continue
            count = seen.get(ident, 0)
            seen[ident] = count + 1
            el.set("id", ident if count == 0 else f"{ident}-{count}")


class KramdownExtension(Extension):
    """Registered after fenced code is stashed, so code samples keep `{::`."""

    def extendMarkdown(self, md: Markdown) -> None:
        md.preprocessors.register(_KramdownExtensions(md), "kramdown_extensions", 22)
        # A backslash keeps a quote straight: escape it like `*` or `_`.
        md.ESCAPED_CHARS.extend(["'", '"'])
        # After inline parsing (20) and attribute lists (8), before escapes are undone (0).
        md.treeprocessors.register(_Typography(md), "kramdown_typography", 5)
        md.treeprocessors.register(_HeaderIds(md), "kramdown_header_ids", 4)
