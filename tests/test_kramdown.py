"""kramdown features as a reader sees them, one sample each.

Each sample's visible text is written down (what Jekyll's kramdown shows);
`test_kramdown_agrees` asks Debian's kramdown (Jekyll's settings: GFM input,
no hard wraps) again when ruby has it, so the table cannot drift.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from jekyll_oracle import text_of

from newsletter.posts.markup import markdown_to_html

BASE = "https://blog.example.com/2024/01/01/post.html"

SAMPLES = {
    "typographic quotes": ('"Double", \'single\', it\'s the \'90s.', "“Double”, ‘single’, it’s the ’90s."),
    "dashes and ellipsis": ("a -- b --- c... d", "a – b — c… d"),
    "guillemets": ("<< quoted >>", "« quoted »"),
    "backslash escapes": ("It\\'s \\*not\\* a \\`tick\\` \\[x\\]", "It's *not* a `tick` [x]"),
    "block IAL": ("A paragraph.\n{: .lead}", "A paragraph."),
    "span IAL on an image": ('![logo](/logo.png){: .icon width="70"} text', "text"),
    "ALD": ("{:note: .callout}\nText.\n{: note}", "Text."),
    "reference links": ("See [the guide][g].\n\n[g]: https://example.com/ \"Guide\"", "See the guide."),
    "footnotes": ("Spec[^1].\n\n[^1]: A note.", "Spec 1 . A note."),
    "definition lists": ("term\n: definition", "term definition"),
    "abbreviations": ("HTML rocks.\n\n*[HTML]: Hyper Text", "HTML rocks."),
    "tables": ("| a | b |\n|---|---|\n| 1 | 2 |", "a b 1 2"),
    "header ids": ("## Title {#custom}\n\nText.", "Title Text."),
    "comment extension": ("{::comment}\nhidden\n{:/comment}\n\nShown.", "Shown."),
    "options extension": ('{::options parse_block_html="true" /}\n\nShown.', "Shown."),
    "markdown in HTML": ('<div markdown="1">\n*em* text\n</div>', "em text"),
    "literal double brackets": ("see [[Bug #18980]] now", "see [[Bug #18980]] now"),
    "quotes around emphasis": ('A "quote with *emphasis*" and *"emphasised"*', "A “quote with emphasis ” and “emphasised”"),
    "quotes before a link or emphasis": ('Read "[the post](x)", "**bold**" and \'_em_\'.', "Read “ the post ”, “ bold ” and ‘ em ’."),
    "a quote before a line break": ('He said "no"  \nthen left.', "He said “no” then left."),
    "nested quotes": ('Nested "outer \'inner\' outer".', "Nested “outer ‘inner’ outer”."),
    "apostrophes": ("Rock 'n' roll in 's-Hertogenbosch, 5'10\" tall", "Rock ‘n’ roll in ‘s-Hertogenbosch, 5’10” tall"),
    "quotes around raw HTML": ("<em>'em'</em> and \"html\"", "‘em’ and “html”"),
    "'s at the start": ("'s-Hertogenbosch is a city.", "’s-Hertogenbosch is a city."),
    "quotes in code stay": ("`code 'quote'` and 'after'", "code 'quote' and ‘after’"),
    "strikethrough": ("~~gone~~ and ~~ kept ~~ and H~2~O", "gone and ~~ kept ~~ and H~2~O"),
    "guillemets around a word": ("x <<word>> y", "x «word» y"),
    "backslash line break": ("a\\\nb", "a b"),
    "table of contents": ("* TOC\n{:toc}\n\n## A\n\n### B\n\n## C", "A B C A B C"),
    "toc without a heading": ("Intro.\n\n1. x\n{:toc}\n\n## Kept\n{:.no_toc}", "Intro. Kept"),
}  # fmt: skip


def _spaced(text: str) -> str:
    # Footnote markers are <sup> elements: compare words, not their spacing.
    return " ".join(text.replace(".", " . ").split())


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_kramdown_feature(name: str) -> None:
    source, visible = SAMPLES[name]
    html = markdown_to_html(source, BASE)
    assert "{:" not in html
    assert _spaced(text_of(html)) == _spaced(visible)


KRAMDOWN = """
require "json"; require "kramdown"; require "kramdown-parser-gfm"
JSON.parse(STDIN.read).each do |text|
  html = Kramdown::Document.new(text, input: "GFM", hard_wrap: false, auto_ids: true,
    footnote_nr: 1, entity_output: :as_char, smart_quotes: "lsquo,rsquo,ldquo,rdquo").to_html
  puts JSON.generate(html)
