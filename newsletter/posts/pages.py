"""What `{% link %}` points at besides posts: the site's pages and static files.

Jekyll 4.3's link tag (lib/jekyll/tags/link.rb) looks the path up among the
pages, static files and documents by exact `relative_path` and prints the
item's URL under `baseurl`:

* a page (a file with front matter, outside `_` / `.` folders unless
  `include:` names them, not `exclude:`d) has its `permalink:` (front
  matter or `defaults:` for type `pages`), else `/:path/:basename` with the
  site's permalink style for pages (`.html`, `/` for pretty, nothing for a
  style ending in neither), `/:path/` for an index, and
  `/:path/:basename:output_ext` for what is not HTML (`feed.xml`);
* a static file (no front matter) is its own path, `/assets/x.pdf`
  (`{% link /assets/x.pdf %}` works too).

`LinkTargets` is the mapping `{% post_url %}` and `{% link %}` resolve
through: the posts' URLs, plus a page looked up on demand under
`PAGE + relative_path`.  The post index records every answer, so a post
linking to a page is rebuilt when the page's URL changes; `consulted` lists
the page files read, for the whole load kept in the state folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from newsletter.config import Settings
from newsletter.posts import permalink

__all__ = ["FILE", "PAGE", "LinkTargets", "page_url"]

PAGE = "\0page:"  # the key prefix of a page or static file (never a post's name)
FILE = "\0file:"  # the key prefix of a file `{% include_relative %}` reads: its digest
_RACY_NS = 2_000_000_000  # as index.RACY_NS: a fresher file may change unseen
_HTML = frozenset({".html", ".xhtml", ".htm"})
_YAML_HEADER = re.compile(rb"---\s*\r?\n")  # Jekyll's Utils.has_yaml_header?
_ESCAPED_AS_IS = re.compile(r"[a-zA-Z0-9./-]+")  # Jekyll's URL.escape_path leaves these
# Addressable's normalize, as Jekyll's relative_url applies it.
_URL_SAFE = "/:@!$&'()*+,;=-._~%?#"

FileKey = tuple[int, int]


class LinkTargets(Mapping[str, str]):
    """Post names → URLs under `baseurl`, and `PAGE + path` → a page's, read when asked.

    Iterating (and `len`) sees the posts only; pickled, it is the plain
    mapping of posts (a page is read again by whoever asks next)."""

    def __init__(self, posts: Mapping[str, str], settings: Settings) -> None:
        self.posts = posts
        self.settings = settings
        self._pages: dict[str, str | None] = {}
        self._consulted: dict[str, FileKey | None] = {}
        self._racy = False

    @classmethod
    def of(cls, urls: Mapping[str, str], settings: Settings) -> LinkTargets:
        return urls if isinstance(urls, LinkTargets) else cls(urls, settings)

    def __getitem__(self, key: str) -> str:
        if key.startswith(FILE):
            return self._file(key)
        if not key.startswith(PAGE):
            return self.posts[key]
        rel = key[len(PAGE) :]
        if rel not in self._pages:
            self._pages[rel] = self._page(rel)
        found = self._pages[rel]
        if found is None:
            raise KeyError(key)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self.posts)

    def __len__(self) -> int:
        return len(self.posts)

    def __reduce__(self) -> tuple[Any, ...]:
        return dict, (dict(self.posts),)

    def consulted(self) -> tuple[tuple[str, FileKey | None], ...] | None:
        """Each page file read (or found missing) with its size and mtime then;
        None when one had changed too recently to be trusted by those."""
        return None if self._racy else tuple(sorted(self._consulted.items()))

    def read_so_far(self) -> tuple[tuple[str, FileKey | None], ...]:
        """`consulted`, even when one of them changed too recently to be trusted."""
        return tuple(sorted(self._consulted.items()))

    def _file(self, key: str) -> str:
        """The sha256 of a file a post includes (`KeyError`: none there)."""
        path = Path(key[len(FILE) :])
        stat_key = _stat(path)
        self._consulted[str(path)] = stat_key
        if stat_key is not None and time.time_ns() - stat_key[1] < _RACY_NS:
            self._racy = True
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        except (OSError, ValueError):
            raise KeyError(key) from None

    def _page(self, rel: str) -> str | None:
        site = self.settings.site
        # Only a Jekyll site has pages (a plain posts folder is no site).
        root = site.source_dir if site.jekyll is not None else None
        if root is None or not rel or "\0" in rel:
            return None
        path = root / rel.lstrip("/")
        key = _stat(path)
        self._consulted[str(path)] = key
        if key is not None and time.time_ns() - key[1] < _RACY_NS:
            self._racy = True
        if key is None:
            return None
        found = page_url(path, rel, site.jekyll or {}, site.permalink)
        if found is None:
            return None
        return quote(permalink.normalized_baseurl(site.baseurl) + found, safe=_URL_SAFE)


def files_unchanged(consulted: tuple[tuple[str, FileKey | None], ...]) -> bool:
    """Every file `LinkTargets.consulted` listed still has that size and mtime."""
    return all(_stat(Path(name)) == key for name, key in consulted)


def _stat(path: Path) -> FileKey | None:
    """`index.file_key` for a regular file only (a folder is no page), and
    None for a name the system refuses (a NUL in it); one stat call."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


