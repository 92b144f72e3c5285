"""Pass 1 of reading posts: each file's front matter (with Jekyll's
`defaults:`), date, slug, categories, identity and URL — cheap, and needed for
every post before any body is rendered (`{% post_url %}` may point anywhere).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from newsletter.config import Settings
from newsletter.errors import PostError
from newsletter.posts import jekyll, permalink
from newsletter.posts import site as jekyllsite
from newsletter.posts.files import FoundPost


@dataclass
class Warnings:
    """Warnings found while reading one post, with their file lines."""

    items: list[PostWarning] = field(default_factory=list)

    def add(self, message: str, line: int | None = None, key: str | None = None) -> None:
        self.items.append(PostWarning(message, line, key))

    def __iter__(self) -> Iterator[PostWarning]:
        return iter(self.items)


@dataclass(frozen=True)
class PostWarning:
    message: str
    line: int | None
    key: str | None

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


@dataclass(frozen=True)
class Source:
    path: Path
    rel: Path  # under the posts folder (prefixed by the folders above a nested `_posts`)
    site_rel: str  # Jekyll's relative_path
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
    warnings: Warnings


def read_source(found: FoundPost, settings: Settings) -> Source:
    path = found.path
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PostError(f"cannot read: {exc.strerror}", path=path) from exc
    text = jekyll.decode(raw, path)
    if settings.site.jekyll is not None and not text.startswith("---"):
        # Jekyll publishes a dated `_posts` file without front matter as it is.
        split = jekyll.SplitFile("", text, 1)
    else:
        split = jekyll.split_front_matter(text, path)
    front = jekyll.load_front_matter(split.front_matter, path)
    warnings = Warnings()
    for key, line in front.duplicates:
        warnings.add(f"duplicate front matter key {key!r}; the last value wins", line, key)
    data = front.data
    config = settings.site.jekyll
    defaults = jekyllsite.defaults_for(config, found.site_rel) if config is not None else {}
    data = jekyllsite.deep_merge(defaults, data) if defaults else data
    name = jekyll.parse_file_name(path.stem)
    date = _date(data, name, split.front_matter, path, settings, "date" in front.quoted)
    given_slug = jekyll.scalar_text(data.get("slug"))
    # Jekyll drops the file name's trailing dots (`wait....md`) from its slug.
    slug = permalink.pretty_slug(given_slug) if given_slug else name.slug.rstrip(".")
    categories = jekyll.categories(front.data, defaults, found.categories, data)
    site_path = permalink.expand(
        _permalink(data, settings),
        date=date,
        slug=slug,
        categories=categories,
        name=path.stem,
        ext=permalink.output_ext(path.suffix),
    )
    rel = found.rel
    post_id = jekyll.scalar_text(data.get("id")) or (rel.parent / name.slug).as_posix()
    return Source(
        path=path,
        rel=rel,
        site_rel=found.site_rel,
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


def _permalink(data: Mapping[str, Any], settings: Settings) -> str:
    """Front matter `permalink` (taken literally, as Jekyll does), else the posts
    collection's (`collections: posts: permalink:`), else the site's."""
    own = jekyll.scalar_text(data.get("permalink"))
    if own:
        return own
    collections = (settings.site.jekyll or {}).get("collections")
    posts = collections.get("posts") if isinstance(collections, Mapping) else None
    if isinstance(posts, Mapping) and isinstance(posts.get("permalink"), str):
        return posts["permalink"]  # literal too: `weekdate` here is the path /weekdate
    return permalink.style(settings.site.permalink)


def _date(
    data: Mapping[str, Any],
    name: jekyll.FileName,
    front: str,
    path: Path,
    settings: Settings,
    quoted: bool,
) -> datetime:
    """Front matter `date:` wins over the file name's; either is read in the site's zone."""
    tz = settings.site.tz
    if "date" in data:
        # Jekyll parses any `date:` it is given, an empty one too (its build
        # fails: "Invalid date ''"), never falling back to the file name's.
        value = "" if data["date"] is None else data["date"]
        line = jekyll.key_line(front, "date")
        moment = jekyll.parse_date(value, tz, path=path, line=line, quoted=quoted)
    elif name.date is not None:
        moment = jekyll.file_date(name.date, tz, path)
    elif "_drafts" in path.parts:
        # `jekyll build --drafts` dates an undated draft by its file's mtime.
        moment = datetime.fromtimestamp(path.stat().st_mtime, tz)
    else:
        raise PostError(
            "no date: set `date:` in the front matter or name the file YYYY-MM-DD-title.md",
            path=path,
            key="date",
        )
    # Jekyll shows and builds URLs from the date in the site's timezone.
    return moment.astimezone(tz)
