"""A Jekyll site as Jekyll reads it: where its posts are, what `defaults:`
give each of them, its `_data` and its `authors` collection.

The rules are Jekyll 4.3's (lib/jekyll/reader.rb, entry_filter.rb,
frontmatter_defaults.rb, document.rb), checked against Debian's `jekyll` by
tests/test_jekyll_oracle.py:

* every `_posts` folder under the source counts, in any folder Jekyll reads:
  not one starting with `_`, `.` or `#`, not one matching `exclude` (plus
  Jekyll's own default excludes), unless `include` names it;
* a post file is named `YYYY-MM-DD-slug.ext` (other files are not posts);
* the folders above `_posts` become the post's first categories;
* `_drafts` are never read as posts (`collection.find_post_or_draft` reads one
  alone, for `render`, the preview and `send --test`).
"""

from __future__ import annotations

import csv
import fnmatch
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from newsletter.errors import PostError, Problem

MARKDOWN_EXTS = frozenset({".md", ".markdown", ".mkdown", ".mkdn", ".mkd"})
DEFAULT_EXCLUDES = (
    ".sass-cache",
    ".jekyll-cache",
    "gemfiles",
    "Gemfile",
    "Gemfile.lock",
    "node_modules",
    "vendor/bundle/",
    "vendor/cache/",
    "vendor/gems/",
    "vendor/ruby/",
)
_DATED = re.compile(r"^\d{2,4}-\d{1,2}-\d{1,2}-[^/]*\.[^./]+$")


@dataclass(frozen=True)
class PostFile:
    path: Path
    rel: str  # relative to the site source, with "/" (Jekyll's `relative_path`)
    categories: tuple[str, ...]  # from the folders above `_posts`


def entry_filter(config: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    exclude = [str(e) for e in config.get("exclude") or [] if e is not None]
    include = [str(e) for e in config.get("include") or [] if e is not None]
    destination = str(config.get("destination") or "_site")
    return [*exclude, *DEFAULT_EXCLUDES, destination], include


def _matches(patterns: list[str], rel: str) -> bool:
    for pattern in patterns:
        pattern = pattern.strip("/") if pattern.endswith("/") else pattern.lstrip("/")
        if fnmatch.fnmatchcase(rel, pattern) or rel == pattern or rel.startswith(pattern + "/"):
            return True
    return False


def kept(rel: str, name: str, exclude: list[str], include: list[str]) -> bool:
    """Jekyll's EntryFilter for one entry (`rel` is relative to the source)."""
    if _matches(include, rel) or name == ".htaccess":
        return True
    if name.startswith(("_", ".", "#")) or name.endswith("~"):
        return False
    return not _matches(exclude, rel)


def post_files(
    source: Path, config: Mapping[str, Any], undated: list[Path] | None = None
) -> list[PostFile]:
    """Every post file Jekyll would read under `source`, sorted by path
    (`collections_dir` respected).

    Markdown files in a `_posts` folder without a date in their name are not
    posts to Jekyll; they are appended to `undated` (to be warned about).
    """
    exclude, include = entry_filter(config)
    # With `collections_dir`, Jekyll reads posts only below it, and paths and
    # categories are relative to it.
    collections_dir = str(config.get("collections_dir") or "").strip("/")
    if collections_dir:
        source = source / collections_dir
    found: list[PostFile] = []
    for folder in _readable_dirs(source, "", exclude, include):
        posts = source / folder / "_posts" if folder else source / "_posts"
        if not posts.is_dir():
            continue
        categories = tuple(p for p in folder.split("/") if p)
        for path in sorted(posts.rglob("*")):
            inner = path.relative_to(posts).as_posix()
            if not _post_entry(path, inner):
                if undated is not None and _undated_markdown(path, inner):
                    undated.append(path)
                continue
            rel = (Path(folder) / "_posts" / inner).as_posix() if folder else f"_posts/{inner}"
            found.append(PostFile(path, rel, categories))
    return sorted(found, key=lambda f: f.rel)


def _post_entry(path: Path, inner: str) -> bool:
    if any(part.startswith(("_", ".", "#")) for part in inner.split("/")):
        return False
    # Jekyll publishes a dated file of any kind (.md, .html, .txt, …).
    if inner.endswith("~") or not path.suffix:
        return False
    return bool(_DATED.match(path.name)) and path.is_file()


def _undated_markdown(path: Path, inner: str) -> bool:
    hidden = any(part.startswith(("_", ".", "#")) for part in inner.split("/"))
    return not hidden and path.suffix.lower() in MARKDOWN_EXTS and path.is_file()


def _readable_dirs(source: Path, rel: str, exclude: list[str], include: list[str]) -> Iterator[str]:
    yield rel
    base = source / rel if rel else source
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return
    for entry in entries:
        child = f"{rel}/{entry.name}" if rel else entry.name
        if entry.is_dir() and not entry.is_symlink() and kept(child, entry.name, exclude, include):
            yield from _readable_dirs(source, child, exclude, include)


# --------------------------------------------------------------------------- defaults


def defaults_for(config: Mapping[str, Any], rel: str, kind: str = "posts") -> dict[str, Any]:
    """The `defaults:` values that apply to the document at `rel`, merged with
    Jekyll's precedence (longer scope path wins; with equal paths a scope
    with a `type` wins)."""
    merged: dict[str, Any] = {}
    old: Mapping[str, Any] | None = None
    for entry in config.get("defaults") or []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("values"), Mapping):
            continue
        scope = entry.get("scope") if isinstance(entry.get("scope"), Mapping) else {}
        assert isinstance(scope, Mapping)
        if not (_applies_path(scope, rel) and _applies_type(scope, kind)):
            continue
        if _has_precedence(old, scope):
            merged = deep_merge(merged, entry["values"])
            old = scope
        else:
            merged = deep_merge(entry["values"], merged)
    return merged


