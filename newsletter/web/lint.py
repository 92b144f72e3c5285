"""The preview's lint panel: what would hurt this email in a reader's inbox.

Each check looks at the email as `send` builds it (the rendered HTML, text and
subject with their per-recipient placeholders still in place), so what is
flagged here is what readers would get.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import lxml.html
from lxml import etree

from newsletter.email.rendered import PLACEHOLDERS, RenderedEmail

# Gmail shows "[Message clipped]" and hides the rest (including the
# unsubscribe link) once the HTML part passes about 102 KB.
GMAIL_CLIP_BYTES = 102 * 1024
MAX_SUBJECT = 80  # beyond this, most inboxes cut the subject off
_LIQUID = re.compile(r"\{\{|\{%")
_CSS_WIDTH = re.compile(r"(?:^|;)\s*width\s*:", re.IGNORECASE)  # not max-width

Level = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class Finding:
    level: Level
    code: str
    message: str


def lint_email(
    rendered: RenderedEmail, html_part: str, post_warnings: tuple[str, ...] = ()
) -> tuple[Finding, ...]:
    """Every finding for one rendered email; `html_part` is the HTML as sent."""
    findings: list[Finding] = [_size(html_part)]
    doc = _parse(rendered.html)
    if doc is None:
        findings.append(Finding("error", "html", "the HTML part cannot be parsed"))
    else:
        findings += _images(doc)
        findings += _links(doc)
        findings += _unsubscribe(doc, rendered.text)
    findings += _subject(rendered.subject)
    findings += _liquid(rendered)
    findings += [Finding("warning", "post", w) for w in (*post_warnings, *rendered.warnings)]
    order = {"error": 0, "warning": 1, "info": 2}
    return tuple(sorted(findings, key=lambda f: order[f.level]))


def _parse(html: str) -> lxml.html.HtmlElement | None:
    try:
        return lxml.html.document_fromstring(html)
    except (etree.ParserError, ValueError):
        return None


def _size(html_part: str) -> Finding:
    size = len(html_part.encode("utf-8"))
    kb = f"{size / 1024:.1f} KB"
    if size > GMAIL_CLIP_BYTES:
        return Finding("error", "size", f"HTML is {kb} after inlining; Gmail clips above 102 KB")
    return Finding("info", "size", f"HTML is {kb} after inlining (Gmail clips above 102 KB)")


def _images(doc: lxml.html.HtmlElement) -> list[Finding]:
    found: list[Finding] = []
    for img in doc.iter("img"):
        src = img.get("src", "")
        if img.get("alt") is None:
            found.append(Finding("warning", "img-alt", f"image without alt text: {src}"))
        if img.get("width") is None and not _CSS_WIDTH.search(img.get("style") or ""):
            # Outlook ignores CSS sizing and shows such images at full size.
            found.append(Finding("warning", "img-width", f"image without a width: {src}"))
        found += _url_findings("image", src)
    return found


def _links(doc: lxml.html.HtmlElement) -> list[Finding]:
    found: list[Finding] = []
    for a in doc.iter("a"):
        found += _url_findings("link", a.get("href", ""))
    return found


def _url_findings(kind: str, url: str) -> list[Finding]:
    url = url.strip()
    if not url or url.startswith(("#", "mailto:", "tel:")) or "NLPH0" in url:
        return []
    lower = url.lower()
    if lower.startswith("http://"):
        return [Finding("warning", "http", f"{kind} over plain http://: {url}")]
    if lower.startswith(("https://", "cid:", "data:")):
        return []
    # A relative URL means nothing inside a mailbox.
    return [Finding("error", "relative", f"relative {kind} URL: {url}")]


def _unsubscribe(doc: lxml.html.HtmlElement, text: str) -> list[Finding]:
    marker = PLACEHOLDERS["unsubscribe_url"]
    found: list[Finding] = []
    if not any(marker in (a.get("href") or "") for a in doc.iter("a")):
        found.append(Finding("error", "unsubscribe", "no unsubscribe link in the HTML part"))
    if marker not in text:
        found.append(Finding("error", "unsubscribe", "no unsubscribe link in the text part"))
    return found


def _subject(subject: str) -> list[Finding]:
    if len(subject) > MAX_SUBJECT:
        return [
            Finding(
                "warning",
                "subject",
                f"subject is {len(subject)} characters; inboxes cut it after about {MAX_SUBJECT}",
            )
        ]
    return []


def _liquid(rendered: RenderedEmail) -> list[Finding]:
    found: list[Finding] = []
    for part, value in (
        ("subject", rendered.subject),
        ("HTML", rendered.html),
        ("text", rendered.text),
    ):
        match = _LIQUID.search(value)
        if match:
            snippet = value[match.start() : match.start() + 40].split("\n")[0]
            found.append(
                Finding("warning", "liquid", f"unrendered Liquid in the {part}: {snippet}")
            )
    return found
