"""What the preview's file watcher watches: every file that can change a
preview reloads the page, and nothing else in the site wakes the watcher
(its state folder with the database and WAL, .git, _site, node_modules)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from watchready import Watched

from newsletter.config import Settings, load_settings
from newsletter.web import reload
from newsletter.web.reload import Broadcaster, watch
from newsletter.web.site import Site, watched_dirs, watched_files

# A change that should not reload is given this long to show that it does
# not (the watcher's debounce is 0.2 s); one that should gets up to LONG.
WAIT = 2.0
LONG = 60.0

CONFIG = """\
[site]
jekyll_config = "_config.yml"
timezone = "Europe/Lisbon"

[email]
from = "Lantern Notes <letters@lantern.example.com>"
templates_dir = "theme"

[unsubscribe]
mailto = "leave@lantern.example.com"

[database]
url = "sqlite:///.newsletter/newsletter.db"

[lists.letters]
title = "Lantern Notes letters"
"""


JEKYLL_CONFIG = """\
title: Lantern Notes
url: https://lantern.example.com
collections:
  authors:
    output: false
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Jekyll site with the newsletter's configuration at its root, and the
    folders a real one has beside the posts."""
    monkeypatch.delenv("NEWSLETTER_CONFIG", raising=False)
    root = tmp_path / "site"
    for folder in (
        "_posts/2024",
        "_includes",
        "_data",
        "_authors",
        "_layouts",
        "_site",
        "theme/parts",
        ".newsletter",
        "node_modules/pkg",
    ):
        (root / folder).mkdir(parents=True)
    (root / "newsletter.toml").write_text(CONFIG)
    (root / "_config.yml").write_text(JEKYLL_CONFIG)
    (root / "_posts" / "2024-03-02-winter.md").write_text(
        "---\ntitle: Winter\n---\n\nCold. {% include note.html %}\n"
    )
    (root / "_includes" / "note.html").write_text("<p>A note from the shed.</p>\n")
    (root / "_data" / "shed.yml").write_text("tools: [spade]\n")
    (root / "_authors" / "ana.md").write_text("---\nname: Ana\n---\n")
    (root / "theme" / "email.txt.j2").write_text("{{ post.title }}\n")
    (root / "theme" / "parts" / "sign-off.txt").write_text("Yours\n")
    (root / "_site" / "index.html").write_text("<html></html>\n")
    (root / "node_modules" / "pkg" / "index.js").write_text("\n")
    (root / "README.md").write_text("A site.\n")
    git("init", "-q", ".", cwd=root)
    return root


def git(*args: str, cwd: Path) -> None:
    """git, as a writer would run it (only its .git folder is made without it)."""
    found = shutil.which("git")
    if found is None:
        (cwd / ".git").mkdir(exist_ok=True)
        (cwd / ".git" / "index").write_bytes(os.urandom(64))
        return
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    names = {"NAME": "Writer", "EMAIL": "writer@example.com"}
    env |= {
        f"GIT_{who}_{key}": value for who in ("AUTHOR", "COMMITTER") for key, value in names.items()
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


class Counted:
    """`reload._filter`'s functions, counting their calls: one per change the
    watcher was woken for, kept or not."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        make = reload._filter

        def counting(wanted: set[str], prefixes: tuple[str, ...]) -> Callable[..., bool]:
            relevant = make(wanted, prefixes)

            def called(change: object, path: str) -> bool:
                self.calls.append(path)
                return relevant(change, path)  # type: ignore[arg-type]

            return called

        monkeypatch.setattr(reload, "_filter", counting)


Edit = Callable[[], object]
WATCHED: list[Watched] = []  # this test's `watched` (conftest.py)


@pytest.fixture(autouse=True)
def _watched(watched: Watched) -> Iterator[None]:
    WATCHED.append(watched)
    yield
    WATCHED.clear()


