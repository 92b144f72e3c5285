"""Pass 2 of reading posts: from a `Source` (front matter, date, URL) to a `Post`.

Renders the body's Liquid, takes out the byline, cuts the excerpt and turns
the Markdown into HTML (`markup`), with the site's variables (`SiteContext`)
that every post of a load shares.  `collection` imports this module only
when a post must be built: a listing served from the index never does.
"""

from __future__ import annotations

import contextvars
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from newsletter.config import Settings
from newsletter.errors import Problem
from newsletter.posts import authors as postauthors
from newsletter.posts import drops, jekyll, pages, permalink
from newsletter.posts import site as jekyllsite
from newsletter.posts import text as posttext
from newsletter.posts.model import Post
from newsletter.posts.rubytime import RubyTime
from newsletter.posts.source import Source

__all__ = ["KNOWN_KEYS", "SiteContext", "build_post"]

# `markup` (Markdown, lxml) and `liquid` are imported where a body is built:
# a listing (`bodies=False`) never needs them.

# Front-matter keys that become typed fields; every other key lands in `extra`.
KNOWN_KEYS = frozenset(
    {
        "id", "title", "date", "description", "image", "image_alt", "tags", "tag",
        "categories", "category", "author", "authors", "excerpt", "excerpt_separator",
        "published", "permalink", "lists", "newsletter", "slug", "draft",
    }
)  # fmt: skip


@dataclass(frozen=True)
class SiteContext:
    settings: Settings
    liquid_site: Mapping[str, Any]
    # File stem, path under posts_dir, … → URL under `baseurl`; `pages.PAGE` +
    # a page's or static file's path → its URL (`pages.LinkTargets`).
    post_urls: Mapping[str, str]
    authors: Mapping[str, Any]  # _data/authors.yml and the authors collection
    includes: Path | None  # the site's _includes folder
    root: Path | None = None  # the site's source (`include_relative` stays inside it)
    # Each post's entry in `site.posts` by path, and their order (`previous`, `next`).
    shelf: drops.Shelf = field(default_factory=drops.Shelf)
    sources: Mapping[str, Source] = field(default_factory=dict)

    @property
    def block_html(self) -> bool:
        """`_config.yml`'s `kramdown: parse_block_html: true`: Markdown inside HTML blocks."""
        options = (self.settings.site.jekyll or {}).get("kramdown")
        return isinstance(options, Mapping) and options.get("parse_block_html") is True

    @classmethod
    def build(
        cls, settings: Settings, sources: list[Source], problems: list[Problem]
    ) -> SiteContext:
        site = settings.site
        base = {
            "url": site.url.rstrip("/"),
            "baseurl": permalink.normalized_baseurl(site.baseurl),
            "title": site.title,
            "author": site.author,
            "timezone": site.timezone,
            "time": RubyTime.of(datetime.now(site.tz)),
        }
        root = site.source_dir or (settings.base_dir if site.jekyll is None else None)
        shelf = drops.Shelf()
        entries = shelf.arrange([shelf.drop(_page(s), _order(s)) for s in sources])
        variables = jekyllsite.site_variables(root, site.jekyll, base, entries, problems)
        urls: dict[str, str] = {}
        baseurl = permalink.normalized_baseurl(site.baseurl)
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
                # Site-relative, as Jekyll prints it (`{{ site.url }}{% post_url x %}`
                # is then a whole URL); Markdown's links are made absolute later.
                urls.setdefault(key, baseurl + source.site_path)
        includes = root / "_includes" if root is not None else None
        includes = includes if includes is not None and includes.is_dir() else None
        targets = pages.LinkTargets(urls, settings)
        by_path = {s.site_rel: s for s in sources}
        context = cls(
            settings, variables.liquid, targets, variables.authors, includes, root, shelf, by_path
        )
        shelf.renderer = context
        return context

    def liquid_excerpt(self, path: str) -> drops.Made:
        """`post.excerpt` of the post at `path` (Jekyll's `relative_path`) as
        Jekyll renders it: Liquid (with that post as `page`), then its converter."""
        source = self.sources.get(path)
        if source is None:
            return drops.Made("")
        return self._recorded(lambda site: excerpt_for_liquid(source, site))

    def liquid_content(self, path: str) -> drops.Made:
        """`post.content` of a post rendered already: its Liquid, then its converter."""
        source = self.sources.get(path)
        if source is None:
            return drops.Made("")
        return self._recorded(lambda site: _converted(source, site, source.body))

    def raw_content(self, path: str) -> str:
        source = self.sources.get(path)
        return source.body if source is not None else ""

    def replay(self, asked: tuple[str, ...]) -> None:
        """Look up again what a cached render looked up, through the post
        rendering now (the index records each name with its answer)."""
        urls = (_CURRENT_SITE.get() or self).post_urls
        for key in asked:
            urls.get(key)

    def _recorded(self, make: Callable[[SiteContext], str]) -> drops.Made:
        site = _CURRENT_SITE.get() or self
        recorder = _Recorder(site.post_urls)
        text = make(replace(site, post_urls=recorder))
        return drops.Made(text, tuple(recorder.asked))

    def include_file(self, path: Path) -> str | None:
        """A digest of the file `{% include_relative %}` reads (None: missing),
        asked through the post's lookups so that the index sees it change."""
        return self.post_urls.get(pages.FILE + str(path))

    def post_url(self, name: str) -> str | None:
        return self.post_urls.get(name.strip().strip("\"'"))

    def link(self, target: str) -> str | None:
        """`{% link about.md %}`: that page or static file, exactly, as Jekyll
        finds it; `{% link _posts/2024-11-04-x.md %}`: the post under any folder prefix."""
        cleaned = target.strip().strip("\"'")
        page = self.post_urls.get(pages.PAGE + cleaned)
        if page:
            return page
        cleaned = cleaned.lstrip("/")
        parts = cleaned.split("/")
        for start in range(len(parts)):
            found = self.post_urls.get("/".join(parts[start:]))
            if found:
                return found
        return None


