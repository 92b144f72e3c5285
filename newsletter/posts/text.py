"""Text rules of a post: the title (plain and HTML), the byline, the excerpt.

Pure functions over strings; `posts` wires them together.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from html.parser import HTMLParser

# --------------------------------------------------------------------------- titles

# Inline tags a heading may keep; everything else is dropped (its text stays).
_TITLE_TAGS = frozenset(
    {"em", "strong", "i", "b", "code", "sup", "sub", "small", "mark", "s", "del"}
)
# Elements whose *content* is not text a reader should see.
_DROP_CONTENT = frozenset({"script", "style", "template", "iframe", "object", "noscript"})
# HTML's elements (and SVG's root): a tag naming none of them (`Vec<T>`,
# `List<String>` in a title about code) is text, shown as written.
_ELEMENT_NAMES = """\
a abbr address area article aside audio b base bdi bdo blockquote body br button
canvas caption center cite code col colgroup data datalist dd del details dfn dialog
div dl dt em embed fieldset figcaption figure font footer form h1 h2 h3 h4 h5 h6
head header hgroup hr html i iframe img input ins kbd label legend li link main map
mark math menu meta meter nav noscript object ol optgroup option output p param
picture pre progress q rp rt ruby s samp script search section select slot small
source span strike strong style sub summary sup svg table tbody td template textarea
tfoot th thead time title tr track tt u ul var video wbr
"""
_HTML_ELEMENTS = frozenset(_ELEMENT_NAMES.split())


class _InlineSanitiser(HTMLParser):
    """Keeps allowed inline tags (without attributes) and escaped text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.open: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _DROP_CONTENT:
            self.skipping += 1
        elif tag in _TITLE_TAGS and not self.skipping:
            self.out.append(f"<{tag}>")
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROP_CONTENT:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.open and not self.skipping:
            # Close everything opened since, so the output stays well nested.
            while self.open:
                last = self.open.pop()
                self.out.append(f"</{last}>")
                if last == tag:
                    break

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.out.append(html.escape(data, quote=False))

    def result(self) -> str:
        self.close()
        return "".join(self.out) + "".join(f"</{t}>" for t in reversed(self.open))


_CODE_SPAN = re.compile(r"`([^`]+)`")
_STRONG = re.compile(r"(\*\*)(?=\S)(.+?)(?<=\S)\1")
_EMPHASIS = re.compile(r"(?<![\w*])(\*)(?=\S)(.+?)(?<=\S)\1(?![\w*])")
# Underscores are emphasis only around words, never inside one (`foo__bar__baz`,
# `snake_case`: Markdown's rule), and a word wrapped in two of them is a
# Python dunder (`__init__`), shown as written: Jekyll prints titles as text.
_STRONG_UNDERSCORES = re.compile(r"(?<!\w)(__)(?!\w+__(?!\w))(?=\S)(.+?)(?<=\S)(?<!_)__(?!\w)")
_EMPHASIS_UNDERSCORE = re.compile(r"(?<![\w*])(_)(?![_\s])(.+?)(?<![_\s])_(?![\w*])")
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_NEEDS_WORK = re.compile(r"[<&*_`\[]")


def one_line(text: str) -> str:
    """Collapse every kind of whitespace, CR and LF included, to single spaces.

    A title becomes a Subject header; a CR or LF there would start a new
    header (RFC 5322 §2.2), so none may survive.
    """
    return " ".join(text.split())


