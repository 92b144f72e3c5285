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
  the post's own URL.
* `html_to_text(fragment)`: readable plain text, links as `text (url)`.
"""

from __future__ import annotations

import html
import re
import textwrap
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import lxml.etree
import lxml.html
import markdown
from lxml.html import HtmlElement

from newsletter.errors import RenderError
from newsletter.posts.kramdown import KramdownExtension

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


def _markdown() -> markdown.Markdown:
    md: markdown.Markdown | None = getattr(_local, "md", None)
    if md is None:
        md = markdown.Markdown(
            extensions=[*_EXTENSIONS, KramdownExtension()], extension_configs=_EXTENSION_CONFIGS
        )
        _local.md = md
    return md


MARKDOWN_SUFFIXES = frozenset({".md", ".markdown", ".mkdown", ".mkdn", ".mkd"})


def convert(text: str, base_url: str, suffix: str = ".md") -> str:
    """A post body as Jekyll converts it by file type: Markdown for Markdown
    files, HTML as it is (`.html`), anything else as plain text."""
    suffix = suffix.lower()
    if suffix in MARKDOWN_SUFFIXES:
        return markdown_to_html(text, base_url)
    if suffix in (".html", ".htm"):
        return sanitise_html(text, base_url)
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    return "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)


def markdownify(text: str) -> str:
    """Jekyll's `markdownify` filter: the site's Markdown as HTML, a newline
    after (sanitised with the rest of the post, whose HTML it lands in)."""
    return _markdown().reset().convert(text) + "\n"


def markdown_to_html(text: str, base_url: str) -> str:
    """Markdown (already Liquid-rendered) → sanitised HTML with absolute URLs.

    `base_url` is the URL of the page the Markdown belongs to (the post's URL):
    relative links and images resolve against it as a browser would.
    """
    md = _markdown()
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


def _parse_fragment(fragment: str) -> HtmlElement:
    """An HTML fragment inside one `<div>`; lxml's errors become a RenderError."""
    try:
        return lxml.html.fragment_fromstring(fragment, create_parent="div")
    except (lxml.etree.ParserError, ValueError) as exc:
        raise RenderError(f"cannot parse HTML: {exc}") from exc


def sanitise_html(fragment: str, base_url: str) -> str:
    """Email-safe HTML: no active content, no kramdown leftovers, absolute URLs."""
    if not fragment.strip():
        return ""
    root = _parse_fragment(fragment)
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


def _drop_active(root: HtmlElement) -> None:
    for el in _iter_tags(root, *_DROP):
        _remove(el)
    for el in _iter_tags(root):
        for name in list(el.attrib):
            # on* handlers run script; srcdoc/formaction smuggle documents/forms in.
            if name.lower().startswith("on") or name.lower() in ("srcdoc", "formaction"):
                del el.attrib[name]
        # Old Outlook/IE run CSS expression() and javascript: URLs in styles.
        style = re.sub(r"[\s\\]", "", el.get("style") or "").lower()
        if "expression(" in style or "javascript:" in style or "behavior:" in style:
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
    out = []
    for candidate in srcset.split(","):
        bits = candidate.strip().split(None, 1)
        if not bits:
            continue
        url = absolute_url(bits[0], base_url)
        if url:
            out.append(" ".join([url, *bits[1:]]))
    return ", ".join(out)


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


# --------------------------------------------------------------------------- HTML → text

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
    """Readable plain text from an HTML fragment (links as `text (url)`).

    Paragraphs are wrapped at 72 columns (never inside a URL), headings are
    underlined, list items get a bullet or their number, code stays verbatim.
    """
    if not fragment.strip():
        return ""
    root = _parse_fragment(fragment)
    blocks = list(_text_blocks(root, prefix=""))
    text = "\n\n".join(b for b in blocks if b.strip())
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _text_blocks(el: HtmlElement, prefix: str) -> Iterator[str]:
    """Yield one string per block-level element, in document order."""
    inline: list[str] = [el.text or ""] if el.tag not in _SKIP_TEXT else []
    for child in el:
        if not isinstance(child.tag, str):
            inline.append(child.tail or "")
            continue
        if child.tag in _BLOCKS:
            yield _wrap("".join(inline), prefix)
            inline = []
            yield from _block(child, prefix)
        else:
            inline.append(_inline(child))
        inline.append(child.tail or "")
    yield _wrap("".join(inline), prefix)


def _block(el: HtmlElement, prefix: str) -> Iterator[str]:
    tag = el.tag
    if tag == "pre":
        code = el.text_content().rstrip("\n")
        yield "\n".join((prefix + "    " + line).rstrip() for line in code.split("\n"))
    elif tag == "hr":
        yield prefix + "-" * 20
    elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
        title = _squash(_inline_children(el))
        yield f"{prefix}{title}\n{prefix}{('=' if tag in ('h1', 'h2') else '-') * len(title)}"
    elif tag in ("ul", "ol"):
        yield "\n".join(_list_items(el, prefix))
    elif tag == "blockquote":
        yield from _text_blocks(el, prefix + "> ")
    elif tag == "table":
        yield "\n".join(_table_rows(el, prefix))
    else:
        yield from _text_blocks(el, prefix)


def _list_items(el: HtmlElement, prefix: str) -> Iterator[str]:
    items = [li for li in el if isinstance(li.tag, str) and li.tag == "li"]
    for number, li in enumerate(items, start=int(el.get("start", "1") or 1)):
        marker = f"{number}. " if el.tag == "ol" else "- "
        inner = [b for b in _text_blocks(li, "") if b.strip()]
        body = "\n".join(inner)
        lines = body.split("\n")
        yield (
            prefix
            + marker
            + lines[0]
            + "".join("\n" + prefix + " " * len(marker) + line for line in lines[1:])
        )


def _table_rows(el: HtmlElement, prefix: str) -> Iterator[str]:
    for tr in el.iter("tr"):
        cells = [_squash(_inline_children(c)) for c in tr if c.tag in ("td", "th")]
        yield prefix + " | ".join(cells)


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
        href = el.get("href") or ""
        classes = (el.get("class") or "").split()
        if "footnote-backref" in classes:
            return ""
        if "footnote-ref" in classes:
            return text
        label = _squash(text)
        # In-page anchors (footnote refs) and links that repeat their text need no URL.
        if href and not href.startswith("#") and href not in (label, f"mailto:{label}"):
            return f"{text} ({href})" if label else href
    if el.tag == "sup" and el.find("a") is not None:
        return f"[{_squash(text)}]"
    if el.tag in ("del", "s", "strike") and text.strip():
        return f"~~{text}~~"  # struck text read as plain text says the opposite
    return text


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _wrap(text: str, prefix: str) -> str:
    lines = []
    for line in text.split(_BR):  # keep <br> breaks
        squashed = _squash(line)
        if not squashed:
            continue
        lines.extend(
            textwrap.wrap(
                squashed,
                width=_WIDTH,
                initial_indent=prefix,
                subsequent_indent=prefix,
                break_long_words=False,  # a long URL stays whole and clickable
                break_on_hyphens=False,
            )
        )
    return "\n".join(lines)
