"""Markdown → safe, email-ready HTML, and HTML → plain text.

Two public functions, used by `posts` (body and excerpt) and `render` (the
plain-text part):

* `markdown_to_html(text, base_url)`: python-markdown with tables, fenced code
  highlighted by Pygments with *inline* styles (mail clients drop `<style>`
  classes), footnotes and attribute lists; then `sanitise_html`.
* `sanitise_html(fragment, base_url)`: drops what must never reach an inbox
  (`<script>`, `<iframe>`, `<form>`, `<object>`, `<embed>`, event handlers,
  `javascript:` URLs), turns embedded videos into links, removes kramdown
  attribute lines that python-markdown leaves as text (`{: .notice}`,
  `{:toc}`), and makes every URL absolute as a browser would resolve it from
  the post's own URL (attributes, srcset candidates, a style's url()).
* `html_to_text(fragment)`: readable plain text, links as `text <url>`
  (`newsletter.posts.plaintext`, re-exported here).
"""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import lxml.etree
import lxml.html
import markdown
from lxml.html import HtmlElement

from newsletter.errors import RenderError
from newsletter.posts import footnotes
from newsletter.posts.kramdown import KramdownExtension
from newsletter.posts.plaintext import html_to_text as html_to_text
from newsletter.posts.plaintext import parse_fragment as _parse_fragment

# --------------------------------------------------------------------------- Markdown

# kramdown's typography comes from newsletter.posts.kramdown (smarty is too slow).
_EXTENSIONS = ["extra", "codehilite", "sane_lists"]
_EXTENSION_CONFIGS: dict[str, dict[str, Any]] = {
    # noclasses: Pygments writes style="" on every token, which survives
    # Gmail and Outlook; guess_lang=False keeps unlabelled blocks plain.
    "codehilite": {"noclasses": True, "guess_lang": False, "pygments_style": "default"},
    "footnotes": {"BACKLINK_TEXT": "&#8617;"},
}

# A Markdown instance is costly to build (~1 ms) but not thread-safe; keep
# one per thread and reset it between documents.
_local = threading.local()


def _markdown(block_html: bool = False) -> markdown.Markdown:
    """This thread's converter; `block_html`: kramdown's `parse_block_html`
    (`blockhtml`), a converter of its own."""
    name = "md_block_html" if block_html else "md"
    md: markdown.Markdown | None = getattr(_local, name, None)
    if md is None:
        extensions: list[Any] = [*_EXTENSIONS, KramdownExtension()]
        if block_html:
            from newsletter.posts.blockhtml import ParseBlockHtml

            extensions.append(ParseBlockHtml())
        md = markdown.Markdown(extensions=extensions, extension_configs=_EXTENSION_CONFIGS)
        setattr(_local, name, md)
    return md


MARKDOWN_SUFFIXES = frozenset({".md", ".markdown", ".mkdown", ".mkdn", ".mkd"})


def convert(text: str, base_url: str, suffix: str = ".md", *, block_html: bool = False) -> str:
    """A post body as Jekyll converts it by file type: Markdown for Markdown
    files, HTML as it is (`.html`), anything else as plain text.
    `block_html`: Markdown inside HTML blocks too (kramdown's `parse_block_html`)."""
    suffix = suffix.lower()
    if suffix in MARKDOWN_SUFFIXES:
        return markdown_to_html(text, base_url, block_html=block_html)
    if suffix in (".html", ".htm"):
        return sanitise_html(text, base_url)
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    return "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)


def markdownify(text: str) -> str:
    """Jekyll's `markdownify` filter: the site's Markdown as HTML, a newline
    after (sanitised with the rest of the post, whose HTML it lands in)."""
    return _markdown().reset().convert(text) + "\n"


def markdown_to_html(text: str, base_url: str, *, block_html: bool = False) -> str:
    """Markdown (already Liquid-rendered) → sanitised HTML with absolute URLs.

    `base_url` is the URL of the page the Markdown belongs to (the post's URL):
    relative links and images resolve against it as a browser would.
    """
    md = _markdown(block_html)
    try:
        raw = md.reset().convert(text)
    except Exception as exc:  # python-markdown raises bare exceptions from extensions
        raise RenderError(f"cannot convert Markdown: {exc}") from exc
    return sanitise_html(raw, base_url)


