"""Which post a reference names: an id, else a path; never a guess.

`newsletter send a-post` once mailed a draft because the lookup took the
first post whose id, slug, file name or stem matched.  A reference now names
a post exactly: its id first, then its path (relative to the posts folder or
to the site, or absolute; with or without the extension).  A reference that
names several posts is an error listing them, so the user picks one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from newsletter.errors import PostError, Problem
from newsletter.posts import permalink

if TYPE_CHECKING:
    from newsletter.posts.collection import Post

_DATE_PREFIX = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}-(?=.)")


def resolve(posts: Sequence[Post], ref: str, roots: Sequence[Path]) -> Post:
    """The one post `ref` names; PostError when it names none or several."""
    by_id = [post for post in posts if post.post_id == ref]
    if by_id:
        return _only(ref, by_id, roots)
    targets = _path_targets(ref, roots)
    by_path = [post for post in posts if _is_target(post.path, targets)]
    if by_path:
        return _only(ref, by_path, roots)
    raise PostError(
        f"no post matches {ref!r}: give its id or its path (`newsletter posts` lists them)"
    )


def failed(problems: Sequence[Problem], ref: str, roots: Sequence[Path]) -> Problem | None:
    """The error of a file that failed to load, when `ref` names that file the
    way it would name the post: its would-be id (the path under the posts
    folder without the date prefix and extension), else its path."""
    targets = _path_targets(ref, roots)
    for problem in problems:
        # A shared id's error is on posts that did load: a reference to them
        # is answered by `resolve` ("names 2 posts"), not by that error.
        if problem.severity != "error" or problem.path is None or problem.key == "id":
            continue
        if _is_target(problem.path, targets) or ref in _would_be_id(problem.path, roots):
            return problem
    return None


def _would_be_id(path: Path, roots: Sequence[Path]) -> set[str]:
    """The ids the file would have had, under each root; on a Jekyll site
    the `_posts` folder is no part of it (`news/_posts/x.md` → `news/x`)."""
    ids = set()
    for root in roots:
        try:
            rel = path.resolve().relative_to(root.resolve())
        except ValueError:
            continue
        folders = list(rel.parent.parts)
        if "_posts" in folders:
            folders.remove("_posts")
        ids.add(Path(*folders, _DATE_PREFIX.sub("", rel.stem)).as_posix())
    return ids


def with_id(posts: Sequence[Post], post_id: str) -> Post | None:
    """The post whose id is exactly `post_id`; None when none or several are."""
    found = [post for post in posts if post.post_id == post_id]
    return found[0] if len(found) == 1 else None


def shared_ids(posts: Iterable[Post]) -> dict[str, list[Post]]:
    """Each id that more than one post has, with those posts, oldest first."""
    by_id: dict[str, list[Post]] = {}
    for post in posts:
        by_id.setdefault(post.post_id, []).append(post)
    return {
        post_id: sorted(group, key=lambda p: (p.date, str(p.path)))
        for post_id, group in by_id.items()
        if len(group) > 1
    }


def shared_id_problems(posts: Iterable[Post], roots: Sequence[Path]) -> list[Problem]:
    """An error on each post whose id another post has too.

    The id leaves out the file name's date so that re-dating a post never
    mails it again; two files whose names differ only in their date (a
    yearly "year in review") are then one id, and the ledger could not tell
    which of them a mailing sent.  Neither is planned until one has an `id:`
    of its own (the newer, whose suggested id is its dated file name)."""
    problems = []
    for post_id, group in shared_ids(posts).items():
        for i, post in enumerate(group):
            others = ", ".join(_shown(o.path, roots) for o in group if o is not post)
            if i == 0:
                fix = "the newer one has an `id:` of its own in its front matter"
            else:
                dated = (PurePosixPath(post_id).parent / post.path.stem).as_posix()
                fix = f"this one has an `id:` of its own in its front matter (e.g. `id: {dated}`)"
            problems.append(Problem(
                f"has the same id {post_id!r} as {others} (file names that differ only in "
                f"their date are one post, so that re-dating never mails a post twice): "
                f"neither is sent until {fix}",
                post.path, None, "error", "id",
            ))  # fmt: skip
    return problems


def shared_page_problems(posts: Iterable[Post], roots: Sequence[Path]) -> list[Problem]:
    """A warning on each published post whose page another one is written to
    as well (two `permalink: /same/`): Jekyll warns "Conflict: The following
    destination is shared by multiple files", and each email would link to
    one page, showing one of the two posts."""
    by_page: dict[str, list[Post]] = {}
    for post in posts:
        if post.published:  # Jekyll writes no page for an unpublished post
            by_page.setdefault(_destination(post), []).append(post)
    problems = []
    for page, group in by_page.items():
        if len(group) < 2:
            continue
        for post in sorted(group, key=lambda p: str(p.path)):
            others = ", ".join(_shown(o.path, roots) for o in group if o is not post)
            problems.append(Problem(
                f"shares its URL {urlsplit(post.url).path} with {others}: Jekyll writes "
                f"one page ({page}) for both, the same page for each email to link to "
                "(set another `permalink:` on one)",
                post.path, None, "warning", "permalink",
            ))  # fmt: skip
    return problems


def _destination(post: Post) -> str:
    """The file Jekyll writes a post to (Document#destination): `/x/` is
    `/x/index.html`, `/x` is `/x.html`, as `/x.html` is."""
    path = unquote(urlsplit(post.url).path)
    if path.endswith("/"):
        return path + "index.html"
    ext = permalink.output_ext(post.path.suffix)
    return path if path.endswith(ext) else path + ext


def _path_targets(ref: str, roots: Sequence[Path]) -> set[Path]:
    if not ref.strip() or "\0" in ref:  # no file name holds a NUL
        return set()
    try:
        given = Path(ref).expanduser()
    except RuntimeError:  # ~user for a user this machine does not have
        return set()
    if given.is_absolute():
        return {given.resolve()}
    return {(root / given).resolve() for root in roots}


def _is_target(path: Path, targets: set[Path]) -> bool:
    if not targets:
        return False
    full = path.resolve()
    return full in targets or full.with_suffix("") in targets


def _only(ref: str, found: list[Post], roots: Sequence[Path]) -> Post:
    if len(found) == 1:
        return found[0]
    names = ", ".join(f"{_shown(post.path, roots)} (id {post.post_id})" for post in found)
    raise PostError(f"{ref!r} names {len(found)} posts: {names}; give the path of one")


def _shown(path: Path, roots: Sequence[Path]) -> str:
    """The path as the user would type it: under the site folder when it is."""
    for root in reversed(roots):  # the site folder last in `roots`: widest first
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            continue
    return str(path)


def require_published(post: Post) -> Post:
    """`post` itself, when it may be mailed to a list (invariant 4 for `send`)."""
    if not post.published:
        raise PostError(
            f"{post.post_id!r} is not published (published: false, draft: true or a "
            "_drafts folder): render, preview or send it with --test, but not to a list",
            path=post.path,
        )
    return post
