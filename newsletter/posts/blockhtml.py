"""kramdown's `parse_block_html: true` (`_config.yml`), for Python-Markdown.

With that option kramdown reads Markdown inside HTML blocks
(`<div class="box">**bold** and [a link](/x/)</div>`); Python-Markdown's
`md_in_html` does so only for an element that says `markdown="1"`, and an
element without it keeps its content as raw text: the email showed the
asterisks and lost the link.  So, on a site with the option, every opening
tag of an element `md_in_html` can read is given `markdown="1"` before the
HTML blocks are taken, unless it has a `markdown` attribute of its own
(`markdown="0"` keeps its content raw, as in kramdown).

Fenced code is stashed before this runs; an indented code block is left
alone: outside an HTML block only a tag indented by at most three spaces
starts one (deeper, it is code), inside one any line's tags are nested
elements.
"""

from __future__ import annotations

import re

from markdown import Markdown
from markdown.extensions import Extension
from markdown.preprocessors import Preprocessor

# md_in_html's block and span elements; not its raw ones (pre, script,
# style, textarea, ...), whose content is never Markdown.
_ELEMENTS = (
    "address|article|aside|blockquote|details|dd|div|dl|dt|fieldset|figcaption|figure|"
    "footer|form|h[1-6]|header|hgroup|li|main|nav|ol|p|section|summary|table|tbody|td|"
    "tfoot|th|thead|tr|ul"
)
_OPEN = re.compile(rf"<({_ELEMENTS})\b((?:[^>\"']|\"[^\"]*\"|'[^']*')*)>", re.IGNORECASE)
_CLOSE = re.compile(rf"</({_ELEMENTS})\s*>", re.IGNORECASE)
_MARKDOWN_ATTRIBUTE = re.compile(r"\smarkdown\s*=", re.IGNORECASE)
_STARTS_A_BLOCK = re.compile(rf"^ {{0,3}}<({_ELEMENTS})\b", re.IGNORECASE)


def _mark(match: re.Match[str]) -> str:
    name, attributes = match.group(1), match.group(2)
    if _MARKDOWN_ATTRIBUTE.search(attributes):
        return match.group(0)
    closing = "/" if attributes.rstrip().endswith("/") else ""
    attributes = attributes.rstrip().removesuffix("/") if closing else attributes
    return f'<{name}{attributes} markdown="1"{closing}>'


class _MarkBlocks(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        depth = 0
        marked = []
        for line in lines:
            if depth > 0 or _STARTS_A_BLOCK.match(line):
                opened = len(_OPEN.findall(line))
                depth = max(0, depth + opened - len(_CLOSE.findall(line)))
                line = _OPEN.sub(_mark, line)
            marked.append(line)
        return marked


class ParseBlockHtml(Extension):
    """Registered after fences are stashed (25) and kramdown's `{::…}` is
    read (22), before the HTML blocks are taken (20)."""

    def extendMarkdown(self, md: Markdown) -> None:
        md.preprocessors.register(_MarkBlocks(md), "kramdown_parse_block_html", 21)