# --------------------------------------------------------------------------- sanitising

# Elements removed with everything inside them.
_DROP = frozenset(
    {
        "script",
        "noscript",
        "form",
        "object",
        "embed",
        "applet",
        "frame",
        "frameset",
        "style",
        "link",
        "meta",
        "base",
        "input",
        "button",
        "select",
        "textarea",
        "template",
        "svg",
        "math",
    }
)
# Attributes holding a URL (HTML 4/5) that must be absolute in an email.
_URL_ATTRS = ("href", "src", "poster", "background", "cite", "action", "longdesc")
_SAFE_SCHEMES = frozenset({"http", "https", "mailto", "tel", "ftp", "cid"})
# A kramdown inline attribute list or extension on its own: {: .notice}, {:toc}, {::nomarkdown}.
_IAL = re.compile(r"\{:{1,2}[^{}\n]*\}")
_IAL_ONLY = re.compile(r"^\s*(?:\{:{1,2}[^{}\n]*\}\s*)+$")

_VIDEO_HOSTS = {
    "youtube.com": "YouTube",
    "youtube-nocookie.com": "YouTube",
    "youtu.be": "YouTube",
    "vimeo.com": "Vimeo",
    "dailymotion.com": "Dailymotion",
    "loom.com": "Loom",
    "twitch.tv": "Twitch",
    "wistia.com": "Wistia",
    "wistia.net": "Wistia",
}


def sanitise_html(fragment: str, base_url: str) -> str:
    """Email-safe HTML: no active content, no kramdown leftovers, absolute URLs."""
    if not fragment.strip():
        return ""
    root = _parse_fragment(fragment)
    if "footnote" in fragment:
        footnotes.as_kramdown(root)
    _replace_embeds(root, base_url)
    _drop_active(root)
    _drop_ial_text(root)
    _absolutise(root, base_url)
    _fix_images(root)
    return _inner_html(root)


def _iter_tags(root: HtmlElement, *tags: str) -> list[HtmlElement]:
    return [el for el in root.iter(*tags) if isinstance(el.tag, str)]


def _replace_embeds(root: HtmlElement, base_url: str) -> None:
    """An `<iframe>` or `<video>` becomes a paragraph with a link to it: no mail
    client plays embedded video, and many strip iframes without a trace."""
    for el in _iter_tags(root, "iframe", "video", "audio"):
        src = el.get("src") or _first_source(el)
        if not src:
            _remove(el)
            continue
        url, label = video_link(urljoin(base_url, src.strip()), el.get("title"))
        para = lxml.html.Element("p", {"class": "embed"})
        link = lxml.etree.SubElement(para, "a", href=url)
        link.text = label
        para.tail = el.tail
        parent = el.getparent()
        if parent is not None:
            # a <p> cannot sit inside a <p>: replace the paragraph itself when
            # the embed is all it holds (Markdown wraps raw inline iframes).
            if parent.tag == "p" and len(parent) == 1 and not (parent.text or "").strip():
                grand = parent.getparent()
                if grand is not None:
                    para.tail = parent.tail
                    grand.replace(parent, para)
                    continue
            parent.replace(el, para)


def _first_source(el: HtmlElement) -> str | None:
    for source in el.iter("source"):
        if source.get("src"):
            return str(source.get("src"))
    return None


def video_link(src: str, title: str | None = None) -> tuple[str, str]:
    """(watch URL, link text) for an embed URL; known hosts get their page URL."""
    parts = urlsplit(src)
    host = (parts.hostname or "").removeprefix("www.").removeprefix("player.")
    service = next((name for h, name in _VIDEO_HOSTS.items() if host.endswith(h)), None)
    url = src
    if service == "YouTube":
        video = _youtube_id(parts.path, parts.query, host)
        if video:
            url = f"https://www.youtube.com/watch?v={video}"
    elif service == "Vimeo":
        match = re.search(r"/video/(\d+)", parts.path)
        if match:
            url = f"https://vimeo.com/{match.group(1)}"
    label = title.strip() if title and title.strip() else None
    if service:
        text = f"▶ Watch {label} on {service}" if label else f"▶ Watch the video on {service}"
    else:
        text = f"▶ Open {label}" if label else "▶ Open the embedded content"
    return url, text


