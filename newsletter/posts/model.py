"""What a post is once read: frozen `Post`s and `Author`s, a `PostCollection`,
and where a post stands for automatic sending.

Kept apart from reading (`collection`, `building`) so that a load served
whole from the state folder (`snapshot`) imports nothing that parses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from newsletter.errors import PostError, Problem
from newsletter.posts import lookup

__all__ = ["Author", "Post", "PostCollection", "PostStatus", "post_status"]


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
    # Each page or file the posts' `{% link %}` and `{% include_relative %}`
    # read, with its (size, mtime_ns) then (`pages.LinkTargets`).
    linked: tuple[tuple[str, tuple[int, int] | None], ...] = field(default=(), compare=False)

    def find(self, ref: str) -> Post:
        """The one post `ref` names: by id, else by path (see `lookup`); when
        it names a file that failed to load, the error says why."""
        try:
            found = lookup.resolve(self.posts, ref, self.roots)
        except PostError:
            problem = lookup.failed(self.problems, ref, self.roots)
            if problem is None:
                raise
            raise PostError(
                problem.message, path=problem.path, line=problem.line, key=problem.key
            ) from None
        return self._whole(found)

    def with_id(self, post_id: str, *, whole: bool = True) -> Post | None:
        """The post whose id is exactly `post_id` (None when none or several);
        `whole=False`: as listed, without building its HTML (for a listing)."""
        found = lookup.with_id(self.posts, post_id)
        if found is None or not whole:
            return found
        return self._whole(found)

    def require_own_id(self, post: Post) -> Post:
        """`post` itself, when no other post has its id (a mailing of it to a
        list is recorded by id); else that error (`lookup.shared_id_problems`)."""
        for problem in self.problems:
            if problem.key == "id" and problem.severity == "error" and problem.path == post.path:
                raise PostError(problem.message, path=problem.path, key=problem.key)
        return post

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
