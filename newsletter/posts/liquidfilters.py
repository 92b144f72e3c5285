"""Jekyll's own Liquid filters (https://jekyllrb.com/docs/liquid/filters/),
added to python-liquid's standard ones by `newsletter.posts.liquid`.

Each takes what Jekyll's takes; what Ruby would coerce (`"12px" | to_integer`)
is coerced the same way, so a filter never stops a post.
"""

from __future__ import annotations

import functools
import html
import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, quote_plus
from zoneinfo import ZoneInfo

from liquid import Environment
from liquid.builtin.filters.misc import date as liquid_date
from liquid.filter import with_context

from newsletter.posts.permalink import is_absolute, normalized_baseurl, slugify_mode
from newsletter.posts.rubytime import RubyTime

_URL_SAFE = "/:@!$&'()*+,;=-._~%?#"


def _site_value(context: Any, key: str) -> str:
    site = context.resolve("site", default={})
    value = site.get(key, "") if isinstance(site, Mapping) else ""
    return str(value or "")


@with_context
def relative_url(value: object, *, context: Any) -> str:
    text = str(value or "")
    if is_absolute(text):
        return text
    path = normalized_baseurl(_site_value(context, "baseurl")) + "/" + text.lstrip("/")
    # Addressable's normalize, as in Jekyll: `/my file.pdf` → `/my%20file.pdf`
    # (a Markdown link with a space in it is no link); `%20` stays as it is.
    return quote(path, safe=_URL_SAFE)


@with_context
def absolute_url(value: object, *, context: Any) -> str:
    text = str(value or "")
    if is_absolute(text):
        return text
    return _site_value(context, "url").rstrip("/") + relative_url(text, context=context)


# What Ruby's strftime has and Python's has not (or reads otherwise: `%s`).
_RUBY_ONLY = re.compile(r"%%|%s|%:z|%-?\d*N|%L")


def _ruby_strftime(moment: datetime, fmt: str) -> str:
    def ruby(match: re.Match[str]) -> str:
        spec = match.group(0)
        if spec == "%%":
            return spec
        if spec == "%s":  # the instant, not the wall clock read in the machine's zone
            return str(int(moment.timestamp()))
        if spec == "%:z":
            offset = moment.strftime("%z")
            return f"{offset[:3]}:{offset[3:]}" if offset else ""
        if spec == "%L":
            return f"{moment.microsecond // 1000:03d}"
        digits = int(spec[1:-1].lstrip("-") or 9)  # %N, %3N: fractions of a second
        return f"{moment.microsecond:06d}".ljust(digits, "0")[:digits]

    return moment.strftime(_RUBY_ONLY.sub(ruby, fmt))


@with_context
def _date(value: object, fmt: object = None, *, context: Any) -> object:
    """Liquid's `date` with Ruby's strftime, and "now" in the site's zone."""
    if isinstance(value, str) and value in ("now", "today"):
        try:
            zone = ZoneInfo(_site_value(context, "timezone") or "localtime")
        except (ValueError, KeyError):  # KeyError: ZoneInfoNotFoundError
            zone = None
        value = RubyTime.of(datetime.now(zone).astimezone(zone))
    if isinstance(value, datetime) and isinstance(fmt, str):
        return _ruby_strftime(value, fmt)
    return liquid_date(value, fmt, environment=context.env)


