"""Find and parse Jekyll posts into frozen `Post` objects.

Two passes over the posts folder:

1. *sources*: read each file, split and parse its front matter, work out its
   date, slug, identity and URL (cheap, and needed by every post because
   `{% post_url %}` may point at any other post);
2. *posts*: render each body's Liquid, take out the byline, cut the excerpt
   and turn the Markdown into HTML (`markup`).

A file that cannot be read becomes a `Problem` (error) and the others go on
(invariant 5); things that were worked around (an unknown Liquid tag, a
duplicate key) become `Problem`s with severity "warning" and are also kept on
the post in `Post.warnings`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from newsletter.config import Settings
from newsletter.errors import NewsletterError, Problem
from newsletter.posts import index as post_index
from newsletter.posts import jekyll, lookup, permalink
from newsletter.posts import site as jekyllsite
from newsletter.posts import snapshot as whole
from newsletter.posts import text as posttext
from newsletter.posts.files import (  # noqa: F401 - POST_SUFFIXES, post_files: the package's API
    POST_SUFFIXES,
    FoundPost,
    post_files,
    site_post_files,
    where_posts_are,
)
from newsletter.posts.source import Source, read_source

# `markup` (Markdown, lxml) and `liquid` are imported where a post is built:
# a listing served from the index never needs them.

# Front-matter keys that become typed fields; every other key lands in `extra`.
KNOWN_KEYS = frozenset(
    {
        "id", "title", "date", "description", "image", "image_alt", "tags", "tag",
        "categories", "category", "author", "authors", "excerpt", "excerpt_separator",
        "published", "permalink", "lists", "newsletter", "slug", "draft",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Author:
    name: str
    url: str | None = None
    avatar: str | None = None  # absolute URL of a picture (`avatar`), when the site has one


@dataclass(frozen=True)
class Post:
    """One post, everything the rest of the pipeline needs, already resolved."""

    path: Path
    post_id: str  # identity: front matter `id`, else the path under posts_dir minus date
    slug: str
    title: str  # plain text (for the Subject)
    title_html: str  # safe inline HTML (for the heading)
    date: datetime  # timezone-aware
    url: str  # absolute
    description: str | None
    image: str | None  # absolute URL
    image_alt: str
    tags: tuple[str, ...]
    categories: tuple[str, ...]
    authors: tuple[Author, ...]
    excerpt_html: str
    excerpt_text: str
    body_html: str
    published: bool = True
    lists: tuple[str, ...] | None = None  # front matter `lists:`; None = every matching list
    newsletter: bool = True  # front matter `newsletter: false` opts out
    warnings: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def is_future(self, now: datetime) -> bool:
        return self.date > now


@dataclass(frozen=True)
class PostCollection:
    posts: tuple[Post, ...]
    problems: tuple[Problem, ...]
    # Where a path reference may start: the posts folder, then the site.
    roots: tuple[Path, ...] = ()
    # With `load_posts(bodies="lazy")`: fills in a post's HTML when it is looked up.
    complete: Callable[[Post], Post] | None = field(default=None, compare=False, repr=False)

    def find(self, ref: str) -> Post:
        """The one post `ref` names: by id, else by path (see `lookup`)."""
        return self._whole(lookup.resolve(self.posts, ref, self.roots))

    def with_id(self, post_id: str, *, whole: bool = True) -> Post | None:
        """The post whose id is exactly `post_id` (None when none or several);
        `whole=False`: as listed, without building its HTML (for a listing)."""
        found = lookup.with_id(self.posts, post_id)
        if found is None or not whole:
            return found
        return self._whole(found)

    def _whole(self, post: Post) -> Post:
        return post if self.complete is None else self.complete(post)

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")


PostStatus = Literal["sent", "unpublished", "opted-out", "future", "before-since", "due"]


def post_status(
    post: Post, now: datetime, since: datetime | None, sent: bool = False
) -> PostStatus:
    """Where a post stands for automatic sending (invariant 4), first match wins."""
    if sent:
        return "sent"
    if not post.published:
        return "unpublished"
    if not post.newsletter:
        return "opted-out"
    if post.is_future(now):
        return "future"
    if since is not None and post.date < since:
        return "before-since"
    return "due"


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
    found_posts = site_post_files(settings, undated)
    files = [f.path for f in found_posts]
    # Undated files are in the snapshot too: adding one adds a warning.
    snapshot = [*files, *undated]
    kind = f"bodies={bodies}"
    key = post_index.load_key(settings, snapshot) if index else None
    if (same := post_index.recall(settings, kind, key)) is not None:
        return same
    roots = (settings.site.posts_dir, settings.site.source_dir or settings.base_dir)
    # A listing (`bodies` False or "lazy") is the same either way: one kept load for both.
    whole_kind = "posts" if bodies is True else "listing"
    stored = whole.read(settings, whole_kind, key)
    if stored is not None:
        posts, problems, urls = stored
        complete = None
        if bodies == "lazy":
            complete = _Completer(settings, found_posts, urls, enabled=index).complete
        collected = PostCollection(posts, problems, roots, complete)
    else:
        collected, urls = _load(settings, found_posts, undated, progress, bodies, index)
        collected = replace(collected, roots=roots)
        whole.write(settings, whole_kind, key, (collected.posts, collected.problems, urls))
    if index:
        post_index.remember(settings, kind, key, collected)
    return collected


def _load(
    settings: Settings,
    found_posts: list[FoundPost],
    undated: list[Path],
    progress: Progress | None,
    bodies: bool | Literal["lazy"],
    index: bool,
) -> tuple[PostCollection, Mapping[str, str]]:
    """Both passes through the index; and the names `{% post_url %}` resolves."""
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
    site = _SiteContext.build(settings, sources, problems)
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
        complete = _Completer(settings, found_posts, site.post_urls, enabled=index, ready=ready)
    collected = PostCollection(
        tuple(posts), tuple(problems), (), complete.complete if complete else None
    )
    return collected, site.post_urls


def _read_indexed(found: FoundPost, *, settings: Settings) -> Source:
    return read_source(found, settings)


def _build_indexed(
    source: Source, site: _SiteContext, urls: post_index.Lookups | None, *, bodies: bool
) -> tuple[Post, list[Problem]]:
    """`_build_post` for the index: links to other posts resolve through `urls`,
    which records them, and the post's warnings are kept with it.  A post whose
    Liquid read `site.posts`, `site.categories`, `site.tags` or a collection
    depends on every post: `urls` records that too."""
    if urls is None:
        post = _build_post(source, site, bodies=bodies)
    else:
        watched = post_index.SiteWatch(site.liquid_site, site.settings)
        seen = replace(site, post_urls=urls, liquid_site=watched)
        post = _build_post(source, seen, bodies=bodies)
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
        found_posts: list[FoundPost],
        urls: Mapping[str, str],
        *,
        enabled: bool,
        ready: tuple[post_index.Passes, _SiteContext | None] | None = None,
    ) -> None:
        self.settings = settings
        self.found = {f.path: f for f in found_posts}
        self.urls = urls
        self.read = partial(_read_indexed, settings=settings)
        if ready is None:
            files = list(self.found)
            ready = (post_index.Passes(settings, files, bodies=True, enabled=enabled), None)
        self.indexes, self.site = ready

    def complete(self, post: Post) -> Post:
        return self.indexes.whole_post(post.path, partial(self._build, post.path), self.urls)[0]

    def _build(self, path: Path, urls: post_index.Lookups | None) -> tuple[Post, list[Problem]]:
        # A fresh copy of pass 1 (the index hands out copies): building adds warnings to it.
        source = self.indexes.source(self.found[path], self.read)
        return _build_indexed(source, self._site(), urls, bodies=True)

    def _site(self) -> _SiteContext:
        if self.site is None:
            sources: list[Source] = []
            problems: list[Problem] = []
            for found in self.found.values():
                try:
                    sources.append(self.indexes.source(found, self.read))
                except NewsletterError as exc:
                    problems.append(Problem.from_error(exc))
            self.site = _SiteContext.build(self.settings, sources, problems)
        return self.site


def read_post(path: Path, settings: Settings) -> Post:
    """One post on its own (its `{% post_url %}` links to other posts are dropped)."""
    for found in site_post_files(settings):
        if found.path.resolve() == path.resolve():
            break
    else:
        posts_dir = settings.site.posts_dir
        root = posts_dir if path.is_relative_to(posts_dir) else path.parent
        rel = path.relative_to(root)
        found = FoundPost(path, rel, rel.as_posix(), ())
    source = read_source(found, settings)
    return _build_post(source, _SiteContext.build(settings, [source], []))


def _post_problems(source: Source, post: Post) -> Iterator[Problem]:
    for warning in source.warnings:
        yield Problem(warning.message, post.path, warning.line, "warning", warning.key)


# --------------------------------------------------------------------------- pass 2


@dataclass(frozen=True)
class _SiteContext:
    settings: Settings
    liquid_site: Mapping[str, Any]
    post_urls: Mapping[str, str]  # file stem, path under posts_dir, … → absolute URL
    authors: Mapping[str, Any]  # _data/authors.yml and the authors collection
    includes: Path | None  # the site's _includes folder

    @classmethod
    def build(
        cls, settings: Settings, sources: list[Source], problems: list[Problem]
    ) -> _SiteContext:
        site = settings.site
        base = {
            "url": site.url.rstrip("/"),
            "baseurl": permalink.normalized_baseurl(site.baseurl),
            "title": site.title,
            "author": site.author,
            "timezone": site.timezone,
            "time": datetime.now(site.tz),
        }
        root = site.source_dir or (settings.base_dir if site.jekyll is None else None)
        variables = jekyllsite.site_variables(
            root, site.jekyll, base, [_page(s) for s in sources], problems
        )
        urls: dict[str, str] = {}
        for source in sources:
            stem = source.rel.with_suffix("").as_posix()
            keys = (
                source.path.stem,
                stem,
                source.rel.as_posix(),
                source.path.name,
                source.site_rel,
            )
            for key in keys:
                urls.setdefault(key, source.url)
        includes = root / "_includes" if root is not None else None
        includes = includes if includes is not None and includes.is_dir() else None
        return cls(settings, variables.liquid, urls, variables.authors, includes)

    def post_url(self, name: str) -> str | None:
        return self.post_urls.get(name.strip().strip("\"'"))

    def link(self, target: str) -> str | None:
        """`{% link _posts/2024-11-04-x.md %}`: the post under any folder prefix."""
        cleaned = target.strip().strip("\"'").lstrip("/")
        parts = cleaned.split("/")
        for start in range(len(parts)):
            found = self.post_urls.get("/".join(parts[start:]))
            if found:
                return found
        return None


_FALSE = (False, "false", "False", "no")


def _published(source: Source) -> bool:
    """`published: false`, `draft: true` and a `_drafts` folder all mean a draft
    (invariant 4: never sent automatically)."""
    if source.data.get("published", True) in _FALSE:
        return False
    if source.data.get("draft", False) not in (*_FALSE, None):
        return False
    return "_drafts" not in source.rel.parts


def _build_post(source: Source, site: _SiteContext, *, bodies: bool = True) -> Post:
    from newsletter.posts import markup

    data, warnings = source.data, source.warnings
    title_source = jekyll.scalar_text(data.get("title")) or jekyll.titleize(source.file_slug)
    heading = posttext.title_html(title_source)
    title = posttext.title_text(heading)
    tags = jekyll.tags(data)
    body = _liquid(source, site, title)
    if not body.strip():
        warnings.add("empty body: the email will have no excerpt", source.body_line)
    byline = posttext.take_byline(body)
    if byline is not None:
        body = byline.body
    authors = _authors(data, byline, site, source)
    body_html = excerpt_html = excerpt_text = ""
    if bodies:
        body_html = _safe_html(markup.convert(body, source.url, source.path.suffix))
        excerpt_html, excerpt_text = _excerpt(source, site, title, body, byline is not None)
    image, image_alt = _image(data, source, site, title)
    return Post(
        path=source.path,
        post_id=source.post_id,
        slug=source.slug,
        title=title,
        title_html=heading,
        date=source.date,
        url=source.url,
        description=jekyll.scalar_text(data.get("description")),
        image=image,
        image_alt=image_alt,
        tags=tags,
        categories=source.categories,
        authors=authors,
        excerpt_html=excerpt_html,
        excerpt_text=excerpt_text,
        body_html=body_html,
        published=_published(source),
        lists=jekyll.list_names(data.get("lists")),
        newsletter=data.get("newsletter", True) not in _FALSE,
        warnings=tuple(str(w) for w in warnings),
        extra=MappingProxyType({k: v for k, v in data.items() if k not in KNOWN_KEYS}),
    )


def _page(source: Source, title: str | None = None) -> dict[str, Any]:
    """Liquid's `page` (and each of `site.posts`) for a post."""
    if title is None:
        given = jekyll.scalar_text(source.data.get("title"))
        title = given or jekyll.titleize(source.file_slug)
    return {
        **source.data,
        "title": title,
        "date": source.date,
        "url": source.site_path,
        "slug": source.slug,
        "id": source.post_id,
        "path": source.site_rel,
        "categories": list(source.categories),
        "tags": list(jekyll.tags(source.data)),
        "collection": "posts",
    }


