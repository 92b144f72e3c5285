"""Find and read Jekyll posts into frozen `Post` objects, through the index.

Two passes over the posts folder:

1. *sources*: read each file, split and parse its front matter, work out its
   date, slug, identity and URL (cheap, and needed by every post because
   `{% post_url %}` may point at any other post): `source`;
2. *posts*: render each body's Liquid, take out the byline, cut the excerpt
   and turn the Markdown into HTML: `building`.

Each pass goes through the index (`index`), so only what changed is read
again; when nothing changed, the last load comes back whole (`snapshot`),
and neither pass is even imported.

A file that cannot be read becomes a `Problem` (error) and the others go on
(invariant 5); things that were worked around (an unknown Liquid tag, a
duplicate key) become `Problem`s with severity "warning" and are also kept on
the post in `Post.warnings`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from newsletter.config import Settings
from newsletter.errors import NewsletterError, PostError, Problem
from newsletter.posts import index as post_index
from newsletter.posts import lookup
from newsletter.posts import snapshot as whole
from newsletter.posts.files import (  # noqa: F401 - POST_SUFFIXES, post_files: the package's API
    POST_SUFFIXES,
    FoundPost,
    PostFiles,
    post_files,
    site_post_files,
    where_posts_are,
)
from newsletter.posts.model import (  # noqa: F401 - the package's API, as before
    Author,
    Post,
    PostCollection,
    PostStatus,
    post_status,
)

if TYPE_CHECKING:
    from newsletter.posts.building import SiteContext
    from newsletter.posts.source import Source

# Pass 1 (`source`: YAML) and pass 2 (`building`: Liquid, Markdown, lxml) are
# imported where a post is read: a load served whole never needs them.

# --------------------------------------------------------------------------- loading

Progress = Callable[[], None]


def load_posts(
    settings: Settings,
    *,
    progress: Progress | None = None,
    bodies: bool | Literal["lazy"] = True,
    index: bool = True,
) -> PostCollection:
    """Every post under the posts folder; a broken one is reported, not fatal.

    `bodies=False` skips Markdown → HTML (most of the cost) and leaves
    `body_html`, `excerpt_html` and `excerpt_text` empty: for listings only,
    never for rendering.  `bodies="lazy"` lists posts the same way, but
    `find()` returns a post with its HTML, built then: for commands that
    render a few posts of many.  Only posts whose file (or what they read) changed
    since the last call are parsed again (`newsletter.posts.index`); when none
    did, the last load comes back whole (`newsletter.posts.snapshot`);
    `index=False` reads every post and keeps nothing.
    """
    undated: list[Path] = []
    found_files = PostFiles(settings, undated)
    # Undated files are in the snapshot too: adding one adds a warning.
    snapshot: list[str | Path] = [*found_files.paths, *undated]
    kind = f"bodies={bodies}"
    key = post_index.load_key(settings, snapshot) if index else None
    if (same := post_index.recall(settings, kind, key)) is not None:
        return same
    roots = (settings.site.posts_dir, settings.site.source_dir or settings.base_dir)
    # A listing (`bodies` False or "lazy") is the same either way: one kept load for both.
    whole_kind = "posts" if bodies is True else "listing"
    stored = whole.read(settings, whole_kind, key)
    if stored is not None and not _pages_unchanged(stored[3]):
        stored = None  # a page a post links to changed
    if stored is not None:
        posts, problems, urls, linked = stored
        complete = None
        if bodies == "lazy":
            stats = dict(key[1]) if key is not None else None
            completer = _Completer(
                settings, found_files.found, urls, enabled=index, paths=(found_files.paths, stats)
            )
            complete = completer.complete
        collected = PostCollection(posts, problems, roots, complete, linked)
    else:
        found_posts = found_files.found()
        collected, urls = _load(settings, found_posts, undated, progress, bodies, index)
        shared = lookup.shared_id_problems(collected.posts, roots)
        shared += lookup.shared_page_problems(collected.posts, roots)
        collected = replace(collected, roots=roots, problems=(*collected.problems, *shared))
        from newsletter.posts import pages  # (imported by `_load` already)

        linked = urls.consulted() if isinstance(urls, pages.LinkTargets) else ()
        if linked is None:  # a linked page changed too recently to be trusted
            key = None
        whole.write(settings, whole_kind, key, (collected.posts, collected.problems, urls, linked))
        if isinstance(urls, pages.LinkTargets):
            collected = replace(collected, linked=urls.read_so_far())
    if index:
        still = partial(_pages_unchanged, linked) if linked else None
        post_index.remember(settings, kind, key, collected, still)
    return collected


def _pages_unchanged(linked: tuple[tuple[str, post_index.FileKey | None], ...]) -> bool:
    """The pages and static files the posts' `{% link %}`s read are as they were."""
    if not linked:
        return True
    from newsletter.posts import pages

    return pages.files_unchanged(linked)


