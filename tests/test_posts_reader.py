"""The post reader over a Jekyll-shaped fixture site (tests/fixtures/posts/site)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from newsletter.config import load_settings
from newsletter.errors import PostError
from newsletter.posts.collection import (
    Author,
    Post,
    PostCollection,
    load_posts,
    post_status,
    read_post,
)

FIXTURES = Path(__file__).parent / "fixtures" / "posts"


def copy_site(dest: Path) -> Path:
    """The fixture site plus its non-UTF-8 post, which is kept outside the
    tree as `.bin` so that text tools (formatters, editors) never choke on it."""
    shutil.copytree(FIXTURES / "site", dest)
    shutil.copy(
        FIXTURES / "bytes" / "2024-01-04-latin1.md.bin", dest / "_posts" / "2024-01-04-latin1.md"
    )
    return dest


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_site(tmp_path_factory.mktemp("posts") / "site")


@pytest.fixture(scope="module")
def collection(site: Path) -> PostCollection:
    return load_posts(load_settings(site / "newsletter.toml"))


@pytest.fixture(scope="module")
def by_id(collection: PostCollection) -> dict[str, Post]:
    return {p.post_id: p for p in collection.posts}


def test_bad_files_are_one_problem_each_and_the_rest_load(collection: PostCollection) -> None:
    errors = {p.path.name: p for p in collection.problems if p.severity == "error" and p.path}
    assert set(errors) == {
        "2024-01-02-tab-yaml.md",
        "2024-01-03-unclosed-quote.md",
        "2024-01-04-latin1.md",
        "2024-02-28-impossible-date.md",
    }
    assert errors["2024-01-02-tab-yaml.md"].line == 4
    assert "TAB" in errors["2024-01-02-tab-yaml.md"].message
    assert errors["2024-01-03-unclosed-quote.md"].line == 2  # where the quote opens
    assert "quoted scalar" in errors["2024-01-03-unclosed-quote.md"].message
    assert errors["2024-01-04-latin1.md"].line == 2
    assert "not UTF-8" in errors["2024-01-04-latin1.md"].message
    assert errors["2024-02-28-impossible-date.md"].line == 4
    # Not dated, so not a post to Jekyll: a warning, not an error.
    (undated,) = [p for p in collection.problems if p.path and p.path.name == "no-front-matter.md"]
    assert (undated.severity, undated.message) == (
        "warning",
        "not a post: Jekyll reads only _posts files named YYYY-MM-DD-title.md",
    )
    assert len(collection.posts) == 9


def test_posts_are_sorted_by_date(collection: PostCollection) -> None:
    dates = [p.date for p in collection.posts]
    assert dates == sorted(dates)
    assert all(d.tzinfo is not None for d in dates)


def test_seed_shaped_post(by_id: dict[str, Post]) -> None:
    post = by_id["offset-string"]
    assert post.title == "Why Bees Dance: Reading a Map Made of Movement"
    assert post.date.isoformat() == "2024-11-04T00:00:00+03:00"
    assert post.url == "https://fixtures.example.com/notes/2024/11/04/offset-string.html"
    assert post.description == "How a honeybee tells its sisters where the flowers are"
    # Site-relative front-matter image: url + baseurl, as Jekyll themes write it.
    assert post.image == "https://fixtures.example.com/notes/images/waggle-dance.png"
    assert post.image_alt == post.title
    assert post.tags == ("Biology", "Insects", "Communication")
    assert post.authors == (Author("Noor Haddad", "https://example.org/people/noor-haddad"),)
    # The byline line is taken out of the body and so is not the excerpt.
    assert "Author" not in post.body_html and "Noor" not in post.body_html
    assert post.excerpt_html.startswith("<p>A forager returns to the hive")
    assert "Decoding" not in post.excerpt_html
    assert post.excerpt_text.startswith("A forager returns")
    assert "<h2" in post.body_html and "Decoding the dance" in post.body_html
    assert dict(post.extra) == {"layout": "post"}
    assert post.warnings == ()


def test_title_and_date_from_file_name_and_plain_byline(by_id: dict[str, Post]) -> None:
    post = by_id["edge-case-no-title"]
    assert post.title == "Edge Case No Title" == post.title_html
    assert post.date == datetime(2024, 3, 5, tzinfo=post.date.tzinfo)
    assert post.authors == (Author("Lena Brandt"),)
    assert post.categories == ("Notes", "Field Work")
    assert post.tags == ("Edge", "Cases")  # a string of tags splits on spaces, as in Jekyll
    assert "/notes/notes/field%20work/2024/03/05/" in post.url
    assert "second paragraph" not in post.excerpt_html
    assert "Lena" not in post.body_html


def test_front_matter_author_key_from_data_file_wins_over_body(by_id: dict[str, Post]) -> None:
    post = by_id["far-future"]
    assert post.authors == (Author("Dana Okafor", "https://example.org/people/dana-okafor"),)
    assert "Someone Else" not in post.body_html  # a body byline never shows twice


def test_unpublished_opt_out_lists_and_extra(by_id: dict[str, Post]) -> None:
    post = by_id["unpublished"]
    assert post.published is False
    assert post.newsletter is False
    assert post.lists == ("weekly",)
    assert dict(post.extra) == {"mood": "unsure"}


def test_title_html_is_safe_and_subject_is_one_plain_line(by_id: dict[str, Post]) -> None:
    post = by_id["fish-and-chips"]  # front matter `id:` is the identity
    assert post.path.name == "2024-12-12-html-title.md"
    assert "\r" not in post.title and "\n" not in post.title
    assert post.title == "Fish & Chips: Really good code Bcc: victim@example.com"
    assert post.title_html == (
        "Fish &amp; Chips: <em>Really</em> <em>good</em> <code>code</code> Bcc: victim@example.com"
    )
    assert "script" not in post.title_html and "alert" not in post.title_html
    # image as a mapping with alt; ../ from the site's root (url + baseurl /notes/),
    # as Jekyll's relative_url would print /notes/../assets/chips.png.
    assert post.image == "https://fixtures.example.com/assets/chips.png"
    assert post.image_alt == "A plate of chips"


def test_rule_in_body_and_duplicate_key_and_empty_body(
    by_id: dict[str, Post], collection: PostCollection
) -> None:
    rule = by_id["rule-in-body"]
    assert "<hr" in rule.body_html and "Below the rule" in rule.body_html
    assert rule.excerpt_text == "Above the rule."
    dup = by_id["duplicate-key"]
    assert dup.title == "Second Title"
    assert dup.warnings == ("line 4: duplicate front matter key 'title'; the last value wins",)
    empty = by_id["empty-body"]
    assert empty.body_html == "" and empty.excerpt_html == ""
    warned = {
        (p.path.name, p.line) for p in collection.problems if p.severity == "warning" and p.path
    }
    assert ("2024-10-10-duplicate-key.md", 4) in warned
    assert ("2024-09-09-empty-body.md", 4) in warned


def test_status(by_id: dict[str, Post]) -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    since = datetime(2024, 6, 1, tzinfo=UTC)
    assert post_status(by_id["far-future"], now, since) == "future"
    assert post_status(by_id["unpublished"], now, since) == "unpublished"
    assert post_status(by_id["edge-case-no-title"], now, since) == "before-since"
    assert post_status(by_id["offset-string"], now, since) == "due"
    assert post_status(by_id["offset-string"], now, None) == "due"
    assert post_status(by_id["offset-string"], now, since, sent=True) == "sent"
    opted = Post(**{**by_id["offset-string"].__dict__, "newsletter": False})
    assert post_status(opted, now, since) == "opted-out"
    # A future post becomes due when its date arrives.
    later = datetime(2099, 1, 1, 9, 0, 1, tzinfo=UTC)
    assert post_status(by_id["far-future"], later, since) == "due"


def test_find_by_id_then_path(collection: PostCollection, site: Path) -> None:
    assert collection.find("fish-and-chips").slug == "html-title"
    assert collection.find("2024-12-12-html-title.md").post_id == "fish-and-chips"
    assert collection.find("2024-12-12-html-title").post_id == "fish-and-chips"
    assert collection.find("_posts/2024-12-12-html-title.md").post_id == "fish-and-chips"
    assert (
        collection.find(str(site / "_posts" / "2024-12-12-html-title.md")).post_id
        == "fish-and-chips"
    )
    # A slug is neither an id nor a path: it could name several posts.
    with pytest.raises(PostError, match="no post matches 'html-title'"):
        collection.find("html-title")
    with pytest.raises(PostError, match="no post matches 'nope'"):
        collection.find("nope")


def test_read_post_alone(site: Path) -> None:
    settings = load_settings(site / "newsletter.toml")
    post = read_post(site / "_posts" / "2024-11-04-offset-string.md", settings)
    assert post.post_id == "offset-string"
    with pytest.raises(PostError) as info:
        read_post(site / "_posts" / "2024-01-02-tab-yaml.md", settings)
    assert info.value.line == 4


def test_bodies_false_skips_only_the_html(site: Path) -> None:
    settings = load_settings(site / "newsletter.toml")
    full = {p.post_id: p for p in load_posts(settings).posts}
    light = load_posts(settings, bodies=False)
    assert len(light.posts) == len(full)
    for post in light.posts:
        assert (post.body_html, post.excerpt_html, post.excerpt_text) == ("", "", "")
        same = full[post.post_id]
        assert (post.title, post.url, post.date, post.authors, post.warnings) == (
            same.title,
            same.url,
            same.date,
            same.authors,
            same.warnings,
        )


def test_jekyll_config_supplies_separator_author_and_permalink(tmp_path: Path) -> None:
    (tmp_path / "_posts").mkdir()
    (tmp_path / "_config.yml").write_text(
        "url: https://jekyll.example.org\nauthor:\n  name: Site Author\n"
        "permalink: pretty\nexcerpt_separator: '<!--cut-->'\ntimezone: Asia/Tokyo\n"
    )
    (tmp_path / "newsletter.toml").write_text('[site]\njekyll_config = "_config.yml"\n')
    (tmp_path / "_posts" / "2024-05-06-hello.md").write_text(
        "---\ncategories: [Misc]\n---\nOne.\n\nTwo.\n<!--cut-->\nThree.\n"
    )
    (post,) = load_posts(load_settings(tmp_path / "newsletter.toml")).posts
    assert post.url == "https://jekyll.example.org/misc/2024/05/06/hello/"
    assert post.authors == (Author("Site Author"),)
    assert post.excerpt_text == "One.\n\nTwo."
    assert post.date.isoformat() == "2024-05-06T00:00:00+09:00"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("assets/img/big.png", "https://jekyll.example.org/blog/assets/img/big.png"),
        ("./assets/img/big.png", "https://jekyll.example.org/blog/assets/img/big.png"),
        ("/assets/img/big.png", "https://jekyll.example.org/blog/assets/img/big.png"),
        ("https://cdn.example.net/a.png", "https://cdn.example.net/a.png"),
    ],
)
def test_a_relative_front_matter_image_is_site_relative(
    tmp_path: Path, ref: str, expected: str
) -> None:
    """As Jekyll's themes and plugins read it (jekyll-seo-tag's og:image,
    jekyll-feed's thumbnail: `absolute_url`; themes: `relative_url`): from
    the site's root with its baseurl.  Resolved against the post's URL it
    was a page that does not exist (/blog/2024/09/01/assets/img/big.png)."""
    (tmp_path / "_posts").mkdir()
    (tmp_path / "_config.yml").write_text("url: https://jekyll.example.org\nbaseurl: /blog\n")
    (tmp_path / "newsletter.toml").write_text('[site]\njekyll_config = "_config.yml"\n')
    (tmp_path / "_posts" / "2024-09-01-hero.md").write_text(
        f"---\ntitle: Hero\nimage: {ref}\n---\nBody.\n"
    )
    (post,) = load_posts(load_settings(tmp_path / "newsletter.toml")).posts
    assert post.image == expected
