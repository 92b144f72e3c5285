"""Jekyll's conventions for one post file: front matter, dates, file names.

Everything here is a pure function over text so that `posts` can stay a
short pipeline.  The rules follow Jekyll (https://jekyllrb.com/docs/posts/,
https://jekyllrb.com/docs/front-matter/) where a post's author would expect
them to, and say so where they deliberately differ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from datetime import date as date_cls
from pathlib import Path
from typing import Any, ClassVar

import yaml

from newsletter.errors import PostError

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

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    self.duplicates.append((key_node.value, key_node.start_mark.line))
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


@dataclass(frozen=True)
class FrontMatter:
    data: dict[str, Any]
    duplicates: tuple[tuple[str, int], ...]  # (key, file line)


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
    return FrontMatter({str(k): v for k, v in data.items()}, dupes)


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
    """Jekyll's title from a slug: `edge-case-no-title` → "Edge Case No Title"."""
    return " ".join(word[:1].upper() + word[1:] for word in re.split(r"[-_\s]+", slug) if word)


# --------------------------------------------------------------------------- dates

_DATE = re.compile(
    r"""^\s*(?P<y>\d{4})-(?P<mo>\d{1,2})-(?P<d>\d{1,2})
    (?:(?:[Tt]|\s+)(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d+))?)?)?
    \s*(?:(?P<utc>[Zz]|UTC|GMT)|(?P<sign>[+-])(?P<oh>\d{1,2})(?::?(?P<om>\d{2}))?)?\s*$""",
    re.X,
)


def parse_date(
    value: Any, tz: tzinfo, *, path: Path | None = None, line: int | None = None
) -> datetime:
    """Any date form Jekyll accepts → an aware datetime; no zone means `tz`.

    `tz` is the site's timezone, never the machine's (Jekyll sets TZ from
    `_config.yml` before it parses dates).
    """
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=tz)
    if isinstance(value, date_cls):
        return datetime(value.year, value.month, value.day, tzinfo=tz)
    if not isinstance(value, str):
        raise PostError(f"expected a date, got {value!r}", path=path, line=line, key="date")
    match = _DATE.match(value)
    if match is None:
        raise PostError(
            f"cannot read {value!r} as a date (expected e.g. 2024-11-04 09:30:00 +0300)",
            path=path,
            line=line,
            key="date",
        )
    try:
        return _from_match(match, tz)
    except ValueError as exc:
        raise PostError(
            f"impossible date {value!r} ({exc})", path=path, line=line, key="date"
        ) from exc


def _from_match(match: re.Match[str], tz: tzinfo) -> datetime:
    g = match.groupdict()
    zone: tzinfo = tz
    if g["utc"]:
        zone = UTC
    elif g["sign"]:
        minutes = int(g["oh"]) * 60 + int(g["om"] or 0)
        if minutes > 14 * 60:
            raise ValueError("offset beyond ±14:00")
        zone = timezone(timedelta(minutes=minutes if g["sign"] == "+" else -minutes))
    micro = int((g["f"] or "0")[:6].ljust(6, "0"))
    second = min(int(g["s"] or 0), 59)  # a leap second (:60) is clamped, as Ruby does
    return datetime(
        int(g["y"]),
        int(g["mo"]),
        int(g["d"]),
        int(g["h"] or 0),
        int(g["mi"] or 0),
        second,
        micro,
        tzinfo=zone,
    )


def file_date(parts: tuple[int, int, int], tz: tzinfo, path: Path) -> datetime:
    try:
        return datetime(*parts, tzinfo=tz)
    except ValueError as exc:
        raise PostError(f"impossible date in the file name ({exc})", path=path, line=None) from exc


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


def list_names(value: Any) -> tuple[str, ...] | None:
    """Front matter `lists:` (a list, or names separated by commas/spaces)."""
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(n for n in re.split(r"[\s,]+", value.strip()) if n)
    return words(value)


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def authors_data(root: Path) -> dict[str, Any]:
    """Jekyll's `_data/authors.yml` (or `.yaml`) under `root`; {} when absent."""
    for name in ("authors.yml", "authors.yaml"):
        path = root / "_data" / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PostError(f"cannot read: {exc}", path=path) from exc
        return load_front_matter(text, path, 1).data
    return {}
