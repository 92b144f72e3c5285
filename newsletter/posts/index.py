"""The post index: what reading each post produced, kept so that only changed posts are re-read.

Reading a post (YAML front matter, dates, permalink, Liquid, byline, Markdown)
costs milliseconds; a blog has hundreds of posts and every command lists them.
The index keeps, per file, the result of each pass of `collection` under a key
of

* the file: its path, size and mtime_ns (an edit changes at least one;
  a file changed less than `RACY_NS` before it was read is also checked by
  content, since a file system's clock ticks coarser than mtime_ns reads);
* a fingerprint of everything else a parse reads: the `[site]` settings,
  `_config.yml`, the Jekyll `_data`, `_includes` and collection files (such
  as `_authors`) and the source of this package, so that a changed
  configuration or a new version of the parser re-reads every post;
* the cross-post lookups the post made (`{% post_url %}`, `{% link %}`, to a
  page too: `pages.LinkTargets`): each answer is recorded with the entry and
  checked again, so renaming or adding another post (or a linked page's new
  permalink) re-reads only the posts that link to it;
* for a post whose Liquid read `site.posts`, `site.categories`, `site.tags`
  or a collection (`SiteWatch`): every post file's path, size and mtime_ns,
  so adding, removing or editing any post re-reads it.

Entries live in the state folder (`.newsletter/`, created 0700) as pickles,
one file per pass kind: the index holds what this tool wrote for this user
and nothing read from elsewhere; a file that cannot be read is ignored and
rewritten.  This module knows nothing of `Post`: `collection` hands it the
values and the function that builds one.  The keys themselves (a file's,
the fingerprint, a whole load's) are made in `stamps` (re-exported here).
"""

from __future__ import annotations

import copyreg
import hashlib
import io
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PosixPath, PurePath, PurePosixPath, PureWindowsPath, WindowsPath
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from newsletter.config import Settings
from newsletter.posts.stamps import (
    INDEX_FORMAT,
    RACY_NS,
    FileKey,
    LoadKey,
    collections_of,
    content_digest,
    file_key,
    fingerprint,
    load_key,
    posts_stamp,
)

__all__ = [
    "INDEX_FORMAT",
    "RACY_NS",
    "FileKey",
    "LoadKey",
    "Lookups",
    "Passes",
    "PostIndex",
    "SiteWatch",
    "dumps",
    "file_key",
    "fingerprint",
    "forget",
    "load_key",
    "open_index",
    "posts_stamp",
    "private_folder",
    "recall",
    "remember",
]

T = TypeVar("T")


class _HasPath(Protocol):
    @property
    def path(self) -> Path: ...


F = TypeVar("F", bound=_HasPath)


class Lookups(Mapping[str, Any]):
    """A read-only view of a mapping that remembers every key asked for, and the answer.

    `collection` resolves `{% post_url %}` and `{% link %}` through a mapping of
    names to URLs; building a post through this view records exactly which
    other posts its output depends on.
    """

    def __init__(self, inner: Mapping[str, Any], all_posts: str | None = None) -> None:
        self.inner = inner
        self.all_posts = all_posts  # `posts_stamp` of this load's post files
        self.asked: dict[str, Any] = {}

    def depends_on_all_posts(self) -> None:
        """The post read `site.posts` (or the like): any post file changing re-reads it."""
        self.asked[_ALL_POSTS] = self.all_posts

    def __getitem__(self, key: str) -> Any:
        self.asked[key] = self.inner.get(key)  # None: the answer was "no such key"
        return self.inner[key]

    def get(self, key: str, default: Any = None) -> Any:
        value = self.inner.get(key, default)
        self.asked[key] = self.inner.get(key)
        return value

    def __contains__(self, key: object) -> bool:
        found = key in self.inner
        if isinstance(key, str):
            self.asked[key] = self.inner.get(key)
        return found

    def __iter__(self) -> Iterator[str]:
        # Iterating sees every key: the result may depend on all of them.
        self.asked[_ALL] = _whole(self.inner)
        return iter(self.inner)

    def __len__(self) -> int:
        self.asked[_ALL] = _whole(self.inner)
        return len(self.inner)


_ALL = "\0all"  # the key under which a use of the whole mapping is recorded
_ALL_POSTS = "\0posts"  # the key under which a use of `site.posts` and the like is recorded


class SiteWatch(Mapping[str, Any]):
    """Liquid's `site` that notes whether a key holding other posts or documents
    (`posts`, `categories`, `tags`, a collection) was read, or the whole mapping was."""

    def __init__(self, inner: Mapping[str, Any], settings: Settings) -> None:
        self.inner = inner
        self.watched = {"posts", "categories", "tags", "collections", *collections_of(settings)}
        self.touched = False

    def __getitem__(self, key: str) -> Any:
        if key in self.watched:
            self.touched = True
        return self.inner[key]

    def get(self, key: str, default: Any = None) -> Any:
        if key in self.watched:
            self.touched = True
        return self.inner.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.inner

    def __iter__(self) -> Iterator[str]:
        self.touched = True  # every key, `posts` included
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


