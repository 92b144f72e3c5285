"""The post index (newsletter.posts.index) and the render cache (newsletter.email.rendercache):
only what changed is read or rendered again, and every kind of change is seen."""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from newsletter.cli import main
from newsletter.config import Settings, load_settings
from newsletter.email import render, rendercache
from newsletter.posts import building, collection
from newsletter.posts import index as post_index
from newsletter.posts.collection import PostCollection, load_posts

CONFIG = """\
[site]
title = "Indexed"
url = "https://blog.example.com"
posts_dir = "posts"
{site_extra}
[lists.main]
title = "Main"

[email]
templates_dir = "templates"
"""

OLD = 1_600_000_000  # 2020: files this old are trusted by size and mtime alone


class Blog:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.stamps = 0
        (root / "posts").mkdir()
        (root / "templates").mkdir()
        self.configure()

    @property
    def cli(self) -> list[str]:
        # An absolute --config: Jinja environments are cached per templates
        # folder, and a relative one would be shared between these tests.
        return ["--config", str(self.root / "newsletter.toml")]

    def configure(self, site_extra: str = "") -> None:
        self.write(self.root / "newsletter.toml", CONFIG.format(site_extra=site_extra))

    def settings(self) -> Settings:
        return load_settings(self.root / "newsletter.toml")

    def post(self, name: str, title: str, body: str = "Some words.\n", extra: str = "") -> Path:
        text = f'---\ntitle: "{title}"\n{extra}---\n\n{body}'
        return self.write(self.root / "posts" / name, text)

    def write(self, path: Path, text: str, *, old: bool = True) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if old:  # as a blog's files are; a fresh file is also checked by content
            self.stamps += 1
            os.utime(path, (OLD + self.stamps, OLD + self.stamps))
        return path


@pytest.fixture
def blog(tmp_path: Path) -> Blog:
    blog = Blog(tmp_path)
    blog.post("2024-01-01-first.md", "First")
    blog.post(
        "2024-01-02-second.md",
        "Second",
        body="See [the first]({% post_url 2024-01-01-first %}).\n",
    )
    blog.post("2024-01-03-third.md", "Third")
    return blog


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each pass ran, by file name."""
    seen: Counter[str] = Counter()

    def counting(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(source: Any, *args: Any, **kwargs: Any) -> Any:
            path = source if isinstance(source, Path) else source.path
            seen[f"{name}:{path.name}"] += 1
            return func(source, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(collection, "_read_indexed", counting("read", collection._read_indexed))
    monkeypatch.setattr(building, "build_post", counting("build", building.build_post))
    return seen


def titles(posts: PostCollection) -> list[str]:
    return [p.title for p in posts.posts]


def test_a_second_load_reads_nothing_and_gives_the_same_posts(
    blog: Blog, calls: Counter[str]
) -> None:
    first = load_posts(blog.settings())
    assert sum(calls.values()) == 6
    calls.clear()
    again = load_posts(blog.settings())
    assert calls == Counter()
    assert again == first
    assert again.posts[1].body_html == first.posts[1].body_html != ""


def test_the_state_folder_and_index_are_private(blog: Blog) -> None:
    load_posts(blog.settings())
    for folder in (blog.root / ".newsletter", blog.root / ".newsletter" / "index"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = list((blog.root / ".newsletter" / "index").iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)


def test_a_process_asking_again_gets_the_same_posts_until_a_file_changes(blog: Blog) -> None:
    first = load_posts(blog.settings(), bodies="lazy")
    assert load_posts(blog.settings(), bodies="lazy") is first
    blog.post("2024-01-03-third.md", "Third, edited")
    again = load_posts(blog.settings(), bodies="lazy")
    assert again is not first and titles(again)[-1] == "Third, edited"
    blog.configure('permalink = "/:title/"')
    assert load_posts(blog.settings(), bodies="lazy").posts[0].url.endswith("/first/")


def test_an_edited_file_is_read_again_alone(blog: Blog, calls: Counter[str]) -> None:
    load_posts(blog.settings(), bodies=False)
    calls.clear()
    blog.post("2024-01-03-third.md", "Third, edited")
    posts = load_posts(blog.settings(), bodies=False)
    assert titles(posts) == ["First", "Second", "Third, edited"]
    assert calls == Counter({"read:2024-01-03-third.md": 1, "build:2024-01-03-third.md": 1})


def test_a_fresh_edit_of_the_same_size_and_mtime_is_still_seen(blog: Blog) -> None:
    """Within one tick of the file system's clock an edit can keep size and mtime."""
    text = '---\ntitle: "AAA"\n---\n\nx\n'
    path = blog.write(blog.root / "posts" / "2024-02-01-x.md", text, old=False)
    before = path.stat()
    assert [p.title for p in load_posts(blog.settings()).posts][-1] == "AAA"
    path.write_text('---\ntitle: "BBB"\n---\n\nx\n', encoding="utf-8")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert [p.title for p in load_posts(blog.settings()).posts][-1] == "BBB"