def count_reloads(
    start: Callable[[Broadcaster, asyncio.Event], Awaitable[None]],
    edits: list[Edit],
    expected: list[int],
) -> list[int]:
    """How many reloads each edit caused, with the watcher `start` runs.

    A reload that should come gets `LONG` (a loaded machine is slow to notice);
    an edit that should cause none gets `WAIT`, the time a wrong reload would
    take to show.  The first edit waits until the watcher has its watches."""

    async def scenario() -> list[int]:
        hub, stop = Broadcaster(), asyncio.Event()
        task = asyncio.create_task(start(hub, stop))
        deadline = time.monotonic() + LONG
        while not WATCHED[0].made() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        seen = []
        for edit, wanted in zip(edits, expected, strict=True):
            await asyncio.sleep(0.3)  # the watcher is up again after a re-plan
            before = hub.generation
            await asyncio.to_thread(edit)
            deadline = time.monotonic() + (LONG if wanted else WAIT)
            while hub.generation == before and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # a second reload for the same edit would show now
            seen.append(hub.generation - before)
        stop.set()
        await asyncio.wait_for(task, 60)
        return seen

    return asyncio.run(scenario())


def expect_reloads(settings: Settings, edits: list[Edit], expected: list[int]) -> None:
    """`count_reloads` with the watcher planned as the preview plans it."""

    def start(hub: Broadcaster, stop: asyncio.Event) -> Awaitable[None]:
        return watch(hub, lambda: watched_dirs(settings), lambda: watched_files(settings), stop)

    assert count_reloads(start, edits, expected) == expected


def append(path: Path, text: str = "\nmore\n") -> Edit:
    return lambda: path.write_text(path.read_text() + text)


def replace_by_rename(path: Path, text: str) -> Edit:
    """The way many editors save: a new file renamed over the old one."""

    def save() -> None:
        fresh = path.with_name(f".{path.name}.swp")
        fresh.write_text(path.read_text() + text)
        os.replace(fresh, path)

    return save


@pytest.mark.parametrize(
    "kind",
    [
        "post",
        "post in a sub-folder",
        "new post",
        "theme template",
        "theme part",
        "_config.yml",
        "include",
        "_data file",
        "collection document",
    ],
)
def test_each_kind_of_file_a_preview_is_made_from_reloads_it(site: Path, kind: str) -> None:
    settings = load_settings(site / "newsletter.toml")
    edit = {
        "post": append(site / "_posts" / "2024-03-02-winter.md"),
        "post in a sub-folder": lambda: (
            site / "_posts" / "2024" / "2024-04-01-spring.md"
        ).write_text("---\ntitle: Spring\n---\n\nWarm.\n"),
        "new post": lambda: (site / "_posts" / "2024-05-01-may.md").write_text("---\n---\nMay\n"),
        "theme template": append(site / "theme" / "email.txt.j2"),
        "theme part": append(site / "theme" / "parts" / "sign-off.txt"),
        "_config.yml": append(site / "_config.yml", "description: more\n"),
        "include": append(site / "_includes" / "note.html"),
        "_data file": append(site / "_data" / "shed.yml", "more: [rake]\n"),
        "collection document": append(site / "_authors" / "ana.md"),
    }[kind]
    expect_reloads(settings, [edit], [1])


def test_an_edited_draft_reloads_the_preview(site: Path) -> None:
    """`_drafts/next.md` previews by its name (`/post/next`): an edit to it,
    and a new draft, reload the page.  Before, `_drafts` was not watched."""
    (site / "_drafts").mkdir()
    draft = site / "_drafts" / "next.md"
    draft.write_text("---\ntitle: Next\n---\nSoon.\n")
    settings = load_settings(site / "newsletter.toml")
    edits: list[Edit] = [
        append(draft),
        lambda: (site / "_drafts" / "later.md").write_text("---\ntitle: Later\n---\n"),
    ]
    expect_reloads(settings, edits, [1, 1])


def test_the_configuration_file_reloads_whether_written_or_renamed_over(site: Path) -> None:
    settings = load_settings(site / "newsletter.toml")
    config = site / "newsletter.toml"
    edits = [append(config, "\n# a comment\n"), replace_by_rename(config, "\n# another\n")]
    # Twice: after the first edit the watcher is planned again (a re-plan),
    # and the second still reaches it.
    expect_reloads(settings, edits, [1, 1])


def test_the_site_beside_the_posts_neither_reloads_nor_wakes_the_watcher(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(site / "newsletter.toml")
    counted = Counted(monkeypatch)

    def database_writes() -> None:
        # The state folder's SQLite database in WAL mode, as the store opens it.
        with sqlite3.connect(site / ".newsletter" / "newsletter.db") as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS t (x)")
            db.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(50)])
        db.close()

    edits: list[Edit] = [
        database_writes,
        lambda: git("add", "-A", cwd=site),
        lambda: git("commit", "-q", "-m", "A post", cwd=site),
        lambda: (site / "_site" / "index.html").write_text("<html>rebuilt</html>\n"),
        lambda: (site / "_site" / "2024").mkdir(),
        lambda: (site / "node_modules" / "pkg" / "index.js").write_text("// new\n"),
        lambda: (site / ".newsletter" / "jinja").mkdir(),
    ]
    expect_reloads(settings, edits, [0] * len(edits))
    assert counted.calls == []


