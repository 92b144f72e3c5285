"""Jekyll's site rules one by one: which folders hold posts, categories from
folders, `defaults:` precedence, category/categories, collection permalinks,
`site.data`, and lists that pick posts by category.  (The oracle test checks
the same against Debian's jekyll on whole sites.)"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from newsletter.config import ListSettings, load_settings
from newsletter.daemon import planning
from newsletter.errors import Problem
from newsletter.posts import jekyll, load_posts
from newsletter.posts import site as jekyllsite


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


POST = "---\ntitle: T\n---\nBody.\n"


def test_every_posts_folder_jekyll_reads_and_none_it_skips(tmp_path: Path) -> None:
    names = [
        "_posts/2024-01-01-root.md",
        "_posts/sub/2024-01-02-nested-inside.md",
        "en/news/_posts/2024-01-03-news.md",
        "en/_posts/2024-01-04-lang.markdown",
        "_posts/2024-01-05-page.html",
        # skipped: underscore, dot, excluded (yours and Jekyll's), the destination
        "_archive/_posts/2024-01-06-x.md",
        ".git/_posts/2024-01-06-x.md",
        "old/_posts/2024-01-06-x.md",
        "node_modules/a/_posts/2024-01-06-x.md",
        "vendor/bundle/_posts/2024-01-06-x.md",
        "_site/_posts/2024-01-06-x.md",
        "_drafts/2024-01-06-x.md",
        "_posts/_hidden/2024-01-06-x.md",
        "_posts/.2024-01-06-x.md",
        "_posts/2024-01-06-x.md~",
        "_posts/undated.md",
    ]
    _write(tmp_path, dict.fromkeys(names, POST))
    undated: list[Path] = []
    found = jekyllsite.post_files(tmp_path, {"exclude": ["old"]}, undated)
    assert [(f.rel, f.categories) for f in found] == [
        ("_posts/2024-01-01-root.md", ()),
        ("_posts/2024-01-05-page.html", ()),
        ("_posts/sub/2024-01-02-nested-inside.md", ()),  # no category from inside _posts
        ("en/_posts/2024-01-04-lang.markdown", ("en",)),
        ("en/news/_posts/2024-01-03-news.md", ("en", "news")),
    ]
    assert undated == [tmp_path / "_posts/undated.md"]


def test_include_brings_back_an_underscore_folder(tmp_path: Path) -> None:
    _write(tmp_path, {"_archive/_posts/2024-01-06-x.md": POST})
    found = jekyllsite.post_files(tmp_path, {"include": ["_archive"]})
    assert [f.categories for f in found] == [("_archive",)]


def test_defaults_precedence_longer_path_then_type() -> None:
    config = {
        "defaults": [
            {"scope": {"path": "en/news", "type": "posts"}, "values": {"a": "path+type"}},
            {"scope": {"path": ""}, "values": {"a": "all", "b": "all", "nested": {"x": 1}}},
            {"scope": {"path": "en"}, "values": {"a": "en", "nested": {"y": 2}}},
            {"scope": {"path": "en/news"}, "values": {"a": "path only", "c": "c"}},
            {"scope": {"type": "pages"}, "values": {"b": "pages"}},
            {"scope": {"path": "en/*/_posts"}, "values": {"glob": True}},
        ]
    }
    found = jekyllsite.defaults_for(config, "en/news/_posts/2024-01-01-x.md")
    assert found == {
        "a": "path+type",
        "b": "all",
        "c": "c",
        "nested": {"x": 1, "y": 2},
        "glob": True,
    }
    assert jekyllsite.defaults_for(config, "ja/_posts/x.md") == {
        "a": "all",
        "b": "all",
        "nested": {"x": 1},
    }


@pytest.mark.parametrize(
    ("front", "defaults", "folders", "expected"),
    [
        ({"categories": "a b"}, {}, (), ("a", "b")),
        ({"categories": ["Release Notes", "b"]}, {}, (), ("Release Notes", "b")),
        ({"category": "Release Notes"}, {}, (), ("Release Notes",)),  # one, never split
        ({"categories": ["x"], "category": "y"}, {}, ("en",), ("en", "x", "y")),
        ({"categories": ["x"]}, {"categories": ["d"]}, ("en", "news"), ("en", "news", "d", "x")),
        ({}, {"category": "archive"}, (), ("archive",)),
        ({"categories": ["en", "x"]}, {}, ("en",), ("en", "x")),
    ],
)
def test_categories_in_jekylls_order(
    front: dict[str, object],
    defaults: dict[str, object],
    folders: tuple[str, ...],
    expected: tuple[str, ...],
) -> None:
    merged = jekyllsite.deep_merge(defaults, front)
    assert jekyll.categories(front, defaults, folders, merged) == expected


def test_tag_is_one_tag_and_wins_over_tags() -> None:
    assert jekyll.tags({"tags": "a b"}) == ("a", "b")
    assert jekyll.tags({"tag": "meta post", "tags": ["x"]}) == ("meta post",)


def _site(tmp_path: Path, config_yml: str, files: dict[str, str]) -> Path:
    _write(tmp_path, {"_config.yml": config_yml, **files})
    (tmp_path / "newsletter.toml").write_text(
        '[site]\njekyll_config = "_config.yml"\n[lists.en]\ncategories = ["en"]\n'
        '[lists.ja]\ncategories = ["JA"]\n[lists.all]\n',
        encoding="utf-8",
    )
    return tmp_path / "newsletter.toml"


def test_permalinks_site_collection_and_post(tmp_path: Path) -> None:
    config = _site(
        tmp_path,
        "url: https://example.org\ntimezone: UTC\npermalink: pretty\n"
        "collections:\n  posts:\n    permalink: /:categories/:title/\n",
        {
            "en/_posts/2024-01-01-a.md": POST,
            "_posts/2024-01-02-b.md": "---\npermalink: pretty\n---\nx\n",
            "_posts/2024-01-03-c.md": "---\npermalink: /:year/:name\n---\nx\n",
        },
    )
    urls = {p.slug: p.url for p in load_posts(load_settings(config)).posts}
    assert urls == {
        "a": "https://example.org/en/a/",  # the collection's template beats the site's style
        "b": "https://example.org/pretty",  # a post's permalink is literal
        "c": "https://example.org/2024/2024-01-03-c",
    }


def test_lists_pick_posts_by_category(tmp_path: Path) -> None:
    config = _site(
        tmp_path,
        "url: https://example.org\ntimezone: UTC\n",
        {"en/news/_posts/2024-01-01-hello.md": POST, "ja/news/_posts/2024-01-01-hello.md": POST},
    )
    settings = load_settings(config)
    posts = {p.post_id: p for p in load_posts(settings).posts}
    # Same file name in two languages: two posts with their own identity.
    assert sorted(posts) == ["en/news/hello", "ja/news/hello"]
    takes = {
        name: sorted(pid for pid, p in posts.items() if planning.list_takes(p, lst))
        for name, lst in settings.lists.items()
    }
    assert takes == {"en": ["en/news/hello"], "ja": ["ja/news/hello"], "all": sorted(posts)}
    both = ListSettings(name="x", title="x", categories=("en",), tags=("nope",))
    assert not planning.list_takes(posts["en/news/hello"], both)  # both filters must pass
    assert planning.list_takes(replace(posts["en/news/hello"], tags=("Nope",)), both)


def test_site_data_every_format_and_nested(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "_data/a.yml": "x: 1\nwhen: 2024-01-01\n",
            "_data/b.yaml": "- 1\n- 2\n",
            "_data/c.json": '{"k": [1, 2]}',
            "_data/d.csv": "name,url\nA,https://a.example.com/\n",
            "_data/e.tsv": "code\tlabel\nen\tEnglish\n",
            "_data/deep/er/f.yml": "y: 2\n",
            "_data/broken.yml": "a: [1,\n",
            "_data/.hidden.yml": "z: 1\n",
            "_data/notes.txt": "ignored",
        },
    )
    problems: list[Problem] = []
    data = jekyllsite.load_data(tmp_path / "_data", problems)
    assert data == {
        "a": {"x": 1, "when": "2024-01-01"},
        "b": [1, 2],
        "c": {"k": [1, 2]},
        "d": [{"name": "A", "url": "https://a.example.com/"}],
        "e": [{"code": "en", "label": "English"}],
        "deep": {"er": {"f": {"y": 2}}},
    }
    (problem,) = problems
    assert problem.severity == "warning" and problem.path == tmp_path / "_data/broken.yml"


def test_authors_from_data_and_collection(tmp_path: Path) -> None:
    config = _site(
        tmp_path,
        "url: https://example.org\ntimezone: UTC\ncollections:\n  authors:\n    output: true\n",
        {
            "_data/authors.yml": "dana:\n  name: Dana Data\n  url: https://dana.example.com/\n",
            "_authors/robert.md": "---\nshort_name: rob\nfull_name: Robert Example\n---\n",
            "_authors/mhz.md": "---\nname: M. H. Zed\n---\n",
            "_posts/2024-01-01-a.md": "---\nauthors: [dana, rob, mhz, stranger]\n---\nx\n",
        },
    )
    (post,) = load_posts(load_settings(config)).posts
    assert [(a.name, a.url) for a in post.authors] == [
        ("Dana Data", "https://dana.example.com/"),
        ("Robert Example", None),
        ("M. H. Zed", None),
        ("stranger", None),
    ]


def test_an_author_entry_without_a_name_is_never_another_person(tmp_path: Path) -> None:
    """`author: alice` whose `_data/authors.yml` entry has no `name` was
    bylined "By Site Owner" (with a warning), and `bob` in a list of
    authors vanished; the site author's `url: /about/` was dropped.  An
    entry is shown as its `name`, else `display_name`, else its key (as
    jekyll-seo-tag does); a site-relative url is made absolute."""
    config = _site(
        tmp_path,
        "url: https://example.org\nbaseurl: /blog\ntimezone: UTC\n"
        "author:\n  name: Site Owner\n  url: /about/\n",
        {
            "_data/authors.yml": "alice: {twitter: alice}\n"
            "bob: {display_name: Bob B, web: https://bob.example}\n"
            "alice2: {name: Alice A}\n'Carol Key': {name: Carol C}\n",
            "_posts/2024-01-01-a.md": "---\nauthor: alice\n---\nx\n",
            "_posts/2024-01-02-b.md": "---\nauthors: [alice2, bob, 'Carol Key', dave]\n---\nx\n",
            "_posts/2024-01-03-c.md": "---\ntitle: C\n---\nx\n",
        },
    )
    collection = load_posts(load_settings(config))
    posts = {p.slug: p for p in collection.posts}
    assert [(a.name, a.url) for a in posts["a"].authors] == [("alice", None)]
    assert [(a.name, a.url) for a in posts["b"].authors] == [
        ("Alice A", None),
        ("Bob B", "https://bob.example"),
        ("Carol C", None),
        ("dave", None),
    ]
    assert [(a.name, a.url) for a in posts["c"].authors] == [
        ("Site Owner", "https://example.org/blog/about/")
    ]
    assert collection.problems == ()


def test_two_posts_jekyll_writes_to_one_page_are_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two posts with `permalink: /same/`: Jekyll warns "Conflict: The
    following destination is shared by multiple files" and both emails
    would link to one page; `check` said nothing."""
    from click.testing import CliRunner

    from newsletter.cli import main

    config = _site(
        tmp_path,
        "url: https://example.org\ntimezone: UTC\n",
        {
            "_posts/2024-01-01-a.md": "---\npermalink: /same/\n---\nx\n",
            "_posts/2024-01-02-b.md": "---\npermalink: /same/index.html\n---\nx\n",
            "_posts/2024-01-03-c.md": "---\npermalink: /other\n---\nx\n",
            "_posts/2024-01-04-d.md": "---\npermalink: /other.html\n---\nx\n",
            "_posts/2024-01-05-e.md": "---\npermalink: /same/\npublished: false\n---\nx\n",
            "_posts/2024-01-06-f.md": "---\ntitle: F\n---\nx\n",
        },
    )
    problems = load_posts(load_settings(config)).problems
    shared = sorted((p.path.name, p.severity) for p in problems if "same page" in p.message)
    assert shared == [
        ("2024-01-01-a.md", "warning"),
        ("2024-01-02-b.md", "warning"),
        ("2024-01-03-c.md", "warning"),
        ("2024-01-04-d.md", "warning"),
    ]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEWSLETTER_CONFIG", str(config))
    result = CliRunner().invoke(main, ["check"])
    lines = [line for line in result.stdout.splitlines() if "same page" in line]
    assert lines[0].startswith(f"{tmp_path / '_posts/2024-01-01-a.md'}: permalink: warning: ")
    assert "_posts/2024-01-02-b.md" in lines[0] and "/same/" in lines[0]
    assert len(lines) == 4, result.stdout


