"""Jekyll's conventions for one post file: front matter, dates, file names.

Everything here is a pure function over text so that `posts` can stay a
short pipeline.  The rules follow Jekyll (https://jekyllrb.com/docs/posts/,
https://jekyllrb.com/docs/front-matter/) where a post's author would expect
them to, and say so where they deliberately differ.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from datetime import date as date_cls
from pathlib import Path
from typing import Any, ClassVar

import yaml

from newsletter.errors import PostError
from newsletter.posts import rubytime

# --------------------------------------------------------------------------- front matter

# Jekyll: the file must start with `---`; the block ends at the next line that
# is `---` or `...`.  Only the first such line closes it, so a `---` rule
# further down the body stays a rule.
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)?(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.S)


@dataclass(frozen=True)
class SplitFile:
    front_matter: str
    body: str
    body_line: int  # 1-based line number of the body's first line in the file


def decode(raw: bytes, path: Path) -> str:
    """UTF-8 text with a BOM and CRLF/CR line endings normalised away."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PostError(
            f"not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8",
            path=path,
            line=line,
        ) from exc
    text = text.removeprefix("\ufeff")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def split_front_matter(text: str, path: Path) -> SplitFile:
    match = _FRONT_MATTER.match(text)
    if match is None and re.match(r"---[ \t]*\n", text):
        raise PostError(
            "front matter is not closed: add a '---' line after the last key",
            path=path,
            line=1,
        )
    if match is None:
        raise PostError(
            "no front matter: a post starts with a '---' line and its YAML "
            "ends at the next '---' line (Jekyll ignores such files)",
            path=path,
            line=1,
        )
    front = match.group(1) or ""
    body_line = front.count("\n") + 3
    return SplitFile(front, text[match.end() :], body_line)


_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _FrontMatterLoader(_BaseLoader):
    """Safe YAML that keeps dates as text and notices duplicate keys.

    Dates stay strings so that every date form goes through one parser
    (`parse_date`): PyYAML turns `2024-11-04 00:00:00 +03:00` into a datetime
    but `... +0300` into a string, and `2024-02-30` into a ValueError.
    PyYAML (like Ruby's Psych) lets a duplicate key silently win; we record it.
    """

    yaml_implicit_resolvers: ClassVar[dict[Any, Any]] = {
        first: [(tag, rx) for tag, rx in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, int]] = []
        self.quoted: set[str] = set()
        self._root: Any = None

    def construct_document(self, node: Any) -> Any:
        self._root = node
        return super().construct_document(node)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    self.duplicates.append((key_node.value, key_node.start_mark.line))
                seen.add(key_node.value)
                # A quoted value is a string to YAML, never a timestamp.
                quoted = isinstance(value_node, yaml.ScalarNode) and value_node.style in ("'", '"')
                if node is self._root and quoted:
                    self.quoted.add(str(key_node.value))
        return super().construct_mapping(node, deep=deep)


@dataclass(frozen=True)
class FrontMatter:
    data: dict[str, Any]
    duplicates: tuple[tuple[str, int], ...]  # (key, file line)
    quoted: frozenset[str] = frozenset()  # top-level keys whose value is quoted


def load_front_matter(source: str, path: Path, first_line: int = 2) -> FrontMatter:
    """The YAML mapping; `first_line` is the file line of the YAML's first line."""
    if not source.strip():
        return FrontMatter({}, ())
    loader = _FrontMatterLoader(source)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, path, source, first_line) from exc
    finally:
        loader.dispose()
    if data is None:
        return FrontMatter({}, ())
    if not isinstance(data, dict):
        raise PostError(
            f"front matter must be a mapping of keys, not a {type(data).__name__}",
            path=path,
            line=first_line,
        )
    dupes = tuple((str(key), line + first_line) for key, line in loader.duplicates)
    return FrontMatter({str(k): v for k, v in data.items()}, dupes, frozenset(loader.quoted))


