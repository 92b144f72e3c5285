"""Markdown → safe, email-ready HTML, and HTML → plain text.

FOUNDATION STUB: signatures are the contract; the full version adds tables,
Pygments, footnotes, kramdown attribute lines, sanitising and absolute URLs.
"""

from __future__ import annotations

import html
import re

import markdown


def markdown_to_html(text: str, base_url: str) -> str:
    """Markdown (already Liquid-rendered) → sanitised HTML with absolute URLs.

    `base_url` is the URL of the page the Markdown belongs to (the post's URL):
    relative links and images resolve against it as a browser would.
    """
    return markdown.markdown(text, extensions=["extra"])


def html_to_text(fragment: str) -> str:
    """Readable plain text from an HTML fragment (links as `text (url)`)."""
    text = re.sub(r"<[^>]+>", "", fragment)
    return html.unescape(text).strip()
