"""The post's HTML made to read well inside an email, and the preheader.

- images get their size and captions (`images`);
- the post's headings sit below the email's own title (one `<h1>`);
- in a single-post email, footnote links (and a table of contents' links)
  point inside the email instead of opening the web page (a digest keeps
  them on the web: two posts' `fn:1` would collide), and the "↩" back-link
  is text, not an emoji;
- the preheader, the line an inbox shows after the subject, is prose: never
  the text part's rules, footnote numbers, image alt text or URLs.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from markupsafe import Markup

from newsletter.config import Settings
from newsletter.email import images
from newsletter.email.rendered import one_line

PREHEADER_CHARS = 140
# Inbox previews show up to ~200 characters of the body's text: invisible
# padding after the preheader fills them, so the masthead's text (the logo's
# alt, the list title) never follows it there.
PREVIEW_CHARS = 220
_PADDING_UNIT = "&#847;&zwnj;&nbsp;"  # three characters, none of them visible

_HEADING_TAG = re.compile(r"<(/?)h([1-6])\b", re.I)
_HEADING_OPEN = re.compile(r"<h([1-6])\b", re.I)
# python-markdown's back-link arrow; U+FE0E asks for the text glyph (iOS
# otherwise draws the blue "↩️" emoji button).
_BACKREF_ARROW = re.compile(
    r'(<a\b[^>]*class="footnote-backref"[^>]*>)(↩|&#8617;)((?:<sup>\d+</sup>)?</a>)'
)
_TEXT_PRESENTATION = "\ufe0e"


def for_email(
    content_html: str, settings: Settings, *, top_heading: int, page_url: str | None
) -> str:
    """The content as the template places it: `top_heading` is the highest
    heading level the post may use; `page_url` (the post's URL) makes its
    in-page links local, None leaves them on the web."""
    content_html = images.add_captions(images.add_sizes(content_html, settings))
    content_html = shift_headings(content_html, top_heading)
    if page_url is not None:
        content_html = local_anchors(content_html, page_url)
    return _BACKREF_ARROW.sub(rf"\1\2{_TEXT_PRESENTATION}\3", content_html)


def shift_headings(content_html: str, top: int) -> str:
    """Every heading moved down so the highest is at least `top` (h6 at most)."""
    levels = [int(level) for level in _HEADING_OPEN.findall(content_html)]
    shift = top - min(levels) if levels else 0
    if shift <= 0:
        return content_html
    return _HEADING_TAG.sub(
        lambda m: f"<{m.group(1)}h{min(6, int(m.group(2)) + shift)}", content_html
    )


def as_text(content_html: str, top_heading: int, known: str | None = None) -> str:
    """The content for the text part, its headings ruled by their level in
    the email (below the title's "="), as `for_email` places them in the HTML.
    `known` is the content's text already made (the post's `excerpt_text`):
    right as it is when the content has no heading."""
    if known is not None and not _HEADING_OPEN.search(content_html):
        return known
    from newsletter.posts import markup  # (lxml: only for a heading or a whole post)

    return markup.html_to_text(shift_headings(content_html, top_heading))


def local_anchors(content_html: str, page_url: str) -> str:
    """`href="<post URL>#fn:1"` -> `href="#fn:1"` when `id="fn:1"` is in the
    content: footnotes, and a table of contents' links to the headings."""
    ids = set(re.findall(r'\bid="([^"]+)"', content_html))
    prefix = re.escape(html.escape(page_url, quote=True))

    def one(match: re.Match[str]) -> str:
        fragment = match.group(1)
        return f'href="#{fragment}"' if fragment in ids else match.group(0)

    return re.sub(rf'href="{prefix}#([^"]+)"', one, content_html)


# --------------------------------------------------------------------------- preheader

# What the inbox preview must not show: images (their alt text), footnote
# numbers and notes, rules, headings (their text underlines), code and tables
# (their text is not a sentence).
_NOT_PROSE = (
    "//img|//hr|//pre|//table|//h1|//h2|//h3|//h4|//h5|//h6"
    "|//*[contains(concat(' ', @class, ' '), ' footnote ')]"
    "|//sup[a[contains(@class, 'footnote-ref')]]"
)


def prose(content_html: str) -> str:
    """The content as the inbox preview should show it: its sentences only."""
    if not content_html.strip():
        return ""
    import lxml.etree
    import lxml.html

    from newsletter.posts import markup

    try:
        root = lxml.html.fragment_fromstring(content_html, create_parent="div")
    except (lxml.etree.ParserError, ValueError):
        return ""
    for el in root.xpath(_NOT_PROSE):
        el.drop_tree()  # (its tail, the text after it, stays)
    for link in root.iter("a"):
        link.attrib.pop("href", None)  # the link's words, not its "(URL)"
    return markup.html_to_text(lxml.html.tostring(root, encoding="unicode"))


def normal(text: str) -> str:
    """Words only, case-folded: how repetition is judged."""
    return re.sub(r"[\W_]+", " ", text.casefold()).strip()


def first_fresh_sentence(text: str, said: Sequence[str]) -> str:
    """The first sentence of `text` that is not one of `said` (normalised)."""
    for sentence in re.split(r"(?<=[.!?…])\s+", one_line(text)):
        if normal(sentence) and normal(sentence) not in said:
            return sentence
    return ""


def preheader_padding(text: str) -> Markup:
    """Enough invisible characters after `text` to fill an inbox preview."""
    return Markup(_PADDING_UNIT * max(10, -(-(PREVIEW_CHARS - len(text)) // 3)))


def preheader(text: str) -> str:
    text = one_line(text)
    if len(text) <= PREHEADER_CHARS:
        return text
    return text[:PREHEADER_CHARS].rsplit(" ", 1)[0] + "…"