def test_a_changed_configuration_reads_every_post_again(blog: Blog, calls: Counter[str]) -> None:
    urls = [p.url for p in load_posts(blog.settings()).posts]
    calls.clear()
    blog.configure('permalink = "/:title/"')
    posts = load_posts(blog.settings())
    assert (
        [p.url for p in posts.posts]
        == [
            "https://blog.example.com/first/",
            "https://blog.example.com/second/",
            "https://blog.example.com/third/",
        ]
        != urls
    )
    assert sum(1 for k in calls if k.startswith("read:")) == 3
    # The body's link to another post follows the new permalink too.
    assert 'href="https://blog.example.com/first/"' in posts.posts[1].body_html


def test_changed_authors_data_is_seen(blog: Blog) -> None:
    blog.post("2024-01-04-by.md", "By", extra="author: ada\n")
    blog.write(blog.root / "_data" / "authors.yml", "ada:\n  name: Ada\n")
    assert load_posts(blog.settings()).posts[-1].authors[0].name == "Ada"
    blog.write(blog.root / "_data" / "authors.yml", "ada:\n  name: Ada Lovelace\n")
    assert load_posts(blog.settings()).posts[-1].authors[0].name == "Ada Lovelace"


def test_a_linked_post_moving_rebuilds_only_the_post_linking_to_it(
    blog: Blog, calls: Counter[str]
) -> None:
    load_posts(blog.settings())
    calls.clear()
    blog.post("2024-01-01-first.md", "First", extra="permalink: /moved/\n")
    posts = load_posts(blog.settings())
    assert 'href="https://blog.example.com/moved/"' in posts.posts[1].body_html
    assert calls == Counter(
        {
            "read:2024-01-01-first.md": 1,
            "build:2024-01-01-first.md": 1,
            "build:2024-01-02-second.md": 1,  # its link changed; its file was not re-read
        }
    )


def test_a_deleted_link_target_brings_its_warning_back(blog: Blog) -> None:
    assert not load_posts(blog.settings()).problems
    (blog.root / "posts" / "2024-01-01-first.md").unlink()
    problems = load_posts(blog.settings()).problems
    assert [p.path.name for p in problems if p.path] == ["2024-01-02-second.md"]
    assert "post_url" in problems[0].message


def test_a_new_post_is_listed_and_the_others_are_not_read(blog: Blog, calls: Counter[str]) -> None:
    load_posts(blog.settings(), bodies=False)
    calls.clear()
    blog.post("2024-01-05-fifth.md", "Fifth")
    assert titles(load_posts(blog.settings(), bodies=False))[-1] == "Fifth"
    assert set(calls) == {"read:2024-01-05-fifth.md", "build:2024-01-05-fifth.md"}