_last_whole: list[tuple[Mapping[str, Any], str]] = []


def _whole(mapping: Mapping[str, Any]) -> str:
    """A digest of the whole mapping, computed once per mapping (the one
    `collection` passes is built once per load and never changed)."""
    if _last_whole and _last_whole[0][0] is mapping:
        return _last_whole[0][1]
    found = hashlib.sha256(repr(sorted(mapping.items())).encode()).hexdigest()
    _last_whole[:] = [(mapping, found)]
    return found


def _still_valid(
    asked: Mapping[str, Any], lookups: Mapping[str, Any], all_posts: str | None
) -> bool:
    for key, answer in asked.items():
        if key == _ALL_POSTS:
            now: Any = all_posts
        else:
            now = _whole(lookups) if key == _ALL else lookups.get(key)
        if now != answer:
            return False
    return True


@dataclass
class _Entry:
    key: FileKey
    value: bytes  # the pickled value: a hit gets its own copy
    asked: dict[str, Any] = field(default_factory=dict)
    content: str | None = None  # the file's sha256 when its mtime was too recent to trust


@dataclass
class PostIndex:
    """One pass kind's entries (`kind`), keyed by the post's path."""

    path: Path | None  # None: keep nothing (no writable state folder)
    fingerprint: str
    all_posts: str | None = None  # `posts_stamp` of this load's post files
    entries: dict[str, _Entry] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    changed: bool = False
    hits: int = 0
    misses: int = 0

    def get(
        self,
        path: Path,
        build: Callable[[Lookups | None], T],
        lookups: Mapping[str, Any] | None = None,
    ) -> T:
        """The stored value for `path` while the file, the fingerprint and the
        recorded lookups are unchanged; else `build(view)`, stored.

        `build` is given `lookups` wrapped in a `Lookups` view (None without
        `lookups`), so what it asked is stored with the value.  Each call
        returns a fresh copy: the caller may change it.
        """
        name = str(path)
        self.used.add(name)
        key = file_key(path)
        entry = self.entries.get(name)
        if (
            key is not None
            and entry is not None
            and entry.key == key
            and (entry.content is None or entry.content == content_digest(path))
            and (lookups is None or _still_valid(entry.asked, lookups, self.all_posts))
        ):
            self.hits += 1
            if entry.content is not None and time.time_ns() - key[1] >= RACY_NS:
                entry.content = None  # old enough now: size and mtime suffice
                self.changed = True
            return pickle.loads(entry.value)
        self.misses += 1
        # Hashed before reading: if the file changes meanwhile, the next call re-reads it.
        racy = key is not None and time.time_ns() - key[1] < RACY_NS
        content = content_digest(path) if racy else None
        view = Lookups(lookups, self.all_posts) if lookups is not None else None
        value = build(view)
        if key is not None:
            asked = dict(view.asked) if view is not None else {}
            self.entries[name] = _Entry(key, dumps(value), asked, content)
            self.changed = True
        return value

    def save(self, *, prune: bool = True) -> None:
        """Write the entries back atomically, dropping those of files this index
        was not asked about (unless `prune=False`: it was asked about a few)."""
        stale = set(self.entries) - self.used if prune else set()
        for name in stale:
            del self.entries[name]
        if self.path is None or not (self.changed or stale):
            return
        data = pickle.dumps(
            (INDEX_FORMAT, self.fingerprint, self.entries), protocol=pickle.HIGHEST_PROTOCOL
        )
        try:
            private_folder(self.path.parent)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".index-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
        except OSError:
            return  # a read-only state folder: the next run reads the posts again
        self.changed = False


def read_only(value: dict[Any, Any]) -> MappingProxyType[Any, Any]:
    """How a pickled read-only mapping comes back (the type itself has no importable name)."""
    return MappingProxyType(value)


def _proxy(value: MappingProxyType[Any, Any]) -> tuple[Any, ...]:
    return read_only, (dict(value),)


def _path(value: PurePath) -> tuple[Any, ...]:
    # From its string: a third cheaper to load than pickle's default (its parts).
    return type(value), (str(value),)


_DISPATCH: dict[type, Any] = {
    **copyreg.dispatch_table,
    MappingProxyType: _proxy,
    PosixPath: _path,
    WindowsPath: _path,
    PurePosixPath: _path,
    PureWindowsPath: _path,
}


