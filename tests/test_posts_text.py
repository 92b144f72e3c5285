"""Titles, bylines and excerpts (newsletter.posts.text) and how posts use them."""

from __future__ import annotations

from pathlib import Path

import pytest

from newsletter.config import Settings, SiteSettings
from newsletter.posts.collection import Author, load_posts
from newsletter.posts.text import excerpt_source, take_byline, title_html, title_text


@pytest.mark.parametrize(
    ("raw", "html", "text"),
    [
        ("Plain title", "Plain title", "Plain title"),
        ("Cats & Dogs <3", "Cats &amp; Dogs &lt;3", "Cats & Dogs <3"),
        ("Fish &amp; Chips", "Fish &amp; Chips", "Fish & Chips"),
        ("A **bold** _claim_", "A <strong>bold</strong> <em>claim</em>", "A bold claim"),
        ("Use `a_b*c`", "Use <code>a_b*c</code>", "Use a_b*c"),
        # A code span is literal: `<T>` in it is text, not a tag to drop.
        (
            "Understanding `Option<T>` and `<script>` in *Rust*",
            "Understanding <code>Option&lt;T&gt;</code> and <code>&lt;script&gt;</code> in <em>Rust</em>",
            "Understanding Option<T> and <script> in Rust",
        ),
        ("`a & b` &amp; c", "<code>a &amp; b</code> &amp; c", "a & b & c"),
        ('<a href="javascript:x()">Link</a> <b onclick="x">B</b>', "Link <b>B</b>", "Link B"),
        ("<style>p{}</style>Styled", "Styled", "Styled"),
        ("[Linked](https://example.com) words", "Linked words", "Linked words"),
        ("snake_case_name stays", "snake_case_name stays", "snake_case_name stays"),
        (
            "One\r\nBcc: x@example.com\u2028end",
            "One Bcc: x@example.com end",
            "One Bcc: x@example.com end",
        ),
        # A generic type outside a code span is no HTML element: it is text
        # (Jekyll's `{{ page.title | escape }}` shows it), not a tag to drop.
        (
            "Why Vec<T> beats List<String>, and Map<K, V></K>",
            "Why Vec&lt;T&gt; beats List&lt;String&gt;, and Map&lt;K, V&gt;&lt;/K&gt;",
            "Why Vec<T> beats List<String>, and Map<K, V></K>",
        ),
        ("a <span>real</span> <br>tag", "a real tag", "a real tag"),
        # Only well-formed markup is HTML: an element opened and closed, or a
        # line break. An element named alone is the title's topic, and text
        # (Jekyll's themes print `{{ page.title | escape }}`): it lost words.
        ("The <script> tag explained", "The &lt;script&gt; tag explained",
         "The <script> tag explained"),
        ("Comparing <select> and <input> elements",
         "Comparing &lt;select&gt; and &lt;input&gt; elements",
         "Comparing <select> and <input> elements"),
        ("Using <p> vs <div> for layout", "Using &lt;p&gt; vs &lt;div&gt; for layout",
         "Using <p> vs <div> for layout"),
        ("Less-than: a<b and 3 <5 and <3 love and x<y>z",
         "Less-than: a&lt;b and 3 &lt;5 and &lt;3 love and x&lt;y&gt;z",
         "Less-than: a<b and 3 <5 and <3 love and x<y>z"),
        ("Using <template> & Vec<T> in *Rust*",
         "Using &lt;template&gt; &amp; Vec&lt;T&gt; in <em>Rust</em>",
         "Using <template> & Vec<T> in Rust"),
        ("A lone </b> stays", "A lone &lt;/b&gt; stays", "A lone </b> stays"),
        ("<em>never closed", "&lt;em&gt;never closed", "<em>never closed"),
        # A real script element (opened and closed) is dropped with its content.
        ("Bad <script>alert(1)</script>!", "Bad !", "Bad !"),
        ("<b>bold <i>both</b> italic</i>", "<b>bold <i>both</i></b> italic", "bold both italic"),
        ('<img src="x" onerror="y()">Pic', "Pic", "Pic"),
        # Underscores inside a word, and a word wrapped in two of them (a
        # Python dunder), are no emphasis: the title shows them, as Jekyll's.
        ("Understanding __init__ and __name__", "Understanding __init__ and __name__",
         "Understanding __init__ and __name__"),
        ("Call __init__.py or __slots__, foo__bar__baz and my__dunder__",
         "Call __init__.py or __slots__, foo__bar__baz and my__dunder__",
         "Call __init__.py or __slots__, foo__bar__baz and my__dunder__"),
        ("_private_ names like _x", "<em>private</em> names like _x", "private names like _x"),
        ("A __strong claim__ and __two__ words", "A <strong>strong claim</strong> and __two__ words",
         "A strong claim and __two__ words"),
    ],
)  # fmt: skip
def test_title_html_and_text(raw: str, html: str, text: str) -> None:
    assert title_html(raw) == html
    assert title_text(title_html(raw)) == text