def test_a_broken_index_file_is_ignored_and_rewritten(blog: Blog) -> None:
    first = load_posts(blog.settings())
    for path in (blog.root / ".newsletter" / "index").iterdir():
        path.write_bytes(b"not a pickle")
    post_index.forget()  # as in a new process
    assert load_posts(blog.settings()) == first
    post_index.forget()
    assert load_posts(blog.settings()) == first


def test_index_false_reads_everything_and_keeps_nothing(blog: Blog, calls: Counter[str]) -> None:
    load_posts(blog.settings(), index=False)
    load_posts(blog.settings(), index=False)
    assert sum(calls.values()) == 12
    assert not (blog.root / ".newsletter").exists()


def test_lazy_bodies_build_html_only_for_the_post_found(blog: Blog, calls: Counter[str]) -> None:
    eager = {p.post_id: p for p in load_posts(blog.settings(), index=False).posts}
    calls.clear()
    lazy = load_posts(blog.settings(), bodies="lazy")
    assert all(p.body_html == "" for p in lazy.posts)
    calls.clear()
    found = lazy.find("second")
    assert found == eager["second"]
    assert calls == Counter({"build:2024-01-02-second.md": 1})
    calls.clear()
    # The next command finds it built: nothing is read or built again.
    assert load_posts(blog.settings(), bodies="lazy").find("second") == found
    assert calls == Counter()


# --------------------------------------------------------------------------- renders


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = render.render_email

    def counting(post: Any, settings: Any, lst: Any, **kwargs: Any) -> Any:
        seen.append(post.post_id)
        return real(post, settings, lst, **kwargs)

    monkeypatch.setattr(render, "render_email", counting)
    return seen


def test_a_render_is_reused_until_the_template_changes(blog: Blog, renders: list[str]) -> None:
    template = blog.root / "templates" / "email.txt.j2"
    blog.write(template, "Custom: {{ post.title }}\n")
    settings = blog.settings()
    post = load_posts(settings).find("first")
    lst = settings.get_list("main")
    first = rendercache.cached_render([post], settings, lst)
    assert rendercache.cached_render([post], settings, lst) == first
    assert first.text == "Custom: First\n" and renders == ["first"]
    blog.write(template, "Changed: {{ post.title }}\n")
    changed = rendercache.cached_render([post], settings, lst)
    assert changed.text == "Changed: First\n" and renders == ["first", "first"]


def test_a_render_is_redone_when_the_post_list_or_settings_change(
    blog: Blog, renders: list[str]
) -> None:
    settings = blog.settings()
    lst = settings.get_list("main")
    post = load_posts(settings).find("first")
    rendercache.cached_render([post], settings, lst)
    blog.post("2024-01-01-first.md", "First, retitled")
    edited = load_posts(settings).find("first")
    assert rendercache.cached_render([edited], settings, lst).subject == "First, retitled"
    other = lst.__class__(name="other", title="Other")
    rendercache.cached_render([edited], settings, other)
    blog.configure('author = "Someone Else"')
    rendercache.cached_render([edited], blog.settings(), lst)
    assert renders == ["first"] * 4


def test_check_renders_only_what_changed_and_all_renders_everything(
    blog: Blog, renders: list[str]
) -> None:
    assert CliRunner().invoke(main, [*blog.cli, "check"]).exit_code == 0
    assert sorted(renders) == ["first", "second", "third"]
    renders.clear()
    assert CliRunner().invoke(main, [*blog.cli, "check"]).exit_code == 0
    assert renders == []
    blog.post("2024-01-03-third.md", "Third, edited")
    assert CliRunner().invoke(main, [*blog.cli, "check"]).exit_code == 0
    assert renders == ["third"]
    renders.clear()
    result = CliRunner().invoke(main, [*blog.cli, "check", "--all"])
    assert result.exit_code == 0, result.output
    assert sorted(renders) == ["first", "second", "third"]


