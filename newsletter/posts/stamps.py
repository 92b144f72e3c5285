"""What a parse of the posts depends on, as stamps: per file and as a whole.

The post index (`index`) keeps each post's parse under its file's key (size
and mtime_ns, `file_key`) and the `fingerprint` of everything else a parse
reads; `posts_stamp` is every post file's key at once (what `site.posts`
is made of), and `load_key` the key of a whole load that `index.recall` and
`snapshot` keep.  Split from `index`, which re-exports every name here.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from newsletter.config import Settings

__all__ = [
    "INDEX_FORMAT",
    "RACY_NS",
    "FileKey",
    "LoadKey",
    "collections_of",
    "content_digest",
    "file_key",
    "fingerprint",
    "load_key",
    "posts_stamp",
    "site_folders",
]

INDEX_FORMAT = 4  # bump when the stored layout changes (4: a whole load lists linked pages)
# Linux stamps mtimes from a coarse clock (a few ms): two writes of the same size
# that close together look alike, so a file this recent is also compared by content.
RACY_NS = 2_000_000_000
_PACKAGE = Path(__file__).resolve().parent

FileKey = tuple[int, int]  # size, mtime_ns


def fingerprint(settings: Settings) -> str:
    """What every parse reads besides the post's own file."""
    digest = hashlib.sha256()
    digest.update(f"{INDEX_FORMAT}\0{settings.site!r}".encode())
    root = settings.site.source_dir or settings.base_dir
    # Jekyll's own files (small, edited by hand: by content): `_config.yml`
    # may hold what the parser reads beyond `[site]` (such as `defaults:`).
    jekyll = [settings.site.jekyll_config] if settings.site.jekyll_config else []
    for path in (*jekyll, *_files(root / "_data")):
        digest.update(f"{path}\0{content_digest(path)}\n".encode())
    # What Liquid and the byline may read besides: includes and collection documents.
    for folder in _site_folders(settings, root):
        for path in _files(folder):
            digest.update(_stat_line(path))
    for path in _files(_PACKAGE):
        digest.update(_stat_line(path))
    return digest.hexdigest()


def collections_of(settings: Settings) -> list[str]:
    """The Jekyll collections besides posts (`_config.yml` `collections:`)."""
    labels = (settings.site.jekyll or {}).get("collections")
    names = sorted(str(k) for k in labels) if isinstance(labels, Mapping) else []
    return [name for name in names if name != "posts"]


def site_folders(settings: Settings) -> list[Path]:
    """The site's folders a parse reads besides the posts: `_data`, `_includes`
    and the collections' (the preview watches these, as `fingerprint` reads them)."""
    root = settings.site.source_dir or settings.base_dir
    return [root / "_data", *_site_folders(settings, root)]


def _site_folders(settings: Settings, root: Path) -> list[Path]:
    inner = str((settings.site.jekyll or {}).get("collections_dir") or "").strip("/")
    documents = root / inner if inner else root
    return [root / "_includes", *(documents / f"_{name}" for name in collections_of(settings))]


def posts_stamp(files: Sequence[str | Path], known: Mapping[str, FileKey] | None = None) -> str:
    """Every post file's path, size and mtime_ns: what `site.posts` is made of
    (`known`: sizes and mtimes already read, by path, as a `LoadKey` holds them)."""
    digest = hashlib.sha256()
    # In the order of sorted `Path`s (by their parts), without making them.
    for name in sorted(map(str, files), key=lambda name: name.split(os.sep)):
        key = known.get(name) if known is not None else None
        digest.update(_stat_line(name) if key is None else _key_line(name, key))
    return digest.hexdigest()


def content_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _stat_line(path: str | Path) -> bytes:
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}\0missing\n".encode()
    return _key_line(str(path), (st.st_size, st.st_mtime_ns))


def _key_line(name: str, key: FileKey) -> bytes:
    return f"{name}\0{key[0]}\0{key[1]}\n".encode()


def file_key(path: Path) -> FileKey | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


# What a whole load of the posts depends on: the fingerprint and every file's
# path, size and mtime_ns.  (`snapshot` keeps a load under it on disk.)
LoadKey = tuple[str, tuple[tuple[str, FileKey], ...]]


def load_key(settings: Settings, files: Sequence[str | Path]) -> LoadKey | None:
    """The `LoadKey` of `files` now; None when one is missing or changed less
    than `RACY_NS` ago (it may change again unseen: read it properly)."""
    keys = []
    too_recent = time.time_ns() - RACY_NS
    for path in files:
        name = str(path)
        try:
            st = os.stat(name)
        except OSError:
            return None
        if st.st_mtime_ns > too_recent:
            return None
        keys.append((name, (st.st_size, st.st_mtime_ns)))
    return fingerprint(settings), tuple(keys)