def _liquid(source: Source, site: _SiteContext, title: str, text: str | None = None) -> str:
    """The body (or `text`, a part of it: then warnings are not repeated) rendered."""
    from newsletter.posts import liquid as liquid_mod

    page = _page(source, title)
    result = liquid_mod.render(
        source.body if text is None else text,
        site=site.liquid_site,
        page=page,
        post_url=site.post_url,
        link=site.link,
        first_line=source.body_line,
        includes=site.includes,
    )
    if text is None:
        for warning in result.warnings:
            source.warnings.add(warning.message, warning.line)
    return result.text


# The raw text of a `{% raw %}` block may hold `{%` or `{{`; as entities they
# look the same in a mail client but can never be taken for template syntax.
_TEMPLATE_MARKERS = re.compile(r"\{(?=[%{])")


def _safe_html(fragment: str) -> str:
    return _TEMPLATE_MARKERS.sub("&#123;", fragment)


def _excerpt(
    source: Source, site: _SiteContext, title: str, body: str, had_byline: bool
) -> tuple[str, str]:
    """(HTML, text) of the excerpt: front matter `excerpt`, else Jekyll's (on a
    Jekyll site) or the first paragraph; where that shows no text (the post
    opens with `{% assign %}` or a comment), `description`, then the first
    paragraph with text."""
    from newsletter.posts import markup

    data = source.data
    explicit = data.get("excerpt")
    candidates: list[str] = []
    if isinstance(explicit, str) and explicit.strip():
        candidates.append(explicit)
    separator = data.get("excerpt_separator")
    if not isinstance(separator, str):
        separator = site.settings.site.excerpt_separator
    if site.settings.site.jekyll is not None:
        raw = source.body
        # The byline line is not the post's text: the excerpt starts after it.
        byline = posttext.take_byline(raw) if had_byline else None
        head = posttext.jekyll_excerpt_source(byline.body if byline else raw, separator)
        candidates.append(_liquid(source, site, title, head))
    else:
        candidates.append(posttext.excerpt_source(body, separator))
    description = jekyll.scalar_text(data.get("description"))
    if description:
        candidates.append(description)
    candidates.append(posttext.excerpt_source(body, None))
    html = text = ""
    for markdown_text in candidates:
        html = _safe_html(markup.convert(markdown_text, source.url, source.path.suffix))
        text = markup.html_to_text(html)
        if text.strip():
            break
    return html, text


