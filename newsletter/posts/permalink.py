"""Post URLs the way Jekyll builds them, and absolute URLs for email.

Jekyll expands a permalink template (https://jekyllrb.com/docs/permalinks/)
with placeholders taken from the post's date *in the site's timezone*, its
categories and its slug; the result is a site-relative path to which `url`
and `baseurl` are prefixed.  Email clients have no "current page", so every
URL the pipeline hands on is absolute.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from urllib.parse import quote, urljoin, urlsplit

from newsletter.config import DEFAULT_PERMALINK, PERMALINK_STYLES, SiteSettings

OUTPUT_EXT = ".html"
# What Jekyll converts to HTML by default (`markdown_ext`, any case, and HTML);
# any other post keeps its own extension in `:output_ext` (`notes.txt`).
_CONVERTED = frozenset({".md", ".markdown", ".mkdown", ".mkdn", ".mkd", ".html"})


def output_ext(suffix: str) -> str:
    return OUTPUT_EXT if suffix.lower() in _CONVERTED or not suffix else suffix


# Longest names first so that `:title` never eats the start of `:titles`, etc.
_PLACEHOLDER_NAMES = (
    "slugified_categories",
    "short_month",
    "long_month",
    "short_year",
    "short_day",
    "categories",
    "output_ext",
    "long_day",
    "i_month",
    "minute",
    "second",
    "i_day",
    "y_day",
    "month",
    "title",
    "year",
    "hour",
    "week",
    "slug",
    "name",
    "day",
)
_PLACEHOLDER = re.compile(":(" + "|".join(_PLACEHOLDER_NAMES) + ")")
_SLASHES = re.compile(r"/{2,}")
# Jekyll's "pretty" slugify keeps these besides letters, marks and digits.
_PRETTY_KEEP = frozenset("._~!$&'()+,;=@")
_HYPHENS = re.compile(r"-{2,}")
# Characters Jekyll leaves unescaped in a URL path (RFC 3986 §3.3 pchar + "/").
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"


def _jekyll_slug(text: str, keep: frozenset[str] = frozenset()) -> str:
    """Jekyll's Utils.slugify core: every run of characters that are not a
    letter, a mark, a decimal digit (Ruby's `\\p{L}\\p{M}\\p{Nd}`) or in
    `keep` becomes one `-`; a leading and a trailing `-` go."""
    chars = (
        ch
        if ch in keep or unicodedata.category(ch)[0] in "LM" or unicodedata.category(ch) == "Nd"
        else "-"
        for ch in text
    )
    return _HYPHENS.sub("-", "".join(chars)).strip("-")


def slugify(text: str) -> str:
    """Jekyll's default slugify: lower-case, runs of other characters → `-`."""
    return _jekyll_slug(text).lower()


def pretty_slug(text: str) -> str:
    """Jekyll's `slugify(text, mode: "pretty", cased: true)`, used for `:title`."""
    return _jekyll_slug(text, _PRETTY_KEEP)


def slugify_mode(text: str, mode: str | None = None) -> str:
    """Jekyll's `slugify` filter with its `mode` argument."""
    mode = mode or "default"
    if mode == "raw":
        slug = re.sub(r"\s+", "-", text).strip("-")
    elif mode == "pretty":
        slug = pretty_slug(text)
    elif mode in ("ascii", "latin"):
        if mode == "latin":  # I18n.transliterate: accents dropped, the rest "?"
            text = unicodedata.normalize("NFKD", text)
            text = "".join(c for c in text if not unicodedata.combining(c))
        slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")
    elif mode == "default":
        slug = _jekyll_slug(text)
    else:
        slug = text
    return slug.lower()


def style(template: str) -> str:
    """A site-wide permalink: a named style (`pretty`, …) or a template.

    Only the site's `permalink` and the posts collection's may name a style;
    a post's own `permalink: pretty` is the literal path `/pretty`, as in Jekyll.
    """
    return PERMALINK_STYLES.get(template, template) or DEFAULT_PERMALINK


def expand(
    template: str,
    *,
    date: datetime,
    slug: str,
    categories: tuple[str, ...] = (),
    name: str | None = None,
    ext: str = OUTPUT_EXT,
) -> str:
    """The site-relative path for a post (always starts with `/`).

    `date` must already be in the site's timezone: Jekyll converts every post
    date to the site's zone before building the URL.
    """
    template = template or DEFAULT_PERMALINK
    values = _placeholders(date, slug, categories, name or slug)
    values["output_ext"] = ext
    path = _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
    # Jekyll's URL#sanitize_url: `..` is a `/`, `./` goes, slashes squeeze.
    path = ("/" + path).replace("..", "/").replace("./", "")
    path = _SLASHES.sub("/", path)
    return quote(path, safe=_PATH_SAFE)


def _placeholders(
    date: datetime, slug: str, categories: tuple[str, ...], name: str
) -> dict[str, str]:
    iso_week = date.isocalendar()
    unique: list[str] = []
    for category in categories:
        lowered = category.lower()
        if lowered not in unique:
            unique.append(lowered)
    return {
        "year": f"{date.year:04d}",
        "short_year": f"{date.year % 100:02d}",
        "month": f"{date.month:02d}",
        "i_month": str(date.month),
        "short_month": date.strftime("%b"),
        "long_month": date.strftime("%B"),
        "day": f"{date.day:02d}",
        "i_day": str(date.day),
        "y_day": f"{date.timetuple().tm_yday:03d}",
        "short_day": date.strftime("%a"),
        "long_day": date.strftime("%A"),
        "week": f"{iso_week.week:02d}",
        "hour": f"{date.hour:02d}",
        "minute": f"{date.minute:02d}",
        "second": f"{date.second:02d}",
        "title": pretty_slug(slug),
        "slug": slugify(slug),
        "name": slugify(name),
        "categories": "/".join(unique),
        "slugified_categories": "/".join(slugify(c) for c in unique),
        "output_ext": OUTPUT_EXT,
    }


def normalized_baseurl(baseurl: str) -> str:
    """`blog/` → `/blog`; empty stays empty."""
    stripped = baseurl.strip().strip("/")
    return f"/{stripped}" if stripped else ""


def site_root(site: SiteSettings) -> str:
    """`url` + `baseurl`, without a trailing slash."""
    return site.url.rstrip("/") + normalized_baseurl(site.baseurl)


def relative_url(path: str, site: SiteSettings) -> str:
    """Jekyll's `relative_url` filter: `baseurl` + path; absolute URLs unchanged."""
    if is_absolute(path):
        return path
    return normalized_baseurl(site.baseurl) + "/" + path.lstrip("/")


def absolute_url(path: str, site: SiteSettings) -> str:
    """Jekyll's `absolute_url` filter: `url` + `baseurl` + path."""
    if is_absolute(path):
        return path
    return site.url.rstrip("/") + relative_url(path, site)


def is_absolute(url: str) -> bool:
    return bool(urlsplit(url).scheme) or url.startswith("//")


def resolve(ref: str, page_url: str, site: SiteSettings) -> str:
    """A reference from a post (front matter `image:`, say) as an absolute URL.

    Relative references (`assets/x.png`, `../assets/x.png`) resolve against
    the post's URL as a browser would (RFC 3986 §5.2).  A root-relative
    `/x.png` is site-relative in Jekyll's themes (they write
    `{{ page.image | relative_url }}`), so it gets the `baseurl` too.
    """
    ref = ref.strip()
    if ref.startswith("//"):
        return f"{urlsplit(site.url).scheme or 'https'}:{ref}"
    if is_absolute(ref):
        return ref
    if ref.startswith("/"):
        base = normalized_baseurl(site.baseurl)
        if base and (ref == base or ref.startswith(base + "/")):
            return site.url.rstrip("/") + ref
        return absolute_url(ref, site)
    return urljoin(page_url, ref)
