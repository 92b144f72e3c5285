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
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from newsletter.config import Settings
from newsletter.errors import NewsletterError, PostError, Problem
from newsletter.posts import jekyll, lookup, markup, permalink
from newsletter.posts import liquid as liquid_mod
from newsletter.posts import text as posttext

POST_SUFFIXES = (".md", ".markdown")

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

    def find(self, ref: str) -> Post:
        """The one post `ref` names: by id, else by path (see `lookup`)."""
        return lookup.resolve(self.posts, ref, self.roots)

    def with_id(self, post_id: str) -> Post | None:
        """The post whose id is exactly `post_id` (None when none or several)."""
        return lookup.with_id(self.posts, post_id)

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


def post_files(posts_dir: Path) -> list[Path]:
    """Post files under `posts_dir`, skipping what Jekyll skips (dot files, backups)."""
    if not posts_dir.is_dir():
        raise PostError("posts folder not found", path=posts_dir, key="site.posts_dir")
    found = []
    for path in posts_dir.rglob("*"):
        rel = path.relative_to(posts_dir).parts
        if path.suffix.lower() not in POST_SUFFIXES or path.name.endswith("~"):
            continue
        if any(part.startswith((".", "#")) for part in rel) or not path.is_file():
            continue
        found.append(path)
    return sorted(found)


def load_posts(
    settings: Settings, *, progress: Progress | None = None, bodies: bool = True
) -> PostCollection:
    """Every post under the posts folder; a broken one is reported, not fatal.

    `bodies=False` skips Markdown → HTML (most of the cost) and leaves
    `body_html`, `excerpt_html` and `excerpt_text` empty: for listings only,
    never for rendering.
    """
    posts_dir = settings.site.posts_dir
    sources: list[_Source] = []
    problems: list[Problem] = []
    for path in post_files(posts_dir):
        try:
            sources.append(_read_source(path, posts_dir, settings))
        except NewsletterError as exc:
            problems.append(Problem.from_error(exc))
            if progress:
                progress()
    site = _SiteContext.build(settings, sources, problems)
    posts: list[Post] = []
    for source in sources:
        try:
            post = _build_post(source, site, bodies=bodies)
        except NewsletterError as exc:
            found = Problem.from_error(exc)
            problems.append(found if found.path else replace(found, path=source.path))
        except Exception as exc:  # invariant 5: one post never stops the rest
            problems.append(Problem(f"cannot read post: {type(exc).__name__}: {exc}", source.path))
        else:
            posts.append(post)
            problems.extend(_post_problems(source, post))
        if progress:
            progress()
    posts.sort(key=lambda p: (p.date, str(p.path)))
    roots = (posts_dir, settings.site.source_dir or settings.base_dir)
    return PostCollection(tuple(posts), tuple(problems), roots)


def read_post(path: Path, settings: Settings) -> Post:
    """One post on its own (its `{% post_url %}` links to other posts are dropped)."""
    posts_dir = settings.site.posts_dir
    root = posts_dir if path.is_relative_to(posts_dir) else path.parent
    source = _read_source(path, root, settings)
    return _build_post(source, _SiteContext.build(settings, [source], []))


def _post_problems(source: _Source, post: Post) -> Iterator[Problem]:
    for warning in source.warnings:
        yield Problem(warning.message, post.path, warning.line, "warning", warning.key)


# --------------------------------------------------------------------------- pass 1


@dataclass
class _Warnings:
    """Warnings found while reading one post, with their file lines."""

    items: list[_Warning] = field(default_factory=list)

    def add(self, message: str, line: int | None = None, key: str | None = None) -> None:
        self.items.append(_Warning(message, line, key))

    def __iter__(self) -> Iterator[_Warning]:
        return iter(self.items)


@dataclass(frozen=True)
class _Warning:
    message: str
    line: int | None
    key: str | None

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


@dataclass(frozen=True)
class _Source:
    path: Path
    rel: Path  # under the posts folder
    front: str  # raw YAML, for line numbers
    data: dict[str, Any]
    body: str
    body_line: int
    date: datetime  # in the site's timezone
    file_slug: str
    slug: str
    post_id: str
    categories: tuple[str, ...]
    site_path: str  # /2024/11/04/slug.html (Jekyll's page.url)
    url: str  # absolute
    warnings: _Warnings


def _read_source(path: Path, posts_dir: Path, settings: Settings) -> _Source:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PostError(f"cannot read: {exc.strerror}", path=path) from exc
    split = jekyll.split_front_matter(jekyll.decode(raw, path), path)
    front = jekyll.load_front_matter(split.front_matter, path)
    warnings = _Warnings()
    for key, line in front.duplicates:
        warnings.add(f"duplicate front matter key {key!r}; the last value wins", line, key)
    data = front.data
    name = jekyll.parse_file_name(path.stem)
    date = _date(data, name, split.front_matter, path, settings)
    given_slug = jekyll.scalar_text(data.get("slug"))
    slug = permalink.pretty_slug(given_slug) if given_slug else name.slug
    categories = jekyll.words(data.get("categories")) + jekyll.words(data.get("category"))
    template = jekyll.scalar_text(data.get("permalink")) or settings.site.permalink
    site_path = permalink.expand(template, date=date, slug=slug, categories=categories)
    rel = path.relative_to(posts_dir)
    post_id = jekyll.scalar_text(data.get("id")) or (rel.parent / name.slug).as_posix()
    return _Source(
        path=path,
        rel=rel,
        front=split.front_matter,
        data=data,
        body=split.body,
        body_line=split.body_line,
        date=date,
        file_slug=name.slug,
        slug=slug,
        post_id=post_id,
        categories=categories,
        site_path=site_path,
        url=permalink.site_root(settings.site) + site_path,
        warnings=warnings,
    )