def title_html(raw: str) -> str:
    """Safe inline HTML for a heading from a title with Markdown/HTML/entities."""
    text = one_line(raw)
    if not _NEEDS_WORK.search(text):
        return html.escape(text, quote=False)
    codes: list[str] = []

    def keep_code(match: re.Match[str]) -> str:
        codes.append(html.escape(match.group(1), quote=False))
        return f"\x00{len(codes) - 1}\x00"

    # Code spans first: `Option<T>` inside one is text, not a tag to drop.
    text = _CODE_SPAN.sub(keep_code, text.replace("\x00", ""))
    sanitiser = _InlineSanitiser()
    sanitiser.feed(_markup_only(text))
    safe = sanitiser.result()
    safe = _MD_LINK.sub(lambda m: m.group(1), safe)
    for strong in (_STRONG, _STRONG_UNDERSCORES):
        safe = strong.sub(r"<strong>\2</strong>", safe)
    for emphasis in (_EMPHASIS, _EMPHASIS_UNDERSCORE):
        safe = emphasis.sub(r"<em>\2</em>", safe)
    return re.sub(r"\x00(\d+)\x00", lambda m: f"<code>{codes[int(m.group(1))]}</code>", safe)


# A well-formed tag: an element's name, attributes whose values are quoted
# or bare (no `<` anywhere), an optional `/` and `>`. `a<b and 3 <5 ... x<y>`
# is no tag, though a browser would read `<b and 3 <5 ...>` as one.
_TAG = re.compile(
    r"""<(?P<end>/?)(?P<name>[A-Za-z][A-Za-z0-9-]*)
    (?P<attrs>(?:\s+[^\s"'<>/=]+(?:\s*=\s*(?:"[^"<]*"|'[^'<]*'|[^\s"'<>=`]+))?)*)
    \s*(?P<close>/?)>""",
    re.X,
)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_VOID_ELEMENTS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
     "source", "track", "wbr"}
)  # fmt: skip
# Void elements a title uses as markup even bare (a line break); another one
# named bare (`<input>`, `<img>`) is what the post is about: text.
_BARE_MARKUP = frozenset({"br", "wbr"})


def _markup_only(text: str) -> str:
    """`text` with every `<` that starts no well-formed markup written `&lt;`.

    A title is text (Jekyll's themes print `{{ page.title | escape }}`); only
    an element that is opened *and* closed (`<em>x</em>`), a line break, a
    void element with attributes or a comment counts as HTML.  A lone
    `<script>` or `<p>` is the title's topic: taken for a tag it swallowed
    the rest of the title (a script's content) or its own name.
    """
    kept = {m.start() for m in _COMMENT.finditer(text)}
    kept |= _well_formed_tags(text)
    out: list[str] = []
    last = 0
    for index in (i for i, c in enumerate(text) if c == "<"):
        out.append(text[last:index])
        out.append("<" if index in kept else "&lt;")
        last = index + 1
    out.append(text[last:])
    return "".join(out)


def _well_formed_tags(text: str) -> set[int]:
    """Where the tags start that are markup: each end tag with the nearest
    open tag of its name before it, a void element bare or with attributes."""
    kept: set[int] = set()
    opened: list[tuple[str, int]] = []
    for match in _TAG.finditer(text):
        name = match.group("name").lower()
        if name not in _HTML_ELEMENTS:
            continue
        if name in _VOID_ELEMENTS:
            if name in _BARE_MARKUP or match.group("attrs") or match.group("close"):
                kept.add(match.start())
        elif not match.group("end"):
            if not match.group("close"):  # `<p/>` opens nothing in HTML
                opened.append((name, match.start()))
        else:
            for depth in range(len(opened) - 1, -1, -1):
                if opened[depth][0] == name:
                    kept |= {opened.pop(depth)[1], match.start()}
                    break
    return kept


def title_text(heading_html: str) -> str:
    """Plain text (for the Subject) from `title_html`'s output."""
    return one_line(html.unescape(re.sub(r"<[^>]*>", "", heading_html)))


# --------------------------------------------------------------------------- byline


@dataclass(frozen=True)
class Byline:
    names: tuple[tuple[str, str | None], ...]  # (name, url)
    body: str  # the body without the byline line