@pytest.mark.parametrize(
    ("line", "names"),
    [
        ("### Author: [Noor Haddad](https://example.org/n)", (("Noor Haddad", "https://example.org/n"),)),
        ("**Author:** [A B](https://example.org/a) and [C D](https://example.org/c)",
         (("A B", "https://example.org/a"), ("C D", "https://example.org/c"))),
        ("Author: Lena Brandt", (("Lena Brandt", None),)),
        ("Authors: Lena Brandt, Mert Aydın & Ana de la Cruz",
         (("Lena Brandt", None), ("Mert Aydın", None), ("Ana de la Cruz", None))),
        ("By Dana Okafor", (("Dana Okafor", None),)),
        ("*By Ludwig van Beethoven*", (("Ludwig van Beethoven", None),)),
        ("By [Dana](https://example.org/d)", (("Dana", "https://example.org/d"),)),
        ("Written by: Sam O'Neil", (("Sam O'Neil", None),)),
        ("By Martin Luther King Jr.", (("Martin Luther King Jr", None),)),
        ("By J. A. Smith", (("J. A. Smith", None),)),
        ("By Ana, Bo and Cy", (("Ana", None), ("Bo", None), ("Cy", None))),
        ("### By: Dana Okafor", (("Dana Okafor", None),)),
    ],
)  # fmt: skip
def test_bylines_are_recognised_and_removed(
    line: str, names: tuple[tuple[str, str | None], ...]
) -> None:
    byline = take_byline(f"\n{line}\n\nFirst paragraph.\n")
    assert byline is not None
    assert byline.names == names
    assert byline.body.strip() == "First paragraph."


@pytest.mark.parametrize(
    "body",
    [
        "By the way, this is prose.\n",
        "By 2030 we will know more.\n",
        "Author: this line is a sentence that goes on and on, far longer than a name could ever be.\n",
        "Some text first.\n\nBy Dana Okafor\n",  # only the leading line counts
        "## Authors and their habits\n",
        "By [a link](https://example.org) in a sentence.\n",
        # A heading is never a `By` byline, nor is a sentence (it ends in
        # punctuation, or a comma starts a clause that names nobody).
        "## By Popular Demand\n\nWe added it.\n",
        "### **By Design**\n",
        "By Tuesday, We Knew.\n",
        "By Tuesday, We Knew\n",
        "By Then, It Was Over\n",
        "By The Numbers\n",
        "By Morning!\n",
        "By Dana Okafor, Our Editor\n",
    ],
)
def test_prose_is_not_a_byline(body: str) -> None:
    assert take_byline(body) is None


@pytest.mark.parametrize(
    ("body", "separator", "expected"),
    [
        ("One.\n\nTwo.\n", "\n\n", "One."),
        ("One.\nStill one.\n\nTwo.\n", "\n\n", "One.\nStill one."),
        ("One.\n\nTwo.\n<!--more-->\nThree.\n", "\n\n", "One.\n\nTwo."),
        ("One.\n\nTwo.\n<!-- more -->\nThree.\n", "<!--more-->", "One.\n\nTwo."),
        ("One.\n\nTwo.\n<!--more-->\nThree.\n", "<!-- more -->", "One.\n\nTwo."),
        ("One.\n\nTwo.\n~~cut~~\nThree.\n", "~~cut~~", "One.\n\nTwo."),
        ("One.\n\nTwo.\n", "~~cut~~", "One."),  # separator absent → first paragraph
        ("## Heading\n\nFirst para.\n\nSecond.\n", "\n\n", "First para."),
        ("```\ncode\n\nmore code\n```\n\nAfter.\n", "\n\n", "```\ncode\n\nmore code\n```"),
        ("See [docs][d].\n\nMore.\n\n[d]: https://example.com/docs\n", "\n\n",
         "See [docs][d].\n\n[d]: https://example.com/docs"),
        ("", "\n\n", ""),
    ],
)  # fmt: skip
def test_excerpt_source(body: str, separator: str, expected: str) -> None:
    assert excerpt_source(body, separator) == expected


