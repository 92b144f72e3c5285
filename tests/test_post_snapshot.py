"""A whole load of the posts kept in the state folder (newsletter.posts.snapshot),
and the walk that finds post files (newsletter.posts.files).

The oracle for every change: a warm load (whole, or through the index) equals
a load that reads every file again (`index=False`)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import test_post_index
from test_post_index import Blog, jekyll_blog

from newsletter.config import Settings
from newsletter.posts import index as post_index
from newsletter.posts import snapshot
from newsletter.posts.collection import Post, PostCollection, load_posts
from newsletter.posts.files import post_files

calls = test_post_index.calls  # the fixture counting reads and builds


@pytest.fixture
def blog(tmp_path: Path) -> Blog:
    blog = Blog(tmp_path)
    blog.post("2024-01-01-first.md", "First")
    blog.post(
        "2024-01-02-second.md",
        "Second",
        body="See [the first]({% post_url 2024-01-01-first %}).\n",
        extra="author: ada\n",
    )
    blog.post("2024-01-03-third.md", "Third", body="{% include note.html %}\n")
    blog.write(blog.root / "_includes" / "note.html", "A note.")
    blog.write(blog.root / "_data" / "authors.yml", "ada:\n  name: Ada\n")
    return blog


def whole_files(blog: Blog) -> list[str]:
    return sorted(p.name for p in (blog.root / ".newsletter" / "index").glob("whole-*"))


@pytest.mark.parametrize("bodies", [True, False, "lazy"])
def test_a_new_process_gets_the_last_load_whole_and_reads_nothing(
    blog: Blog, calls: Counter[str], bodies: bool | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_posts(blog.settings(), bodies=bodies)  # type: ignore[arg-type]
    kept = "whole-posts.pickle" if bodies is True else "whole-listing.pickle"
    assert whole_files(blog) == [kept]
    post_index.forget()  # a new process
    calls.clear()
    opened: list[str] = []
    real_open = post_index.open_index

    def watching(settings: Settings, kind: str, **kwargs: Any) -> post_index.PostIndex:
        opened.append(kind)
        return real_open(settings, kind, **kwargs)

    monkeypatch.setattr(post_index, "open_index", watching)
    again = load_posts(blog.settings(), bodies=bodies)  # type: ignore[arg-type]
    assert again == first and again is not first
    assert calls == Counter() and opened == []  # not one entry of the index opened


def test_lazy_from_a_whole_load_builds_only_the_post_asked_for(
    blog: Blog, calls: Counter[str]
) -> None:
    eager = {p.post_id: p for p in load_posts(blog.settings(), index=False).posts}
    load_posts(blog.settings(), bodies="lazy")
    post_index.forget()
    calls.clear()
    lazy = load_posts(blog.settings(), bodies="lazy")
    assert calls == Counter()
    assert lazy.find("second") == eager["second"]
    assert calls == Counter({"build:2024-01-02-second.md": 1})  # pass 1 from the index
    post_index.forget()
    calls.clear()
    # Built once, it comes from the index of posts with HTML, checked, not rebuilt.
    assert load_posts(blog.settings(), bodies="lazy").find("second") == eager["second"]
    assert calls == Counter()


def test_lazy_from_a_whole_load_keeps_a_post_that_lists_every_post(
    blog: Blog, calls: Counter[str]
) -> None:
    """A post whose Liquid reads `site.posts` is kept with the stamp of every
    post file; a whole load hands the completer that stamp from its own key
    (no stat, no `FoundPost` each): it must match, or every send rebuilds it."""
    blog.post(
        "2024-01-05-index.md",
        "Index",
        body="{% for p in site.posts %}[{{ p.title }}] {% endfor %}\n",
    )
    load_posts(blog.settings(), bodies="lazy").find("index")
    post_index.forget()  # a new process
    calls.clear()
    built = load_posts(blog.settings(), bodies="lazy").find("index")
    assert calls == Counter()  # from the index of posts with HTML, not rebuilt
    assert "[Second]" in built.body_html
    add_post(blog)
    post_index.forget()
    calls.clear()
    again = load_posts(blog.settings(), bodies="lazy").find("index")
    # Another post file: listed again, and built again with its HTML.
    assert calls["build:2024-01-05-index.md"] == 2
    assert "[Fourth]" in again.body_html


def edit_post(blog: Blog) -> None:
    blog.post("2024-01-03-third.md", "Third, edited", body="{% include note.html %}\n")


def add_post(blog: Blog) -> None:
    blog.post("2024-01-04-fourth.md", "Fourth")


def delete_linked_post(blog: Blog) -> None:
    (blog.root / "posts" / "2024-01-01-first.md").unlink()  # second's link now warns


def change_config(blog: Blog) -> None:
    blog.configure('permalink = "/:title/"')


def change_data(blog: Blog) -> None:
    blog.write(blog.root / "_data" / "authors.yml", "ada:\n  name: Ada Lovelace\n")


def change_include(blog: Blog) -> None:
    blog.write(blog.root / "_includes" / "note.html", "Another note.")


CHANGES: list[Callable[[Blog], None]] = [
    edit_post,
    add_post,
    delete_linked_post,
    change_config,
    change_data,
    change_include,
]


def seen(posts: PostCollection, bodies: bool | str) -> tuple[Post | None, ...]:
    """The posts as a command sees them: with their HTML, built on demand when lazy."""
    if bodies is True:
        return posts.posts
    listed = tuple(replace(p, body_html="", excerpt_html="", excerpt_text="") for p in posts.posts)
    assert posts.posts == listed  # as listed, without HTML
    return tuple(posts.with_id(p.post_id) for p in posts.posts)


@pytest.mark.parametrize("change", CHANGES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("bodies", [True, "lazy"])
def test_every_change_is_seen_by_the_next_process(
    blog: Blog, change: Callable[[Blog], None], bodies: bool | str
) -> None:
    before = seen(load_posts(blog.settings(), bodies=bodies), bodies)  # type: ignore[arg-type]
    post_index.forget()
    change(blog)
    truth = load_posts(blog.settings(), index=False)
    after = load_posts(blog.settings(), bodies=bodies)  # type: ignore[arg-type]
    assert seen(after, bodies) == truth.posts != before
    if bodies == "lazy":  # the listing itself is the new one too
        assert after.posts == load_posts(blog.settings(), bodies=False, index=False).posts
    assert after.problems == truth.problems
    post_index.forget()  # and the load kept after the change is the new one
    again = load_posts(blog.settings(), bodies=bodies)  # type: ignore[arg-type]
    assert seen(again, bodies) == truth.posts


def test_an_undated_file_added_is_seen_by_the_next_process(tmp_path: Path) -> None:
    blog = jekyll_blog(tmp_path)
    assert not load_posts(blog.settings()).problems
    post_index.forget()
    blog.write(tmp_path / "_posts" / "notes.md", "---\ntitle: Notes\n---\n\nx\n")
    problems = load_posts(blog.settings()).problems
    assert [p.path.name for p in problems if p.path] == ["notes.md"]


def test_a_file_changed_moments_ago_is_not_judged_by_size_and_mtime(blog: Blog) -> None:
    settings = blog.settings()
    files = sorted((blog.root / "posts").glob("*.md"))
    assert post_index.load_key(settings, files) is not None
    fresh = blog.write(files[0], files[0].read_text(encoding="utf-8"), old=False)
    assert post_index.load_key(settings, files) is None  # no whole load kept or used
    first = load_posts(settings)
    assert whole_files(blog) == []
    # Same size, same mtime, other words: seen, because the index compares content.
    before = fresh.stat()
    fresh.write_text(fresh.read_text(encoding="utf-8").replace("First", "Fir5t"), "utf-8")
    os.utime(fresh, ns=(before.st_atime_ns, before.st_mtime_ns))
    post_index.forget()
    assert load_posts(settings).posts[0].title == "Fir5t" != first.posts[0].title
    assert post_index.load_key(settings, [*files, blog.root / "posts" / "gone.md"]) is None


def test_a_broken_whole_load_is_ignored_and_rewritten(blog: Blog, calls: Counter[str]) -> None:
    first = load_posts(blog.settings())
    (path,) = (blog.root / ".newsletter" / "index").glob("whole-*")
    for broken in (b"", b"not a pickle", path.read_bytes()[:100]):
        path.write_bytes(broken)
        post_index.forget()
        assert load_posts(blog.settings()) == first
    assert snapshot.read(blog.settings(), "posts", None) is None
    key = post_index.load_key(blog.settings(), sorted((blog.root / "posts").glob("*.md")))
    assert isinstance(snapshot.read(blog.settings(), "posts", key), tuple)  # rewritten


def test_a_state_folder_that_cannot_be_written_only_costs_speed(blog: Blog) -> None:
    (blog.root / ".newsletter").write_text("a file where the folder would be", "utf-8")
    first = load_posts(blog.settings())
    post_index.forget()
    assert load_posts(blog.settings()) == first == load_posts(blog.settings(), index=False)


def test_without_the_index_nothing_is_kept_or_used(blog: Blog, calls: Counter[str]) -> None:
    load_posts(blog.settings())
    post_index.forget()
    calls.clear()
    assert isinstance(load_posts(blog.settings(), index=False), PostCollection)
    assert sum(calls.values()) == 6  # read and built, every one


# --------------------------------------------------------------------------- post files


def test_post_files_skips_what_jekyll_skips_in_path_order(tmp_path: Path) -> None:
    posts = tmp_path / "posts"
    for name in (
        "b.md",
        "a-b.md",
        "a/b.md",
        "a/z/c.markdown",
        "UPPER.MD",
        "notes.txt",
        "backup.md~",
        "#scratch.md",
        ".hidden.md",
        ".git/x.md",
        "drafts/.x/y.md",
        "#tmp/y.md",
    ):
        path = posts / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x", encoding="utf-8")
    (posts / "folder.md").mkdir()  # a folder named like a post is not one
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "linked.md").write_text("x", encoding="utf-8")
    (posts / "linked-folder").symlink_to(outside, target_is_directory=True)  # not followed
    (posts / "linked.md").symlink_to(outside / "linked.md")  # a linked file is a post
    found = post_files(posts)
    expected = ["UPPER.MD", "a/b.md", "a/z/c.markdown", "a-b.md", "b.md", "linked.md"]
    assert [p.relative_to(posts).as_posix() for p in found] == expected
    assert found == sorted(found)  # the order of sorted Paths ("a/b" before "a-b")
    assert all(p.parent == posts or posts in p.parents for p in found)