_BYLINE = re.compile(
    r"""^[ ]{0,3}(?P<heading>\#{1,6}[ \t]*)?(?:[*_]{1,2})?
    (?P<label>authors?[ \t]*:|written[ \t]+by[ \t]*:?|posted[ \t]+by[ \t]*:?|by[ \t]*:?)
    (?:[*_]{1,2})?[ \t]*(?P<rest>\S.*?)[ \t#]*$""",
    re.I | re.X,
)
_LINK = re.compile(r"\[([^\]]+)\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^\"']*[\"'])?\s*\)")
_SEPARATORS = re.compile(r"\s*(?:,|&|\band\b|\bund\b|\bet\b)\s*", re.I)
_PARTICLES = frozenset(
    {"van", "von", "de", "der", "den", "da", "di", "du", "la", "le", "bin", "al", "y", "del"}
)
_NAME_WORD = re.compile(r"^[^\W\d_][\w.'’-]*$")
# Words no name is made of: they make `By Tuesday, We Knew` or `By The
# Numbers` a sentence or a title.  (Months that are also first names,
# April, May, June, August, are left out.)
_NOT_NAME_TEXT = """\
i me we us you he him she her it they them my our your his its their this that these
those the a an then now there here so all any every some no not is was were are be been
monday tuesday wednesday thursday friday saturday sunday today tomorrow yesterday
january february march july september october november december
"""
_NOT_NAME_WORDS = frozenset(_NOT_NAME_TEXT.split())
# A sentence ends in punctuation; a name may end in an initial or `Jr.`.
_SENTENCE_END = re.compile(r"[.,!?:;…]$")
_ABBREVIATION_END = re.compile(r"(?:^|\s)[A-Z][a-z]?\.$")


def take_byline(body: str) -> Byline | None:
    """A leading `### Author: [Name](url)`, `Author: Name` or `By Name` line.

    Only the first non-blank line counts, and a `By ...` line only when what
    follows looks like names (so "By the way, ..." stays in the post), it
    is no heading (`## By Popular Demand`) and no sentence (`By Tuesday, We
    Knew.`): a line taken for a byline leaves the post.
    """
    start = len(body) - len(body.lstrip("\n "))
    end = body.find("\n", start)
    line = body[start:] if end < 0 else body[start:end]
    match = _BYLINE.match(line)
    if match is None:
        return None
    rest = match.group("rest").strip().strip("*_").strip()
    label = match.group("label").lower()
    if match.group("heading") and ":" not in label:
        return None  # `## By Popular Demand` is a heading; `### Author: X` a byline
    strict = label.startswith("by")
    if strict and _SENTENCE_END.search(rest) and not _ABBREVIATION_END.search(rest):
        return None  # `By Tuesday, We Knew.`
    names = _names(rest, strict)
    if not names:
        return None
    remainder = "" if end < 0 else body[end + 1 :]
    return Byline(names, remainder)


def _names(rest: str, strict: bool) -> tuple[tuple[str, str | None], ...]:
    links = [(m.group(1).strip(), m.group(2)) for m in _LINK.finditer(rest)]
    if links:
        leftover = _SEPARATORS.sub("", _LINK.sub("", rest)).strip(" .")
        return tuple(links) if not leftover else ()
    parts = [p.strip(" .") for p in _SEPARATORS.split(rest) if p.strip(" .")]
    if not parts or not all(_looks_like_name(p, strict) for p in parts):
        return ()
    return tuple((p, None) for p in parts)


def _looks_like_name(text: str, strict: bool) -> bool:
    words = text.split()
    if not 1 <= len(words) <= 5 or len(text) > 80:
        return False
    if not all(_NAME_WORD.match(w) for w in words):
        return False
    if strict:
        # "By Dana Okafor" yes; "By the way", "By Then, It Was Over" no.
        return (
            words[0][0].isupper()
            and all(w[0].isupper() or w.lower() in _PARTICLES for w in words)
            and not any(w.lower() in _NOT_NAME_WORDS for w in words)  # (`A.` is an initial)
        )
    return True


