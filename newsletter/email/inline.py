"""Inlining the theme's CSS with premailer (the expensive step of a render,
kept by `inlinecache`)."""

from __future__ import annotations

import logging
import re

from newsletter.errors import RenderError

# premailer (with cssutils and lxml) is imported where it is used.


def inline_css(html: str) -> str:
    """premailer: every rule into style="", @media rules kept in a <style> block.

    No network: the theme's CSS is in the document, and a user's template
    that links a remote stylesheet must not make rendering fetch it.
    """
    from premailer import Premailer

    html = _strip_external_css(html)
    try:
        return str(
            Premailer(
                html,
                allow_network=False,
                allow_loading_external_files=False,
                disable_link_rewrites=True,  # URLs are absolute already
                # The template's width/height attributes are for Outlook; CSS
                # like width:100% must not overwrite them.
                disable_basic_attributes=["width", "height"],
                strip_important=False,
                keep_style_tags=False,
                disable_validation=True,
                cssutils_logging_level=logging.CRITICAL,
            ).transform()
        )
    except Exception as exc:  # premailer/cssutils raise many unrelated types
        raise RenderError(f"cannot inline CSS: {exc}") from exc


_STYLE_BLOCK = re.compile(r"(<style\b[^>]*>)(.*?)(</style>)", re.S | re.I)
_IMPORT = re.compile(r"@import\b[^;]*;?", re.I)
_STYLESHEET_LINK = re.compile(r"<link\b[^>]*\bstylesheet\b[^>]*>", re.I)


def _strip_external_css(html: str) -> str:
    """Remote stylesheets would be fetched by cssutils (`@import`) or by the
    reader's mail client (`<link>`); neither belongs in an email."""
    html = _STYLESHEET_LINK.sub("", html)
    return _STYLE_BLOCK.sub(lambda m: m.group(1) + _IMPORT.sub("", m.group(2)) + m.group(3), html)
