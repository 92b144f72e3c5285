"""Liquid's view of posts: `page`, each of `site.posts`, and `site.related_posts`.

A post's fields (front matter, `url`, `date`, …) are a plain dict, as before.
What Jekyll 4.3 computes from other posts or from a render is made only when
a template reads it, as Jekyll's own drops do (lib/jekyll/drops/document_drop.rb,
excerpt.rb, related_posts.rb):

* `excerpt`: the post's content up to its `excerpt_separator` (or the site's),
  rendered (Liquid, then Markdown) with the post as `page`; a front matter
  `excerpt:` is used as written, as Jekyll does;
* `content`: what Jekyll holds while it renders the posts oldest first: an
  older post's content is rendered (Liquid, then Markdown: HTML), the post's
  own and a newer one's still as written (Markdown and Liquid, raw);
* `previous` / `next`: the neighbouring posts by date (ties by path), nil at
  either end;
* `site.related_posts`: without `--lsi`, the ten newest posts other than this one.

Reading `previous`, `next` or `related_posts` reads the list of posts, which
comes from pass 1 (front matter only, through the index): the post index
records that the post depends on every post (`index.SiteWatch`), and no other
post is rendered for it, except an `excerpt` actually read.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Made", "PostDrop", "PostSite", "Renderer", "Shelf", "rendering"]

LAZY_KEYS = frozenset({"excerpt", "content", "previous", "next"})
RELATED_POSTS = 10  # Jekyll's RelatedPosts without LSI: `last(11).reverse - [post]`, first 10

# The excerpts being rendered (by path): a post whose excerpt reads its own
# excerpt would never finish (Jekyll overflows its stack); here it is empty.
_RENDERING: contextvars.ContextVar[frozenset[tuple[str, str]]] = contextvars.ContextVar(
    "excerpts_rendering", default=frozenset()
)

# The post being rendered (its sort key): whose `content` is rendered already.
_RENDERING_NOW: contextvars.ContextVar[tuple[Any, ...] | None] = contextvars.ContextVar(
    "rendering_now", default=None
)


@dataclass(frozen=True)
class Made:
    """A rendered part of a post, and the names its render looked up (other
    posts, pages, included files): whoever reads it again, from the cache,
    looked them up too, for the index to see them change."""

    text: str
    asked: tuple[str, ...] = ()


class Renderer(Protocol):
    """What renders a post's parts for Liquid, by the post's `path`."""

    def liquid_excerpt(self, path: str) -> Made: ...

    def liquid_content(self, path: str) -> Made: ...

    def raw_content(self, path: str) -> str: ...

    def replay(self, asked: tuple[str, ...]) -> None: ...


class Shelf:
    """Every post of one load in date order, and how to render its parts.

    `renderer` is set once the site's context exists (it needs `site`
    itself); until then, and without one, an excerpt or content is empty."""

    def __init__(self) -> None:
        self.oldest_first: list[PostDrop] = []
        self._position: dict[str, int] = {}
        self.renderer: Renderer | None = None
        self._made: dict[tuple[str, str], Made] = {}

    def drop(self, fields: Mapping[str, Any], sort_key: tuple[Any, ...]) -> PostDrop:
        found = PostDrop(fields, self)
        found.sort_key = sort_key
        return found

    def arrange(self, drops: list[PostDrop]) -> list[PostDrop]:
        """`drops` by date, newest first (`site.posts`), as Jekyll sorts them:
        oldest first by (date, path), then reversed."""
        self.oldest_first = sorted(drops, key=lambda d: d.sort_key)
        self._position = {str(d.get("path")): i for i, d in enumerate(self.oldest_first)}
        return self.oldest_first[::-1]

    def neighbour(self, path: str, step: int) -> PostDrop | None:
        at = self._position.get(path)
        if at is None or not 0 <= at + step < len(self.oldest_first):
            return None
        return self.oldest_first[at + step]

    def excerpt(self, path: str) -> str:
        return self._rendered("excerpt", path)

    def content(self, path: str) -> str:
        if self.renderer is None:
            return ""
        at, now = self._position.get(path), _RENDERING_NOW.get()
        mine = self.oldest_first[at].sort_key if at is not None else None
        if now is None or mine is None or mine >= now:
            return self.renderer.raw_content(path)
        return self._rendered("content", path)

    def _rendered(self, part: str, path: str) -> str:
        renderer = self.renderer
        if renderer is None:
            return ""
        made = self._made.get((part, path))
        if made is not None:
            renderer.replay(made.asked)
            return made.text
        rendering = _RENDERING.get()
        if (part, path) in rendering:
            return ""
        token = _RENDERING.set(rendering | {(part, path)})
        try:
            if part == "excerpt":
                made = renderer.liquid_excerpt(path)
            else:
                made = renderer.liquid_content(path)
            self._made[(part, path)] = made
        finally:
            _RENDERING.reset(token)
        return made.text


@contextlib.contextmanager
def rendering(sort_key: tuple[Any, ...]) -> Iterator[None]:
    """While the post with `sort_key` renders: posts older than it are rendered."""
    token = _RENDERING_NOW.set(sort_key)
    try:
        yield
    finally:
        _RENDERING_NOW.reset(token)


class PostDrop(dict[str, Any]):
    """A post's Liquid fields; `excerpt`, `previous` and `next` made when read.

    A dict (filters such as `where`, `sort` and `jsonify` take it as one);
    the lazy keys are not stored, so `jsonify` leaves them out."""

    sort_key: tuple[Any, ...] = ()

    def __init__(self, fields: Mapping[str, Any], shelf: Shelf) -> None:
        super().__init__(fields)
        self._shelf = shelf
        # `page` is a copy of the post's entry in `site.posts`, which reads
        # its neighbours through the site (so that the index notices).
        self._site: Mapping[str, Any] | None = None

    def __missing__(self, key: str) -> Any:
        if key not in LAZY_KEYS:
            raise KeyError(key)
        path = str(dict.get(self, "path"))
        if key == "excerpt":
            return self._shelf.excerpt(path)
        if key == "content":
            return self._shelf.content(path)
        if self._site is not None:
            self._site.get("posts")  # the page depends on the other posts
        return self._shelf.neighbour(path, -1 if key == "previous" else 1)

    def get(self, key: str, default: Any = None) -> Any:
        if key in self or key not in LAZY_KEYS:
            return dict.get(self, key, default)
        return self[key]

    def __str__(self) -> str:
        # Jekyll prints a post's content here; a Python dict's repr never
        # belongs in an email (nor Jekyll's raw Markdown, for that matter).
        return ""

    def as_page(self, site: Mapping[str, Any], **changed: Any) -> PostDrop:
        """The post as `page` while it renders, `site` being what it reads."""
        page = PostDrop({**self, **changed}, self._shelf)
        page._site = site
        return page


class PostSite(Mapping[str, Any]):
    """Liquid's `site` while one post renders: the site's, plus `related_posts`."""

    def __init__(self, inner: Mapping[str, Any], page: Mapping[str, Any]) -> None:
        self.inner = inner
        self.page = page

    def __getitem__(self, key: str) -> Any:
        if key == "related_posts":
            return self._related()
        return self.inner[key]

    def get(self, key: str, default: Any = None) -> Any:
        if key == "related_posts":
            return self._related()
        return self.inner.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key == "related_posts" or key in self.inner

    def __iter__(self) -> Iterator[str]:
        yield from self.inner
        yield "related_posts"

    def __len__(self) -> int:
        return len(self.inner) + 1

    def _related(self) -> list[Any]:
        posts = self.inner.get("posts") or []
        path = self.page.get("path")
        return [p for p in posts if p.get("path") != path][:RELATED_POSTS]
