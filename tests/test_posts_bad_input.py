"""Bad input: each broken file is one Problem naming the file (and line); the rest go on."""

from __future__ import annotations

from pathlib import Path

import pytest

from newsletter.config import Settings, SiteSettings
from newsletter.errors import PostError, RenderError
from newsletter.posts import markup
from newsletter.posts.collection import load_posts


def _settings(tmp_path: Path, files: dict[str, str | bytes]) -> Settings:
    folder = tmp_path / "posts"
    folder.mkdir()
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return Settings(base_dir=tmp_path, site=SiteSettings(posts_dir=folder))


GOOD = "---\ntitle: Good\n---\nFine.\n"


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        ("---\ntitle: ok\nlists:\n\t- a\n---\nx\n", 4, "TAB character"),
        ("---\ntitle: 'open\n---\nx\n", 2, "quoted scalar"),
        ("---\ntitle: [a, b\n---\nx\n", 2, "invalid YAML"),
        ("---\ntitle: ok\n", 1, "front matter is not closed"),
        ("---\n- just\n- a list\n---\nx\n", 2, "must be a mapping"),
        ("No front matter here.\n", 1, "no front matter"),
        ("", 1, "no front matter"),
        (b"---\ntitle: ok\n---\n\nna\xefve\n", 5, "not UTF-8"),
        ("---\ndate: 2024-13-01\n---\nx\n", 2, "impossible date"),
        ("---\ndate: soon\n---\nx\n", 2, "cannot read 'soon' as a date"),
        # An empty `date:` is no date Jekyll can read ("Invalid date ''"): it
        # was taken silently from the file name.
        ("---\ndate:\n---\nx\n", 2, "cannot read '' as a date"),
        ('---\ndate: ""\n---\nx\n', 2, "cannot read '' as a date"),
        ("---\ndate: ~\n---\nx\n", 2, "cannot read '' as a date"),
        ("---\ndate: ' '\n---\nx\n", 2, "cannot read ' ' as a date"),
    ],
)
def test_one_problem_per_broken_file(
    tmp_path: Path, content: str | bytes, line: int, reason: str
) -> None:
    settings = _settings(tmp_path, {"2024-01-01-broken.md": content, "2024-01-02-good.md": GOOD})
    collection = load_posts(settings)
    assert [p.title for p in collection.posts] == ["Good"]
    (problem,) = collection.problems
    assert problem.severity == "error"
    assert problem.path == settings.site.posts_dir / "2024-01-01-broken.md"
    assert problem.line == line
    assert reason in problem.message
    assert "\n" not in str(problem)


def test_handled_quirks(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        {
            "2024-01-01-bom-crlf.md": "\ufeff---\r\ntitle: Windows\r\n---\r\n\r\nLine one.\r\n\r\nTwo.\r\n",
            "2024-01-02-dots.md": "---\ntitle: Dots\n...\nClosed with three dots.\n",
            "2024-01-03-empty-front.md": "---\n---\nOnly a body.\n",
            "2024-01-04-markdown.markdown": "---\ntitle: Long suffix\n---\nx\n",
            "2024-01-05-rule.md": "---\ntitle: Rule\n---\nAbove\n\n---\n\nBelow: not front matter\n",
            "2024-01-06-frontmatter-only.md": "---\ntitle: Only front matter\n---",
            ".2024-01-07-hidden.md": GOOD,
            "2024-01-08-backup.md~": GOOD,
            "notes.txt": "not a post",
        },
    )
    collection = load_posts(settings)
    assert collection.errors == ()
    posts = {p.slug: p for p in collection.posts}
    assert set(posts) == {"bom-crlf", "dots", "empty-front", "markdown", "rule", "frontmatter-only"}
    assert posts["bom-crlf"].title == "Windows"
    assert posts["bom-crlf"].excerpt_text == "Line one."
    assert "\r" not in posts["bom-crlf"].body_html
    assert posts["dots"].excerpt_text == "Closed with three dots."
    assert posts["empty-front"].title == "Empty Front"
    assert "Below: not front matter" in posts["rule"].body_html
    assert posts["frontmatter-only"].warnings == (
        "line 4: empty body: the email will have no excerpt",
    )


def test_duplicate_key_is_a_warning_with_its_line(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, {"2024-01-01-dup.md": "---\ntitle: One\ntags: [a]\ntitle: Two\n---\nx\n"}
    )
    collection = load_posts(settings)
    (post,) = collection.posts
    assert post.title == "Two"
    (problem,) = collection.problems
    assert (problem.severity, problem.line, problem.key) == ("warning", 4, "title")
    assert str(problem).endswith(
        "2024-01-01-dup.md:4: title: warning: duplicate front matter key 'title'; the last value wins"
    )


def test_a_failing_renderer_stops_only_that_post(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = markup.markdown_to_html

    def flaky(text: str, base_url: str, *, block_html: bool = False) -> str:
        if "EXPLODE" in text:
            raise RenderError("markdown exploded")
        if "CRASH" in text:
            raise ZeroDivisionError("unexpected")
        return real(text, base_url, block_html=block_html)

    monkeypatch.setattr(markup, "markdown_to_html", flaky)
    settings = _settings(
        tmp_path,
        {
            "2024-01-01-a.md": "---\n---\nEXPLODE\n",
            "2024-01-02-b.md": "---\n---\nCRASH\n",
            "2024-01-03-c.md": GOOD,
        },
    )
    collection = load_posts(settings)
    assert [p.slug for p in collection.posts] == ["c"]
    messages = sorted(str(p) for p in collection.problems)
    assert messages[0].endswith("2024-01-01-a.md: error: markdown exploded")
    assert messages[1].endswith(
        "2024-01-02-b.md: error: cannot read post: ZeroDivisionError: unexpected"
    )


def test_missing_posts_folder_is_one_error(tmp_path: Path) -> None:
    settings = Settings(base_dir=tmp_path, site=SiteSettings(posts_dir=tmp_path / "nope"))
    with pytest.raises(PostError) as info:
        load_posts(settings)
    assert str(info.value) == f"{tmp_path / 'nope'}: site.posts_dir: posts folder not found"


def test_progress_is_called_once_per_file(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, {"2024-01-01-a.md": GOOD, "2024-01-02-b.md": "oops", "sub/2024-01-03-c.md": GOOD}
    )
    calls: list[int] = []
    collection = load_posts(settings, progress=lambda: calls.append(1))
    assert len(calls) == 3
    assert {p.post_id for p in collection.posts} == {"a", "sub/c"}


def test_a_quoted_published_false_holds_a_post_back_outside_a_jekyll_site(
    tmp_path: Path,
) -> None:
    """No Jekyll publishes a plain folder's posts: a quoted "false" is taken
    at its word (a mail cannot be taken back), with a warning that Jekyll
    would read it as true.  (On a Jekyll site it is published: test_jekyll_site.)"""
    settings = _settings(
        tmp_path, {"2024-01-01-a.md": '---\npublished: "false"\n---\nx\n', "2024-01-02-b.md": GOOD}
    )
    collection = load_posts(settings)
    assert {p.slug: p.published for p in collection.posts} == {"a": False, "b": True}
    (problem,) = collection.problems
    assert problem.severity == "warning" and "taken as false here" in problem.message
