"""Which files are posts: every `_posts` folder of a Jekyll site found the way
Jekyll finds them, or every Markdown file under `posts_dir` elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from newsletter.config import Settings
from newsletter.errors import PostError
from newsletter.posts import site as jekyllsite

POST_SUFFIXES = (".md", ".markdown")


def post_files(posts_dir: Path) -> list[Path]:
    """Post files under `posts_dir`, skipping what Jekyll skips (dot files, backups)."""
    if not posts_dir.is_dir():
        raise PostError("posts folder not found", path=posts_dir, key="site.posts_dir")
    found = []
    for path in posts_dir.rglob("*"):
        rel = path.relative_to(posts_dir).parts
        if path.suffix.lower() not in POST_SUFFIXES or path.name.endswith("~"):
            continue
        if any(part.startswith((".", "#")) for part in rel) or not path.is_file():
            continue
        found.append(path)
    return sorted(found)


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
        found = []
        for item in jekyllsite.post_files(site.source_dir, site.jekyll, undated):
            inner = item.rel.split("_posts/", 1)[1] if "/_posts/" in item.rel else item.rel
            inner = inner.removeprefix("_posts/")
            rel = Path(*item.categories, inner)
            found.append(FoundPost(item.path, rel, item.rel, item.categories))
        return found
    posts_dir = site.posts_dir
    return [
        FoundPost(path, path.relative_to(posts_dir), path.relative_to(posts_dir).as_posix(), ())
        for path in post_files(posts_dir)
    ]


def where_posts_are(settings: Settings) -> str:
    """Where `load_posts` looks, for a "no posts found" warning."""
    site = settings.site
    if site.jekyll is not None and site.source_dir is not None:
        return f"every _posts folder under {site.source_dir.resolve()} (Jekyll's rules)"
    return str(site.posts_dir)
