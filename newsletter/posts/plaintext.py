"""HTML → plain text, for the text part of an email and for excerpts:
`html_to_text(fragment)` gives readable text, links as `text <url>`.
(Split from `markup`, which makes the HTML.)"""

from __future__ import annotations

import re
from collections.abc import Iterator

import lxml.etree
import lxml.html
from lxml.html import HtmlElement

from newsletter.errors import RenderError
from newsletter.posts import texttable, textwidth

__all__ = ["html_to_text", "parse_fragment"]


def parse_fragment(fragment: str) -> HtmlElement:
    """An HTML fragment inside one `<div>`; lxml's errors become a RenderError."""
    try:
        return lxml.html.fragment_fromstring(fragment, create_parent="div")
    except (lxml.etree.ParserError, ValueError) as exc:
        raise RenderError(f"cannot parse HTML: {exc}") from exc


_BLOCKS = frozenset(
    {
        "p",
        "div",
        "section",
        "article",
        "header",
        "footer",
        "blockquote",
        "ul",
        "ol",
        "dl",
        "dt",
        "dd",
        "table",
        "tr",
        "figure",
        "figcaption",
        "hr",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "pre",
        "li",
    }
)
_WIDTH = 72
_SKIP_TEXT = frozenset({"script", "style", "head", "title", "template"})
# A <br> inside a paragraph; source newlines are soft and get re-wrapped.
_BR = "\u2028"


def html_to_text(fragment: str) -> str:
    """Readable plain text from an HTML fragment (links as `text <url>`).

    Paragraphs are wrapped at 72 columns (never inside a URL), headings are
    underlined, list items get a bullet or their number, code stays verbatim.
    """
    if not fragment.strip():
        return ""
    root = parse_fragment(fragment)
    blocks = list(_text_blocks(root, prefix=""))
    text = "\n\n".join(b for b in blocks if b.strip())
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _text_blocks(el: HtmlElement, prefix: str, indent: int = 0) -> Iterator[str]:
    """Yield one string per block-level element, in document order (`indent`:
    the columns a list item's marker will add in front of each line)."""
    inline: list[str] = [el.text or ""] if el.tag not in _SKIP_TEXT else []
    for child in el:
        if not isinstance(child.tag, str):
            inline.append(child.tail or "")
            continue
        if child.tag in _BLOCKS:
            yield _wrap("".join(inline), prefix)
            inline = []
            yield from _block(child, prefix, indent)
        else:
            inline.append(_inline(child))
        inline.append(child.tail or "")
    yield _wrap("".join(inline), prefix)


def _block(el: HtmlElement, prefix: str, indent: int = 0) -> Iterator[str]:
    tag = el.tag
    if tag == "pre":
        code = el.text_content().rstrip("\n")
        yield "\n".join((prefix + "    " + line).rstrip() for line in code.split("\n"))
    elif tag == "hr":
        yield prefix + "-" * 20
    elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
        title = _squash(_inline_children(el).replace(_BR, " "))
        yield textwidth.underlined(title, textwidth.RULES[int(tag[1])], prefix)
    elif tag in ("ul", "ol"):
        yield "\n".join(_list_items(el, prefix, indent))
    elif tag == "blockquote":
        # A blank line without ">" would end the quote: join its paragraphs
        # with a quoted empty line (">", no trailing space).
        inner = prefix + "> "
        blocks = [b for b in _text_blocks(el, inner, indent) if b.strip()]
        yield f"\n{inner.rstrip()}\n".join(blocks)
    elif tag == "table" and "codehilitetable" in (el.get("class") or "").split():
        # `{% highlight x linenos %}`: the numbers are for the eye, not for copying.
        code = el.find(".//td[@class='code']//pre")
        if code is not None:
            yield from _block(code, prefix)
    elif tag == "table":
        yield _table(el, prefix, indent)
    else:
        yield from _text_blocks(el, prefix, indent)