def _youtube_id(path: str, query: str, host: str) -> str | None:
    if host == "youtu.be":
        return path.strip("/") or None
    match = re.search(r"/(?:embed|v|shorts)/([\w-]+)", path)
    if match:
        return match.group(1)
    return parse_qs(query).get("v", [None])[0]


_DROP_ATTRIBUTES = ("srcdoc", "formaction", "markdown")
_ACTIVE_STYLE = ("expression(", "javascript:", "vbscript:", "behavior:")


def _drop_active(root: HtmlElement) -> None:
    for el in _iter_tags(root, *_DROP):
        _remove(el)
    for el in _iter_tags(root):
        for name in list(el.attrib):
            # on* handlers run script; srcdoc/formaction smuggle documents/forms in;
            # kramdown's markdown="0" is read by the converter, no markup of the email.
            if name.lower().startswith("on") or name.lower() in _DROP_ATTRIBUTES:
                del el.attrib[name]
        # Old Outlook/IE run CSS expression() and javascript: (vbscript:) URLs in styles.
        style = re.sub(r"[\s\\]", "", el.get("style") or "").lower()
        if any(bad in style for bad in _ACTIVE_STYLE):
            del el.attrib["style"]
    # Comments may hide conditional HTML; processing instructions are noise.
    for node in list(root.iter(lxml.etree.Comment, lxml.etree.ProcessingInstruction)):
        _remove(node)


def _remove(el: HtmlElement) -> None:
    """Remove an element but keep its tail text (lxml's drop_tree)."""
    parent = el.getparent()
    if parent is None:
        return
    tail = el.tail
    prev = el.getprevious()
    if tail:
        if prev is not None:
            prev.tail = (prev.tail or "") + tail
        else:
            parent.text = (parent.text or "") + tail
    parent.remove(el)


def _drop_ial_text(root: HtmlElement) -> None:
    """kramdown attribute lines python-markdown did not consume are never text."""
    for el in _iter_tags(root, "p"):
        if len(el) == 0 and _IAL_ONLY.match(el.text or ""):
            _remove(el)
    for el in _iter_tags(root):
        if el.tag in ("pre", "code"):
            continue
        if el.text and "{:" in el.text and not _inside_code(el):
            el.text = _IAL.sub("", el.text)
        if el.tail and "{:" in el.tail and not _inside_code(el.getparent()):
            el.tail = _IAL.sub("", el.tail)


def _inside_code(el: HtmlElement | None) -> bool:
    while el is not None:
        if el.tag in ("pre", "code"):
            return True
        el = el.getparent()
    return False


def _absolutise(root: HtmlElement, base_url: str) -> None:
    for el in _iter_tags(root):
        for attr in _URL_ATTRS:
            value = el.get(attr)
            if value is None:
                continue
            url = absolute_url(value, base_url)
            if url is None:
                del el.attrib[attr]
            else:
                el.set(attr, url)
        srcset = el.get("srcset")
        if srcset is not None:
            el.set("srcset", _absolute_srcset(srcset, base_url))
        style = el.get("style")
        if style is not None and "url(" in style.lower():
            _absolutise_style(el, style, base_url)


def absolute_url(value: str, base_url: str) -> str | None:
    """`value` resolved against `base_url` like a browser; None for a dangerous
    scheme (`javascript:`, `vbscript:`, `data:` other than images)."""
    value = value.strip()
    scheme = urlsplit(value).scheme.lower() if ":" in value else ""
    # Browsers ignore ASCII whitespace/control chars inside a scheme (java\tscript:).
    squeezed = re.sub(r"[\x00-\x20]", "", value).lower()
    if squeezed.startswith(("javascript:", "vbscript:")):
        return None
    if scheme == "data":
        return value if squeezed.startswith("data:image/") else None
    if scheme and scheme not in _SAFE_SCHEMES:
        return None
    return urljoin(base_url, value)