def _load(
    settings: Settings,
    found_posts: list[FoundPost],
    undated: list[Path],
    progress: Progress | None,
    bodies: bool | Literal["lazy"],
    index: bool,
) -> tuple[PostCollection, Mapping[str, str]]:
    """Both passes through the index; and the names `{% post_url %}` resolves."""
    from newsletter.posts.building import SiteContext

    files = [f.path for f in found_posts]
    indexes = post_index.Passes(settings, files, bodies=bodies is True, enabled=index)
    read = partial(_read_indexed, settings=settings)
    sources: list[Source] = []
    problems: list[Problem] = []
    for found in found_posts:
        try:
            sources.append(indexes.source(found, read))
        except NewsletterError as exc:
            problems.append(Problem.from_error(exc))
            if progress:
                progress()
    site = SiteContext.build(settings, sources, problems)
    posts: list[Post] = []
    for source in sources:
        try:
            build = partial(_build_indexed, source, site, bodies=bodies is True)
            post, warned = indexes.post(source.path, build, site.post_urls)
        except NewsletterError as exc:
            problem = Problem.from_error(exc)
            problems.append(problem if problem.path else replace(problem, path=source.path))
        except Exception as exc:  # invariant 5: one post never stops the rest
            problems.append(Problem(f"cannot read post: {type(exc).__name__}: {exc}", source.path))
        else:
            posts.append(post)
            problems.extend(warned)
        if progress:
            progress()
    indexes.save()
    problems.extend(
        Problem("not a post: Jekyll reads only _posts files named YYYY-MM-DD-title.md", path,
                None, "warning")
        for path in undated
    )  # fmt: skip
    posts.sort(key=lambda p: (p.date, str(p.path)))
    complete = None
    if bodies == "lazy":
        ready = (indexes, site)
        complete = _Completer(
            settings, lambda: found_posts, site.post_urls, enabled=index, ready=ready
        )
    collected = PostCollection(
        tuple(posts), tuple(problems), (), complete.complete if complete else None
    )
    return collected, site.post_urls


def _read_indexed(found: FoundPost, *, settings: Settings) -> Source:
    from newsletter.posts.source import read_source

    return read_source(found, settings)


def _build_indexed(
    source: Source, site: SiteContext, urls: post_index.Lookups | None, *, bodies: bool
) -> tuple[Post, list[Problem]]:
    """`building.build_post` for the index: links to other posts resolve through `urls`,
    which records them, and the post's warnings are kept with it.  A post whose
    Liquid read `site.posts`, `site.categories`, `site.tags` or a collection
    depends on every post: `urls` records that too."""
    from newsletter.posts import building

    if urls is None:
        post = building.build_post(source, site, bodies=bodies)
    else:
        watched = post_index.SiteWatch(site.liquid_site, site.settings)
        seen = replace(site, post_urls=urls, liquid_site=watched)
        post = building.build_post(source, seen, bodies=bodies)
        if watched.touched:
            urls.depends_on_all_posts()
    return post, list(_post_problems(source, post))