def test_check_sees_a_broken_template_at_once(blog: Blog) -> None:
    template = blog.root / "templates" / "email.html.j2"
    blog.write(template, "<p>{{ post.title }}</p>")
    assert CliRunner().invoke(main, [*blog.cli, "check"]).exit_code == 0
    blog.write(template, "<p>{{ post.title }</p>")
    result = CliRunner().invoke(main, [*blog.cli, "check"])
    assert result.exit_code == 1
    assert "email.html.j2" in result.stdout and "error" in result.stdout


def test_a_sent_post_edited_and_redated_through_the_index_is_not_sent_again(
    blog: Blog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant 1 with a warm index: the edit is seen, the identity is kept."""
    monkeypatch.chdir(blog.root)  # the outbox folder is relative to it
    # (wait_for_page off: these pages are not online to wait for)
    schedule = '[schedule]\nsince = "2020-01-01"\nwait_for_page = false'
    blog.configure(f'\n{schedule}\n[delivery]\ntransport = "maildir"')
    runner = CliRunner()
    add = [*blog.cli, "subscribers", "add", "reader@example.com", "--list", "main"]
    assert runner.invoke(main, add).exit_code == 0
    first = runner.invoke(main, [*blog.cli, "run", "--once", "--json"])
    assert first.exit_code == 0, first.output
    outbox = blog.root / ".newsletter" / "outbox" / "new"
    sent = len(list(outbox.iterdir()))
    assert sent == 3  # the three posts, once each
    blog.post("2024-01-01-first.md", "First, retitled", extra="date: 2025-06-01 10:00:00\n")
    again = runner.invoke(main, [*blog.cli, "run", "--once", "--json"])
    assert again.exit_code == 0, again.output
    assert len(list(outbox.iterdir())) == sent
    rows = json.loads(runner.invoke(main, [*blog.cli, "posts", "--json"]).stdout)
    edited = next(r for r in rows if r["id"] == "first")
    assert edited["title"] == "First, retitled" and edited["status"] == "sent"
    assert edited["date"].startswith("2025-06-01")


def test_lookups_record_answers_and_absences() -> None:
    urls = {"a": "https://blog.example.com/a/"}
    view = post_index.Lookups(urls)
    assert view.get("a") == urls["a"] and view.get("b") is None
    assert "c" not in view
    with pytest.raises(KeyError):
        view["d"]
    assert view.asked == {"a": urls["a"], "b": None, "c": None, "d": None}
    assert post_index._still_valid(view.asked, urls, None)
    assert not post_index._still_valid(
        view.asked, {**urls, "d": "https://blog.example.com/d/"}, None
    )
    whole = post_index.Lookups(urls)
    assert list(whole) == ["a"]
    assert not post_index._still_valid(
        whole.asked, {**urls, "e": "https://blog.example.com/e/"}, None
    )


def test_each_post_depends_only_on_the_posts_it_links_to(blog: Blog) -> None:
    settings = blog.settings()
    load_posts(settings)
    stored = post_index.open_index(settings, "posts").entries
    asked = {Path(name).name: set(entry.asked) for name, entry in stored.items()}
    assert asked == {
        "2024-01-01-first.md": set(),
        "2024-01-02-second.md": {"2024-01-01-first"},
        "2024-01-03-third.md": set(),
    }


# --------------------------------------------------------------------------- site-wide Liquid

LISTING = "{% for p in site.posts %}[{{ p.title }}] {% endfor %}\n"


def body_of(posts: PostCollection, name: str) -> str:
    return next(p.body_html for p in posts.posts if p.path.name == name)


def test_a_post_listing_site_posts_sees_a_post_added_changed_or_removed(
    blog: Blog, calls: Counter[str]
) -> None:
    blog.post("2024-01-04-archive.md", "Archive", body=LISTING)
    assert "[Third] [Second] [First]" in body_of(
        load_posts(blog.settings()), "2024-01-04-archive.md"
    )
    calls.clear()
    post_index.forget()  # a new process: only the index on disk
    new = blog.post("2024-01-05-new.md", "Brand new")
    posts = load_posts(blog.settings())
    assert "[Brand new] [Archive] [Third]" in body_of(posts, "2024-01-04-archive.md")
    # Only the new post and the one that lists every post were built again.
    assert {k for k in calls if k.startswith("build:")} == {
        "build:2024-01-04-archive.md",
        "build:2024-01-05-new.md",
    }
    post_index.forget()
    blog.post("2024-01-05-new.md", "Renamed")
    assert "[Renamed]" in body_of(load_posts(blog.settings()), "2024-01-04-archive.md")
    post_index.forget()
    new.unlink()
    listed = body_of(load_posts(blog.settings()), "2024-01-04-archive.md")
    assert "Renamed" not in listed and "[Archive] [Third]" in listed


def test_a_post_counting_a_tag_sees_a_newly_tagged_post(blog: Blog) -> None:
    blog.post("2024-01-04-count.md", "Count", body="News: {{ site.tags.news | size }}.\n")
    assert "News: 0." in body_of(load_posts(blog.settings()), "2024-01-04-count.md")
    post_index.forget()
    blog.post("2024-01-05-news.md", "News", extra="tags: [news]\n")
    assert "News: 1." in body_of(load_posts(blog.settings()), "2024-01-04-count.md")
    listing = load_posts(blog.settings(), bodies="lazy")  # the lazy path asks the same way
    assert "News: 1." in listing.find("count").body_html


def test_a_post_not_reading_site_posts_is_not_rebuilt_for_a_new_post(blog: Blog) -> None:
    load_posts(blog.settings())
    stored = post_index.open_index(blog.settings(), "posts").entries
    assert all(not any(k.startswith("\0") for k in e.asked) for e in stored.values())


def test_an_edited_include_is_seen(blog: Blog) -> None:
    blog.write(blog.root / "_includes" / "note.html", "Note one")
    blog.post("2024-01-04-inc.md", "Inc", body="{% include note.html %}\n")
    assert "Note one" in body_of(load_posts(blog.settings()), "2024-01-04-inc.md")
    post_index.forget()
    blog.write(blog.root / "_includes" / "note.html", "Note two")
    assert "Note two" in body_of(load_posts(blog.settings()), "2024-01-04-inc.md")


def jekyll_blog(root: Path) -> Blog:
    blog = Blog.__new__(Blog)
    blog.root, blog.stamps = root, 0
    blog.write(root / "_config.yml", "title: J\nurl: https://j.example.com\n"
               "collections:\n  authors:\n    output: false\n")  # fmt: skip
    blog.write(root / "newsletter.toml", '[site]\njekyll_config = "_config.yml"\n')
    blog.write(root / "_authors" / "lee.md", "---\nname: Lee\n---\n")
    blog.write(
        root / "_posts" / "2024-01-01-team.md",
        "---\ntitle: Team\n---\n\n{% for a in site.authors %}({{ a.name }}) {% endfor %}\n",
    )
    return blog


def test_a_post_listing_a_collection_sees_a_new_document(tmp_path: Path) -> None:
    blog = jekyll_blog(tmp_path)
    assert "(Lee)" in load_posts(blog.settings()).posts[0].body_html
    post_index.forget()
    blog.write(tmp_path / "_authors" / "kim.md", "---\nname: Kim\n---\n")
    body = load_posts(blog.settings()).posts[0].body_html
    assert "(Kim)" in body and "(Lee)" in body


def test_an_undated_file_added_is_warned_about_by_a_warm_process(tmp_path: Path) -> None:
    blog = jekyll_blog(tmp_path)
    assert not load_posts(blog.settings()).problems
    blog.write(tmp_path / "_posts" / "notes.md", "---\ntitle: Notes\n---\n\nx\n")
    problems = load_posts(blog.settings()).problems
    assert [p.path.name for p in problems if p.path] == ["notes.md"]
    assert "not a post" in problems[0].message