def _settings(tmp_path: Path, files: dict[str, str], **site: object) -> Settings:
    folder = tmp_path / "posts"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return Settings(base_dir=tmp_path, site=SiteSettings(posts_dir=folder, **site))  # type: ignore[arg-type]


def test_excerpt_front_matter_then_post_separator_then_site_separator(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        {
            "2024-01-01-fm.md": '---\nexcerpt: "Hand-written *teaser*"\n---\nBody one.\n\nBody two.\n',
            "2024-01-02-post-sep.md": "---\nexcerpt_separator: '%%'\n---\nA.\n\nB.\n%%\nC.\n",
            "2024-01-03-site-sep.md": "---\n---\nA.\n\nB.\n@@\nC.\n",
        },
        excerpt_separator="@@",
    )
    posts = {p.slug: p for p in load_posts(settings).posts}
    assert posts["fm"].excerpt_html == "<p>Hand-written <em>teaser</em></p>"
    assert posts["post-sep"].excerpt_text == "A.\n\nB."
    assert posts["site-sep"].excerpt_text == "A.\n\nB."
    assert "C." in posts["site-sep"].body_html


def test_byline_precedence(tmp_path: Path) -> None:
    (tmp_path / "_data").mkdir()
    (tmp_path / "_data" / "authors.yml").write_text(
        "ana:\n  name: Ana Silva\n  web: https://example.org/ana\n", encoding="utf-8"
    )
    settings = _settings(
        tmp_path,
        {
            "2024-01-01-list.md": "---\nauthor: [ana, Bo Lin]\n---\nText.\n",
            "2024-01-02-mapping.md": "---\nauthor: {name: Cy Dee, url: 'https://example.org/cy'}\n---\nText.\n",
            "2024-01-03-authors.md": "---\nauthors: [ana]\nauthor: ignored\n---\nText.\n",
            "2024-01-04-site.md": "---\n---\nNo byline here.\n",
            "2024-01-05-bad.md": "---\nauthor: [{nick: x}]\n---\nText.\n",
        },
        source_dir=tmp_path,
        author="Site Owner",
    )
    collection = load_posts(settings)
    posts = {p.slug: p for p in collection.posts}
    assert posts["list"].authors == (
        Author("Ana Silva", "https://example.org/ana"),
        Author("Bo Lin"),
    )
    assert posts["mapping"].authors == (Author("Cy Dee", "https://example.org/cy"),)
    assert posts["authors"].authors == (Author("Ana Silva", "https://example.org/ana"),)
    assert posts["site"].authors == (Author("Site Owner"),)
    assert posts["bad"].authors == (Author("Site Owner"),)
    assert posts["bad"].warnings == ("line 2: author: cannot read an author from [{'nick': 'x'}]",)


def test_an_opening_heading_stays_in_the_post(tmp_path: Path) -> None:
    """`## By Popular Demand` was taken for a byline: the email said "By
    Popular Demand · …" and the heading was gone from the post."""
    settings = _settings(
        tmp_path,
        {
            "2024-01-01-x.md": "---\n---\n## By Popular Demand\n\nWe added it.\n",
            "2024-01-02-y.md": "---\n---\nBy Tuesday, We Knew.\n\nMore.\n",
        },
    )
    x, y = load_posts(settings).posts
    assert x.authors == () and "By Popular Demand</h2>" in x.body_html
    assert y.authors == () and "By Tuesday, We Knew." in y.body_html


def test_no_byline_at_all(tmp_path: Path) -> None:
    settings = _settings(tmp_path, {"2024-01-01-x.md": "---\n---\nJust text.\n"})
    (post,) = load_posts(settings).posts
    assert post.authors == ()