def _absolute_srcset(srcset: str, base_url: str) -> str:
    """Each image candidate's URL absolute, its descriptors as written; a
    candidate whose URL is dangerous is dropped."""
    out = []
    for url, descriptors in _srcset_candidates(srcset):
        absolute = absolute_url(url, base_url)
        if absolute:
            out.append(" ".join([absolute, *descriptors]))
    return ", ".join(out)


_SPACE = "\t\n\f\r "  # the HTML standard's ASCII whitespace
# One descriptor: up to whitespace or a comma, but a parenthesis holds both.
_DESCRIPTOR = re.compile(r"(?:[^\t\n\f\r ,(]|\([^)]*\)?)+")


def _srcset_candidates(srcset: str) -> Iterator[tuple[str, list[str]]]:
    """(URL, descriptors) of each candidate, parsed as the HTML standard does
    (https://html.spec.whatwg.org/#parsing-a-srcset-attribute): a URL is a
    run of non-whitespace, so the commas of a CDN's `w_400,c_fill` or of a
    `data:` URL are its own; only commas ending it end the candidate."""
    pos, end = 0, len(srcset)
    while True:
        while pos < end and srcset[pos] in _SPACE + ",":
            pos += 1
        if pos >= end:
            return
        start = pos
        while pos < end and srcset[pos] not in _SPACE:
            pos += 1
        url = srcset[start:pos]
        if url.endswith(","):  # no descriptors: the next candidate follows
            yield url.rstrip(","), []
            continue
        descriptors, pos = _descriptors(srcset, pos)
        yield url, descriptors


def _descriptors(srcset: str, pos: int) -> tuple[list[str], int]:
    """A candidate's descriptors from `pos`, up to the comma that ends it
    outside parentheses; and where the next candidate begins."""
    found: list[str] = []
    while pos < len(srcset):
        if srcset[pos] == ",":
            return found, pos + 1
        if srcset[pos] in _SPACE:
            pos += 1
            continue
        token = _DESCRIPTOR.match(srcset, pos)
        assert token is not None  # neither whitespace nor a comma: one character at least
        found.append(token.group(0))
        pos = token.end()
    return found, pos


# A CSS url(), its URL quoted or not (CSS Syntax §4.3.6); one with an escape
# (a backslash) is left as written.
_CSS_URL = re.compile(
    r"""\b(?P<name>url)\(\s*(?:"(?P<dq>[^"\\]*)"|'(?P<sq>[^'\\]*)'|(?P<bare>[^\s"'()\\]+))\s*\)""",
    re.I,
)


def _absolutise_style(el: HtmlElement, style: str, base_url: str) -> None:
    """Each url() of an inline style absolute (a raw-HTML hero's background);
    a style with a URL no link could have (vbscript:) is dropped whole, as
    `_drop_active` drops one with expression()."""
    dangerous = False

    def one(match: re.Match[str]) -> str:
        nonlocal dangerous
        value = next(v for v in match.group("dq", "sq", "bare") if v is not None)
        if not value.strip() or value.strip().lower().startswith("data:"):
            return match.group(0)  # nothing to resolve; data: is only ever an image here
        url = absolute_url(value, base_url)
        if url is None:
            dangerous = True
            return match.group(0)
        quote = '"' if match.group("dq") is not None else "'" if match.group("sq") else ""
        if not quote and re.search(r"[\s\"'()\\]", url):
            quote = "'"  # a character an unquoted url() cannot hold
        return f"{match.group('name')}({quote}{url}{quote})"

    absolute = _CSS_URL.sub(one, style)
    if dangerous:
        del el.attrib["style"]
    else:
        el.set("style", absolute)


def _fix_images(root: HtmlElement) -> None:
    """Every image carries alt text (screen readers, blocked images)."""
    for img in _iter_tags(root, "img"):
        if img.get("alt") is None:
            img.set("alt", img.get("title") or "")
        if not img.get("src"):
            _remove(img)


def _inner_html(root: HtmlElement) -> str:
    parts = [html.escape(root.text or "", quote=False)]
    parts.extend(lxml.html.tostring(child, encoding="unicode") for child in root)
    return "".join(parts).strip()