def _date(
    data: Mapping[str, Any], name: jekyll.FileName, front: str, path: Path, settings: Settings
) -> datetime:
    """Front matter `date:` wins over the file name's; either is read in the site's zone."""
    tz = settings.site.tz
    if data.get("date") not in (None, ""):
        line = jekyll.key_line(front, "date")
        moment = jekyll.parse_date(data["date"], tz, path=path, line=line)
    elif name.date is not None:
        moment = jekyll.file_date(name.date, tz, path)
    else:
        raise PostError(
            "no date: set `date:` in the front matter or name the file YYYY-MM-DD-title.md",
            path=path,
            key="date",
        )
    # Jekyll shows and builds URLs from the date in the site's timezone.
    return moment.astimezone(tz)


# --------------------------------------------------------------------------- pass 2


@dataclass(frozen=True)
class _SiteContext:
    settings: Settings
    liquid_site: Mapping[str, Any]
    post_urls: Mapping[str, str]  # file stem, path under posts_dir, … → absolute URL
    authors: Mapping[str, Any]  # Jekyll's _data/authors.yml

    @classmethod
    def build(
        cls, settings: Settings, sources: list[_Source], problems: list[Problem]
    ) -> _SiteContext:
        site = settings.site
        liquid_site = {
            "url": site.url.rstrip("/"),
            "baseurl": permalink.normalized_baseurl(site.baseurl),
            "title": site.title,
            "author": site.author,
            "timezone": site.timezone,
            "time": datetime.now(site.tz),
        }
        urls: dict[str, str] = {}
        for source in sources:
            stem = source.rel.with_suffix("").as_posix()
            for key in (source.path.stem, stem, source.rel.as_posix(), source.path.name):
                urls.setdefault(key, source.url)
        return cls(settings, liquid_site, urls, _load_authors(settings, problems))

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


def _published(source: _Source) -> bool:
    """`published: false`, `draft: true` and a `_drafts` folder all mean a draft
    (invariant 4: never sent automatically)."""
    if source.data.get("published", True) in _FALSE:
        return False
    if source.data.get("draft", False) not in (*_FALSE, None):
        return False
    return "_drafts" not in source.rel.parts


def _load_authors(settings: Settings, problems: list[Problem]) -> Mapping[str, Any]:
    root = settings.site.source_dir or settings.base_dir
    try:
        return jekyll.authors_data(root)
    except NewsletterError as exc:
        problems.append(
            Problem(f"authors data ignored: {exc.message}", exc.path, exc.line, "warning")
        )
        return {}


def _build_post(source: _Source, site: _SiteContext, *, bodies: bool = True) -> Post:
    data, warnings = source.data, source.warnings
    title_source = jekyll.scalar_text(data.get("title")) or jekyll.titleize(source.file_slug)
    heading = posttext.title_html(title_source)
    title = posttext.title_text(heading)
    tags = jekyll.words(data.get("tags")) + jekyll.words(data.get("tag"))
    body = _liquid(source, site, title)
    if not body.strip():
        warnings.add("empty body: the email will have no excerpt", source.body_line)
    byline = posttext.take_byline(body)
    if byline is not None:
        body = byline.body
    authors = _authors(data, byline, site, source)
    excerpt_md = _excerpt_markdown(data, body, site)
    body_html = excerpt_html = excerpt_text = ""
    if bodies:
        body_html = _safe_html(markup.markdown_to_html(body, source.url))
        excerpt_html = _safe_html(markup.markdown_to_html(excerpt_md, source.url))
        excerpt_text = markup.html_to_text(excerpt_html)
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


def _liquid(source: _Source, site: _SiteContext, title: str) -> str:
    page = {
        **source.data,
        "title": title,
        "date": source.date,
        "url": source.site_path,
        "slug": source.slug,
        "id": source.post_id,
        "path": source.rel.as_posix(),
        "categories": list(source.categories),
        "tags": list(jekyll.words(source.data.get("tags"))),
    }
    result = liquid_mod.render(
        source.body,
        site=site.liquid_site,
        page=page,
        post_url=site.post_url,
        link=site.link,
        first_line=source.body_line,
    )
    for warning in result.warnings:
        source.warnings.add(warning.message, warning.line)
    return result.text


# The raw text of a `{% raw %}` block may hold `{%` or `{{`; as entities they
# look the same in a mail client but can never be taken for template syntax.
_TEMPLATE_MARKERS = re.compile(r"\{(?=[%{])")


def _safe_html(fragment: str) -> str:
    return _TEMPLATE_MARKERS.sub("&#123;", fragment)


def _excerpt_markdown(data: Mapping[str, Any], body: str, site: _SiteContext) -> str:
    explicit = data.get("excerpt")
    if isinstance(explicit, str) and explicit.strip():
        return explicit
    separator = data.get("excerpt_separator")
    if not isinstance(separator, str):
        separator = site.settings.site.excerpt_separator
    return posttext.excerpt_source(body, separator)


def _authors(
    data: Mapping[str, Any],
    byline: posttext.Byline | None,
    site: _SiteContext,
    source: _Source,
) -> tuple[Author, ...]:
    """Front matter `authors`/`author`, else the body's byline, else the site's author."""
    for key in ("authors", "author"):
        value = data.get(key)
        if value not in (None, "", []):
            found = tuple(a for item in jekyll.as_list(value) if (a := _author(item, site.authors)))
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


def _author(item: Any, known: Mapping[str, Any]) -> Author | None:
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
        return Author(name, url) if name else None
    name = jekyll.scalar_text(item)
    return Author(name) if name else None


def _image(
    data: Mapping[str, Any], source: _Source, site: _SiteContext, title: str
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
