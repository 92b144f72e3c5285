"""Find and parse Jekyll posts into frozen `Post` objects.

FOUNDATION STUB: the data classes are the contract; the parsing below is the
minimum and is being replaced by the full Jekyll-faithful reader.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import frontmatter

from newsletter import markup
from newsletter.config import Settings
from newsletter.errors import PostError, Problem

POST_SUFFIXES = (".md", ".markdown")


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

    def find(self, ref: str) -> Post:
        """A post by id, slug, file name or path."""
        for post in self.posts:
            if ref in (post.post_id, post.slug, post.path.name, str(post.path)):
                return post
        raise PostError(f"no post matches {ref!r}")


def load_posts(settings: Settings) -> PostCollection:
    """Every post under the posts folder; a broken one is reported, not fatal."""
    posts_dir = settings.site.posts_dir
    posts: list[Post] = []
    problems: list[Problem] = []
    for path in sorted(p for p in posts_dir.rglob("*") if p.suffix in POST_SUFFIXES):
        try:
            posts.append(read_post(path, settings))
        except PostError as exc:
            problems.append(Problem.from_error(exc))
    return PostCollection(tuple(sorted(posts, key=lambda p: p.date)), tuple(problems))


_NAME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})-(.+)$")


def read_post(path: Path, settings: Settings) -> Post:
    try:
        doc = frontmatter.loads(path.read_text(encoding="utf-8"))
    except Exception as exc:
        raise PostError(f"cannot read: {exc}", path=path) from exc
    match = _NAME.match(path.stem)
    slug = match.group(4) if match else path.stem
    date = doc.get("date")
    if not isinstance(date, datetime):
        date = (
            datetime(int(match.group(1)), int(match.group(2)), int(match.group(3)))
            if match
            else datetime(1970, 1, 1)
        )
    if date.tzinfo is None:
        date = date.replace(tzinfo=settings.site.tz)
    body = markup.markdown_to_html(doc.content, settings.site.url)
    title = str(doc.get("title") or slug.replace("-", " ").title())
    return Post(
        path=path,
        post_id=slug,
        slug=slug,
        title=title,
        title_html=title,
        date=date,
        url=f"{settings.site.url}/{slug}.html",
        description=doc.get("description"),
        image=None,
        image_alt=title,
        tags=tuple(doc.get("tags") or ()),
        categories=(),
        authors=(),
        excerpt_html=body.split("</p>")[0] + "</p>",
        excerpt_text=markup.html_to_text(body.split("</p>")[0]),
        body_html=body,
        published=doc.get("published", True) is not False,
    )