def _list_items(el: HtmlElement, prefix: str, indent: int) -> Iterator[str]:
    items = [li for li in el if isinstance(li.tag, str) and li.tag == "li"]
    for number, li in enumerate(items, start=int(el.get("start", "1") or 1)):
        marker = f"{number}. " if el.tag == "ol" else "- "
        own = indent + textwidth.columns(prefix) + len(marker)
        inner = [b for b in _text_blocks(li, "", own) if b.strip()]
        body = "\n".join(inner)
        lines = body.split("\n")
        yield (
            prefix
            + marker
            + lines[0]
            + "".join("\n" + prefix + " " * len(marker) + line for line in lines[1:])
        )


def _table(el: HtmlElement, prefix: str, indent: int) -> str:
    rows = []
    for tr in el.iter("tr"):
        if _enclosing_table(tr) is not el:
            continue  # a nested table's rows are read as its cell's text
        rows.append(
            [
                texttable.Cell(
                    _squash(_inline_children(c).replace(_BR, " ")), c.tag == "th", _align(c)
                )
                for c in tr
                if c.tag in ("td", "th")
            ]
        )
    return texttable.table_text(rows, prefix, indent)


def _enclosing_table(el: HtmlElement) -> HtmlElement | None:
    parent = el.getparent()
    while parent is not None and parent.tag != "table":
        parent = parent.getparent()
    return parent


def _align(cell: HtmlElement) -> str:
    style = re.sub(r"\s", "", (cell.get("style") or "").lower())
    found = re.search(r"text-align:(left|right|center)", style)
    return found.group(1) if found else (cell.get("align") or "left").lower()


def _inline_children(el: HtmlElement) -> str:
    parts = [el.text or ""]
    for child in el:
        if isinstance(child.tag, str):
            parts.append(_inline(child))
        parts.append(child.tail or "")
    return "".join(parts)


def _inline(el: HtmlElement) -> str:
    if el.tag in _SKIP_TEXT:
        return ""
    if el.tag == "br":
        return _BR
    if el.tag == "img":
        alt = (el.get("alt") or "").strip()
        return f"[{alt}]" if alt else ""
    text = _inline_children(el)
    if el.tag == "a":
        classes = (el.get("class") or "").split()
        if "footnote-backref" in classes:
            return ""
        if "footnote-ref" in classes:
            return text
        return _link(text, el.get("href") or "")
    if el.tag == "sup" and el.find("a") is not None:
        return f"[{_squash(text)}]"
    if el.tag in ("del", "s", "strike") and text.strip():
        return f"~~{text}~~"  # struck text read as plain text says the opposite
    return text


def _link(text: str, href: str) -> str:
    """`text <url>`, the URL in angle brackets (RFC 3986 Appendix C): no
    linkifier takes a closing ")" or a full stop into it, as it may with
    `text (url)`.  A link whose text is its URL is written once, `<url>`
    (html2text's "automatic link"); in-page anchors keep their text only."""
    label = _squash(text)
    if not href or href.startswith("#"):
        return text
    if href == f"mailto:{label}":
        return text  # an address reads as one, and every client links it
    if not label or _same_url(label, href):
        return _link_text("", href)
    return _link_text(text, href)


def _link_text(text: str, url: str) -> str:
    """How the text part writes a link: `text <url>`, or `<url>` alone."""
    return f"{text} <{url}>" if text.strip() else f"<{url}>"


def _same_url(label: str, href: str) -> bool:
    """`example.org/a` and `https://example.org/a/` name the link's own URL."""

    def bare(url: str) -> str:
        return re.sub(r"^[a-z][a-z0-9+.-]*://", "", url, flags=re.I).rstrip("/")

    return label == href or bare(label) == bare(href)


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _wrap(text: str, prefix: str) -> str:
    lines = []
    for line in text.split(_BR):  # keep <br> breaks
        squashed = _squash(line)
        if not squashed:
            continue
        # By display columns, CJK broken between characters; a long URL stays
        # whole and clickable.
        lines.extend(textwidth.wrap(squashed, _WIDTH, prefix, prefix))
    return "\n".join(lines)
