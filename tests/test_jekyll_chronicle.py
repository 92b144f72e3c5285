"""Liquid that reads other posts, against Debian's `jekyll` on one small blog
(tests/fixtures/jekyll/chronicle): `page.excerpt` / `post.excerpt`,
`page.previous` / `page.next`, `site.related_posts`, `{% include_relative %}`,
`site.posts` with `limit` and same-day posts, `where` / `sort` over
`site.data` (yml, json, csv), dates and tags through filters, `page.url` /
`page.id` under a category folder, `{% capture %}` / `{% assign %}` across an
include, `{% raw %}`, `{% highlight %}` with `linenos`, the order of
`site.tags`, `post.content` (rendered for older posts, raw for the post
itself) and Liquid 5's `truncatewords`.

Each test names the post showing one feature and compares what a reader sees
of it (tests/jekyll_oracle.py's `text_of`), plus the HTML where its shape
matters.  (test_jekyll_oracle.py compares every field of the same site.)
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
from jekyll_oracle import build, jekyll_available, text_of

from newsletter.config import load_settings
from newsletter.posts import Post, load_posts, markup

if not jekyll_available():
    if os.environ.get("NEWSLETTER_REQUIRE_JEKYLL") == "1":
        raise RuntimeError("NEWSLETTER_REQUIRE_JEKYLL=1 but `jekyll` is not on PATH")
    pytest.skip("Debian's jekyll is not installed", allow_module_level=True)

SITE = "chronicle"


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Post]]:
    """Jekyll's posts and ours, by path under the site (one build per module)."""
    work = tmp_path_factory.mktemp("chronicle")
    theirs = {p["path"]: p for p in build(SITE, work)}
    site = work / SITE
    old = os.getcwd()
    os.chdir(site)
    try:
        loaded = load_posts(load_settings(site / "newsletter.toml"), index=False)
    finally:
        os.chdir(old)
    ours = {p.path.resolve().relative_to(site.resolve()).as_posix(): p for p in loaded.posts}
    return theirs, ours


FEATURES = {
    "previous/next in an include and the post": "_posts/2024-03-01-first-light.md",
    "site.posts limit, same-day order": "_posts/2024-03-05-dawn-chorus.md",
    "previous/next between same-day posts": "_posts/2024-03-05-cloud-cover.md",
    "page.excerpt, post.excerpt, truncatewords": "_posts/2024-03-08-reading-list.md",
    "site.related_posts": "_posts/2024-03-10-see-also.md",
    "include_relative with a parameter": "_posts/2024-03-12-gear.md",
    "page.url, page.id, date and join filters": "en/_posts/2024-03-14-in-english.md",
    "site.data with where and sort, raw": "_posts/2024-03-16-data.md",
    "capture and assign across an include": "_posts/2024-03-18-capture.md",
    "highlight linenos, site.tags in Jekyll's order": "_posts/2024-03-20-code.md",
    "post.content of older posts, page.content": "_posts/2024-03-22-archive.md",
}


@pytest.mark.parametrize("path", FEATURES.values(), ids=FEATURES.keys())
def test_what_a_reader_sees_is_what_jekyll_builds(
    both: tuple[dict[str, Any], dict[str, Post]], path: str
) -> None:
    theirs, ours = both
    assert text_of(ours[path].body_html) == text_of(theirs[path]["content"])


def _tags(fragment: str) -> list[str]:
    return re.findall(r"<(table|td|th|div|h4|ul|li|em|a)\b", fragment)


@pytest.mark.parametrize(
    "path",
    [
        "_posts/2024-03-08-reading-list.md",  # each card's excerpt inside its <div>
        "_posts/2024-03-12-gear.md",  # the included Markdown table is a table
        "_posts/2024-03-10-see-also.md",  # related posts as a list of links
    ],
)
def test_the_html_has_jekyll_s_shape(
    both: tuple[dict[str, Any], dict[str, Post]], path: str
) -> None:
    theirs, ours = both
    assert _tags(ours[path].body_html) == _tags(theirs[path]["content"])


def test_the_neighbours_links_are_jekyll_s(both: tuple[dict[str, Any], dict[str, Post]]) -> None:
    theirs, ours = both
    path = "_posts/2024-03-01-first-light.md"
    links = re.findall(r'href="([^"]*)"', theirs[path]["content"])
    assert links == ["/2024/03/05/cloud-cover.html"]  # the same day: by path
    # Ours are absolute (an email has no site to be relative to).
    assert re.findall(r'href="([^"]*)"', ours[path].body_html) == [
        "https://blog.example.com" + links[0]
    ]


def test_numbered_code_reads_as_code_in_the_text_part(
    both: tuple[dict[str, Any], dict[str, Post]],
) -> None:
    """Jekyll's gutter of line numbers is for the eye: the plain-text part
    keeps the code as it was written, indented, without them."""
    _, ours = both
    text = markup.html_to_text(ours["_posts/2024-03-20-code.md"].body_html)
    assert '\n\n    def stars\n      "*" * 3\n    end\n\n    print("plain")\n\n' in text
