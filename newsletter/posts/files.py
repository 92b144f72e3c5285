"""Which files are posts: every `_posts` folder of a Jekyll site found the way
Jekyll finds them, or every Markdown file under `posts_dir` elsewhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from newsletter.config import Settings
from newsletter.errors import PostError

POST_SUFFIXES = (".md", ".markdown")


def post_files(posts_dir: Path) -> list[Path]:
    """Post files under `posts_dir`, skipping what Jekyll skips (dot files, backups)."""
    return [path for path, _rel in _post_files(posts_dir)]


def _post_files(posts_dir: Path) -> list[tuple[Path, str]]:
    """Each post file and its path under `posts_dir` (with "/"), in path order."""
    if not posts_dir.is_dir():
        raise PostError("posts folder not found", path=posts_dir, key="site.posts_dir")
    found: list[tuple[tuple[str, ...], str]] = []
    _walk(str(posts_dir), (), found)
    found.sort()  # by the parts under posts_dir: the order of sorted Paths
    return [(Path(full), "/".join(rel)) for rel, full in found]


def _walk(folder: str, rel: tuple[str, ...], found: list[tuple[tuple[str, ...], str]]) -> None:
    """`Path.rglob` (symlinked folders not followed, unreadable ones skipped)
    with the filter on the way: every listing pays for this walk."""
    try:
        with os.scandir(folder) as scan:
            entries = list(scan)
    except PermissionError:
        return
    for entry in entries:
        name = entry.name
        if name.startswith((".", "#")):
            continue
        try:
            folder_here = entry.is_dir(follow_symlinks=False)
        except OSError:
            folder_here = False
        if folder_here:
            _walk(entry.path, (*rel, name), found)
        elif (
            os.path.splitext(name)[1].lower() in POST_SUFFIXES
            and not name.endswith("~")
            and entry.is_file()
        ):
            found.append(((*rel, name), entry.path))


@dataclass(frozen=True)
class FoundPost:
    path: Path
    rel: Path  # identity root: under its `_posts` folder, prefixed by the folders above
    site_rel: str  # Jekyll's relative_path (for `defaults:` scopes and `page.path`)
    categories: tuple[str, ...]  # from the folders above `_posts`


def site_post_files(settings: Settings, undated: list[Path] | None = None) -> list[FoundPost]:
    """Every post file: on a Jekyll site, every `_posts` folder as Jekyll finds
    them (Markdown files Jekyll skips for want of a dated name go to
    `undated`); otherwise every Markdown file under `posts_dir`."""
    site = settings.site
    if site.jekyll is not None and site.source_dir is not None:
        from newsletter.posts import site as jekyllsite  # (YAML: only for a Jekyll site)

        found = []
        for item in jekyllsite.post_files(site.source_dir, site.jekyll, undated):
            inner = item.rel.split("_posts/", 1)[1] if "/_posts/" in item.rel else item.rel
            inner = inner.removeprefix("_posts/")
            rel = Path(*item.categories, inner)
            found.append(FoundPost(item.path, rel, item.rel, item.categories))
        return found
    return [FoundPost(path, Path(rel), rel, ()) for path, rel in _post_files(site.posts_dir)]


def where_posts_are(settings: Settings) -> str:
    """Where `load_posts` looks, for a "no posts found" warning."""
    site = settings.site
    if site.jekyll is not None and site.source_dir is not None:
        return f"every _posts folder under {site.source_dir.resolve()} (Jekyll's rules)"
    return str(site.posts_dir)
