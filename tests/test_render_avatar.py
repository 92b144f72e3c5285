"""The author's avatar in the byline: read from `_data/authors.yml` and the
`_authors` collection of a real Jekyll site folder, resolved to an absolute
URL (site-relative, with the baseurl), shown as a small image in the HTML
part of posts and digests, absent from the text part and when there is none."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from newsletter.config import Settings, load_settings
from newsletter.email.render import render_digest, render_email, template_environment
from newsletter.posts import load_posts
from newsletter.posts.collection import Post

DANA = "https://example.org/blog/images/dana.png"  # `/images/dana.png` + baseurl
ROB = "https://cdn.example.net/rob.jpg"  # absolute: as written
MHZ = "https://example.org/blog/people/mhz.png"  # bare `people/mhz.png`: site-relative


@pytest.fixture(autouse=True)
def _fresh_environments() -> Iterator[None]:
    template_environment.cache_clear()
    yield
    template_environment.cache_clear()


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@pytest.fixture
def site(tmp_path: Path) -> tuple[Settings, dict[str, Post]]:
    _write(
        tmp_path,
        {
            "_config.yml": "url: https://example.org\nbaseurl: /blog\ntimezone: UTC\n"
            "collections:\n  authors:\n    output: true\n",
            "_data/authors.yml": "dana:\n  name: Dana Data\n  avatar: /images/dana.png\n"
            "plain:\n  name: Pat Plain\n",
            "_authors/robert.md": f"---\nshort_name: rob\nfull_name: Robert Example\n"
            f"avatar: {ROB}\n---\n",
            "_authors/mhz.md": "---\nname: M. H. Zed\navatar: people/mhz.png\n---\n",
            "_posts/2024-01-01-with.md": "---\ntitle: With\nauthors: [dana, rob, mhz]\n---\nx\n",
            "_posts/2024-01-02-without.md": "---\ntitle: Without\nauthors: [plain, stranger]\n"
            "---\ny\n",
            "newsletter.toml": '[site]\njekyll_config = "_config.yml"\n'
            '[web]\npublic_url = "https://news.example.org"\n'
            '[lists.all]\n[lists.weekly]\nmode = "digest"\ncron = "0 8 * * 1"\n',
        },
    )
    settings = load_settings(tmp_path / "newsletter.toml")
    posts = {p.slug: p for p in load_posts(settings).posts}
    return settings, posts


def avatars(html: str) -> list[tuple[str, str, str, str]]:
    """(src, alt, width, height) of every avatar image."""
    found = []
    for tag in re.findall(r"<img\b[^>]*>", html):
        if 'class="avatar"' not in tag:
            continue
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', tag))
        found.append((attrs["src"], attrs["alt"], attrs["width"], attrs["height"]))
    return found


def test_authors_carry_their_avatar_as_an_absolute_url(
    site: tuple[Settings, dict[str, Post]],
) -> None:
    _, posts = site
    assert [(a.name, a.avatar) for a in posts["with"].authors] == [
        ("Dana Data", DANA),
        ("Robert Example", ROB),
        ("M. H. Zed", MHZ),
    ]
    assert [a.avatar for a in posts["without"].authors] == [None, None]


def test_the_byline_shows_each_avatar_in_html_only(
    site: tuple[Settings, dict[str, Post]],
) -> None:
    settings, posts = site
    rendered = render_email(posts["with"], settings, settings.lists["all"])
    # alt="": the name follows each picture (test_render_reading)
    assert avatars(rendered.html) == [
        (DANA, "", "24", "24"),
        (ROB, "", "24", "24"),
        (MHZ, "", "24", "24"),
    ]
    # Inlined for clients without <style>; round only inside @media screen.
    tag = next(t for t in re.findall(r"<img\b[^>]*>", rendered.html) if DANA in t)
    assert "vertical-align:middle" in tag.replace(" ", "")
    assert "border-radius" not in tag
    for url in (DANA, ROB, MHZ):
        assert url not in rendered.text
    assert "By Dana Data, Robert Example and M. H. Zed" in rendered.text


def test_a_digest_shows_the_avatars_too(site: tuple[Settings, dict[str, Post]]) -> None:
    settings, posts = site
    rendered = render_digest(list(posts.values()), settings, settings.lists["weekly"])
    assert [a[0] for a in avatars(rendered.html)] == [DANA, ROB, MHZ]


def test_no_avatar_no_image(site: tuple[Settings, dict[str, Post]]) -> None:
    settings, posts = site
    rendered = render_email(posts["without"], settings, settings.lists["all"])
    assert avatars(rendered.html) == []
    assert 'class="avatar"' not in rendered.html
    assert "Pat Plain" in rendered.html


def test_author_links_and_images_are_absolute_and_never_scripts(tmp_path: Path) -> None:
    """The body's links were resolved and screened; the byline's were not: a
    front matter `url: /about` reached readers as a dead relative link, and
    `javascript:` went into the email and the public archive page as written."""
    _write(
        tmp_path,
        {
            "_config.yml": "url: https://example.org\nbaseurl: /blog\ntimezone: UTC\n",
            "_data/authors.yml": "dana:\n  name: Dana Data\n  url: /about/dana/\n",
            "_posts/2024-01-01-front.md": "---\ntitle: Front\nauthors:\n"
            "  - dana\n  - name: Eve\n    url: 'javascript:alert(1)'\n"
            "    avatar: 'VBScript:msgbox(2)'\n"
            "image: 'javascript:alert(3)'\n---\nx\n",
            "_posts/2024-01-02-body.md": "---\ntitle: Body\n---\n"
            "### Author: [Sam](people/sam.html)\n\nText.\n",
            "newsletter.toml": '[site]\njekyll_config = "_config.yml"\n'
            '[web]\npublic_url = "https://news.example.org"\n[lists.all]\n',
        },
    )
    settings = load_settings(tmp_path / "newsletter.toml")
    posts = {p.slug: p for p in load_posts(settings).posts}
    front = posts["front"]
    assert [(a.name, a.url, a.avatar) for a in front.authors] == [
        ("Dana Data", "https://example.org/blog/about/dana/", None),
        ("Eve", None, None),
    ]
    assert front.image is None
    html = render_email(front, settings, settings.lists["all"], cache=False).html
    assert "script:" not in html.lower()
    assert 'href="https://example.org/blog/about/dana/"' in html
    (sam,) = posts["body"].authors
    assert sam.url == "https://example.org/blog/2024/01/02/people/sam.html"