def test_a_quoted_published_false_is_published_as_jekyll_does(tmp_path: Path) -> None:
    """`published: "false"` is a string, true to Ruby: Jekyll publishes the
    post.  It was listed unpublished and never mailed; now it follows
    Jekyll, with a warning that the quoted string is true."""
    config = _site(
        tmp_path,
        "url: https://example.org\ntimezone: UTC\n",
        {
            "_posts/2024-01-01-a.md": '---\npublished: "false"\n---\nx\n',
            "_posts/2024-01-02-b.md": "---\npublished: false\n---\nx\n",
            "_posts/2024-01-03-c.md": "---\npublished: 'no'\n---\nx\n",
            "_posts/2024-01-04-d.md": "---\npublished: no\n---\nx\n",
        },
    )
    collection = load_posts(load_settings(config))
    published = {p.slug: p.published for p in collection.posts}
    assert published == {"a": True, "b": False, "c": True, "d": False}
    warned = {(p.path.name, p.line, p.severity) for p in collection.problems}
    assert warned == {("2024-01-01-a.md", 2, "warning"), ("2024-01-03-c.md", 2, "warning")}
    (problem, _) = sorted(collection.problems, key=lambda p: str(p.path))
    assert "quoted" in problem.message and "published: false" in problem.message


def test_no_front_matter_and_html_posts(tmp_path: Path) -> None:
    config = _site(
        tmp_path,
        "url: https://example.org\ntimezone: UTC\n",
        {
            "_posts/2024-01-01-bare-words.md": "Just *text*.\n",
            "_posts/2024-01-02-page.html": "---\ntitle: H\n---\n<p>An <b>HTML</b> post -- as is.</p>\n",
        },
    )
    posts = {p.slug: p for p in load_posts(load_settings(config)).posts}
    assert posts["bare-words"].title == "Bare Words"
    assert posts["bare-words"].body_html == "<p>Just <em>text</em>.</p>"
    assert posts["page"].body_html == "<p>An <b>HTML</b> post -- as is.</p>"
    assert posts["page"].date == datetime(2024, 1, 2, tzinfo=UTC)