def test_a_file_beside_the_configuration_is_seen_but_does_not_reload(site: Path) -> None:
    """The configuration's folder is watched at its top level only: a file
    there wakes the watcher (it is filtered out), one below it does not."""
    settings = load_settings(site / "newsletter.toml")
    expect_reloads(settings, [append(site / "README.md")], [0])


def test_an_edited_include_shows_without_the_watcher(site: Path) -> None:
    """The stat fingerprint each request takes covers what the watcher watches:
    a post's include, edited, is read again (the page the reload asks for is
    not the one made before)."""
    preview_site = Site(lambda: load_settings(site / "newsletter.toml"))

    def winter() -> str:
        posts = preview_site.posts()
        found = posts.with_id(posts.posts[0].post_id)
        assert found is not None
        return found.body_html

    assert "A note from the shed." in winter()
    (site / "_includes" / "note.html").write_text("<p>A note from the greenhouse.</p>\n")
    assert "A note from the greenhouse." in winter()


def test_a_posts_folder_replaced_whole_is_watched_again(site: Path) -> None:
    """A tool that swaps the posts folder for a new one (a sync, a checkout
    into a fresh folder): the watcher follows the new folder, as the whole-site
    watch did."""
    settings = load_settings(site / "newsletter.toml")
    posts = site / "_posts"

    def swap() -> None:
        fresh = site / "_posts.new"
        shutil.copytree(posts, fresh)
        posts.rename(site / "_posts.old")
        fresh.rename(posts)

    expect_reloads(settings, [swap, append(posts / "2024-03-02-winter.md")], [1, 1])


def linking_post(site: Path) -> Callable[[Site], str]:
    """A post linking to a page below the site's root (`docs/about.md`); what
    the preview's Site makes of its body."""
    (site / "docs").mkdir()
    (site / "docs" / "about.md").write_text("---\npermalink: /about-us/\n---\nAbout\n")
    (site / "_posts" / "2024-03-03-linked.md").write_text(
        "---\ntitle: Linked\n---\n\nSee [the shed]({% link docs/about.md %}).\n"
    )
    # Written a while ago: a load of files this fresh is never kept (`stamps.RACY_NS`).
    past = time.time() - 60
    for path in (*site.rglob("*.md"), *site.rglob("*.yml")):
        os.utime(path, (past, past))

    def body(preview_site: Site) -> str:
        posts = preview_site.posts()
        (listed,) = [p for p in posts.posts if p.title == "Linked"]
        found = posts.with_id(listed.post_id)
        assert found is not None
        return found.body_html

    return body


def test_a_linked_pages_new_permalink_shows_without_the_watcher(site: Path) -> None:
    """The page a post's `{% link %}` names is compared on each request, as the
    watched folders are: its new permalink shows on the next page.  Before,
    the preview kept the old URL until another watched file changed."""
    body = linking_post(site)
    preview_site = Site(lambda: load_settings(site / "newsletter.toml"))
    assert '/about-us/"' in body(preview_site)
    assert not preview_site.changed()
    (site / "docs" / "about.md").write_text("---\npermalink: /the-shed/\n---\nAbout\n")
    assert preview_site.changed()
    assert '/the-shed/"' in body(preview_site)


def expect_site_reloads(preview_site: Site, edits: list[Edit], expected: list[int]) -> None:
    """`count_reloads`, the watcher planned by the preview's own `watch_site`."""
    from newsletter.web.preview import watch_site

    def start(hub: Broadcaster, stop: asyncio.Event) -> Awaitable[None]:
        return watch_site(preview_site, hub, stop)

    assert count_reloads(start, edits, expected) == expected