def page_url(path: Path, rel: str, config: Mapping[str, Any], style: str) -> str | None:
    """The site-relative URL of the page or static file `rel` (as written in
    the tag, relative to the site's source), or None when Jekyll does not read it.

    A static file's `relative_path` starts with `/`, a page's does not, so
    `{% link /about.md %}` finds no page (as in Jekyll)."""
    from newsletter.posts import site as jekyllsite

    parts = rel.lstrip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):  # never a `relative_path`
        return None
    exclude, include = jekyllsite.entry_filter(config)
    for depth in range(1, len(parts) + 1):
        if not jekyllsite.kept("/".join(parts[:depth]), parts[depth - 1], exclude, include):
            return None
    name = parts[-1]
    ext = os.path.splitext(name)[1]
    folder = "/" + "/".join(parts[:-1]) if len(parts) > 1 else ""
    try:
        with path.open("rb") as fh:
            page = bool(_YAML_HEADER.match(fh.readline(4096)))  # a video has no lines
    except OSError:
        return None
    if not page:  # a static file: its own path, trailing dots of its name dropped
        return folder + "/" + name[: len(name) - len(ext)].rstrip(".") + ext
    if rel.startswith("/"):
        return None
    data = {**jekyllsite.defaults_for(config, rel.lstrip("/"), "pages"), **_front_matter(path)}
    out_ext = permalink.output_ext(ext) if ext else ""
    basename = name[: len(name) - len(ext)].rstrip(".")
    given = data.get("permalink")
    if isinstance(given, str) and given:
        template = given
    elif out_ext not in _HTML:
        template = "/:path/:basename:output_ext"
    elif basename == "index":
        template = "/:path/"
    else:
        template = "/:path/:basename" + _style_suffix(str(config.get("permalink") or style))
    for placeholder, value in (("path", folder), ("basename", basename), ("output_ext", out_ext)):
        template = template.replace(f":{placeholder}", _escape_path(value))
    # Jekyll's URL#sanitize_url.
    url = ("/" + template).replace("..", "/").replace("./", "")
    return re.sub("/{2,}", "/", url)


def _style_suffix(style: str) -> str:
    """Jekyll's Utils.add_permalink_suffix for the site's permalink style."""
    if style == "pretty":
        return "/"
    if style in ("date", "ordinal", "none"):
        return ":output_ext"
    return "/" if style.endswith("/") else ":output_ext" if style.endswith(":output_ext") else ""


def _escape_path(value: str) -> str:
    if not value or _ESCAPED_AS_IS.fullmatch(value):
        return value
    return quote(value, safe="/:@!$&'()*+,;=-._~").replace("#", "%23")


def _front_matter(path: Path) -> dict[str, Any]:
    from newsletter.errors import PostError
    from newsletter.posts import jekyll

    try:
        text = jekyll.decode(path.read_bytes(), path)
        split = jekyll.split_front_matter(text, path)
        return dict(jekyll.load_front_matter(split.front_matter, path).data)
    except (PostError, OSError):
        return {}  # Jekyll warns and builds the page without its front matter