def test_excerpt_jekylls_then_the_documented_fallback(tmp_path: Path) -> None:
    config = _site(
        tmp_path,
        "url: https://example.org\ntimezone: UTC\n",
        {
            # Jekyll's excerpt is the part before the first blank line: here
            # only the {% assign %}, which shows nothing.
            "_posts/2024-01-01-described.md": (
                "---\ndescription: Said in the front matter.\n---\n"
                "{% assign x = 1 %}\n\nFirst real paragraph.\n"
            ),
            "_posts/2024-01-02-undescribed.md": (
                "---\n---\n{::comment}\nnothing\n{:/comment}\n\nFirst real paragraph.\n\nMore.\n"
            ),
            "_posts/2024-01-03-own-separator.md": (
                "---\nexcerpt_separator: <!--cut-->\n---\nOne.\n\nTwo.<!--cut-->Three.\n"
            ),
            "_posts/2024-01-04-front-matter.md": "---\nexcerpt: Given *here*.\n---\nBody.\n",
            # Jekyll's excerpt is a table of contents without a heading: empty.
            "_posts/2024-01-05-toc.md": (
                "---\n---\n* TOC\n{:toc}\n\n## Part one\n\nOpening words.\n\nMore.\n"
            ),
            "_posts/2024-01-06-numbered-toc.md": "---\n---\n1. toc\n{: toc}\n\nWords.\n",
        },
    )
    posts = {p.slug: p.excerpt_text for p in load_posts(load_settings(config)).posts}
    assert posts == {
        "described": "Said in the front matter.",
        "undescribed": "First real paragraph.",
        "own-separator": "One.\n\nTwo.",
        "front-matter": "Given here.",
        "toc": "Opening words.",
        "numbered-toc": "Words.",
    }


