"""`{% link %}` to a page or a static file, as Jekyll 4.3 resolves it: the
page's URL (its `permalink:`, a `defaults:` one, or its path with the site's
permalink style for pages) or the static file's path, under `baseurl`.

Every expected href was checked with Debian's `jekyll build` on this site
(the email's links are absolute: `url` in front of Jekyll's href).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from newsletter.config import load_settings
from newsletter.posts import index as post_index
from newsletter.posts import load_posts

OLD = 1_600_000_000  # files this old are trusted by size and mtime alone

CONFIG = """\
title: Links
url: https://example.com
baseurl: /blog
include: [_pages]
exclude: [private]
defaults:
  - scope: {path: "docs/special", type: pages}
    values: {permalink: /special/}
"""

PAGES = {
    "about.md": "---\ntitle: About\n---\nAbout me.\n",
    "_pages/contact.md": "---\ntitle: Contact\npermalink: /contact/\n---\nWrite.\n",
    "docs/guide.md": "---\ntitle: Guide\n---\nGuide.\n",
    "docs/index.md": "---\ntitle: Docs\n---\nDocs.\n",
    "docs/special.md": "---\ntitle: Special\n---\nS.\n",
    "docs/based.markdown": "---\npermalink: /:path/:basename-v2:output_ext\n---\nB.\n",
    "feed.xml": "---\n---\n<feed/>\n",
    "my stuff/Page One.html": "---\n---\n<p>x</p>\n",
    "assets/report.pdf": "pdf",
    "assets/notes.md": "no front matter: a static file\n",
    # Not read by Jekyll: an underscore folder not included, an excluded one.
    "_hidden/secret.md": "---\n---\nx\n",
    "private/plan.md": "---\n---\nx\n",
}

LINKS = [
    "about.md",
    "_pages/contact.md",
    "docs/guide.md",
    "docs/index.md",
    "docs/special.md",
    "docs/based.markdown",
    "feed.xml",
    "my stuff/Page One.html",
    "assets/report.pdf",
    "/assets/report.pdf",
    "assets/notes.md",
]

# `jekyll build` of this site, one row per site `permalink:`.
JEKYLL_HREFS = {
    "date": [
        "/blog/about.html",
        "/blog/contact/",
        "/blog/docs/guide.html",
        "/blog/docs/",
        "/blog/special/",
        "/blog/docs/based-v2.html",
        "/blog/feed.xml",
        "/blog/my%20stuff/Page%20One.html",
        "/blog/assets/report.pdf",
        "/blog/assets/report.pdf",
        "/blog/assets/notes.md",
    ],
    "pretty": [
        "/blog/about/",
        "/blog/contact/",
        "/blog/docs/guide/",
        "/blog/docs/",
        "/blog/special/",
        "/blog/docs/based-v2.html",
        "/blog/feed.xml",
        "/blog/my%20stuff/Page%20One/",
    ],
    "/:year/:title/": ["/blog/about/", "/blog/contact/", "/blog/docs/guide/"],
    "/:title": ["/blog/about", "/blog/contact/", "/blog/docs/guide"],
}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    # As a blog's files are: old enough to be trusted by size and mtime.
    stamp = OLD + len(text) + sum(map(ord, str(path))) % 1000
    os.utime(path, (stamp, stamp))
    return path


def _site(root: Path, permalink: str = "date", links: list[str] = LINKS) -> Path:
    _write(root / "_config.yml", f"{CONFIG}permalink: {permalink}\n")
    _write(root / "newsletter.toml", '[site]\njekyll_config = "_config.yml"\n')
    for name, text in PAGES.items():
        _write(root / name, text)
    body = "".join(f"- [{i}]({{% link {target} %}})\n" for i, target in enumerate(links))
    _write(root / "_posts" / "2024-01-01-links.md", f"---\ntitle: Links\n---\n{body}")
    return root / "newsletter.toml"


def _hrefs(html: str) -> list[str]:
    import re

    return re.findall(r'<a href="([^"]*)"', html)


@pytest.mark.parametrize("permalink", sorted(JEKYLL_HREFS))
def test_a_link_to_a_page_or_static_file_is_its_url(tmp_path: Path, permalink: str) -> None:
    config = _site(tmp_path, permalink)
    (post,) = load_posts(load_settings(config), index=False).posts
    expected = ["https://example.com" + href for href in JEKYLL_HREFS[permalink]]
    assert _hrefs(post.body_html)[: len(expected)] == expected
    assert not [w for w in post.warnings if "link" in w]


def test_a_link_to_what_jekyll_does_not_read_stays_a_warning(tmp_path: Path) -> None:
    """Jekyll's build fails on these; we drop the link and say so."""
    missing = ["_hidden/secret.md", "private/plan.md", "nowhere.md", "/about.md", "docs"]
    config = _site(tmp_path, links=["about.md", *missing])
    (post,) = load_posts(load_settings(config), index=False).posts
    assert _hrefs(post.body_html) == ["https://example.com/blog/about.html"]
    assert post.body_html.count("<a>") == len(missing)
    assert sum("link dropped" in w for w in post.warnings) == len(missing)


@pytest.mark.parametrize("bodies", [True, "lazy"])
def test_a_linked_page_changing_is_seen_by_a_cached_post(
    tmp_path: Path, bodies: bool | str
) -> None:
    """The post's file did not change, the page it links to did: the index,
    the whole load kept on disk and the one kept in the process all notice."""
    config = _site(tmp_path, links=["about.md", "later.md"])

    def hrefs(new_process: bool) -> tuple[list[str], int]:
        if new_process:
            post_index.forget()
        loaded = load_posts(load_settings(config), bodies=bodies)  # type: ignore[arg-type]
        post = loaded.find("links") if bodies == "lazy" else loaded.posts[0]
        assert post is not None
        return _hrefs(post.body_html), len(post.warnings)

    assert hrefs(True) == (["https://example.com/blog/about.html"], 1)
    _write(tmp_path / "about.md", "---\ntitle: About\npermalink: /me/\n---\nAbout me.\n")
    assert hrefs(False)[0] == ["https://example.com/blog/me/"]
    _write(tmp_path / "about.md", "---\ntitle: About\npermalink: /myself/\n---\nAbout me.\n")
    assert hrefs(True)[0] == ["https://example.com/blog/myself/"]
    _write(tmp_path / "later.md", "---\ntitle: Later\n---\nNew page.\n")
    assert hrefs(True) == (
        ["https://example.com/blog/myself/", "https://example.com/blog/later.html"],
        0,
    )
    (tmp_path / "about.md").unlink()
    assert hrefs(False) == (["https://example.com/blog/later.html"], 1)
