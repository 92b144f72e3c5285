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
(its ten inline patterns run over every run of text); `typography.Typography`
is one pass over the finished tree's text, skipping code, before escapes are
undone (so an escaped quote is never touched).

Block and span attribute lists (`{: .x}`, `{:ref: .x}`) that Python-Markdown
leaves behind are removed by `markup.sanitise_html`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as etree

from markdown import Extension, Markdown
from markdown.blockprocessors import BlockProcessor, HashHeaderProcessor
from markdown.inlinepatterns import (
    SimpleTagInlineProcessor,
    SubstituteTagInlineProcessor,
)
from markdown.preprocessors import Preprocessor
from markdown.treeprocessors import Treeprocessor
from markdown.util import HTML_PLACEHOLDER_RE

from newsletter.posts.typography import Guillemets, Typography

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


# A list item's marker (kramdown: `*`, `+`, `-`, or a number and `.`), with
# the spaces up to its text; a thematic break (`* * *`) is not one.
_LIST_MARKER = re.compile(r"^( *)([*+-]|\d{1,9}\.)( {1,4}(?=\S)| *$)")
_RULE = re.compile(r"^ {0,3}([-*_])(?: *\1){2,} *$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INDENTED_FENCE = re.compile(r"^ {1,3}(?:`{3,}|~{3,})")
_QUOTE = re.compile(r"^ {0,3}> ?")
_TAB = 4  # Python-Markdown's indent for a nested block


class _ListIndent(Preprocessor):
    """List items indented as kramdown reads them, for Python-Markdown.

    kramdown (and GFM) take a list item's content to start where its first
    line's text starts, so `- fruit` / `  - apple` nests `apple` and a fence
    indented under `1. ` belongs to the item.  Python-Markdown nests only at
    four spaces, and reads fenced code only at the document's root: the nested
    list was flattened and the fence became inline code.  Lines inside a list
    item are re-indented to four spaces per level (what is indented beyond the
    item's text keeps that extra), and a fence inside an item is rendered by
    the fenced-code preprocessor itself and indented as a block of the item;
    a fence indented one to three spaces outside a list starts at the margin.
    """

    def run(self, lines: list[str]) -> list[str]:
        if not any(
            _LIST_MARKER.match(s) or _INDENTED_FENCE.match(s) or _QUOTE.match(s) for s in lines
        ):
            return lines
        return self._lines(lines, quoted=False)

    def _lines(self, lines: list[str], *, quoted: bool) -> list[str]:
        """`lines` re-indented; `quoted`: they are a blockquote's, whose fences
        Python-Markdown would not see (it reads them only at the margin)."""
        out: list[str] = []
        items: list[int] = []  # the content column of each open item, outermost first
        ordered: list[bool] = []  # whether each open item's list is numbered
        fence = ""  # the fence of a root-level code block being copied
        blank_before = True
        # The last line was a paragraph's, and the list has a blank line in
        # it: kramdown starts a list (or the next item) right after such a
        # line; Python-Markdown wants a blank line first, or reads on.
        after_text = loose = False
        i = 0
        while i < len(lines):
            line = lines[i]
            i += 1
            if fence:
                closing = line.strip().startswith(fence) and not line.strip().strip(fence[0])
                out.append(line.lstrip(" ") if closing else line)
                fence = "" if closing else fence
                continue
            if not line.strip():
                out.append(line)
                blank_before, after_text, loose = True, False, loose or bool(items)
                continue
            if not items and _QUOTE.match(line):
                i = self._quote(lines, i - 1, out)
                blank_before = after_text = loose = False
                continue
            indent = len(line) - len(line.lstrip(" "))
            marker = _LIST_MARKER.match(line)
            if marker and not _RULE.match(line) and (not items or indent < items[-1] + _TAB):
                had_items = bool(items)
                numbered = marker.group(2)[0].isdigit()
                # The level this item would join, and the kind of list there.
                level = next((k for k, column in enumerate(items) if indent < column), None)
                if level is not None and not blank_before and numbered != ordered[level]:
                    # Not that kind, right under an item: a list inside it (kramdown).
                    line, indent = " " * items[-1] + line[indent:], items[-1]
                    marker = _LIST_MARKER.match(line)
                    assert marker is not None
                while items and indent < items[-1]:
                    items.pop()
                del ordered[len(items) :]
                if not items and indent >= _TAB:  # an indented code block's line
                    out.append(line)
                    blank_before = False
                    continue
                text = line[marker.end() :]
                # An empty item never interrupts a paragraph: `Title` / `-` is a heading.
                if after_text and (not had_items or loose) and text.strip():
                    out.append("")
                loose = loose and had_items
                extra = indent - items[-1] if items else indent
                out.append(" " * (_TAB * len(items) + extra) + line[indent:])
                width = len(marker.group(0)) if text.strip() else indent + len(marker.group(2)) + 1
                items.append(width)
                ordered.append(numbered)
                blank_before = after_text = False
                continue
            if items and indent < items[-1]:
                if not blank_before:  # a lazy line continues the paragraph
                    out.append(line)
                    after_text = True
                    continue
                while items and indent < items[-1]:
                    items.pop()
                del ordered[len(items) :]
            blank_before = False
            if not items:
                opened = _FENCE.match(line)
                if opened and quoted:
                    block, i = self._fence(lines, i - 1, indent, opened.group(1))
                    if block is not None:
                        out.extend(["", *block, ""])
                        blank_before, after_text = True, False
                        continue
                fence = opened.group(1) if opened else ""
                # A fence may be indented up to three spaces (GFM); Python-Markdown
                # reads one only at the margin.  Its lines keep their indent.
                out.append(line.lstrip(" ") if opened else line)
                after_text = not opened and indent < _TAB and line.lstrip()[0] not in "<#"
                loose = False
                continue
            prefix = " " * (_TAB * len(items))
            opened = _FENCE.match(line[items[-1] :])
            if opened:
                block, i = self._fence(lines, i - 1, items[-1], opened.group(1))
                if block is not None:
                    out.extend(prefix + b if b.strip() else b for b in ["", *block, ""])
                    blank_before, after_text = True, False
                    continue
            out.append(prefix + line[items[-1] :])
            after_text = indent - items[-1] < _TAB
        return out

    def _quote(self, lines: list[str], start: int, out: list[str]) -> int:
        """The blockquote at `start` (up to a blank line, lazy lines included,
        as kramdown reads it) with its own lines re-indented, onto `out`; the
        index after it.  (Python-Markdown's blockquote sees no preprocessor.)"""
        end = start
        while end < len(lines) and lines[end].strip():
            end += 1
        inner = [_QUOTE.sub("", line, count=1) for line in lines[start:end]]
        out.extend(f"> {line}" if line.strip() else ">" for line in self._lines(inner, quoted=True))
        return end

    def _fence(
        self, lines: list[str], start: int, column: int, fence: str
    ) -> tuple[list[str] | None, int]:
        """The fenced block at `start` inside an item whose text is at
        `column`, rendered (a placeholder line), and the index after it."""
        block: list[str] = []
        for j in range(start, len(lines)):
            text = lines[j]
            cut = min(column, len(text) - len(text.lstrip(" ")))
            block.append(text[cut:])
            stripped = text.strip()
            if j > start and stripped.startswith(fence) and not stripped.strip(fence[0]):
                fenced = self.md.preprocessors["fenced_code_block"]
                return fenced.run(block), j + 1
        return None, start + 1  # never closed: left to Python-Markdown


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


_NO_TOC_IAL = re.compile(r"^\{:\s*\.no_toc\s*\}$")


class _Toc(Treeprocessor):
    """kramdown's table of contents: a list whose one item is marked `{:toc}`
    (`* TOC` / `{:toc}`) becomes a list of links to the headings, nested by
    level; a heading with the class `no_toc` is left out.  Python-Markdown
    showed the item's text ("TOC") as a bullet."""

    def run(self, root: etree.Element) -> None:
        for parent in list(root.iter()):
            for index, lst in enumerate(list(parent)):
                items = [c for c in lst if c.tag == "li"] if lst.tag in ("ul", "ol") else []
                if len(items) == 1 and "toc" in items[0].attrib:
                    parent.remove(lst)
                    parent.insert(index, self._toc(root, lst.tag))
                    parent[index].tail = lst.tail

    def _toc(self, root: etree.Element, tag: str) -> etree.Element:
        toc = etree.Element(tag, {"id": "markdown-toc"})
        stack: list[tuple[int, etree.Element]] = []  # (level, its item)
        for level, heading in _toc_headings(root):
            item = etree.Element("li")
            link = etree.SubElement(item, "a", {"href": "#" + (heading.get("id") or "")})
            link.text = heading.text
            for child in heading:
                link.append(_copy(child))
            while stack and stack[-1][0] >= level:
                stack.pop()
            if stack:
                above = stack[-1][1]
                sub = above.find(tag)
                if sub is None:
                    sub = etree.SubElement(above, tag)
                sub.append(item)
            else:
                toc.append(item)
            stack.append((level, item))
        return toc


def _toc_headings(root: etree.Element) -> list[tuple[int, etree.Element]]:
    found = []
    for parent in root.iter():
        children = list(parent)
        for i, el in enumerate(children):
            if el.tag not in _HEADINGS or not el.get("id"):
                continue
            after = children[i + 1] if i + 1 < len(children) else None
            marked = after is not None and after.tag == "p" and _NO_TOC_IAL.match(after.text or "")
            if "no_toc" in (el.get("class") or "").split() or marked:
                continue
            found.append((int(el.tag[1]), el))
    return found


def _copy(el: etree.Element) -> etree.Element:
    clone = etree.Element(el.tag, dict(el.attrib))
    clone.text, clone.tail = el.text, el.tail
    for child in el:
        clone.append(_copy(child))
    return clone


_TASK = re.compile(r"^\[([ xX])\]\s+")


class _TaskLists(Treeprocessor):
    """GFM task items (`- [ ] todo`, `- [x] done`): kramdown makes a disabled
    checkbox, which no inbox shows (and the sanitiser drops); ☐ / ☑ say it."""

    def run(self, root: etree.Element) -> None:
        for item in root.iter("li"):
            holder = (
                item[0]
                if len(item) and item[0].tag == "p" and not (item.text or "").strip()
                else item
            )
            match = _TASK.match(holder.text or "")
            if match:
                box = "\u2611 " if match.group(1) in "xX" else "\u2610 "
                holder.text = box + (holder.text or "")[match.end() :]


class _GfmHashHeader(HashHeaderProcessor):
    """An ATX heading as kramdown's GFM parser reads it: the hashes are
    followed by a space or tab and text; `#hashtag` at a line's start (or a
    lone `#`) is a paragraph's text, not a heading."""

    RE = re.compile(
        r"(?:^|\n)(?P<level>#{1,6})(?=[ \t]+\S)"
        r"(?P<header>(?:\\.|[^\\#]|#+(?=[^#\n]))*?)#*(?:\n|$)"
    )


_PIPE = re.compile(r"(?<!\\)\|")
_CODE_SPAN = re.compile(r"(`+).+?\1")
_SEPARATOR_ROW = re.compile(r"^[ \t]*\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-*:?[ \t]*)*$")


class _PipeRows(BlockProcessor):
    """kramdown's table without a header: a block whose every line has a `|`
    (not escaped, not in code) is a table, `Photo: NASA | Public domain` a row
    of two cells.  (A GFM table, with its `|---|` line, is the tables extension's.)"""

    def test(self, parent: etree.Element, block: str) -> bool:
        lines = block.split("\n")
        if any(_SEPARATOR_ROW.match(line) for line in lines):
            return False
        return all(_PIPE.search(_CODE_SPAN.sub("", line)) for line in lines)

    def run(self, parent: etree.Element, blocks: list[str]) -> None:
        body = etree.SubElement(etree.SubElement(parent, "table"), "tbody")
        for line in blocks.pop(0).split("\n"):
            row = etree.SubElement(body, "tr")
            for cell in _cells(line):
                etree.SubElement(row, "td").text = cell.strip()


def _cells(line: str) -> list[str]:
    """`line` split at its pipes (not escaped, not in code), an outer `|` dropped."""
    cells, start, i = [], 0, 0
    while i < len(line):
        code = _CODE_SPAN.match(line, i) if line[i] == "`" else None
        if code:
            i = code.end()
            continue
        if line[i] == "|" and (i == 0 or line[i - 1] != "\\"):
            cells.append(line[start:i])
            start = i + 1
        i += 1
    cells.append(line[start:])
    if not cells[0].strip():
        cells.pop(0)
    if len(cells) > 1 and not cells[-1].strip():
        cells.pop()
    return cells


class KramdownExtension(Extension):
    """Registered after fenced code is stashed, so code samples keep `{::`."""

    def extendMarkdown(self, md: Markdown) -> None:
        md.preprocessors.register(_KramdownExtensions(md), "kramdown_extensions", 22)
        # After whitespace is normalised (30, tabs expanded), before fences are read (25).
        md.preprocessors.register(_ListIndent(md), "kramdown_list_indent", 27)
        md.parser.blockprocessors.register(_GfmHashHeader(md.parser), "hashheader", 70)
        # After footnotes (17) and references (15) are taken, before paragraphs (10).
        md.parser.blockprocessors.register(_PipeRows(md.parser), "kramdown_pipe_rows", 12)
        # A backslash keeps a quote straight: escape it like `*` or `_`.
        md.ESCAPED_CHARS.extend(["'", '"'])
        # After inline parsing (20) and attribute lists (8), before escapes are undone (0).
        md.treeprocessors.register(Typography(md), "kramdown_typography", 5)
        md.treeprocessors.register(_HeaderIds(md), "kramdown_header_ids", 4)
        md.treeprocessors.register(_Toc(md), "kramdown_toc", 3.5)
        md.treeprocessors.register(_TaskLists(md), "kramdown_task_lists", 3)
        # GFM's `~~struck~~` (not `~one~`); after code spans (190), like emphasis.
        strike = r"(?<!~)(~~)(?![~\s])(.+?)(?<![~\s])~~(?!~)"
        md.inlinePatterns.register(SimpleTagInlineProcessor(strike, "del"), "kramdown_strike", 65)
        # Before inline HTML (90) and autolinks (120) are looked for.
        md.inlinePatterns.register(Guillemets(r"<<|>>", md), "kramdown_guillemets", 125)
        # GFM's hard line break: a backslash at the end of a line.
        md.inlinePatterns.register(
            SubstituteTagInlineProcessor(r"\\\n", "br"), "kramdown_backslash_break", 11
        )