class _Recorder(Mapping[str, str]):
    """A view of the names links resolve through that notes each name asked."""

    def __init__(self, inner: Mapping[str, str]) -> None:
        self.inner = inner
        self.asked: dict[str, None] = {}

    def __getitem__(self, key: str) -> str:
        self.asked[key] = None
        return self.inner[key]

    def get(self, key: str, default: Any = None) -> Any:
        self.asked[key] = None
        return self.inner.get(key, default)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.asked[key] = None
        return key in self.inner

    def __iter__(self) -> Iterator[str]:
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


# The site context a post renders with (the index's watching one, while it
# builds a post): an excerpt read from Liquid renders with it too.
_CURRENT_SITE: contextvars.ContextVar[SiteContext | None] = contextvars.ContextVar(
    "current_site", default=None
)

_FALSE = (False, "false", "False", "no")


# A quoted `published: "false"` is a string, true to Ruby: Jekyll publishes it.
_FALSE_WORDS = frozenset({"false", "no", "off", "n", "0"})


def _published(source: Source, jekyll_site: bool) -> bool:
    """`published: false`, `draft: true` and a `_drafts` folder all mean a draft
    (invariant 4: never sent automatically).  On a Jekyll site only a YAML
    `false` unpublishes, as in Jekyll (`data["published"] == false`): a quoted
    "false" is true there, the post is on the blog, and it is mailed, with a
    warning.  In a plain folder of posts, where no Jekyll publishes anything,
    a quoted "false" holds the post back (a mail cannot be taken back), with
    a warning too."""
    published = source.data.get("published", True)
    if published is False:
        return False
    if isinstance(published, str | int) and str(published).strip().lower() in _FALSE_WORDS:
        if not jekyll_site:
            source.warnings.add(
                f"published: {published!r} is quoted (or a number): taken as false here, "
                "but Jekyll would take it as true; write `published: false` without quotes",
                jekyll.key_line(source.front, "published"),
                "published",
            )
            return False
        source.warnings.add(
            f"published: {published!r} is quoted (or a number), which Jekyll takes as "
            "true: the post is published and will be mailed; write `published: false` "
            "without quotes to hold it back",
            jekyll.key_line(source.front, "published"),
            "published",
        )
    if source.data.get("draft", False) not in (*_FALSE, None):
        return False
    return "_drafts" not in source.rel.parts


def build_post(source: Source, site: SiteContext, *, bodies: bool = True) -> Post:
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
    authors = postauthors.post_authors(data, byline, site, source)
    body_html = excerpt_html = excerpt_text = ""
    if bodies:
        from newsletter.posts import markup  # (Markdown, lxml: not for a listing)

        body_html = _safe_html(
            markup.convert(body, source.url, source.path.suffix, block_html=site.block_html)
        )
        excerpt_html, excerpt_text = _excerpt(source, site, title, body, byline is not None)
    image, image_alt = _image(data, source, site, title)
    # (before `warnings` is read: it may add one)
    published = _published(source, site.settings.site.jekyll is not None)
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
        published=published,
        lists=jekyll.list_names(data.get("lists")),
        newsletter=data.get("newsletter", True) not in _FALSE,
        warnings=tuple(str(w) for w in warnings),
        extra=MappingProxyType({k: v for k, v in data.items() if k not in KNOWN_KEYS}),
    )


def _order(source: Source) -> tuple[Any, ...]:
    """Jekyll's Document#<=>: by date, then by path."""
    return (source.date, str(source.path))


