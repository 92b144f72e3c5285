"""kramdown's own syntax, taught to Python-Markdown.

(Belongs in `newsletter/posts/kramdown.py` once the stage packages exist.)

Jekyll renders posts with kramdown; Python-Markdown with `extra` and `smarty`
already reads most of what kramdown reads (tables, footnotes, definition
lists, abbreviations, attribute lists, `markdown="1"`, typographic quotes).
What is left is kramdown's extension syntax, which must never reach a reader
as text:

* `{::comment} … {:/comment}` (or `{:/}`): dropped with its content;
* `{::nomarkdown} … {:/nomarkdown}`: its content kept as it is;
* `{::options … /}` and any other `{::name … /}`: dropped.

Block and span attribute lists (`{: .x}`, `{:ref: .x}`) that Python-Markdown
leaves behind are removed by `markup.sanitise_html`.
"""

from __future__ import annotations

import re

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor

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


class KramdownExtension(Extension):
    """Registered after fenced code is stashed, so code samples keep `{::`."""

    def extendMarkdown(self, md: Markdown) -> None:
        md.preprocessors.register(_KramdownExtensions(md), "kramdown_extensions", 22)