# --------------------------------------------------------------------------- excerpt

# `<!--more-->` and `<!-- more -->` (any spacing, any case) are the common
# markers; Jekyll only knows the configured separator, we accept both.
_MORE = re.compile(r"<!--\s*more\s*-->", re.I)
_FENCE = re.compile(r"^[ ]{0,3}(```|~~~)", re.M)
_SKIP_BLOCK = re.compile(r"^[ ]{0,3}(?:#{1,6}(?:\s|$)|\{:|<!--)")
# kramdown's table of contents (`* TOC` / `{:toc}`): no text of the post's own.
_TOC_BLOCK = re.compile(r"[ ]{0,3}(?:[*+-]|\d{1,9}\.)[ \t]+\S[^\n]*\n[ ]{0,3}\{:\s*toc\s*\}\s*")
_LINK_DEFINITION = re.compile(r"^[ ]{0,3}\[[^\]]+\]:[ \t]*\S.*$", re.M)


def excerpt_source(body: str, separator: str | None) -> str:
    """The Markdown of the excerpt: before the separator, else the first paragraph."""
    head = _before_separator(body, separator)
    if head is None:
        head = first_paragraph(body)
    # Jekyll appends the body's reference-style link definitions so that
    # `[text][ref]` links in the excerpt still resolve.
    definitions = _LINK_DEFINITION.findall(body)
    missing = [d for d in definitions if d not in head]
    return head.rstrip() + ("\n\n" + "\n".join(missing) if missing else "")


_LIQUID_TAG = re.compile(r"\{%-?\s*(\w+)")
_LIQUID_BLOCKS = frozenset(
    {"if", "unless", "for", "case", "capture", "comment", "raw", "highlight", "tablerow"}
)
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:.+$", re.M)


def jekyll_excerpt_source(body: str, separator: str) -> str:
    """Jekyll 4's excerpt of the *raw* body (before Liquid): everything up to
    the separator (the whole body without one), unclosed Liquid blocks closed,
    and the reference-link definitions found after it appended."""
    head, found, tail = body.partition(separator) if separator else (body, "", "")
    if not head:
        return ""
    if "{%" in head:
        for name in reversed(_LIQUID_TAG.findall(head)):
            if name in _LIQUID_BLOCKS and not re.search(rf"\{{%-?\s*end{name}\b", head):
                head += f"\n{{% end{name} %}}"
    if not found or not tail:
        return head
    # kramdown shows a footnote only where it is referenced: keep the
    # definitions of footnotes the excerpt itself uses.
    refs = [
        r for r in _REFERENCE.findall(tail)
        if not r.lstrip().startswith("[^") or r.lstrip().split("]", 1)[0] + "]" in head
    ]  # fmt: skip
    return head + "\n\n" + "\n".join(refs)


def _before_separator(body: str, separator: str | None) -> str | None:
    if separator and separator.strip():
        if _MORE.fullmatch(separator.strip()):
            match = _MORE.search(body)
            return body[: match.start()] if match else None
        index = body.find(separator)
        if index >= 0:
            return body[:index]
    match = _MORE.search(body)
    return body[: match.start()] if match else None


def first_paragraph(body: str) -> str:
    """Jekyll's default excerpt (up to the first blank line), skipping leading
    headings, attribute lines, comments and a table of contents, and never
    cutting a code fence."""
    blocks = re.split(r"\n[ \t]*\n", body.strip("\n"))
    index = 0
    while index < len(blocks) - 1 and (
        _SKIP_BLOCK.match(blocks[index]) or _TOC_BLOCK.fullmatch(blocks[index])
    ):
        index += 1
    taken = [blocks[index]] if blocks else []
    # An odd number of fence markers means the blank line split a code block.
    while len(_FENCE.findall("\n\n".join(taken))) % 2 and index + 1 < len(blocks):
        index += 1
        taken.append(blocks[index])
    return "\n\n".join(taken)
