"""Renders kept in the state folder until their post, templates, list or settings change.

premailer is most of a render (20–45 ms an email), and `check` and the preview
render every post again and again.  A render is a pure function of

* the posts (every field of each frozen `Post`, so an edit or a re-date counts),
* the list's settings and the whole `Settings` (a changed `[email]` key counts),
* the template files: the user's `[email] templates_dir` and the default theme,
  by content, and this package's source (a new renderer counts);

so it is stored under a hash of all of them, as JSON in
`.newsletter/renders/`, and read back instead of rendered.  This module
imports neither Jinja2 nor premailer: a hit costs a file read.

Only the result is kept; a render that fails is not, so its error is raised
again each time.  Sending a post (`delivery.outgoing.build_template`) goes
through here too, so a previewed post's first message does not wait for premailer.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from newsletter.config import ListSettings, Settings
from newsletter.files import write_kept
from newsletter.posts.collection import Post

if TYPE_CHECKING:
    from newsletter.email.rendered import RenderedEmail

__all__ = ["CACHE_FORMAT", "RenderCache", "cached_render", "template_digest"]

CACHE_FORMAT = 1
MAX_ENTRIES = 5000  # beyond this the oldest renders are dropped
_PACKAGE = Path(__file__).resolve().parent
_digests: dict[tuple[str, int, int], str] = {}


def cached_render(
    posts: Sequence[Post],
    settings: Settings,
    mailing_list: ListSettings,
    *,
    digest: bool = False,
    enabled: bool = True,
) -> RenderedEmail:
    """`render_email(post)` (or `render_digest(posts)` with `digest=True`),
    from the state folder when nothing it depends on changed."""
    return RenderCache(settings, enabled=enabled).render(posts, mailing_list, digest=digest)


class RenderCache:
    """Renders for one `Settings` and the templates as they are now: for a
    loop over many posts (`check`), which reads the templates once."""

    def __init__(self, settings: Settings, *, enabled: bool = True) -> None:
        self.settings = settings
        self.enabled = enabled
        self.folder = settings.state_dir / "renders"
        self._base = "" if not enabled else _base_key(settings)

    def render(
        self, posts: Sequence[Post], mailing_list: ListSettings, *, digest: bool = False
    ) -> RenderedEmail:
        def build() -> RenderedEmail:
            from newsletter.email import render  # (Jinja2: only when rendering)

            # Disabled (`check --all`): no kept inlining or compiled template either.
            if digest:
                return render.render_digest(
                    list(posts), self.settings, mailing_list, cache=self.enabled
                )
            (post,) = posts
            return render.render_email(post, self.settings, mailing_list, cache=self.enabled)

        if not self.enabled:
            return build()
        path = self.folder / f"{self.key(posts, mailing_list, digest=digest)}.json"
        found = _read(path)
        if found is not None:
            return found
        rendered = build()
        _write(path, rendered)
        return rendered

    def key(self, posts: Sequence[Post], mailing_list: ListSettings, *, digest: bool) -> str:
        found = hashlib.sha256(self._base.encode())
        for part in ("digest" if digest else "email", repr(mailing_list), *map(repr, posts)):
            found.update(b"\0\0")
            found.update(part.encode("utf-8", "surrogatepass"))
        return found.hexdigest()


def _base_key(settings: Settings) -> str:
    """What every render under these settings shares: format, settings, templates."""
    found = hashlib.sha256(f"{CACHE_FORMAT}\0{settings!r}\0".encode("utf-8", "surrogatepass"))
    found.update(template_digest(settings.email.templates_dir).encode())
    return found.hexdigest()


def template_digest(templates_dir: Path | None) -> str:
    """The content of every template file and of this package's source."""
    folders = [_PACKAGE, *_theme_folders()]
    if templates_dir is not None:
        folders.append(templates_dir)
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(folder.rglob("*")) if folder.is_dir() else ():
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(f"{path}\0{_file_digest(path)}\n".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _theme_folders() -> list[Path]:
    import importlib.util

    spec = importlib.util.find_spec("newsletter.templates")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def _file_digest(path: Path) -> str:
    """A file's sha256, computed again only when its size or mtime changes."""
    try:
        st = path.stat()
    except OSError:
        return "missing"
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo in _digests:
        return _digests[memo]
    try:
        found = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "unreadable"
    # A file changed within the file system's clock tick could change again
    # unseen by size and mtime: remember only older ones.
    if time.time_ns() - st.st_mtime_ns > 2_000_000_000:
        _digests[memo] = found
    return found


def _read(path: Path) -> RenderedEmail | None:
    from newsletter.email.rendered import RenderedEmail

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return RenderedEmail(**{**data, "warnings": tuple(data["warnings"])})
    except (OSError, ValueError, TypeError, KeyError):
        return None  # none yet, or unreadable: render again


def _write(path: Path, rendered: RenderedEmail) -> None:
    text = json.dumps(asdict(rendered), ensure_ascii=False)
    write_kept(path, text.encode("utf-8", "surrogatepass"), MAX_ENTRIES)