end
"""


def _has_kramdown() -> bool:
    if shutil.which("ruby") is None:
        return False
    probe = ["ruby", "-e", 'require "kramdown"; require "kramdown-parser-gfm"']
    return subprocess.run(probe, capture_output=True, timeout=60).returncode == 0


@pytest.mark.skipif(not _has_kramdown(), reason="ruby's kramdown is not installed")
def test_kramdown_agrees() -> None:
    names = sorted(SAMPLES)
    done = subprocess.run(
        ["ruby", "-e", KRAMDOWN],
        input=json.dumps([SAMPLES[n][0] for n in names]),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for name, line in zip(names, done.stdout.splitlines(), strict=True):
        assert _spaced(text_of(json.loads(line))) == _spaced(SAMPLES[name][1]), name


HEADINGS = (
    '## Hello, World!\n\n## Hello, World!\n\n## 2 *Fast* "quotes" --- it\'s\n\n'
    "## 123\n\n## Über café\n\n## Use `code_x` now\n\n## !!!\n\n"
    "## A & B &amp; [link](http://x.y) <b>bold</b>\n\n## Title {#custom}\n\n## Title\n"
)
HEADER_IDS = [
    "hello-world",
    "hello-world-1",
    "2-fast-quotes--its",
    "123",
    "über-café",
    "use-code_x-now",
    None,
    "a--b--link-bold",
    "custom",
    "title",
]


def _ids(html: str) -> list[str | None]:
    import lxml.html

    return [h.get("id") for h in lxml.html.fromstring(f"<div>{html}</div>").iter("h2")]


def test_header_ids_as_kramdown_makes_them() -> None:
    # An in-page link ([see](#getting-started)) must find its heading.
    assert _ids(markdown_to_html(HEADINGS, BASE)) == HEADER_IDS


@pytest.mark.skipif(not _has_kramdown(), reason="ruby's kramdown is not installed")
def test_header_ids_agree_with_kramdown() -> None:
    done = subprocess.run(
        ["ruby", "-e", KRAMDOWN],
        input=json.dumps([HEADINGS]),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert _ids(json.loads(done.stdout)) == HEADER_IDS


# Lists nest where the item's text starts (kramdown, GFM), not only at four
# spaces (Python-Markdown); a fence inside an item is code of that item.
LISTS = {
    "two-space nesting": ("- fruit\n  - apple\n  - pear\n- veg", "ul(li(ul(li,li)),li)"),
    "three-space nesting": ("* a\n   * b\n      * c\n* d", "ul(li(ul(li(ul(li)))),li)"),
    "under a number": ("1. one\n   - x\n   - y\n2. two", "ol(li(ul(li,li)),li)"),
    "four spaces still nest": ("- a\n    - b", "ul(li(ul(li)))"),
    # A marker of the other kind, right under an item (any indent), is a
    # list inside it: the item's lazy line, which a list interrupts.
    "bullets under a number": ("1. a\n  - b\n2. c", "ol(li(ul(li)),li)"),
    "a number under a bullet at the margin": ("- a\n1. b\n- c", "ul(li(ol(li)),li)"),
    "mixed kinds three deep": ("- x\n  1. a\n   - b", "ul(li(ol(li(ul(li)))))"),
    "another kind after a blank line": ("1. a\n\n  - b", "ol(li),ul(li)"),
    "fence in an item": (
        "1. Install:\n\n   ```bash\n   make install\n   ```\n\n2. Run it",
        "ol(li(p,pre),li(p))",
    ),
    "fence at the root stays": ("```\n- not a list\n  - really\n```", "pre"),
    "indented code in an item": ("- a\n\n      code line\n\n- b", "ul(li(p,pre),li(p))"),
    "a rule is no item": ("- a\n\n* * *\n\ntext", "ul(li),hr,p"),
    "a lazy line": ("- a\nlazy\n- b", "ul(li,li)"),
    "a list right after a paragraph": ("Steps:\n- a\n- b", "p,ul(li,li)"),
    # A line after a quoted one is the quote's (lazy), a list too, up to a blank line.
    "a list right after a quote": ("> quoted\n- a\n\nb", "blockquote(p,ul(li)),p"),
    "a fence in a quote": ("> ```\n> x = 1\n> ```\n\nafter", "blockquote(pre),p"),
    "two-space nesting in a quote": (
        "> Quote:\n>\n> - a\n>   - b\n>   - c\n> - d", "blockquote(p,ul(li(ul(li,li)),li))"
    ),
    "under a number in a quote": ("> 1. one\n>    - x\n> 2. two", "blockquote(ol(li(ul(li)),li))"),
    "a quote in a quote": ("> > - a\n> >   - b\n>\n> c", "blockquote(blockquote(ul(li(ul(li)))),p)"),
    "a fence in a quoted item": (
        "> 1. Run:\n>\n>    ```\n>    make\n>    ```\n>\n> 2. Done",
        "blockquote(ol(li(p,pre),li(p)))",
    ),
    "numbers right after a paragraph": ("Steps:\n1. a\n2. b", "p,ol(li,li)"),
    "an item after a second paragraph": ("- a\n\n  b para\n- c", "ul(li(p,p),li(p))"),
    "a tight item with two lines": ("- a\n  more\n- b", "ul(li,li)"),
    "a fence indented at the root": ("Para\n\n  ```ruby\n  puts 1\n  ```\n\nEnd", "p,pre,p"),
    "a table of contents": ("* TOC\n{:toc}\n\n# A\n\n### B\n\n## C\n\n# D", "ul(li(ul(li,li)),li)"),
}  # fmt: skip
_SHAPE_TAGS = frozenset({"ul", "ol", "li", "p", "pre", "hr", "blockquote"})


def _shape(fragment: str) -> str:
    import lxml.html

    def walk(el: object) -> list[str]:
        parts = []
        for child in el:  # type: ignore[attr-defined]
            if not isinstance(child.tag, str):
                continue
            inner = walk(child)
            if child.tag in _SHAPE_TAGS:
                parts.append(f"{child.tag}({','.join(inner)})" if inner else child.tag)
            else:
                parts.extend(inner)
        return parts

    return ",".join(walk(lxml.html.fragment_fromstring(fragment, create_parent="div")))


@pytest.mark.parametrize("name", sorted(LISTS))
def test_lists_nest_as_in_kramdown(name: str) -> None:
    source, shape = LISTS[name]
    html = markdown_to_html(source, BASE)
    assert _shape(html) == shape
    if "make install" in source:
        assert "```" not in html and "make" in text_of(html.split("<pre")[1])


@pytest.mark.skipif(not _has_kramdown(), reason="ruby's kramdown is not installed")
def test_lists_agree_with_kramdown() -> None:
    names = sorted(LISTS)
    done = subprocess.run(
        ["ruby", "-e", KRAMDOWN],
        input=json.dumps([LISTS[n][0] for n in names]),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for name, line in zip(names, done.stdout.splitlines(), strict=True):
        # Rouge wraps a fence in <div>s (not shapes); the shape is the same.
        assert _shape(json.loads(line)) == LISTS[name][1], name


def test_gfm_strikethrough_line_break_and_task_items() -> None:
    html = markdown_to_html("~~gone~~ a\\\nb", BASE)
    assert html == "<p><del>gone</del> a<br>\nb</p>"
    # kramdown's disabled checkboxes reach no inbox: the item says it instead.
    tasks = markdown_to_html("- [ ] todo\n- [x] done\n- [y] not a task", BASE)
    assert text_of(tasks) == "\u2610 todo \u2611 done [y] not a task"


@pytest.mark.parametrize("source", ["Title\n-\n\ntext", "Title\n- \n\ntext", "Text\n1.\n\nx"])
def test_an_empty_item_does_not_interrupt_a_paragraph(source: str) -> None:
    """`Title` / `-` is a heading (kramdown's too), not a paragraph and a list."""
    html = markdown_to_html(source, BASE)
    assert "<li" not in html
    assert ("<h2" in html) == source.startswith("Title")


# GFM (kramdown's GFM parser, so Jekyll) wants a space after an ATX heading's
# hashes: '#hashtag' at a line's start is a paragraph, not a giant heading.
HASHES = {
    "#Hashtag at the start": "p",
    "#5 is a number": "p",
    "##Two": "p",
    "#": "p",
    "# ": "p",
    "Para\n#tag": "p",
    "# Real": "h1",
    "## #tag heading": "h2",
    "###\tTabbed": "h3",
    "#### Four ####": "h4",
    "Para\n## Heading": "p,h2",
    "    # code": "pre",
}


def _top_tags(fragment: str) -> str:
    import lxml.html

    root = lxml.html.fragment_fromstring(fragment, create_parent="div")
    tags = [child for child in root if isinstance(child.tag, str)]
    # Pygments wraps a code block in <div class="codehilite">.
    return ",".join("pre" if c.get("class") == "codehilite" else str(c.tag) for c in tags)


@pytest.mark.parametrize("source", sorted(HASHES))
def test_a_hash_needs_a_space_to_make_a_heading(source: str) -> None:
    html = markdown_to_html(source, BASE)
    assert _top_tags(html) == HASHES[source]
    assert source.strip().lstrip("#").strip().split("#")[0].strip() in text_of(html)


@pytest.mark.skipif(not _has_kramdown(), reason="ruby's kramdown is not installed")
def test_hashes_agree_with_kramdown() -> None:
    names = sorted(HASHES)
    done = subprocess.run(
        ["ruby", "-e", KRAMDOWN],
        input=json.dumps(names),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for name, line in zip(names, done.stdout.splitlines(), strict=True):
        assert _top_tags(json.loads(line)) == HASHES[name], name


# kramdown reads a block whose every line has a '|' as a table, without a
# header row (`jekyll build` shows 'Photo: NASA | Public domain' as one).
PIPES = {
    "Photo: NASA | Public domain": "table(tr(td,td))",
    "Two | cells\nand | more": "table(tr(td,td),tr(td,td))",
    "| lead | pipe": "table(tr(td,td))",
    "Not a table \\| escaped": "p",
    "Code `a | b` here": "p",
    "Line one\nLine | two": "p",
    "- item | pipe": "ul(li(table(tr(td,td))))",
    "> quote | pipe": "blockquote(table(tr(td,td)))",
    "| a | b |\n|---|---|\n| 1 | 2 |": "table(tr(th,th),tr(td,td))",
}


def _table_shape(fragment: str) -> str:
    import lxml.html

    def walk(el: object) -> list[str]:
        parts = []
        for child in el:  # type: ignore[attr-defined]
            if not isinstance(child.tag, str):
                continue
            inner = walk(child)
            if child.tag in ("thead", "tbody"):
                parts.extend(inner)
            elif child.tag in ("p", "ul", "li", "blockquote", "table", "tr", "td", "th"):
                parts.append(f"{child.tag}({','.join(inner)})" if inner else child.tag)
        return parts

    return ",".join(walk(lxml.html.fragment_fromstring(fragment, create_parent="div")))


@pytest.mark.parametrize("source", sorted(PIPES))
def test_lines_with_pipes_are_a_table_as_in_kramdown(source: str) -> None:
    html = markdown_to_html(source, BASE)
    assert _table_shape(html) == PIPES[source]
    assert "\\" not in text_of(html)


@pytest.mark.skipif(not _has_kramdown(), reason="ruby's kramdown is not installed")
def test_pipes_agree_with_kramdown() -> None:
    names = sorted(PIPES)
    done = subprocess.run(
        ["ruby", "-e", KRAMDOWN],
        input=json.dumps(names),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for name, line in zip(names, done.stdout.splitlines(), strict=True):
        assert _table_shape(json.loads(line)) == PIPES[name], name
        assert text_of(markdown_to_html(name, BASE)) == text_of(json.loads(line)), name


BOXED = """<div class="box">
**bold** and [a link](https://example.org/x)
</div>

```html
<div class="box">**fenced**</div>
```

    <div>indented</div>

<div markdown="0">**raw**</div>
"""


def test_parse_block_html_reads_markdown_in_html_blocks_but_not_in_code() -> None:
    """`_config.yml`'s `kramdown: parse_block_html: true` (kramdown's own
    option): Markdown inside an HTML block is Markdown; code stays code, and
    `markdown="0"` keeps an element's content raw."""
    on = markdown_to_html(BOXED, "https://example.org/p/", block_html=True)
    assert '<div class="box">\n<p><strong>bold</strong> and <a href="https://example.org/x">' in on
    assert '&lt;div class="box"&gt;**fenced**' in text_free(on)
    assert "&lt;div&gt;indented&lt;/div&gt;" in on
    assert "**raw**" in on
    assert "markdown=" not in on
    off = markdown_to_html(BOXED, "https://example.org/p/")
    assert "**bold**" in off and "<strong>bold</strong>" not in off  # Python-Markdown's own rule


def text_free(html: str) -> str:
    """The HTML without Pygments' span tags (a highlighted code block's text)."""
    import re

    return re.sub(r"</?span[^>]*>", "", html)
