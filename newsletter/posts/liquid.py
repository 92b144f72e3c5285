"""Liquid in post bodies, the way Jekyll renders it — without ever failing a post.

Jekyll renders a post's Liquid before its Markdown.  We do the same with
python-liquid 2.x plus Jekyll's own tags and filters:

* `{{ site.* }}`, `{{ page.* }}`, the `relative_url` / `absolute_url` filters
  and a handful of other Jekyll filters (`date_to_xmlschema`, `slugify`, …);
* `{% raw %}` (kept literally), `{% comment %}`;
* `{% highlight lang %}` → a fenced code block (Markdown then highlights it);
* `{% post_url name %}` and `{% link path %}` → absolute URLs of those posts.

Anything else — a plugin's tag, an `{% include %}`, an unknown filter — is
dropped with a warning naming the tag and its line.  If the remaining Liquid
still cannot be parsed, every `{% %}` / `{{ }}` is stripped with a warning, so
no post fails because of Liquid and no `{%` reaches an email.
"""

from __future__ import annotations

import bisect
import functools
import html
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, quote_plus

from liquid import Environment
from liquid.exceptions import LiquidError
from liquid.filter import with_context

from newsletter.posts.permalink import is_absolute, normalized_baseurl, slugify


@dataclass(frozen=True)
class LiquidWarning:
    message: str
    line: int | None


@dataclass(frozen=True)
class LiquidResult:
    text: str
    warnings: tuple[LiquidWarning, ...]


# `{% post_url name %}` / `{% link path %}` resolver: the name → an absolute
# URL, or None when nothing matches.
Resolver = Callable[[str], str | None]


class _JekyllEnvironment(Environment):
    # A post is not a program: bound runaway loops and output.
    loop_iteration_limit = 100_000
    output_stream_limit = 20_000_000


_RAW = r"\{%-?\s*raw\s*-?%\}.*?\{%-?\s*endraw\s*-?%\}"
_COMMENT = r"\{%-?\s*comment\s*-?%\}.*?\{%-?\s*endcomment\s*-?%\}"
# Bounded lengths keep a text full of stray `{%` linear rather than quadratic.
_TOKEN = re.compile(
    rf"(?P<raw>{_RAW})|(?P<comment>{_COMMENT})"
    r"|(?P<tag>\{%-?\s*(?P<name>[#\w-]*)(?P<args>.{0,1000}?)-?%\})"
    r"|(?P<output>\{\{.{0,1000}?\}\})"
    r"|(?P<open>\{[%{])",
    re.S,
)
_FILTER = re.compile(r"\|\s*([A-Za-z_][\w-]*)")
_STRING = re.compile(r"\"[^\"]*\"|'[^']*'")
_STRIP_ALL = re.compile(r"\{%.{0,1000}?%\}|\{\{.{0,1000}?\}\}|\{(?=[%{])", re.S)
MAX_WARNINGS = 20  # per post; a page of identical warnings helps nobody
_DROPPED_TAGS = frozenset({"include", "include_relative", "render"})
_INTERMEDIATE = frozenset({"else", "elsif", "when"})


def render(
    text: str,
    *,
    site: Mapping[str, Any],
    page: Mapping[str, Any],
    post_url: Resolver,
    link: Resolver,
    first_line: int = 1,
) -> LiquidResult:
    """`text` with its Liquid rendered; problems become warnings, never errors."""
    if "{%" not in text and "{{" not in text:
        return LiquidResult(text, ())
    prepared = _Prepass(text, post_url, link, first_line).run()
    warnings = list(prepared.warnings)
    env = environment()
    try:
        template = env.from_string(prepared.text)
        output = template.render(site=site, page=page, jekyll={"environment": "production"})
    except LiquidError as exc:
        context = exc.context()
        line = context[0] + first_line - 1 if context else None
        message = str(exc.message)
        warnings.append(LiquidWarning(f"Liquid error, all Liquid markup removed: {message}", line))
        output = _STRIP_ALL.sub("", _unraw(prepared.text))
    return LiquidResult(output, tuple(warnings))


def _unraw(text: str) -> str:
    return re.sub(r"\{%-?\s*(?:end)?raw\s*-?%\}", "", text)


