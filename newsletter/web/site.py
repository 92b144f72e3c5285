"""What the preview shows, computed the way `send` computes it, and cached.

`Site` re-reads the configuration and the posts only when a watched file
changed (a stat fingerprint, so it is right even without the file watcher),
and renders each (post, list) once per change.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from newsletter.config import ListSettings, Settings, utcnow
from newsletter.daemon.planning import list_takes
from newsletter.errors import StoreError
from newsletter.posts.collection import (
    Post,
    PostCollection,
    drafts_dir,
    load_posts,
    post_status,
)
from newsletter.posts.pages import files_unchanged
from newsletter.posts.stamps import site_folders
from newsletter.store import open_store, reading
from newsletter.store.schema import lists as lists_table
from newsletter.store.schema import mailings

if TYPE_CHECKING:
    from newsletter.email.rendered import RenderedEmail
    from newsletter.web.emailview import EmailView
    from newsletter.web.lint import Finding


@dataclass(frozen=True)
class Preview:
    post: Post
    list_name: str
    rendered: RenderedEmail
    message: EmailView
    findings: tuple[Finding, ...]


def build_preview(settings: Settings, post: Post, mailing_list: ListSettings) -> Preview:
    """The email exactly as `send` builds it, for a sample recipient."""
    # Imported for the first post shown: the index is up without them (lxml, MIME).
    from newsletter.delivery.outgoing import make_signer
    from newsletter.email.message import MessageTemplate, sample_recipient
    from newsletter.email.rendercache import cached_render
    from newsletter.web.emailview import view_of
    from newsletter.web.lint import lint_email

    rendered = cached_render([post], settings, mailing_list)
    template = MessageTemplate.build(rendered, settings)
    raw = template.personalise(
        sample_recipient(settings), mailing_key=f"preview:{post.post_id}:{mailing_list.name}"
    )
    signer = make_signer(settings)  # DKIM, exactly as a real send signs
    if signer is not None:
        raw = signer(raw)
    view = view_of(raw)
    findings = lint_email(rendered, view.html or "", post.warnings)
    return Preview(post, mailing_list.name, rendered, view, findings)


def default_theme() -> Path | None:
    """Where the bundled theme (the package newsletter.templates) lives on disk."""
    try:
        spec = importlib.util.find_spec("newsletter.templates")
    except ImportError:
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if locations:
        return Path(locations[0])
    # A source checkout whose theme folder is not (yet) an importable package.
    checkout = Path(__file__).resolve().parents[2] / "templates"
    return checkout if checkout.is_dir() else None


def theme_dirs(settings: Settings) -> list[Path]:
    theme = default_theme()
    dirs = [theme] if theme is not None else []
    if settings.email.templates_dir is not None:
        dirs.append(settings.email.templates_dir)
    return dirs


def watched_files(settings: Settings) -> list[Path]:
    """Single files whose change reloads the preview (configuration files)."""
    files = [p for p in (settings.config_path, settings.site.jekyll_config) if p is not None]
    return [p.resolve() for p in files]


def watched_dirs(settings: Settings) -> list[Path]:
    """Folders watched recursively: the posts, the drafts (previewed by name),
    what else a post is read from (Jekyll's `_data`, `_includes`, collections)
    and the templates; also those not made yet (`reload.watch` watches for them)."""
    folders = (
        settings.site.posts_dir,
        drafts_dir(settings),
        *site_folders(settings),
        *theme_dirs(settings),
    )
    return [p.resolve() for p in folders]


def post_folders(posts: PostCollection, watched: list[Path]) -> list[Path]:
    """The `_posts` folders the posts (and the broken ones) were found in that
    `watched` does not cover: a Jekyll site's `en/_posts` (category "en")."""
    marker = f"{os.sep}_posts{os.sep}"
    names = dict.fromkeys(  # by string: a `Path` and a resolve each cost ~40 ms on 1,000
        str(path)[: str(path).rfind(marker) + len(marker) - 1]
        for path in (*(p.path for p in posts.posts), *(p.path for p in posts.problems))
        if path is not None and marker in str(path)
    )
    folders = dict.fromkeys(Path(name).resolve() for name in names)
    return [f for f in folders if not any(f.is_relative_to(w) for w in watched)]


def _walk(paths: list[Path]) -> Iterator[tuple[str, int, int]]:
    """(path, mtime, size) of each file and of everything under each folder,
    as `sorted(root.rglob("*"))` lists them."""
    for root in paths:
        if root.is_file():
            try:
                st = root.stat()
            except OSError:
                continue
            yield str(root), st.st_mtime_ns, st.st_size
        else:
            yield from _walk_folder(str(root))


def _walk_folder(folder: str) -> Iterator[tuple[str, int, int]]:
    """`rglob` in `os.scandir`, which hands each entry's kind over with its name:
    every request walks the posts and the theme, and Path objects cost four
    times as much on 1,000 posts (sorting and hashing them).  Symlinked folders
    are not followed and unreadable ones are skipped, as `rglob` does."""
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError:
        return
    for entry in entries:
        try:
            st = entry.stat()
        except OSError:
            continue
        yield entry.path, st.st_mtime_ns, st.st_size
        try:
            below = entry.is_dir(follow_symlinks=False)
        except OSError:
            below = False
        if below:
            yield from _walk_folder(entry.path)


class Site:
    """Settings, posts and previews, reloaded when their files change."""

    def __init__(self, load: Callable[[], Settings]) -> None:
        self._load = load
        self._lock = threading.RLock()
        self._settings: Settings | None = None
        self.last_good: Settings | None = None  # what to keep watching while broken
        self._config_print: tuple[tuple[str, int, int], ...] = ()
        self._print: tuple[tuple[str, int, int], ...] = ()
        self._posts: PostCollection | None = None
        self._previews: dict[tuple[str, str], Preview] = {}
        self._engines: dict[str, Engine] = {}
        self._post_dirs: list[Path] = []  # `post_folders` of the posts read last
        # Called (from the thread that read them) when the posts link to other
        # pages, or lie in other folders, than before: the watcher plans again.
        self.on_replan: Callable[[], None] | None = None

    def engine(self) -> Engine | None:
        """The store, opened once per database URL; None while it cannot be opened."""
        with self._lock:
            settings = self.settings()
            url = settings.database.url
            if url not in self._engines:
                try:
                    self._engines[url] = open_store(settings)
                except StoreError:
                    return None
            return self._engines[url]

    def settings(self) -> Settings:
        """Current settings; raises ConfigError while the file is broken."""
        with self._lock:
            config_print = tuple(_walk(watched_files(self._settings))) if self._settings else ()
            if self._settings is None or config_print != self._config_print:
                self._settings = None
                self._settings = self._load()
                self.last_good = self._settings
                self._config_print = tuple(_walk(watched_files(self._settings)))
                self._posts = None
            return self._settings

    def changed(self) -> bool:
        """Whether a watched file changed since the settings, and the posts if
        they were read, were last read (nothing is read again here)."""
        with self._lock:
            if self._settings is None:
                return False
            if tuple(_walk(watched_files(self._settings))) != self._config_print:
                return True
            if self._posts is None:
                return False
            return self._posts_changed(tuple(_walk(self._folders(self._settings))))

    def _folders(self, settings: Settings) -> list[Path]:
        return [*watched_dirs(settings), *self._post_dirs]

    def post_dirs(self) -> list[Path]:
        """The other `_posts` folders the posts were found in (`post_folders`)."""
        with self._lock:
            return list(self._post_dirs)

    def _posts_changed(self, fingerprint: tuple[tuple[str, int, int], ...]) -> bool:
        """The watched folders, or a page a post links to, changed."""
        assert self._posts is not None
        return fingerprint != self._print or not files_unchanged(self._posts.linked)

    def linked_files(self) -> list[Path]:
        """The pages and files the posts link to or include
        (`{% link %}`, `{% include_relative %}`): watched as single files.

        Made absolute as the configuration files are: a name is relative to
        the folder the preview runs in when the configuration's path is (it
        is stat'ed as it stands, so the site root would join it twice), and a
        relative folder `.` watched beside the absolute root made the watcher
        report paths (`/site/./_config.yml`) the filter did not know."""
        with self._lock:
            posts = self._posts
        return [] if posts is None else [Path(name).resolve() for name, _key in posts.linked]

    def posts(self) -> PostCollection:
        with self._lock:
            settings = self.settings()
            fingerprint = tuple(_walk(self._folders(settings)))
            if self._posts is None or self._posts_changed(fingerprint):
                before = (self.linked_files(), self._post_dirs)
                self._posts = load_posts(settings, bodies="lazy")  # HTML when previewed
                self._post_dirs = post_folders(self._posts, watched_dirs(settings))
                if self._post_dirs != before[1]:
                    fingerprint = tuple(_walk(self._folders(settings)))
                self._print = fingerprint
                self._previews = {}
                if self.on_replan is not None and (self.linked_files(), self._post_dirs) != before:
                    self.on_replan()
            return self._posts

    def preview(self, post: Post, mailing_list: ListSettings) -> Preview:
        with self._lock:
            self.posts()  # drops stale previews
            key = (post.post_id, mailing_list.name)
            kept = self._previews.get(key)
            # Compared whole, as the render cache keys on every field: a draft
            # is read afresh per request, and no post folder tells of its edit.
            if kept is None or kept.post != post:
                kept = self._previews[key] = build_preview(self.settings(), post, mailing_list)
            return kept


# --------------------------------------------------------------------------- status


def mailing_states(engine: Engine | None) -> dict[tuple[str, str], str]:
    """(post_id, list name) → state of its newest mailing, from the store."""
    if engine is None:
        return {}
    try:
        with reading(engine) as conn:
            rows = conn.execute(
                select(mailings.c.post_id, lists_table.c.name, mailings.c.state)
                .join(lists_table, lists_table.c.id == mailings.c.list_id)
                .order_by(mailings.c.generation)
            ).all()
    except SQLAlchemyError:
        return {}
    return {(row.post_id, row.name): row.state for row in rows}


def list_status(
    settings: Settings,
    post: Post,
    mailing_list: ListSettings,
    states: dict[tuple[str, str], str],
    now: datetime | None = None,
) -> str:
    """One word for the index, by the rules the daemon plans with: a mailing's
    state when there is one, else `post_status` (due, future, unpublished…),
    or "not for this list" when the list's filter leaves the post out."""
    state = states.get((post.post_id, mailing_list.name))
    if state is not None:
        return "sent" if state == "done" else state
    status = post_status(post, now or utcnow(), settings.schedule.since)
    if status == "due" and not list_takes(post, mailing_list):
        return "not for this list"
    return status