def dumps(value: object) -> bytes:
    """pickle.dumps, also for the read-only mappings a `Post` holds."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _DISPATCH
    pickler.dump(value)
    return buffer.getvalue()


def open_index(
    settings: Settings, kind: str, *, enabled: bool = True, all_posts: str | None = None
) -> PostIndex:
    """The stored `kind` entries ("sources", "listing", "posts"), or an empty index
    when there are none, they were written for another fingerprint, or the file is
    unreadable.  `all_posts`: this load's `posts_stamp`."""
    stamp = fingerprint(settings)
    if not enabled:
        return PostIndex(None, stamp, all_posts)
    path = settings.state_dir / "index" / f"posts-{kind}.pickle"
    try:
        raw = path.read_bytes()
        version, stored_stamp, entries = pickle.loads(raw)
    except FileNotFoundError:
        return PostIndex(path, stamp, all_posts)
    except Exception:  # a truncated or foreign file: start again, never fail a command
        return PostIndex(path, stamp, all_posts, changed=True)
    if version != INDEX_FORMAT or stored_stamp != stamp or not isinstance(entries, dict):
        return PostIndex(path, stamp, all_posts, changed=True)
    return PostIndex(path, stamp, all_posts, entries)


class Passes:
    """`collection`'s two passes through the index: pass 1 (`source`) per file,
    pass 2 (`post`) per file and the cross-post lookups it made, with or
    without HTML (`bodies`); `whole_post` builds one post with HTML on demand."""

    def __init__(
        self,
        settings: Settings,
        files: list[Path],
        *,
        bodies: bool,
        enabled: bool,
        all_posts: str | None = None,
    ) -> None:
        self.settings = settings
        self.enabled = enabled
        self.all_posts = posts_stamp(files) if all_posts is None else all_posts
        self._kind = "posts" if bodies else "listing"
        # Each opened when first used: a command that completes one post of a
        # whole load (`snapshot`) reads the index of posts with HTML alone.
        self._sources: PostIndex | None = None
        self._built: PostIndex | None = None
        self._whole: PostIndex | None = None

    @property
    def sources(self) -> PostIndex:
        if self._sources is None:
            self._sources = open_index(self.settings, "sources", enabled=self.enabled)
        return self._sources

    @property
    def built(self) -> PostIndex:
        if self._built is None:
            self._built = open_index(
                self.settings, self._kind, enabled=self.enabled, all_posts=self.all_posts
            )
        return self._built

    def source(self, found: F, read: Callable[[F], T]) -> T:
        """Pass 1 for `found` (a `FoundPost`), keyed by its `path`."""
        return self.sources.get(found.path, lambda _view: read(found))

    def post(
        self, path: Path, build: Callable[[Lookups | None], T], lookups: Mapping[str, Any]
    ) -> T:
        return self.built.get(path, build, lookups)

    def whole_post(
        self, path: Path, build: Callable[[Lookups | None], T], lookups: Mapping[str, Any]
    ) -> T:
        """Like `post`, from the index of posts with HTML, written back at once
        (a command that renders one post of many asks for just that one)."""
        if self._whole is None:
            self._whole = open_index(
                self.settings, "posts", enabled=self.enabled, all_posts=self.all_posts
            )
        found = self._whole.get(path, build, lookups)
        self._whole.save(prune=False)
        return found

    def save(self) -> None:
        for index in (self._sources, self._built):
            if index is not None:
                index.save()


# --------------------------------------------------------------------------- in-process

# A long-running process (the daemon, the preview) asks for the same posts
# again and again: when not one file changed it gets the same (frozen) result.
_recent: dict[tuple[str, str], tuple[LoadKey, Any, Callable[[], bool] | None]] = {}


def recall(settings: Settings, kind: str, key: LoadKey | None) -> Any | None:
    """What `remember` kept under exactly `key` (see `load_key`), else None."""
    found = _recent.get((str(settings.site.posts_dir), kind))
    if key is None or found is None or found[0] != key:
        return None
    if found[2] is not None and not found[2]():
        return None
    return found[1]


def remember(
    settings: Settings,
    kind: str,
    key: LoadKey | None,
    value: Any,
    still_valid: Callable[[], bool] | None = None,
) -> None:
    """Keep `value` for `recall` (`key` taken before the load: a file changed
    meanwhile then no longer matches, and the next load reads it), while
    `still_valid()` (what else it read, such as a linked page, is unchanged)."""
    if key is None:
        _recent.pop((str(settings.site.posts_dir), kind), None)
    else:
        _recent[(str(settings.site.posts_dir), kind)] = (key, value, still_valid)


def forget() -> None:
    """Drop what `remember` kept (tests; a process that must re-read)."""
    _recent.clear()


def private_folder(folder: Path) -> None:
    """The index folder and the state folder above it, private to this user (0700)."""
    for path in (folder.parent, folder):
        if not path.is_dir():
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.chmod(0o700)