def _scope_path(scope: Mapping[str, Any] | None) -> str:
    value = scope.get("path") if scope else None
    return value.strip("/") if isinstance(value, str) else ""


def _applies_path(scope: Mapping[str, Any], rel: str) -> bool:
    path = _scope_path(scope)
    if not path:
        return True
    if "*" in path:
        return fnmatch.fnmatchcase(rel, path) or fnmatch.fnmatchcase(rel, path + "/*")
    return rel.startswith(path)


def _applies_type(scope: Mapping[str, Any], kind: str) -> bool:
    wanted = scope.get("type")
    return wanted is None or str(wanted) == kind


def _has_precedence(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    if old is None:
        return True
    new_path, old_path = _scope_path(new), _scope_path(old)
    if len(new_path) != len(old_path):
        return len(new_path) >= len(old_path)
    return "type" in new or "type" not in old


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Jekyll's Utils.deep_merge_hashes: nested mappings merge, the rest is replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- _data


def load_data(folder: Path, problems: list[Problem]) -> dict[str, Any]:
    """`site.data`: every yml/yaml/json/csv/tsv file under `_data`, nested by folder."""
    data: dict[str, Any] = {}
    if not folder.is_dir():
        return data
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith((".", "_", "#")) or entry.name.endswith("~"):
            continue
        if entry.is_dir():
            data[entry.name] = load_data(entry, problems)
            continue
        try:
            value = _data_file(entry)
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError, csv.Error) as exc:
            problems.append(
                Problem(f"data file ignored: {_one_line(exc)}", entry, _error_line(exc), "warning")
            )
            continue
        if value is not _SKIP:
            data[entry.stem] = value
    return data


_SKIP = object()


def _error_line(exc: Exception) -> int | None:
    """The 1-based line a YAML or JSON error points at, if it says."""
    if isinstance(exc, json.JSONDecodeError):
        return exc.lineno
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return mark.line + 1 if mark is not None else None


def _one_line(exc: Exception) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        # Its own text repeats the file name and line, which the problem shows.
        return " ".join(str(part) for part in (exc.context, exc.problem) if part)
    if isinstance(exc, json.JSONDecodeError):
        return exc.msg
    return str(exc)


