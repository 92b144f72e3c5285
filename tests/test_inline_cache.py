"""Inlined HTML and compiled templates kept in the state folder
(newsletter.email.inlinecache): premailer runs once per HTML, and nothing kept
can make an email differ from one rendered afresh."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image
from test_post_index import Blog

from newsletter.cli import main
from newsletter.email import inlinecache, render
from newsletter.errors import RenderError
from newsletter.posts import index as post_index
from newsletter.posts.collection import load_posts


@pytest.fixture
def blog(tmp_path: Path) -> Iterator[Blog]:
    blog = Blog(tmp_path)
    blog.post(
        "2024-01-01-first.md",
        "First",
        body="Words before.\n\n![A photo](/img/photo.png)\n\nWords after.\n",
        extra="image: /img/photo.png\n",
    )
    picture(tmp_path / "img" / "photo.png", 200)
    render.template_environment.cache_clear()
    yield blog
    render.template_environment.cache_clear()


def picture(path: Path, width: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, 100), "white").save(path)


@pytest.fixture
def inlinings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The HTML each real premailer run was given."""
    seen: list[str] = []
    real = render.inline_css

    def counting(html: str) -> str:
        seen.append(html)
        return real(html)

    monkeypatch.setattr(render, "inline_css", counting)
    return seen


def email_of(blog: Blog, **kwargs: Any) -> render.RenderedEmail:
    settings = blog.settings()
    post = load_posts(settings).find("first")
    return render.render_email(post, settings, settings.get_list("main"), **kwargs)


def kept(blog: Blog, what: str) -> list[Path]:
    folder = blog.root / ".newsletter" / what
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_the_same_html_is_inlined_once_and_comes_back_the_same(
    blog: Blog, inlinings: list[str]
) -> None:
    first = email_of(blog)
    assert len(inlinings) == 1 and len(kept(blog, "inlined")) == 1
    render.template_environment.cache_clear()  # as a new process
    again = email_of(blog)
    assert again == first and len(inlinings) == 1
    fresh = email_of(blog, cache=False)  # premailer again, nothing kept read
    assert fresh == first and len(inlinings) == 2


def test_a_changed_template_is_compiled_and_inlined_again(blog: Blog, inlinings: list[str]) -> None:
    template = blog.root / "templates" / "email.html.j2"
    blog.write(template, '<html><body><p style="color: red">{{ post.title }}</p></body></html>')
    assert ">First</p>" in email_of(blog).html
    assert kept(blog, "jinja")  # the compiled template is kept
    render.template_environment.cache_clear()  # a new process, the compiled code on disk
    blog.write(template, "<html><body><p>Now: {{ post.title }}</p></body></html>")
    assert ">Now: First</p>" in email_of(blog).html
    assert len(inlinings) == 2


def test_a_local_image_that_changed_size_is_measured_again(
    blog: Blog, inlinings: list[str]
) -> None:
    """Unlike a whole render kept by what it reads, the kept inlining cannot be
    stale: the templates run each time, and the image's size is in their HTML."""
    assert 'width="200"' in email_of(blog).html
    picture(blog.root / "img" / "photo.png", 300)
    post_index.forget()
    changed = email_of(blog)
    assert 'width="300"' in changed.html and 'width="200"' not in changed.html
    assert changed == email_of(blog, cache=False)
    assert len(inlinings) == 3  # the new HTML inlined once, then again without the cache


def test_a_failed_inlining_is_not_kept(
    blog: Blog, inlinings: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(html: str) -> str:
        raise RenderError("cannot inline CSS: broken")

    with monkeypatch.context() as patch:
        patch.setattr(render, "inline_css", failing)
        with pytest.raises(RenderError, match="broken"):
            email_of(blog)
    assert kept(blog, "inlined") == []
    assert email_of(blog).html and len(inlinings) == 1


def test_a_state_folder_that_cannot_be_written_only_costs_speed(
    blog: Blog, inlinings: list[str]
) -> None:
    (blog.root / ".newsletter").write_text("a file where the folder would be", "utf-8")
    first = email_of(blog, cache=False)
    render.template_environment.cache_clear()
    assert email_of(blog) == first
    render.template_environment.cache_clear()
    assert email_of(blog) == first
    assert len(inlinings) == 3


def test_check_all_inlines_every_post_again(blog: Blog, inlinings: list[str]) -> None:
    blog.post("2024-01-02-second.md", "Second")
    assert CliRunner().invoke(main, [*blog.cli, "check"]).exit_code == 0
    assert len(inlinings) == 2
    assert CliRunner().invoke(main, [*blog.cli, "check"]).exit_code == 0
    assert len(inlinings) == 2  # renders kept
    result = CliRunner().invoke(main, [*blog.cli, "check", "--all"])
    assert result.exit_code == 0, result.output
    assert len(inlinings) == 4  # nothing kept is used


def test_the_key_covers_the_inliner_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    stamp = inlinecache._engine()
    assert stamp == inlinecache._engine()  # worked out once per process
    monkeypatch.setattr(inlinecache, "_stamp", [])
    monkeypatch.setattr(inlinecache, "_RENDER", Path(inlinecache.__file__))
    assert inlinecache._engine() != stamp  # other options, another key
