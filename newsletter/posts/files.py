"""Which files are posts: every `_posts` folder of a Jekyll site found the way
Jekyll finds them, or every Markdown file under `posts_dir` elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from newsletter.config import Settings
from newsletter.errors import PostError

POST_SUFFIXES = (".md", ".markdown")


def post_files(posts_dir: Path) -> list[Path]:
    """Post files under `posts_dir`, skipping what Jekyll skips (dot files, backups)."""
    return [path for path, _rel in _post_files(posts_dir)]


def _post_files(posts_dir: Path) -> list[tuple[Path, str]]:
    """Each post file and its path under `posts_dir` (with "/"), in path order."""
    return [(Path(full), rel) for full, rel in _post_names(posts_dir)]


def _post_names(posts_dir: Path) -> list[tuple[str, str]]:
    """`_post_files` as strings: a listing served whole needs no `Path`s."""
    if not posts_dir.is_dir():
        raise PostError("posts folder not found", path=posts_dir, key="site.posts_dir")
    found: list[tuple[tuple[str, ...], str]] = []
    _walk(str(posts_dir), (), found)
    found.sort()  # by the parts under posts_dir: the order of sorted Paths
    return [(full, "/".join(rel)) for rel, full in found]


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
    return PostFiles(settings, undated).found()


class PostFiles:
    """`site_post_files`, with the paths alone as strings first: a load served
    whole from the state folder (`snapshot`) stats each file and builds no
    `FoundPost` (two `Path`s each, a third of a warm load's time)."""

    def __init__(self, settings: Settings, undated: list[Path] | None = None) -> None:
        site = settings.site
        self._found: list[FoundPost] | None = None
        self._names: list[tuple[str, str]] = []
        if site.jekyll is not None and site.source_dir is not None:
            self._found = _jekyll_post_files(site.source_dir, site.jekyll, undated)
            self.paths = [str(f.path) for f in self._found]
        else:
            self._names = _post_names(site.posts_dir)
            self.paths = [full for full, _rel in self._names]

    def found(self) -> list[FoundPost]:
        if self._found is None:
            self._found = [FoundPost(Path(full), Path(rel), rel, ()) for full, rel in self._names]
        return self._found


def _jekyll_post_files(
    source_dir: Path, jekyll: Mapping[str, Any], undated: list[Path] | None
) -> list[FoundPost]:
    from newsletter.posts import site as jekyllsite  # (YAML: only for a Jekyll site)

    found = []
    for item in jekyllsite.post_files(source_dir, jekyll, undated):
        inner = item.rel.split("_posts/", 1)[1] if "/_posts/" in item.rel else item.rel
        inner = inner.removeprefix("_posts/")
        rel = Path(*item.categories, inner)
        found.append(FoundPost(item.path, rel, item.rel, item.categories))
    return found


def where_posts_are(settings: Settings) -> str:
    """Where `load_posts` looks, for a "no posts found" warning."""
    site = settings.site
    if site.jekyll is not None and site.source_dir is not None:
        return f"every _posts folder under {site.source_dir.resolve()} (Jekyll's rules)"
    return str(site.posts_dir)