def _page(source: Source, title: str | None = None) -> dict[str, Any]:
    """Liquid's `page` (and each of `site.posts`) for a post."""
    if title is None:
        given = jekyll.scalar_text(source.data.get("title"))
        title = given or jekyll.titleize(source.file_slug)
    return {
        **source.data,
        "title": title,
        "date": RubyTime.of(source.date),
        "url": source.site_path,
        "slug": source.slug,
        # Jekyll's Document#id (not newsletter's post id): the URL's folder and the slug.
        "id": posixpath.join(posixpath.dirname(source.site_path.rstrip("/")) or "/", source.slug),
        "name": source.path.name,
        "ext": source.path.suffix,
        "relative_path": source.site_rel,
        "path": source.site_rel,
        "categories": list(source.categories),
        "tags": list(jekyll.tags(source.data)),
        "collection": "posts",
    }


def _liquid(source: Source, site: SiteContext, title: str, text: str | None = None) -> str:
    """The body (or `text`, a part of it: then warnings are not repeated) rendered."""
    from newsletter.posts import liquid as liquid_mod

    fields = _page(source, title)
    entry = site.shelf.drop(fields, _order(source))
    page = entry.as_page(site.liquid_site)
    relative = None
    if site.root is not None:
        relative = liquid_mod.Relative(source.path.parent, site.root, site.include_file)
    token = _CURRENT_SITE.set(site)
    try:
        with drops.rendering(entry.sort_key):
            result = liquid_mod.render(
                source.body if text is None else text,
                site=drops.PostSite(site.liquid_site, page),
                page=page,
                post_url=site.post_url,
                link=site.link,
                first_line=source.body_line,
                includes=site.includes,
                relative=relative,
            )
    finally:
        _CURRENT_SITE.reset(token)
    if text is None:
        for warning in result.warnings:
            source.warnings.add(warning.message, warning.line)
    return result.text


# The raw text of a `{% raw %}` block may hold `{%` or `{{`; as entities they
# look the same in a mail client but can never be taken for template syntax.
_TEMPLATE_MARKERS = re.compile(r"\{(?=[%{])")


def _safe_html(fragment: str) -> str:
    return _TEMPLATE_MARKERS.sub("&#123;", fragment)


def _separator(source: Source, site: SiteContext) -> str:
    separator = source.data.get("excerpt_separator")
    return separator if isinstance(separator, str) else site.settings.site.excerpt_separator


def excerpt_for_liquid(source: Source, site: SiteContext) -> str:
    """Jekyll's `post.excerpt`: the raw content (byline line and all: Jekyll
    knows no bylines) up to the separator, its Liquid rendered with the post as
    `page`, then converted as the post is (Markdown to HTML, the rest as is).
    Not sanitised here: it lands in a post's text, which is."""
    head = posttext.jekyll_excerpt_source(source.body, _separator(source, site))
    return _converted(source, site, head)


def _converted(source: Source, site: SiteContext, text: str) -> str:
    """`text` (the post's or a part of it) as Jekyll renders it for Liquid:
    its Liquid with the post as `page`, then the post's converter."""
    title = jekyll.scalar_text(source.data.get("title")) or jekyll.titleize(source.file_slug)
    rendered = _liquid(source, site, title, text)
    if source.path.suffix.lower() not in jekyllsite.MARKDOWN_EXTS:
        return rendered
    from newsletter.posts import markup

    # kramdown leaves a blank line between blocks (it shows where the excerpt
    # lands in Markdown again: `| strip_html` in a list) and drops the spaces
    # that ended a paragraph's last line (`| number_of_words` counts them);
    # Python-Markdown does neither.
    html = _PARAGRAPH_END.sub("</p>", markup.markdownify(rendered))
    return _BLOCK_END.sub("\\1\n\n", html)


_PARAGRAPH_END = re.compile(r"[ \t]+</p>")
_BLOCK_END = re.compile(r"(</(?:p|[uod]l|h[1-6]|blockquote|pre|table|div)>|<hr\s*/?>)\n(?=<)")


def _excerpt(
    source: Source, site: SiteContext, title: str, body: str, had_byline: bool
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
    separator = _separator(source, site)
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
        suffix = source.path.suffix
        html = _safe_html(
            markup.convert(markdown_text, source.url, suffix, block_html=site.block_html)
        )
        text = markup.html_to_text(html)
        if text.strip():
            break
    return html, text


def _image(
    data: Mapping[str, Any], source: Source, site: SiteContext, title: str
) -> tuple[str | None, str]:
    value = data.get("image")
    alt = jekyll.scalar_text(data.get("image_alt"))
    if isinstance(value, Mapping):
        alt = alt or jekyll.scalar_text(value.get("alt"))
        value = next((value[k] for k in ("path", "url", "src", "feature") if value.get(k)), None)
    ref = jekyll.scalar_text(value)
    if ref is None:
        return None, alt or title
    # From the site's root, as Jekyll's themes and plugins read it
    # (`relative_url`, jekyll-seo-tag's `absolute_url`), not from the post's page.
    home = site.settings.site.home.rstrip("/") + "/"
    return postauthors.safe_link(ref, home, site.settings.site), alt or title