def _authors(
    data: Mapping[str, Any],
    byline: posttext.Byline | None,
    site: _SiteContext,
    source: Source,
) -> tuple[Author, ...]:
    """Front matter `authors`/`author`, else the body's byline, else the site's author."""
    for key in ("authors", "author"):
        value = data.get(key)
        if value not in (None, "", []):
            found = tuple(
                a for item in jekyll.as_list(value) if (a := _author(item, site.authors, site))
            )
            if found:
                return found
            source.warnings.add(
                f"{key}: cannot read an author from {value!r}",
                jekyll.key_line(source.front, key),
                key,
            )
    if byline is not None:
        return tuple(Author(name, url) for name, url in byline.names)
    if site.settings.site.author:
        return (Author(site.settings.site.author),)
    return ()


def _author(item: Any, known: Mapping[str, Any], site: _SiteContext) -> Author | None:
    if isinstance(item, str) and item.strip() in known:
        item = known[item.strip()]
        if isinstance(item, str):
            return Author(posttext.one_line(item))
    if isinstance(item, Mapping):
        name = jekyll.scalar_text(item.get("name"))
        url = next(
            (
                jekyll.scalar_text(item.get(k))
                for k in ("url", "web", "website", "uri")
                if item.get(k)
            ),
            None,
        )
        return Author(name, url, _avatar(item.get("avatar"), site)) if name else None
    name = jekyll.scalar_text(item)
    return Author(name) if name else None


def _avatar(value: Any, site: _SiteContext) -> str | None:
    """An author's `avatar` as an absolute URL.  It is written once for the
    whole site, so a bare `images/me.png` is site-relative, not post-relative."""
    ref = jekyll.scalar_text(value)
    if not ref:
        return None
    if not (ref.startswith("/") or permalink.is_absolute(ref)):
        ref = "/" + ref
    return permalink.resolve(ref, site.settings.site.url, site.settings.site)


def _image(
    data: Mapping[str, Any], source: Source, site: _SiteContext, title: str
) -> tuple[str | None, str]:
    value = data.get("image")
    alt = jekyll.scalar_text(data.get("image_alt"))
    if isinstance(value, Mapping):
        alt = alt or jekyll.scalar_text(value.get("alt"))
        value = next((value[k] for k in ("path", "url", "src", "feature") if value.get(k)), None)
    ref = jekyll.scalar_text(value)
    if ref is None:
        return None, alt or title
    return permalink.resolve(ref, source.url, site.settings.site), alt or title