def _as_datetime(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def _date_filter(fmt: Callable[[datetime], str]) -> Callable[..., object]:
    def apply(value: object, *_: object) -> object:
        moment = _as_datetime(value)
        return fmt(moment) if moment is not None else value

    return apply


def _date_to_string(month: str) -> Callable[..., object]:
    """Jekyll's `date_to_string` / `date_to_long_string` with their optional
    `"ordinal"` type and `"US"` style: `4th Nov 2024`, `Nov 4th, 2024`."""

    def apply(value: object, kind: object = None, style: object = None, *_: object) -> object:
        moment = _as_datetime(value)
        if moment is None:
            return value
        if kind != "ordinal":
            return moment.strftime(f"%d {month} %Y")
        day = moment.day
        suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
        if style == "US":
            return moment.strftime(f"{month} {day}{suffix}, %Y")
        return moment.strftime(f"{day}{suffix} {month} %Y")

    return apply


def _sentence(value: object, connector: str = "and") -> str:
    items = [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
    if len(items) <= 2:
        return f" {connector} ".join(items)
    return ", ".join(items[:-1]) + f", {connector} " + items[-1]


def _items(value: object) -> list[Any]:
    if isinstance(value, Mapping):
        return list(value.values())
    return list(value) if isinstance(value, list | tuple) else []


def _get(item: object, key: str) -> object:
    return item.get(key) if isinstance(item, Mapping) else None


def _group_by(value: object, key: str) -> list[dict[str, Any]]:
    groups: dict[str, list[Any]] = {}
    for item in _items(value):
        found = _get(item, key)
        groups.setdefault("" if found is None else str(found), []).append(item)
    return [{"name": k, "items": v, "size": len(v)} for k, v in groups.items()]


def _test(context: Any, variable: str, expression: str, item: object) -> bool:
    template = _expression_template(context.env, expression)
    return template.render(**{**_globals(context), variable: item}) == "1"


def _globals(context: Any) -> dict[str, object]:
    return {k: context.resolve(k) for k in ("site", "page", "include") if k in context.scope}


@functools.lru_cache(maxsize=256)
def _expression_template(env: Environment, expression: str) -> Any:
    return env.from_string(f"{{% if {expression} %}}1{{% endif %}}")


@with_context
def _where_exp(value: object, variable: str, expression: str, *, context: Any) -> list[Any]:
    return [item for item in _items(value) if _test(context, variable, expression, item)]


@with_context
def _find_exp(value: object, variable: str, expression: str, *, context: Any) -> object:
    return next((i for i in _items(value) if _test(context, variable, expression, i)), None)


@with_context
def _group_by_exp(
    value: object, variable: str, expression: str, *, context: Any
) -> list[dict[str, Any]]:
    template = context.env.from_string("{{ " + expression + " }}")
    groups: dict[str, list[Any]] = {}
    for item in _items(value):
        key = template.render(**{**_globals(context), variable: item})
        groups.setdefault(key, []).append(item)
    return [{"name": k, "items": v, "size": len(v)} for k, v in groups.items()]


def _where(value: object, key: str, wanted: object = None) -> list[Any]:
    """Jekyll's where: an item whose property is a list matches when it holds the value."""
    out = []
    for item in _items(value):
        found = _get(item, key)
        if isinstance(found, list | tuple):
            if str(wanted) in [str(v) for v in found]:
                out.append(item)
        elif str(found if found is not None else "") == str(wanted if wanted is not None else ""):
            out.append(item)
    return out


def _to_list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


_LEADING_INT = re.compile(r"\s*([+-]?\d+)")


def _ruby_int(value: object) -> int:
    """Ruby's `to_i`, which Jekyll's filters use: `"12px"` is 12, `"x"` is 0
    (Python's int() raised, and the post was skipped as unreadable)."""
    if isinstance(value, bool):
        return int(value)  # Jekyll's to_integer: true is 1, false 0
    if isinstance(value, int | float):
        return int(value)
    match = _LEADING_INT.match(str(value or ""))
    return int(match.group(1)) if match else 0


def _markdownify(value: object) -> str:
    from newsletter.posts import markup  # (Markdown: only for a post that asks)

    return markup.markdownify(str(value or ""))


def _truncatewords(value: object, words: object = 15, ending: object = "...") -> object:
    """Liquid 5's (Debian's jekyll 4.3 runs liquid 5.4): exactly `words` words
    are left as they are; python-liquid's (Liquid 4's) adds the ellipsis to them."""
    if value is None:
        return None
    text = str(value)
    count = max(_ruby_int(words), 1)
    parts = text.split(None, count)
    if len(parts) <= count:
        return text
    return " ".join(parts[:count]) + ("" if ending is None else str(ending))


JEKYLL_FILTERS: dict[str, Callable[..., object]] = {
    "truncatewords": _truncatewords,
    "where": _where,
    "where_exp": _where_exp,
    "find_exp": _find_exp,
    "group_by": _group_by,
    "group_by_exp": _group_by_exp,
    "push": lambda v, x: [*_to_list(v), x],
    "pop": lambda v, n=1: _to_list(v)[: -max(_ruby_int(n), 0) or None],
    "shift": lambda v, n=1: _to_list(v)[max(_ruby_int(n), 0) :],
    "unshift": lambda v, x: [x, *_to_list(v)],
    "to_integer": _ruby_int,
    "sample": lambda v, *_: _to_list(v)[:1] and _to_list(v)[0],
    "date": _date,
    "relative_url": relative_url,
    "absolute_url": absolute_url,
    "date_to_xmlschema": _date_filter(lambda d: d.isoformat()),
    "date_to_rfc822": _date_filter(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S %z")),
    "date_to_string": _date_to_string("%b"),
    "date_to_long_string": _date_to_string("%B"),
    "xml_escape": lambda v: html.escape(str(v or "")),
    "cgi_escape": lambda v: quote_plus(str(v or "")),
    "uri_escape": lambda v: quote(str(v or ""), safe="/:@!$&'()*+,;=-._~%?#[]"),
    "slugify": lambda v, mode=None, *_: slugify_mode(str(v or ""), mode and str(mode)),
    "jsonify": lambda v: json.dumps(v, default=str, ensure_ascii=False, separators=(",", ":")),
    "number_of_words": lambda v, *_: len(str(v or "").split()),
    "array_to_sentence_string": _sentence,
    "normalize_whitespace": lambda v: " ".join(str(v or "").split()),
    # HTML: in an include's HTML block Markdown is not read again.
    "markdownify": _markdownify,
    # The whole body goes through Markdown (and its typography) afterwards.
    "smartify": lambda v: str(v or ""),
    "inspect": lambda v: repr(v),
}