def test_collections_dir_holds_the_posts(tmp_path: Path) -> None:
    names = ["my_cols/_posts/2024-01-01-a.md", "my_cols/en/_posts/2024-01-01-b.md",
             "_posts/2024-01-01-c.md", "fr/_posts/2024-01-01-d.md"]  # fmt: skip
    _write(tmp_path, dict.fromkeys(names, POST))
    found = jekyllsite.post_files(tmp_path, {"collections_dir": "my_cols"})
    assert [(f.rel, f.categories) for f in found] == [
        ("_posts/2024-01-01-a.md", ()),
        ("en/_posts/2024-01-01-b.md", ("en",)),
    ]


def test_output_ext_is_html_only_for_what_jekyll_converts(tmp_path: Path) -> None:
    """Checked with `jekyll build`: Markdown (any case) and HTML posts end in
    `.html`; a `.txt` or `.htm` post keeps its own extension."""
    config = _site(
        tmp_path,
        "url: https://example.org\ntimezone: UTC\npermalink: /:title:output_ext\n",
        {
            f"_posts/2024-03-07-{name}": "---\n---\nx\n"
            for name in ("upper.MD", "long.markdown", "page.html", "notes.txt", "old.htm")
        },
    )
    urls = {p.slug: p.url for p in load_posts(load_settings(config)).posts}
    assert urls == {
        "upper": "https://example.org/upper.html",
        "long": "https://example.org/long.html",
        "page": "https://example.org/page.html",
        "notes": "https://example.org/notes.txt",
        "old": "https://example.org/old.htm",
    }