def test_a_page_a_post_links_to_reloads_the_preview(site: Path) -> None:
    """Before, `docs/about.md` (linked with `{% link %}`) was not watched: a
    new permalink showed only after another change.  Now it reloads, and so
    does a page a post is edited to link to (the watcher plans again when the
    posts, read again for the reloaded page, link elsewhere)."""
    body = linking_post(site)
    (site / "docs" / "faq.md").write_text("---\npermalink: /faq/\n---\nFAQ\n")
    preview_site = Site(lambda: load_settings(site / "newsletter.toml"))
    body(preview_site)  # the page the browser shows
    post = site / "_posts" / "2024-03-03-linked.md"

    def link_the_faq() -> None:
        post.write_text(post.read_text() + "\nAnd [the FAQ]({% link docs/faq.md %}).\n")

    edits: list[Edit] = [
        lambda: (site / "docs" / "about.md").write_text("---\npermalink: /shed/\n---\nA\n"),
        link_the_faq,
        lambda: body(preview_site),  # the reloaded page reads the post again: no file changes
        lambda: (site / "docs" / "faq.md").write_text("---\npermalink: /questions/\n---\nQ\n"),
    ]
    expect_site_reloads(preview_site, edits, [1, 1, 0, 1])
    assert "/questions/" in body(preview_site)


def test_config_edits_reload_when_a_post_links_to_a_page_at_the_root(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`newsletter preview` run in the site: the configuration is
    `newsletter.toml`, relative, so a linked page's name was `about.md` and
    its folder `.`, watched beside the site's absolute root; the watcher
    reported `/site/./_config.yml`, which the filter did not know, and an
    in-place edit of `_config.yml`, `newsletter.toml` or the page reloaded
    nothing."""
    monkeypatch.chdir(site)
    (site / "about.md").write_text("---\npermalink: /about/\n---\nAbout\n")
    (site / "_posts" / "2024-03-03-linked.md").write_text(
        "---\ntitle: Linked\n---\n\nSee [us]({% link about.md %}).\n"
    )
    past = time.time() - 60
    for path in (*site.rglob("*.md"), *site.rglob("*.yml")):
        os.utime(path, (past, past))
    preview_site = Site(lambda: load_settings(Path("newsletter.toml")))
    preview_site.posts()  # the page the browser shows
    edits: list[Edit] = [
        append(site / "_config.yml", "# edited in place\n"),
        lambda: preview_site.posts(),  # the reloaded page reads them again
        append(site / "newsletter.toml", "# edited in place\n"),
        lambda: preview_site.posts(),
        lambda: (site / "about.md").write_text("---\npermalink: /us/\n---\nAbout\n"),
    ]
    expect_site_reloads(preview_site, edits, [1, 0, 1, 0, 1])


@pytest.mark.parametrize("folder", ["_data", "_includes", "theme"])
def test_a_watched_folder_made_after_the_start_is_watched_at_once(site: Path, folder: str) -> None:
    """A folder the preview reads from (`_data`, `_includes`, `[email]
    templates_dir`) that did not exist when the watcher was planned: its first
    file reloads the page, and so does the next edit (the watcher watches it
    from then on).  Before, neither did until something else re-planned it."""
    shutil.rmtree(site / folder)
    settings = load_settings(site / "newsletter.toml")
    made = site / folder / "first.yml"

    def make() -> None:
        made.parent.mkdir()
        made.write_text("tools: [spade]\n")

    expect_reloads(settings, [make, append(made, "more: [rake]\n")], [1, 1])


def test_a_post_in_a_category_folder_shows_and_reloads(site: Path) -> None:
    """Jekyll reads every `_posts` folder of the site (`en/_posts`: category
    "en"), not only the top one.  Before, only `_posts` was watched and
    compared: an edit to `en/_posts/...` neither reloaded the preview nor
    showed on the next page.  Now every folder the posts were found in is."""
    english = site / "en" / "_posts" / "2024-03-04-spring.md"
    english.parent.mkdir(parents=True)
    english.write_text("---\ntitle: Spring\n---\n\nBuds.\n")
    past = time.time() - 60
    for path in site.rglob("*.md"):
        os.utime(path, (past, past))
    preview_site = Site(lambda: load_settings(site / "newsletter.toml"))

    def body() -> str:
        posts = preview_site.posts()
        (listed,) = [p for p in posts.posts if p.title == "Spring"]
        found = posts.with_id(listed.post_id)
        assert found is not None
        return found.body_html

    assert "Buds." in body()
    edits: list[Edit] = [append(english, "\nBlossom.\n"), body]
    expect_site_reloads(preview_site, edits, [1, 0])
    assert "Blossom." in body()