class _Prepass:
    """Rewrites Jekyll-only tags into text and drops unknown ones, one pass."""

    def __init__(self, text: str, post_url: Resolver, link: Resolver, first_line: int) -> None:
        self.text = text
        self.post_url = post_url
        self.link = link
        self.first_line = first_line
        self.warnings: list[LiquidWarning] = []
        self.dropped = 0
        self._newlines: list[int] | None = None
        self.known = known_tags()
        self.filters = frozenset(environment().filters)

    def run(self) -> LiquidResult:
        out = _TOKEN.sub(self._token, self.text)
        if self.dropped > len(self.warnings):
            more = self.dropped - len(self.warnings)
            self.warnings.append(LiquidWarning(f"… and {more} more Liquid warnings", None))
        return LiquidResult(out, tuple(self.warnings))

    def _line(self, pos: int) -> int:
        if self._newlines is None:
            self._newlines = [i for i, char in enumerate(self.text) if char == "\n"]
        return bisect.bisect_left(self._newlines, pos) + self.first_line

    def _warn(self, message: str, pos: int) -> None:
        self.dropped += 1
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(LiquidWarning(message, self._line(pos)))

    def _token(self, match: re.Match[str]) -> str:
        if match.group("raw"):
            return match.group(0)
        if match.group("comment"):
            return "\n" * match.group(0).count("\n")  # keep line numbers
        if match.group("open"):
            self._warn(f"unterminated Liquid markup '{match.group(0)}' dropped", match.start())
            return ""
        if match.group("output"):
            self._check_filters(match.group(0), match.start())
            return match.group(0)
        return self._tag(match)

    def _tag(self, match: re.Match[str]) -> str:
        name, args, pos = match.group("name"), match.group("args").strip(), match.start()
        if name == "highlight":
            lang = args.split()[0] if args else ""
            after = match.end()
            newline = "" if after >= len(self.text) or self.text[after] == "\n" else "\n"
            return self._line_start(pos) + f"```{lang}" + newline
        if name == "endhighlight":
            return self._line_start(pos) + "```"
        if name in ("post_url", "link"):
            return self._resolve(name, args, pos)
        if name in _DROPPED_TAGS:
            self._warn(f"{{% {name} {args} %}} dropped (includes are not available in email)", pos)
            return ""
        if name in self.known:
            self._check_filters(args, pos)
            return match.group(0)
        if not (name.startswith("end") and name[3:] not in self.known):
            self._warn(f"unknown Liquid tag {{% {name} %}} dropped", pos)
        return ""

    def _line_start(self, pos: int) -> str:
        # A Markdown fence must begin a line.
        return "" if pos == 0 or self.text[pos - 1] == "\n" else "\n"

    def _resolve(self, name: str, args: str, pos: int) -> str:
        target = args.split()[0] if args else ""
        resolver = self.post_url if name == "post_url" else self.link
        url = resolver(target) if target else None
        if url is None:
            self._warn(f"{{% {name} {target} %}}: no such post; link dropped", pos)
            return ""
        return url

    def _check_filters(self, source: str, pos: int) -> None:
        for filter_name in _FILTER.findall(_STRING.sub("", source)):
            if filter_name not in self.filters:
                self._warn(f"unknown Liquid filter '{filter_name}' ignored", pos)


@functools.cache
def known_tags() -> frozenset[str]:
    tags = set(environment().tags) - _DROPPED_TAGS - {"illegal", "content", "output"}
    return frozenset(tags | _INTERMEDIATE | {f"end{t}" for t in tags} | {"raw", "endraw"})


@functools.cache
def environment() -> Environment:
    """One shared environment: building it costs more than rendering a post."""
    env = _JekyllEnvironment(strict_filters=False)
    for name, func in _JEKYLL_FILTERS.items():
        env.add_filter(name, func)
    return env


# --------------------------------------------------------------------------- Jekyll filters
# https://jekyllrb.com/docs/liquid/filters/


def _site_value(context: Any, key: str) -> str:
    site = context.resolve("site", default={})
    value = site.get(key, "") if isinstance(site, Mapping) else ""
    return str(value or "")


@with_context
def relative_url(value: object, *, context: Any) -> str:
    text = str(value or "")
    if is_absolute(text):
        return text
    return normalized_baseurl(_site_value(context, "baseurl")) + "/" + text.lstrip("/")


@with_context
def absolute_url(value: object, *, context: Any) -> str:
    text = str(value or "")
    if is_absolute(text):
        return text
    return _site_value(context, "url").rstrip("/") + relative_url(text, context=context)


def _as_datetime(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def _date_filter(fmt: Callable[[datetime], str]) -> Callable[[object], object]:
    def apply(value: object) -> object:
        moment = _as_datetime(value)
        return fmt(moment) if moment is not None else value

    return apply


def _sentence(value: object, connector: str = "and") -> str:
    items = [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
    if len(items) <= 2:
        return f" {connector} ".join(items)
    return ", ".join(items[:-1]) + f", {connector} " + items[-1]


_JEKYLL_FILTERS: dict[str, Callable[..., object]] = {
    "relative_url": relative_url,
    "absolute_url": absolute_url,
    "date_to_xmlschema": _date_filter(lambda d: d.isoformat()),
    "date_to_rfc822": _date_filter(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S %z")),
    "date_to_string": _date_filter(lambda d: d.strftime("%d %b %Y")),
    "date_to_long_string": _date_filter(lambda d: d.strftime("%d %B %Y")),
    "xml_escape": lambda v: html.escape(str(v or "")),
    "cgi_escape": lambda v: quote_plus(str(v or "")),
    "uri_escape": lambda v: quote(str(v or ""), safe="/:@!$&'()*+,;=-._~%?#[]"),
    "slugify": lambda v, *_: slugify(str(v or "")),
    "jsonify": lambda v: json.dumps(v, default=str, ensure_ascii=False),
    "number_of_words": lambda v, *_: len(str(v or "").split()),
    "array_to_sentence_string": _sentence,
    "normalize_whitespace": lambda v: " ".join(str(v or "").split()),
    # The whole body goes through Markdown afterwards; these can be identities.
    "markdownify": lambda v: str(v or ""),
    "smartify": lambda v: str(v or ""),
    "inspect": lambda v: repr(v),
}