def test_a_draft_renders_and_goes_to_test_addresses_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Jekyll site's `_drafts/` are no posts (Jekyll builds them only with
    --drafts, dated by their file's time), but a writer looks at one before
    publishing it: `render` and `send --test` found no post to match."""
    import os

    from click.testing import CliRunner

    from newsletter.cli import main

    config = _site(
        tmp_path,
        "url: https://example.org\ntimezone: UTC\n",
        {
            "_posts/2024-01-01-live.md": "---\ntitle: Live\n---\nOn the blog.\n",
            "_drafts/next-idea.md": "---\ntitle: Next Idea\n---\nNot yet *out*.\n",
        },
    )
    stamp = datetime(2026, 3, 4, 5, 6, tzinfo=UTC).timestamp()
    os.utime(tmp_path / "_drafts" / "next-idea.md", (stamp, stamp))
    monkeypatch.chdir(tmp_path)
    assert [p.slug for p in load_posts(load_settings(config)).posts] == ["live"]

    def run(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(main, ["--config", str(config), *args])
        return result.exit_code, result.stdout, result.stderr

    for ref in ("next-idea", "_drafts/next-idea.md"):
        code, out, _ = run("render", ref, "--format", "text")
        assert code == 0 and "Next Idea" in out and "Not yet out." in out
        assert "4 March 2026" in out  # the file's time, as `jekyll build --drafts` dates it
    code, _, err = run("send", "next-idea", "--list", "all")
    assert code == 1 and "is not published" in err and "_drafts folder" in err
    code, out, _ = run(
        "send", "next-idea", "--list", "all", "--test", "me@example.com", "--dry-run"
    )
    assert code == 0 and "would send a test message of 'next-idea'" in out
    # Only the site's own drafts: no path outside `_drafts/` is read as one.
    (tmp_path / "elsewhere.md").write_text("---\ntitle: X\n---\nx\n", encoding="utf-8")
    assert run("render", "elsewhere.md")[0] == 1
    assert run("render", "_drafts/../elsewhere.md")[0] == 1