def _data_file(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix not in (".yml", ".yaml", ".json", ".csv", ".tsv"):
        return _SKIP
    text = path.read_text(encoding="utf-8")
    if suffix in (".yml", ".yaml"):
        return yaml.load(text, Loader=_DataLoader)
    if suffix == ".json":
        return json.loads(text)
    dialect = "excel-tab" if suffix == ".tsv" else "excel"
    return [dict(row) for row in csv.DictReader(text.splitlines(), dialect=dialect)]


class _DataLoader(yaml.SafeLoader):
    """Safe YAML that keeps timestamps as text (Liquid prints them as written)."""


_DataLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


# --------------------------------------------------------------------------- authors


def collection_docs(source: Path, label: str, problems: list[Problem]) -> list[dict[str, Any]]:
    """The front matter of every document in collection `label` (`_<label>/*`)."""
    from newsletter.posts import jekyll

    folder = source / f"_{label}"
    docs: list[dict[str, Any]] = []
    if not folder.is_dir():
        return docs
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.startswith((".", "_")):
            continue
        try:
            text = jekyll.decode(path.read_bytes(), path)
            split = jekyll.split_front_matter(text, path)
            data = jekyll.load_front_matter(split.front_matter, path).data
        except PostError:
            continue
        except OSError as exc:
            problems.append(Problem(f"cannot read: {exc}", path, None, "warning"))
            continue
        docs.append({"slug": path.stem, **data, "content": split.body})
    return docs


def author_index(
    data_authors: Mapping[str, Any], collection: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Author key → {name, url, avatar}: `_data/authors.yml` first, then the `authors`
    collection (found by file name, `short_name`, `slug` or `name`, shown as
    `full_name`, `display_name`, `title` or `name`)."""
    index: dict[str, dict[str, Any]] = {}
    for doc in collection:
        shown = next(
            (doc[k] for k in ("full_name", "display_name", "title", "name") if doc.get(k)), None
        )
        if not isinstance(shown, str):
            continue
        entry = {
            "name": shown,
            "url": doc.get("url") or doc.get("website"),
            "avatar": doc.get("avatar"),
        }
        for key in ("name", "slug", "short_name", "author"):
            if isinstance(doc.get(key), str):
                index.setdefault(doc[key].strip(), entry)
    for key, value in data_authors.items():
        index[str(key)] = value
    return index


# --------------------------------------------------------------------------- Liquid `site`


@dataclass(frozen=True)
class SiteVariables:
    liquid: dict[str, Any]  # Liquid's `site`
    authors: dict[str, Any]  # author key → name/url (or a plain name)


def site_variables(
    source: Path | None,
    config: Mapping[str, Any] | None,
    base: Mapping[str, Any],
    pages: Sequence[dict[str, Any]],
    problems: list[Problem],
) -> SiteVariables:
    """Liquid's `site`: the `_config.yml` keys, `base` (url, title, … as
    newsletter resolved them), `site.data`, `site.posts` (`pages`, newest first),
    `site.categories`, `site.tags` and every collection's documents."""
    liquid: dict[str, Any] = {**(config or {}), **base}
    data = load_data(source / "_data", problems) if source is not None else {}
    liquid["data"] = data
    newest = list(pages)  # sorted by the caller, as Jekyll sorts them (`drops.Shelf.arrange`)
    liquid["posts"] = newest
    liquid["categories"] = _grouped(newest, "categories")
    liquid["tags"] = _grouped(newest, "tags")
    labels = config.get("collections") if config else None
    collections = {str(k): v for k, v in labels.items()} if isinstance(labels, Mapping) else {}
    collections.pop("posts", None)
    docs: dict[str, list[dict[str, Any]]] = {}
    if source is not None:
        for label in collections:
            docs[label] = collection_docs(source, label, problems)
            liquid[label] = docs[label]
    data_authors = data.get("authors")
    authors = author_index(
        data_authors if isinstance(data_authors, Mapping) else {}, docs.get("authors", [])
    )
    return SiteVariables(liquid, authors)


def _grouped(newest: list[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    """Jekyll's Site#post_attr_hash: names in the order the oldest post first
    uses them (`{% for tag in site.tags %}`), each name's posts newest first."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for page in reversed(newest):
        for name in page.get(key) or ():
            groups.setdefault(str(name), []).append(page)
    return {name: found[::-1] for name, found in groups.items()}
