"""Who wrote a post: front matter `authors`/`author` (names, mappings, keys of
`_data/authors.yml` or of the `authors` collection), else the body's byline,
else the site's author; and their links, made absolute and never a script.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from newsletter.config import SiteSettings
from newsletter.posts import jekyll, permalink
from newsletter.posts import text as posttext
from newsletter.posts.model import Author

if TYPE_CHECKING:
    from newsletter.posts.building import SiteContext
    from newsletter.posts.source import Source

__all__ = ["post_authors", "safe_link"]


def post_authors(
    data: Mapping[str, Any],
    byline: posttext.Byline | None,
    site: SiteContext,
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
        # A link in the body: relative to the post, as the body's own links.
        return tuple(
            Author(name, url and safe_link(url, source.url, site.settings.site))
            for name, url in byline.names
        )
    return _site_author(site)


def _author(item: Any, known: Mapping[str, Any], site: SiteContext) -> Author | None:
    key = item.strip() if isinstance(item, str) else None
    if key and key in known:
        entry = known[key]
        if isinstance(entry, str):
            return Author(posttext.one_line(entry))
        # An entry without a name (`alice: {twitter: alice}`) is still alice:
        # never nobody, never the site's author.
        return _author_entry(entry if isinstance(entry, Mapping) else {}, key, site)
    if isinstance(item, Mapping):
        return _author_entry(item, None, site)
    name = jekyll.scalar_text(item)
    return Author(name) if name else None


def _author_entry(entry: Mapping[str, Any], key: str | None, site: SiteContext) -> Author | None:
    """An author's mapping, shown as its `name`, else `display_name`, else the
    `_data/authors.yml` key it was found by (as jekyll-seo-tag shows it)."""
    shown = (jekyll.scalar_text(entry.get(k)) for k in ("name", "display_name"))
    name = next((n for n in shown if n), None) or key
    if not name:
        return None
    url = next(
        (
            jekyll.scalar_text(entry.get(k))
            for k in ("url", "web", "website", "uri")
            if entry.get(k)
        ),
        None,
    )
    return Author(name, _site_link(url, site), _site_link(entry.get("avatar"), site))


def _site_author(site: SiteContext) -> tuple[Author, ...]:
    """The site's author, with the `url` and `avatar` of `_config.yml`'s
    `author:` mapping when that is who it is (newsletter.toml may name another)."""
    name = site.settings.site.author
    if not name:
        return ()
    given = (site.settings.site.jekyll or {}).get("author")
    if isinstance(given, Mapping) and jekyll.scalar_text(given.get("name")) == name:
        return (_author_entry(given, name, site) or Author(name),)
    return (Author(name),)


def _site_link(value: Any, site: SiteContext) -> str | None:
    """An author's `url` or `avatar` as an absolute URL.  It is written once for
    the whole site, so a bare `images/me.png` is site-relative, not post-relative."""
    ref = jekyll.scalar_text(value)
    if not ref:
        return None
    if not (ref.startswith("/") or permalink.is_absolute(ref)):
        ref = "/" + ref
    return safe_link(ref, site.settings.site.url, site.settings.site)


# Browsers ignore ASCII whitespace and controls inside a scheme (java\tscript:).
_SCRIPT_SCHEME = re.compile(r"(?:javascript|vbscript|data(?!image/)):", re.I)


def safe_link(ref: str, page_url: str, site: SiteSettings) -> str | None:
    """`ref` resolved like a link in the body, None for a script (or a
    non-image `data:`) URL: it becomes an href or a src in every email."""
    if _SCRIPT_SCHEME.match(re.sub(r"[\x00-\x20]", "", ref)):
        return None
    return permalink.resolve(ref, page_url, site)