def _yaml_error(exc: yaml.YAMLError, path: Path, source: str, first_line: int) -> PostError:
    # Point at where the broken construct *starts* (an unclosed quote's
    # opening line), not where the parser gave up (often the end of the YAML).
    context_mark = getattr(exc, "context_mark", None)
    problem_mark = getattr(exc, "problem_mark", None)
    mark = context_mark or problem_mark
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    detail = f"{context}: {problem}" if context and context_mark else problem
    line = mark.line + first_line if mark is not None else None
    hint = ""
    if problem_mark is not None:
        lines = source.split("\n")
        if problem_mark.line < len(lines) and "\t" in lines[problem_mark.line]:
            hint = " (a TAB character: YAML indents with spaces only)"
            line = problem_mark.line + first_line
    return PostError(f"invalid YAML in front matter: {detail}{hint}", path=path, line=line)


def key_line(front_matter: str, key: str, first_line: int = 2) -> int | None:
    """The file line where a top-level front-matter key is set (last one wins)."""
    found = None
    pattern = re.compile(rf"^{re.escape(key)}[ \t]*:", re.M)
    for match in pattern.finditer(front_matter):
        found = front_matter.count("\n", 0, match.start()) + first_line
    return found


# --------------------------------------------------------------------------- file names

_FILE_NAME = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})-(.+)$")


@dataclass(frozen=True)
class FileName:
    date: tuple[int, int, int] | None
    slug: str


def parse_file_name(stem: str) -> FileName:
    match = _FILE_NAME.match(stem)
    if match is None:
        return FileName(None, stem)
    year, month, day = (int(match.group(i)) for i in (1, 2, 3))
    return FileName((year, month, day), match.group(4))


def titleize(slug: str) -> str:
    """Jekyll's Utils.titleize_slug: `edge-case-no-title` → "Edge Case No Title".

    Only dashes separate words and each word is Ruby-capitalised (the rest
    lower-cased): `iOS-tips_and-tricks` → "Ios Tips_and Tricks", as Jekyll
    titles it.
    """
    return " ".join(word[:1].upper() + word[1:].lower() for word in slug.split("-") if word)


# --------------------------------------------------------------------------- dates

# YAML 1.1's timestamp (what Psych/SafeYAML turn into a Ruby Time before
# Jekyll sees it): a time *with seconds*, an optional fraction and zone.
_YAML_TIMESTAMP = re.compile(
    r"""^(?P<y>\d{4})-(?P<mo>\d\d?)-(?P<d>\d\d?)(?:[Tt]|[ \t]+)
    (?P<h>\d\d?):(?P<mi>\d\d):(?P<s>\d\d)(?:\.\d*)?
    (?:[ \t]*(?:(?P<utc>Z)|(?P<sign>[-+])(?P<oh>\d\d?)(?::(?P<om>\d\d))?))?$""",
    re.X,
)


def parse_date(
    value: Any,
    tz: tzinfo,
    *,
    path: Path | None = None,
    line: int | None = None,
    quoted: bool = False,
) -> datetime:
    """A front-matter date → the aware datetime Jekyll 4.3 makes of it.

    * a YAML timestamp with a time (`2024-11-04 10:00:00`, `…T10:00:00+03:00`)
      is read by YAML first: *without a zone it is UTC*, and the fraction of a
      second is lost (Jekyll re-parses the Time's `to_s`);
    * anything else goes through Ruby's `Time.parse` (`rubytime`): no zone
      means the site's timezone `tz` (Jekyll sets TZ from `_config.yml`);
      so does a `quoted` value, a string to YAML: `"2024-11-04 10:00:00"`
      is 10:00 in the site's zone.
    """
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=tz)
    if isinstance(value, date_cls):
        return datetime(value.year, value.month, value.day, tzinfo=tz)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # Jekyll parses `value.to_s`
    if not isinstance(value, str):
        raise PostError(f"expected a date, got {value!r}", path=path, line=line, key="date")
    text = value.strip()
    try:
        match = None if quoted else _YAML_TIMESTAMP.match(text)
        return _from_timestamp(match) if match else rubytime.parse(text, tz)
    except (rubytime.RubyTimeError, ValueError, OverflowError) as exc:
        what = "impossible date" if "range" in str(exc) else "cannot read"
        raise PostError(
            f"{what} {value!r} as a date (Jekyll fails on it too); "
            "write e.g. 2024-11-04 09:30:00 +0300",
            path=path,
            line=line,
            key="date",
        ) from exc