class _Completer:
    """For `bodies="lazy"`: one listed post again, with its HTML.

    A post built before comes from the index of posts with HTML, checked
    against `urls` (the names its links resolved through); only building
    one needs pass 1 of every post and the site's variables, made then."""

    def __init__(
        self,
        settings: Settings,
        found_posts: Callable[[], list[FoundPost]],
        urls: Mapping[str, str],
        *,
        enabled: bool,
        ready: tuple[post_index.Passes, SiteContext | None] | None = None,
        paths: tuple[list[str], Mapping[str, post_index.FileKey] | None] | None = None,
    ) -> None:
        self.settings = settings
        self._found_posts = found_posts
        self._found: dict[Path, FoundPost] | None = None
        # The post files' paths and their sizes and mtimes as the load read
        # them: `site.posts` for the index without a `FoundPost` or a stat each.
        self._paths = paths
        self._urls = urls
        self._targets: Mapping[str, str] | None = None
        self.enabled = enabled
        self.read = partial(_read_indexed, settings=settings)
        self._indexes: post_index.Passes | None = ready[0] if ready else None
        self.site: SiteContext | None = ready[1] if ready else None

    @property
    def found(self) -> dict[Path, FoundPost]:
        if self._found is None:  # on first use: most loads complete no post
            self._found = {f.path: f for f in self._found_posts()}
        return self._found

    @property
    def indexes(self) -> post_index.Passes:
        if self._indexes is None:  # on first use: most loads complete no post
            stamp = None
            if self._paths is not None:
                stamp = post_index.posts_stamp(*self._paths)
            files = list(self.found) if stamp is None else []
            self._indexes = post_index.Passes(
                self.settings, files, bodies=True, enabled=self.enabled, all_posts=stamp
            )
        return self._indexes

    @property
    def urls(self) -> Mapping[str, str]:
        """The names links resolve through, pages included (`pages.LinkTargets`)."""
        if self._targets is None:
            from newsletter.posts import pages

            self._targets = pages.LinkTargets.of(self._urls, self.settings)
        return self._targets

    def complete(self, post: Post) -> Post:
        return self.indexes.whole_post(post.path, partial(self._build, post.path), self.urls)[0]

    def _build(self, path: Path, urls: post_index.Lookups | None) -> tuple[Post, list[Problem]]:
        # A fresh copy of pass 1 (the index hands out copies): building adds warnings to it.
        source = self.indexes.source(self.found[path], self.read)
        return _build_indexed(source, self._site(), urls, bodies=True)

    def _site(self) -> SiteContext:
        from newsletter.posts.building import SiteContext

        if self.site is None:
            sources: list[Source] = []
            problems: list[Problem] = []
            for found in self.found.values():
                try:
                    sources.append(self.indexes.source(found, self.read))
                except NewsletterError as exc:
                    problems.append(Problem.from_error(exc))
            self.site = SiteContext.build(self.settings, sources, problems)
        return self.site


def find_post_or_draft(posts: PostCollection, ref: str, settings: Settings) -> Post:
    """The post `ref` names, or else a draft in the site's `_drafts` folder
    (Jekyll's: never read into the collection, never mailed to a list):
    by its path or its name, to render, preview or send with --test."""
    try:
        return posts.find(ref)
    except PostError:
        draft = _draft_file(ref, settings)
        if draft is None:
            raise
    # Read alone, its path is no longer under `_drafts` for `building._published`.
    return replace(read_post(draft, settings), published=False)


def drafts_dir(settings: Settings) -> Path:
    """The site's `_drafts` folder (there or not)."""
    return (settings.site.source_dir or settings.base_dir) / "_drafts"


def _draft_file(ref: str, settings: Settings) -> Path | None:
    from newsletter.posts.site import MARKDOWN_EXTS

    source = settings.site.source_dir or settings.base_dir
    drafts = drafts_dir(settings)
    # No `~` expansion: the preview server passes a URL's words here.
    given = Path(ref)
    candidates = [given, source / given] if given.suffix else []
    candidates += [drafts / f"{ref}{suffix}" for suffix in sorted(MARKDOWN_EXTS)]
    inside = drafts.resolve()
    for path in candidates:
        try:
            # Only the site's own drafts.
            if path.is_file() and path.resolve().is_relative_to(inside):
                return path.resolve()
        except (OSError, ValueError):  # a NUL, a name too long: no draft
            continue
    return None


def read_post(path: Path, settings: Settings) -> Post:
    """One post on its own (its `{% post_url %}` links to other posts are dropped)."""
    from newsletter.posts.building import SiteContext, build_post
    from newsletter.posts.source import read_source

    for found in site_post_files(settings):
        if found.path.resolve() == path.resolve():
            break
    else:
        posts_dir = settings.site.posts_dir
        root = posts_dir if path.is_relative_to(posts_dir) else path.parent
        rel = path.relative_to(root)
        found = FoundPost(path, rel, rel.as_posix(), ())
    source = read_source(found, settings)
    return build_post(source, SiteContext.build(settings, [source], []))


def _post_problems(source: Source, post: Post) -> Iterator[Problem]:
    for warning in source.warnings:
        yield Problem(warning.message, post.path, warning.line, "warning", warning.key)
