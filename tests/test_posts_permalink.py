"""Post URLs per Jekyll's permalink rules, post identity and image URLs."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from newsletter.config import Settings, SiteSettings
from newsletter.posts import permalink
from newsletter.posts.collection import load_posts

WHEN = datetime(2024, 3, 7, 9, 5, 4, tzinfo=ZoneInfo("UTC"))


@pytest.mark.parametrize(
    ("template", "categories", "expected"),
    [
        ("/:categories/:year/:month/:day/:title:output_ext", (), "/2024/03/07/my-post.html"),
        ("/:categories/:year/:month/:day/:title:output_ext", ("Tech", "Go"), "/tech/go/2024/03/07/my-post.html"),
        ("date", (), "/2024/03/07/my-post.html"),
        ("pretty", ("a",), "/a/2024/03/07/my-post/"),
        ("ordinal", (), "/2024/067/my-post.html"),
        ("none", ("x",), "/x/my-post.html"),
        ("/blog/:year/:i_month/:i_day/:slug/", (), "/blog/2024/3/7/my-post/"),
        ("/:short_year/:short_month/:long_month/:hour:minute:second/:title", (), "/24/Mar/March/090504/my-post"),
        ("/:year/W:week/:short_day/:title.html", (), "/2024/W10/Thu/my-post.html"),
        # Jekyll does not slugify categories (jekyll/jekyll#5813); 4.1 added this:
        ("/:categories/:title/", ("Field Work",), "/field%20work/my-post/"),
        ("/:slugified_categories/:title/", ("Field Work",), "/field-work/my-post/"),
    ],
)  # fmt: skip
def test_expand(template: str, categories: tuple[str, ...], expected: str) -> None:
    path = permalink.expand(
        permalink.style(template), date=WHEN, slug="my-post", categories=categories
    )
    assert path == expected


@pytest.mark.parametrize(
    ("ref", "baseurl", "expected"),
    [
        ("/images/a.png", "", "https://example.com/images/a.png"),
        ("/images/a.png", "/blog", "https://example.com/blog/images/a.png"),
        ("/blog/images/a.png", "/blog", "https://example.com/blog/images/a.png"),
        ("assets/a.png", "", "https://example.com/2024/03/07/assets/a.png"),
        ("../assets/a.png", "", "https://example.com/2024/03/assets/a.png"),
        ("https://cdn.example.org/a.png", "/blog", "https://cdn.example.org/a.png"),
        ("//cdn.example.org/a.png", "", "https://cdn.example.org/a.png"),
    ],
)
def test_resolve(ref: str, baseurl: str, expected: str) -> None:
    site = SiteSettings(url="https://example.com/", baseurl=baseurl)
    assert permalink.resolve(ref, "https://example.com/2024/03/07/post.html", site) == expected


@pytest.mark.parametrize(
    ("value", "expected"), [("", ""), ("/", ""), ("blog", "/blog"), ("/blog/", "/blog")]
)
def test_normalized_baseurl(value: str, expected: str) -> None:
    assert permalink.normalized_baseurl(value) == expected


def _load(tmp_path: Path, files: dict[str, str], **site: object) -> dict[str, object]:
    folder = tmp_path / "posts"
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    settings = Settings(
        base_dir=tmp_path,
        site=SiteSettings(posts_dir=folder, url="https://example.com", **site),  # type: ignore[arg-type]
    )
    return {p.post_id: p for p in load_posts(settings).posts}


def test_site_permalink_per_post_permalink_and_slug(tmp_path: Path) -> None:
    posts = _load(
        tmp_path,
        {
            "2024-03-07-site.md": "---\ncategory: News\n---\nx\n",
            "2024-03-07-own.md": "---\npermalink: /custom/:title/\n---\nx\n",
            "2024-03-07-fixed.md": "---\npermalink: /about-this.html\n---\nx\n",
            "2024-03-07-slugged.md": "---\nslug: Other Name\n---\nx\n",
        },
        permalink="/:categories/:year/:title/",
        baseurl="/b",
    )
    assert posts["site"].url == "https://example.com/b/news/2024/site/"  # type: ignore[attr-defined]
    assert posts["own"].url == "https://example.com/b/custom/own/"  # type: ignore[attr-defined]
    assert posts["fixed"].url == "https://example.com/b/about-this.html"  # type: ignore[attr-defined]
    assert posts["slugged"].url == "https://example.com/b/2024/Other-Name/"  # type: ignore[attr-defined]


def test_post_id_survives_redating_and_retitling(tmp_path: Path) -> None:
    before = _load(tmp_path / "a", {"news/2024-03-07-launch.md": "---\ntitle: Launch\n---\nx\n"})
    after = _load(
        tmp_path / "b",
        {"news/2024-05-01-launch.md": "---\ntitle: Launch, renamed\ndate: 2024-06-01\n---\nx\n"},
    )
    assert list(before) == list(after) == ["news/launch"]
    explicit = _load(tmp_path / "c", {"2024-03-07-x.md": "---\nid: 42\n---\nx\n"})
    assert list(explicit) == ["42"]


def test_drafts_are_unpublished(tmp_path: Path) -> None:
    posts = _load(
        tmp_path,
        {
            "2024-03-07-flag.md": "---\ndraft: true\n---\nx\n",
            "_drafts/2024-03-07-folder.md": "---\n---\nx\n",
            "2024-03-07-not-draft.md": "---\ndraft: false\n---\nx\n",
            "2024-03-07-published-no.md": "---\npublished: no\n---\nx\n",
        },
    )
    published = {k: p.published for k, p in posts.items()}  # type: ignore[attr-defined]
    assert published == {
        "flag": False,
        "_drafts/folder": False,
        "not-draft": True,
        "published-no": False,
    }


def test_file_name_slug_is_slugified_as_jekyll_does(tmp_path: Path) -> None:
    """Jekyll slugifies the file name's slug for `:title` ("pretty", case kept),
    `:slug` and `:name` (default: letters, marks and digits only, lower-cased);
    the ids stay the file names' (checked against `jekyll build`)."""
    posts = _load(
        tmp_path,
        {
            "2024-03-07-Spaces and CAPS.md": "---\n---\nx\n",
            "2024-03-07-a--b.md": "---\n---\nx\n",
            "2024-03-07--lead.md": "---\n---\nx\n",
            "2024-03-07-Cap_Under.md": "---\n---\nx\n",
            "2024-03-07-q?mark#x.md": "---\n---\nx\n",
            "2024-03-07-fm.md": "---\nslug: Slug_With Under\n---\nx\n",
        },
        permalink="/:title/:slug/:name",
    )
    urls = {k: p.url.removeprefix("https://example.com") for k, p in posts.items()}  # type: ignore[attr-defined]
    assert urls == {
        "Spaces and CAPS": "/Spaces-and-CAPS/spaces-and-caps/2024-03-07-spaces-and-caps",
        "a--b": "/a-b/a-b/2024-03-07-a-b",
        "-lead": "/lead/lead/2024-03-07-lead",
        "Cap_Under": "/Cap_Under/cap-under/2024-03-07-cap-under",
        "q?mark#x": "/q-mark-x/q-mark-x/2024-03-07-q-mark-x",
        "fm": "/Slug_With-Under/slug-with-under/2024-03-07-fm",
    }


def test_dot_dot_in_a_url_is_a_slash_as_in_jekyll(tmp_path: Path) -> None:
    posts = _load(tmp_path, {"2024-03-07-dots..and.md": "---\n---\nx\n"}, permalink="/:title/")
    assert posts["dots..and"].url == "https://example.com/dots/and/"  # type: ignore[attr-defined]