def _from_timestamp(match: re.Match[str]) -> datetime:
    g = match.groupdict()
    zone: tzinfo = UTC
    if g["sign"]:
        minutes = int(g["oh"]) * 60 + int(g["om"] or 0)
        zone = timezone(timedelta(minutes=minutes if g["sign"] == "+" else -minutes))
    day, hour, minute, second = int(g["d"]), int(g["h"]), int(g["mi"]), int(g["s"])
    # Ruby's Time.utc, which Psych calls, takes a day up to 31, 24:00:00 and a
    # 60th second and rolls them over (10:00:60 is 10:01:00); beyond that it
    # fails, and so does Jekyll's build.
    if not (1 <= day <= 31 and minute <= 59 and second <= 60) or hour > 24:
        raise ValueError("a part of the time is out of range")
    if hour == 24 and (minute or second):
        raise ValueError("a part of the time is out of range")
    start = datetime(int(g["y"]), int(g["mo"]), 1, tzinfo=zone)
    return start + timedelta(days=day - 1, hours=hour, minutes=minute, seconds=second)


def file_date(parts: tuple[int, int, int], tz: tzinfo, path: Path) -> datetime:
    """The file name's date, midnight in the site's zone; Feb 30 rolls over
    into March as Ruby's Time.parse does."""
    year, month, day = parts
    if not 1 <= month <= 12 or not 1 <= day <= 31:
        raise PostError(
            f"impossible date in the file name ({year}-{month:02d}-{day:02d}; Jekyll fails too)",
            path=path,
            line=None,
        )
    return (datetime(year, month, 1) + timedelta(days=day - 1)).replace(tzinfo=tz)


# --------------------------------------------------------------------------- values


def scalar_text(value: Any) -> str | None:
    """A front-matter scalar as one line of text; None for lists, maps, booleans."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int | float):
        text = " ".join(str(value).split())
        return text or None
    return None


def words(value: Any) -> tuple[str, ...]:
    """Jekyll's tags/categories: a list, or a string split on whitespace."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list | tuple):
        return tuple(str(v).strip() for v in value if v is not None and str(v).strip())
    return (str(value),)


def _plural(data: Mapping[str, Any], singular: str, plural: str) -> list[Any]:
    """Jekyll's Utils.pluralized_array_from_hash: the singular key as one value
    (never split), else the plural key (a string split on whitespace)."""
    if data.get(singular) is not None:
        value = data[singular]
        return list(value) if isinstance(value, list) else [value]
    value = data.get(plural)
    if isinstance(value, str):
        return value.split()
    return [v for v in value if v is not None] if isinstance(value, list) else []


def _unique(values: list[Any]) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        text = str(value)
        if text and text not in out:
            out.append(text)
    return tuple(out)


def categories(
    front: Mapping[str, Any],
    defaults: Mapping[str, Any],
    from_path: tuple[str, ...],
    merged: Mapping[str, Any],
) -> tuple[str, ...]:
    """A post's categories as Jekyll 4 merges them: the folders above
    `_posts`, then the defaults' `categories`, then the front matter's, then
    `category` (one category, even with spaces in it)."""

    def split(value: Any) -> list[Any]:
        if isinstance(value, str):
            return value.split()
        return list(value) if isinstance(value, list) else []

    found = list(from_path) + split(defaults.get("categories")) + split(front.get("categories"))
    return _unique(found + _plural(merged, "category", "categories"))


def tags(data: Mapping[str, Any]) -> tuple[str, ...]:
    """`tag` (one tag) or `tags` (a list, or a string split on whitespace)."""
    return _unique(_plural(data, "tag", "tags"))


def list_names(value: Any) -> tuple[str, ...] | None:
    """Front matter `lists:` (a list, or names separated by commas/spaces)."""
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(n for n in re.split(r"[\s,]+", value.strip()) if n)
    return words(value)


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]
